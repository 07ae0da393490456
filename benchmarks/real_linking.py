"""Particle linking on a real movie: do the long tracks a person sees stay in one piece?

Movie: MosaicSuite ParticleTracker tutorial (virus particles in endosomal transport,
Suomalainen et al. J Cell Biol 144:657, 1999), even frames only (72 frames 275×229, 8-bit),
0.16 µm/px assumed, 3 s per frame. Detections: uptrack's ``detect_frame`` with defaults and the
PSF measured once for the movie (as ``uptrack run`` does); cached in ``--cache``.

Reference: plain ``trackpy.link`` on the same detections, search range ``--reference-px``
(hand-checked: see RESULTS.md), memory 2. Reference tracks of ≥ 20 frames are "long tracks a
person sees". For uptrack's ``link_tracks`` + ``close_gaps`` (defaults) the script reports how many
pieces each long reference track is split into (median, and the median fraction of its points in
its main piece), the number of tracks and their median length.

Usage::

    PYTHONPATH=. python benchmarks/real_linking.py [--movie PATH] [--frames N] [--reference-px 5]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

MOVIE = Path("/work/data/mosaic_virus_endosomal_transport/virus_gray_even72_TYX.tif")
PIXEL_UM, FRAME_S = 0.16, 3.0
LONG_FRAMES = 20


def detections(movie: np.ndarray, pixel_size_um: float) -> pd.DataFrame:
    """uptrack's detections with defaults, PSF measured once (as the runner does), sorted by frame, y, x."""
    from pipeline.stages.detect import DetectParams, detect_frame, estimate_psf
    from pipeline.stages.detect.params import PSF_FRAMES

    params = DetectParams()
    picks = np.unique(np.linspace(0, len(movie) - 1, PSF_FRAMES).round().astype(int))
    psf = estimate_psf(movie[picks], pixel_size_um=pixel_size_um, params=params)
    params = params.model_copy(update={"psf_sigma_um": psf.sigma_um})
    table = pd.concat([detect_frame(movie[t], t, pixel_size_um=pixel_size_um, params=params)
                       for t in range(len(movie))], ignore_index=True)
    return table.sort_values(["frame", "y", "x"], kind="stable", ignore_index=True)


def reference_tracks(table: pd.DataFrame, search_px: float, memory: int = 2) -> np.ndarray:
    """Plain trackpy.link labels (row order of ``table``)."""
    import trackpy

    logging.getLogger("trackpy").setLevel(logging.WARNING)
    linked = trackpy.link(table[["frame", "y", "x"]], search_px, memory=memory)
    return linked["particle"].sort_index().to_numpy()


def fragmentation(reference: np.ndarray, labels: np.ndarray, long_frames: int = LONG_FRAMES) -> dict:
    """Pieces per long reference track and the fraction of its points in its main piece (medians)."""
    frame = pd.DataFrame({"ref": reference, "got": labels})
    size = frame.groupby("ref")["ref"].transform("size")
    long = frame[size >= long_frames]
    pieces = long.groupby("ref")["got"].nunique()
    main = long.groupby("ref")["got"].agg(lambda g: g.value_counts().iloc[0] / len(g))
    lengths = pd.Series(labels).value_counts()
    return {"long_reference": int(len(pieces)), "pieces_median": float(pieces.median()),
            "pieces_max": int(pieces.max()) if len(pieces) else 0,
            "le2_pieces": float((pieces <= 2).mean()) if len(pieces) else float("nan"),
            "main_fraction_median": float(main.median()), "main_fraction_mean": float(main.mean()),
            "tracks": int(len(lengths)), "median_length": float(lengths.median()),
            "long_tracks": int((lengths >= long_frames).sum())}


def uptrack_tracks(table: pd.DataFrame, params) -> np.ndarray:
    """link_tracks + close_gaps track ids (row order of ``table``: it is sorted as link_tracks sorts)."""
    from pipeline.stages.link import close_gaps, link_tracks

    scale = {"pixel_size_um": PIXEL_UM, "frame_interval_s": FRAME_S, "params": params}
    return close_gaps(link_tracks(table, **scale), **scale)["track_id"].to_numpy()


def main() -> None:
    from pipeline.stages.link import LinkParams

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--movie", type=Path, default=MOVIE)
    parser.add_argument("--frames", type=int, default=None, help="first N frames only")
    parser.add_argument("--reference-px", type=float, default=5.0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/uptrack_virus_detections.parquet"))
    args = parser.parse_args()
    import tifffile

    if args.cache.exists():
        table = pd.read_parquet(args.cache)
    else:
        table = detections(tifffile.imread(args.movie), PIXEL_UM)
        table.to_parquet(args.cache)
    table = table.sort_values(["frame", "y", "x"], kind="stable", ignore_index=True)  # as link_tracks sorts
    if args.frames:
        table = table[table["frame"] < args.frames].reset_index(drop=True)
    print(f"{len(table)} detections, {table['frame'].nunique()} frames")
    reference = reference_tracks(table, args.reference_px)
    print("reference itself:", fragmentation(reference, reference))
    keys = ["pieces_median", "main_fraction_median", "le2_pieces", "tracks", "median_length", "long_tracks"]
    print("| link params | " + " | ".join(keys) + " |")
    for name, params in [("defaults", LinkParams()),
                         ("defaults, mass_sigmas unset", LinkParams(mass_sigmas=None)),
                         ("search_range_um 0.8", LinkParams(search_range_um=0.8)),
                         ("search_range_um 0.8, mass_sigmas unset", LinkParams(search_range_um=0.8, mass_sigmas=None))]:
        scores = fragmentation(reference, uptrack_tracks(table, params))
        print(f"| {name} | " + " | ".join(f"{scores[k]:.3g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
