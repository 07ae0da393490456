"""Shared fixtures: uptrack stores built from a simulation's ground truth.

`build_store` writes a complete store the way ``uptrack run`` lays it out, with the
ground truth standing in for the pipeline's stages (truth positions as detections,
particle ids as track ids, true states), so that readers of the store (curation, the
napari plugin) are tested without running Cellpose and the detector.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.io import store
from pipeline.io.movie import file_checksum
from pipeline.run.config import config_from_dict
from pipeline.sim.simulate import SimulationConfig, simulate, write_simulation
from pipeline.sim.truth import Truth, load_truth
from pipeline.stages.classify import events_from_states
from pipeline.stages.kinetics import KineticsParams, kinetics_tables
from pipeline.stages.zones import cell_geometry
from pipeline.vocabulary import STATES

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_MOVIE = ROOT / "sample_data" / "demo.ome.tif"
#: Stage names of ``pipeline.run.runner.STAGES``, all marked done in a built store.
_STAGES = ("segment", "track_cells", "detect", "link", "zones", "classify", "kinetics", "export")
_ZONE_OF_STATE = {"membrane_bound": "membrane", "vesicular": "inside"}


def build_store(path: Path, movie_path: Path, truth: Truth) -> Path:
    """Write a complete uptrack store at ``path`` from a simulated movie's ground truth.

    Parameters
    ----------
    path : Path
        The ``<name>.zarr`` store to write.
    movie_path : Path
        The simulated movie (recorded as the store's input).
    truth : pipeline.sim.truth.Truth
        Its ground truth: labels become ``labels/cells``; visible particles become
        ``tables/particles`` (``particle_id`` as ``track_id``, ``photons`` as ``mass``);
        events, tracks, cells, movie and kinetics are computed from the true states.

    Returns
    -------
    Path
        ``path``.
    """
    meta = truth.meta
    px_um, dt_s = meta["pixel_size_um"], meta["frame_interval_s"]
    n_frames = truth.cell_labels.shape[0]
    store.create_store(path, attrs={
        "config": {"input": {"path": str(movie_path), "channels": {"cells": "cells", "particles": "particles"}}},
        "input_path": str(movie_path),
        "input_checksum": file_checksum(movie_path),
        "pixel_size_um": px_um,
        "frame_interval_s": dt_s,
        "channel_names": list(meta["channels"]),
        "n_frames": n_frames,
        "shape_yx": list(truth.cell_labels.shape[1:]),
    })
    store.create_labels(path, truth.cell_labels.shape)
    store.write_label_frames(path, 0, truth.cell_labels)
    visible = truth.particles[truth.particles["visible"]]
    photons = visible["photons"].to_numpy(float)
    detections = pd.DataFrame({
        "frame": visible["frame"].to_numpy(np.int64),
        "y": visible["y"].to_numpy(float),
        "x": visible["x"].to_numpy(float),
        "mass": photons,
        "size": 1.0,
        "ecc": 0.0,
        "signal": photons / 10.0,
        "raw_mass": photons,
        "ep": 0.1,
        "track_id": visible["particle_id"].to_numpy(np.int64),
        "cell_id": visible["cell_id"].to_numpy(np.int64),
        "distance_um": 0.0,
        "zone": visible["state"].map(_ZONE_OF_STATE).fillna("outside").astype(str).to_numpy(),
    })
    codes = pd.Categorical(visible["state"], categories=STATES).codes
    particles, events = events_from_states(detections, codes, frame_interval_s=dt_s)
    geometry = cell_geometry(truth.cell_labels, pixel_size_um=px_um)
    tables = kinetics_tables(particles, events, frame_interval_s=dt_s, n_frames=n_frames, params=KineticsParams(),
                             cells=geometry)
    store.write_kinetics(path, tables.pop("kinetics"))
    for name, table in {"particles": particles, "events": events, **tables}.items():
        store.write_table(path, name, table)
    for stage in _STAGES:
        store.mark_stage_done(path, stage)
    store.mark_complete(path)
    return path


@pytest.fixture(scope="session")
def simulated_movie(tmp_path_factory) -> Path:
    """A small simulated movie (128 x 128 px, 20 frames, 3 cells) with its ground truth beside it."""
    config = SimulationConfig(
        seed=1, shape=(128, 128), n_frames=20, n_cells=3, cell_radius_um=(4.0, 5.0),
        n_particles_initial=15, n_bound_initial=10, n_vesicular_initial=10,
        k_internalization_per_min=1.0, k_release_per_min=0.5,
    )
    return write_simulation(simulate(config), tmp_path_factory.mktemp("movie"), "sim")["movie"]


@pytest.fixture
def truth_store(tmp_path, simulated_movie) -> Path:
    """A complete store of the small simulated movie, built from its ground truth (fresh per test)."""
    return build_store(tmp_path / "sim.zarr", simulated_movie, load_truth(simulated_movie))


@pytest.fixture
def sample_store(tmp_path) -> Path:
    """A complete store of ``sample_data/demo.ome.tif`` built from its ground truth."""
    return build_store(tmp_path / "demo.zarr", SAMPLE_MOVIE, load_truth(SAMPLE_MOVIE))


@pytest.fixture
def tiny_config(tmp_path):
    """A 12-frame 128×128 simulated movie and a run config for it (in-process compute)."""
    sim = simulate(SimulationConfig(seed=5, shape=(128, 128), n_frames=12, n_cells=2,
                                    cell_radius_um=(4.0, 6.0)))
    movie = write_simulation(sim, tmp_path, "tiny")["movie"]
    raw = yaml.safe_load((ROOT / "configs" / "sample.yaml").read_text())
    raw["input"]["path"] = str(movie)
    raw["segment"]["model"] = str(ROOT / "sample_data" / "models" / "uptrack_cells_cp3")
    raw["output"] = {"dir": str(tmp_path / "results")}
    raw["compute"] = {"backend": "sync"}
    return config_from_dict(raw, base=tmp_path, source="tiny.yaml")
