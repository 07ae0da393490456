"""Plausibility (QC) warnings provoked with real-looking input: real movie crops and expert masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy.ndimage import binary_dilation

from pipeline.stages.plausibility import (
    background_warnings,
    blank_channel,
    cell_areas,
    cell_warnings,
    duplicated_frames,
)

REAL = Path(__file__).resolve().parents[1] / "sample_data" / "real"
VIRUS = REAL / "virus" / "virus_even_t00-39.tif"


def virus() -> np.ndarray:
    return tifffile.imread(VIRUS)


def test_repeated_frames_are_reported_with_the_real_interval():
    movie = virus()[:10]
    assert duplicated_frames(movie, 3.0) == []  # the shipped crop keeps one of each pair
    doubled = np.repeat(movie, 2, axis=0)  # as the original 144-frame movie: each frame twice
    (message,) = duplicated_frames(list(doubled), 1.5)
    assert message.startswith("10 of 19 consecutive frame pairs are bit-identical")
    assert "~3 s" in message


def test_clipped_background_and_flat_noise_are_reported():
    frame = virus()[0]  # 8-bit, about half of the pixels exactly 0
    messages = background_warnings(frame, 0)
    assert len(messages) == 1 and "are exactly 0" in messages[0]
    binarised = np.where(frame > 40, 255, 0).astype(np.uint8)  # a thresholded export: no noise left
    assert any("noise estimate is zero" in m for m in background_warnings(binarised, 0))
    rng = np.random.default_rng(0)
    camera = rng.poisson(100 + frame.astype(float)).astype(np.uint16)  # raw counts with an offset
    assert background_warnings(camera, 0) == []


def test_blank_cell_channel_is_reported_and_real_cells_are_not():
    cells = tifffile.imread(REAL / "msc02" / "t000.tif")
    assert blank_channel(cells, 0) == []
    rng = np.random.default_rng(1)
    dark = rng.poisson(100, size=cells.shape).astype(np.uint16)  # camera dark frame: offset + noise
    (message,) = blank_channel(dark, 0)
    assert "looks blank" in message


def test_phantom_cells_and_few_frames_are_reported():
    assert "no cells found" in cell_warnings(pd.DataFrame(columns=["frame", "cell_id", "area_px"]), 20)[0]
    rng = np.random.default_rng(2)
    # a blank channel: a few "cells" on a few frames, each a new id
    phantom = pd.DataFrame({"frame": [1, 1, 4, 9, 9, 9, 15], "cell_id": np.arange(1, 8),
                            "area_px": rng.integers(200, 900, 7)})
    messages = cell_warnings(phantom, 20)
    assert any("only 4 of 20 frames" in m for m in messages)
    assert any("7 of 7 cell ids last fewer than" in m for m in messages)


def test_area_jump_of_a_real_mask_is_reported():
    masks = tifffile.imread(REAL / "msc02" / "t000_masks.tif")
    grown = masks.copy()
    cell = int(np.bincount(masks.ravel())[1:].argmax()) + 1
    region = masks == cell
    while (grown == cell).sum() < 1.45 * region.sum():  # the cell's mask grows by ~45 %
        grown[binary_dilation(grown == cell, iterations=2) & (grown == 0)] = cell
    table = pd.concat([cell_areas(masks, 0), cell_areas(masks, 1), cell_areas(grown, 2), cell_areas(grown, 3)])
    (message,) = cell_warnings(table, 4)
    assert message.startswith("1 cell masks change area by more than 40 %")
    assert f"cell {cell}, frames 1-2" in message
    steady = pd.concat([cell_areas(masks, t) for t in range(4)])
    assert cell_warnings(steady, 4) == []


def test_runner_records_warnings_in_the_store(tiny_config, monkeypatch):
    from pipeline.io import store
    from pipeline.run import runner

    job = runner.Run(tiny_config)
    job.open_store()
    data = job.movie.data
    doubled = dataclasses.replace(job.movie, data=data[np.repeat(np.arange(data.shape[0]), 2)])
    monkeypatch.setattr(runner, "_open_cached", lambda spec: doubled)  # every frame saved twice
    job.movie, job.n_frames = doubled, 2 * job.n_frames
    job.detect(None)
    warnings = store.read_attrs(job.path)["qc_warnings"]
    assert [w["stage"] for w in warnings] == ["detect"]
    assert "12 of 23 consecutive frame pairs are bit-identical" in warnings[0]["message"]


def test_blank_and_saturated_frames_are_named():
    """A damaged page read as zeros and an over-exposed frame, in a real movie."""
    movie = virus()[:12].copy()
    movie[4] = 0  # as tifffile gives for a page it cannot find
    movie[7] = np.where(movie[7] > 30, 255, movie[7])  # over-exposed: every bright pixel clipped
    messages = duplicated_frames(list(movie), 3.0)
    assert any(m.startswith("1 of 12 frames are blank") and "frames 4 (0-based)" in m for m in messages)
    assert any("saturated: frames 7 (0-based)" in m for m in messages)
    assert duplicated_frames(list(virus()[:12]), 3.0) == []  # the intact movie: nothing
