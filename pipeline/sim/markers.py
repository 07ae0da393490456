"""Compartment marker channels for simulated movies (e.g. an early-endosome or lysosome stain).

``add_marker_channel(sim, MarkerConfig(name="lysosome", k_arrival_per_min=0.5))`` returns the
simulation with one more channel and the marker's ground truth:

Model
    Each vesicular particle reaches the compartment an exponential time (rate
    ``k_arrival_per_min``) after its internalization (particles vesicular at frame 0: after
    time 0, as their dwell clocks start there). From its arrival on, while it stays vesicular,
    the marker channel shows a compartment spot at its position: a pixel-integrated Gaussian
    of sigma ``spot_sigma_px`` with ``spot_photons`` photons (compartments are larger than the
    PSF). The channel adds a uniform background, Poisson and read noise (the camera of
    :mod:`pipeline.optics`), and unrelated marker-positive compartments (``n_free_spots``
    per cell-free random positions per frame) that colocalise with nothing.

Truth
    ``arrivals``: ``particle_id``, ``cell_id``, ``entry_time_s`` (internalization, 0 for
    particles vesicular at frame 0), ``arrival_time_s`` (drawn; may lie after the particle
    left the vesicular state or the movie ended: then never observed), ``arrival_frame``
    (first frame at or after the arrival time while vesicular; -1 if none). Written by
    :func:`write_marker_truth` as ``NAME.truth/markers_<name>.csv``.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from pipeline.optics import camera, render_spots
from pipeline.params import Params
from pipeline.sim.truth import truth_dir_for

__all__ = ["MarkerConfig", "add_marker_channel", "write_marker_truth"]


class MarkerConfig(Params):
    """One simulated compartment marker channel."""

    name: str = Field("marker", description="Channel name (OME channel name), e.g. lysosome.")
    k_arrival_per_min: float = Field(0.5, gt=0, description="Rate of arrival in the compartment after "
                                     "internalization, 1/min.")
    spot_photons: float = Field(1500.0, gt=0, description="Photons of one compartment spot.")
    spot_sigma_px: float = Field(1.5, gt=0, description="Gaussian sigma of a compartment spot, px.")
    background_photons: float = Field(20.0, ge=0, description="Uniform background, photons/pixel.")
    n_free_spots: int = Field(5, ge=0, description="Unrelated marker spots per frame (random positions).")
    seed: int = Field(0, description="Random seed of the arrivals and the channel's noise.")


def add_marker_channel(sim, marker: MarkerConfig):
    """The simulation with a marker channel appended, and the marker's arrivals (module docstring).

    Parameters
    ----------
    sim : pipeline.sim.simulate.Simulation
    marker : MarkerConfig

    Returns
    -------
    sim : Simulation
        A copy: ``movie`` (T, C + 1, Y, X), ``truth.meta["channels"]`` with the marker's name and
        ``truth.meta["markers"]`` with its config.
    arrivals : DataFrame
    """
    config = sim.config
    rng = np.random.default_rng(marker.seed)
    dt = config.frame_interval_s
    p = sim.truth.particles.sort_values(["particle_id", "frame"])
    ev = sim.truth.events
    entry = ev[ev["kind"] == "internalization"].groupby("particle_id")["time_s"].min()
    vesicular = p[p["state"] == "vesicular"]
    first = vesicular.groupby("particle_id").agg(cell_id=("cell_id", "first"), first_frame=("frame", "min"))
    entry_time = entry.reindex(first.index).fillna(first["first_frame"] * dt)
    arrival = entry_time.to_numpy() + rng.exponential(60.0 / marker.k_arrival_per_min, len(first))
    arrivals = pd.DataFrame({"particle_id": first.index.to_numpy(), "cell_id": first["cell_id"].to_numpy(),
                             "entry_time_s": entry_time.to_numpy(), "arrival_time_s": arrival})
    due = vesicular.merge(arrivals[["particle_id", "arrival_time_s"]], on="particle_id")
    positive = due[due["frame"] * dt >= due["arrival_time_s"]]
    arrival_frame = positive.groupby("particle_id")["frame"].min()
    arrivals["arrival_frame"] = arrival_frame.reindex(arrivals["particle_id"]).fillna(-1).to_numpy(np.int64)
    shape = config.shape
    channel = np.zeros((config.n_frames, *shape), np.uint16)
    by_frame = dict(tuple(positive.groupby("frame")))
    for t in range(config.n_frames):
        spots = by_frame.get(t, positive.iloc[:0])
        y = np.r_[spots["y"].to_numpy(float), rng.uniform(0, shape[0], marker.n_free_spots)]
        x = np.r_[spots["x"].to_numpy(float), rng.uniform(0, shape[1], marker.n_free_spots)]
        expected = marker.background_photons + render_spots(shape, y, x, np.full(len(y), marker.spot_photons),
                                                            marker.spot_sigma_px)
        channel[t] = camera(expected, rng, read_noise_e=config.read_noise_e, gain_adu_per_e=config.gain_adu_per_e,
                            offset_adu=config.offset_adu)
    meta = copy.deepcopy(sim.truth.meta)
    meta["channels"] = [*meta.get("channels", config.channels), marker.name]
    meta.setdefault("markers", []).append(marker.model_dump())
    truth = replace(sim.truth, meta=meta)
    return replace(sim, movie=np.concatenate([sim.movie, channel[:, None]], axis=1), truth=truth), arrivals


def write_marker_truth(arrivals: pd.DataFrame, movie_path: str | Path, name: str) -> Path:
    """Write the arrivals of marker ``name`` next to the movie's truth: ``NAME.truth/markers_<name>.csv``."""
    folder = truth_dir_for(movie_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"markers_{name}.csv"
    arrivals.to_csv(path, index=False, float_format="%.4f", lineterminator="\n")
    return path
