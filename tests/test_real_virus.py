"""Detection and linking on a real movie: the shipped crop of the MosaicSuite virus movie.

No ground truth exists for it, so the tests assert what a person can check: no crash, a number of
detections near the hand count, and long tracks (as a plain, hand-checked trackpy run makes them)
kept in one piece by uptrack's linking with the learned brightness term.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import trackpy

from pipeline.stages.detect import DetectParams, detect_frame, estimate_psf
from pipeline.stages.link import LinkParams, _log_mass_spread, close_gaps, link_tracks

CROP = Path(__file__).resolve().parents[1] / "sample_data" / "real" / "virus" / "virus_even_t00-39.tif"
PIXEL_UM, FRAME_S = 0.16, 3.0
#: Frame 0 by eye on the overlay (benchmarks/virus_frame0_detections.png): ~75 particles; trackpy 44-71.
HAND_COUNT_FRAME0 = 75
#: Reference linking (plain trackpy): search range checked by eye, px (~0.8 µm per 3 s frame).
REFERENCE_PX = 5.0


@pytest.fixture(scope="module")
def detections():
    movie = tifffile.imread(CROP)
    params = DetectParams()
    psf = estimate_psf(movie[[0, 13, 26, 39]], pixel_size_um=PIXEL_UM, params=params)
    assert not psf.at_bound
    params = params.model_copy(update={"psf_sigma_um": psf.sigma_um})
    table = pd.concat([detect_frame(movie[t], t, pixel_size_um=PIXEL_UM, params=params) for t in range(len(movie))],
                      ignore_index=True)
    return table.sort_values(["frame", "y", "x"], kind="stable", ignore_index=True)


def test_detections_near_the_hand_count(detections):
    per_frame = detections.groupby("frame").size()
    assert len(per_frame) == 40
    assert 0.8 * HAND_COUNT_FRAME0 <= per_frame.loc[0] <= 1.6 * HAND_COUNT_FRAME0
    assert per_frame.between(0.6 * HAND_COUNT_FRAME0, 2.0 * HAND_COUNT_FRAME0).all()


@pytest.mark.parametrize("search_range_um", [None, REFERENCE_PX * PIXEL_UM], ids=["defaults", "hand-set range"])
def test_long_tracks_stay_in_one_piece(detections, search_range_um):
    """With the defaults too: the brightness term, weighted for the heavy tails of real brightness
    changes, no longer breaks them (defaults on the 72-frame movie: 0.73 of the long tracks in
    <= 2 pieces before, 0.93 after)."""
    logging.getLogger("trackpy").setLevel(logging.WARNING)
    reference = trackpy.link(detections[["frame", "y", "x"]], REFERENCE_PX, memory=2)["particle"].sort_index()
    params = LinkParams(search_range_um=search_range_um)
    assert _log_mass_spread(detections, reference.to_numpy()) is not None  # the brightness term is used
    scale = {"pixel_size_um": PIXEL_UM, "frame_interval_s": FRAME_S, "params": params}
    tracks = close_gaps(link_tracks(detections, **scale), **scale)
    both = pd.DataFrame({"ref": reference.to_numpy(), "got": tracks["track_id"].to_numpy()})
    long = both[both.groupby("ref")["ref"].transform("size") >= 20]
    pieces = long.groupby("ref")["got"].nunique()
    main = long.groupby("ref")["got"].agg(lambda g: g.value_counts().iloc[0] / len(g))
    assert len(pieces) >= 20
    assert (pieces <= 2).mean() >= 0.8
    assert np.median(main) >= 0.8
