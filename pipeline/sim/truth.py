"""Ground truth of a simulated movie: the format on disk and its reader.

A movie ``NAME.ome.tif`` written by :func:`pipeline.sim.simulate.write_simulation`
has its ground truth in the folder ``NAME.truth/`` next to it:

``cell_labels.tif``
    (T, Y, X) uint16 label image, zlib-compressed; 0 = background, cells 1..N
    with the same id in every frame.
``particles.csv``
    One row per particle per frame it exists in: ``frame`` (from 0),
    ``particle_id`` (from 0, never reused), ``y``, ``x`` (pixels, sub-pixel
    floats; pixel centres are integers), ``cell_id``, ``state`` (one of
    :data:`pipeline.vocabulary.STATES`), ``photons`` (expected detected photons
    of the spot this frame, after bleaching), ``visible`` (False when blinked
    off: not rendered in that frame, still listed).
    ``cell_id`` is 0 for ``extracellular`` particles, the cell for
    ``membrane_bound`` and ``vesicular`` ones, and the cell of origin for
    ``released`` ones. A particle that leaves the field ends there (no
    re-entry with the same id); ``released`` particles stay ``released``.
``events.csv``
    One row per state change: ``particle_id``, ``cell_id``, ``frame`` (the first
    frame in the new state), ``time_s`` (exact continuous time of the change),
    ``kind`` (one of :data:`pipeline.vocabulary.EVENTS`). Two changes may share
    a frame (internalization and release within one frame interval).
``cells.csv``
    One row per cell: ``cell_id``, the true rates ``k_internalization_per_min``,
    ``k_release_per_min``, ``k_unbinding_per_min``, event counts ``n_binding``,
    ``n_unbinding``, ``n_internalization``, ``n_release`` and the times at risk
    ``membrane_bound_time_s`` and ``vesicular_time_s`` (total particle-time in
    that state, censored at the movie end or when a particle leaves the field).
    The maximum-likelihood rate is events / time at risk, e.g.
    ``n_internalization / membrane_bound_time_s * 60`` per min.
``meta.json``
    ``format`` (this format's version), ``version`` (uptrack), ``seed``,
    ``config`` (the full simulation config), ``pixel_size_um``,
    ``frame_interval_s``, ``psf_sigma_px``, ``particle_photons_median``,
    ``particle_peak_photons``, ``cell_photons``, ``channels``, ``axes``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from pipeline.errors import InputError

TRUTH_FORMAT = "uptrack-sim-truth/1"
_SUFFIX = ".truth"


@dataclass
class Truth:
    """Ground truth of one simulated movie (see the module docstring for the columns)."""

    cell_labels: np.ndarray
    particles: pd.DataFrame
    events: pd.DataFrame
    cells: pd.DataFrame
    meta: dict


def truth_dir_for(movie_path: str | Path) -> Path:
    """The truth folder of a movie: ``NAME.ome.tif`` -> ``NAME.truth``."""
    path = Path(movie_path)
    name = path.name.removesuffix(".tif").removesuffix(".tiff").removesuffix(".ome")
    return path.with_name(name + _SUFFIX)


def write_truth(truth: Truth, folder: str | Path) -> list[Path]:
    """Write ``truth`` into ``folder`` (created); return the files written. Deterministic bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / name for name in
               ("cell_labels.tif", "particles.csv", "events.csv", "cells.csv", "meta.json")]
    tifffile.imwrite(written[0], truth.cell_labels, compression="zlib", photometric="minisblack",
                     metadata={"axes": "TYX"})
    for path, table in zip(written[1:4], (truth.particles, truth.events, truth.cells)):
        table.to_csv(path, index=False, float_format="%.4f", lineterminator="\n")
    written[4].write_text(json.dumps(truth.meta, indent=2, sort_keys=True) + "\n")
    return written


def load_truth(path: str | Path) -> Truth:
    """Read the ground truth of a simulated movie.

    Parameters
    ----------
    path : the movie (``NAME.ome.tif``) or its truth folder (``NAME.truth``).
    """
    path = Path(path)
    folder = path if path.is_dir() else truth_dir_for(path)
    if not (folder / "meta.json").is_file():
        raise InputError(f"{path}: no simulation ground truth found (expected {folder}/meta.json)")
    particles = pd.read_csv(folder / "particles.csv")
    particles["visible"] = particles["visible"].astype(bool)
    return Truth(
        cell_labels=tifffile.imread(folder / "cell_labels.tif"),
        particles=particles,
        events=pd.read_csv(folder / "events.csv"),
        cells=pd.read_csv(folder / "cells.csv"),
        meta=json.loads((folder / "meta.json").read_text()),
    )


def find_truth(movie_path: str | Path) -> Truth | None:
    """The ground truth next to a movie, if it is a simulated one; else None."""
    folder = truth_dir_for(movie_path)
    return load_truth(folder) if (folder / "meta.json").is_file() else None
