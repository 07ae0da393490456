"""User training data for ``uptrack train-cellpose``: layouts, partial annotations, errors,
and the shipped model on real cells (Cell Tracking Challenge Fluo-C2DL-MSC sequence 02 crops,
never trained on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.errors import InputError
from pipeline.eval.train import load_annotated, partial_annotations

REAL = Path(__file__).resolve().parents[1] / "sample_data" / "real" / "msc02"


def _frame(n_cells: int, shape=(96, 96), seed=0):
    """An image with n_cells bright discs and its full label image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.uint16)
    for k in range(n_cells):
        cy, cx = 12 + 24 * (k // 4), 12 + 24 * (k % 4)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 81] = k + 1
    image = (100 + 1000 * (mask > 0) + rng.normal(0, 5, shape)).astype(np.uint16)
    return image, mask


def _ctc(tmp_path: Path, masks_kept: dict[int, int]) -> Path:
    """A CTC layout: frame t -> number of labelled cells (all frames show 12 cells)."""
    seq, seg = tmp_path / "01", tmp_path / "01_GT" / "SEG"
    seq.mkdir(), seg.mkdir(parents=True)
    for t, kept in masks_kept.items():
        image, mask = _frame(12, seed=t)
        mask[mask > kept] = 0
        tifffile.imwrite(seq / f"t{t:03d}.tif", image)
        tifffile.imwrite(seg / f"man_seg{t:03d}.tif", mask)
    return seq


def test_ctc_layout_reads_pairs_and_flags_partial_frames(tmp_path):
    seq = _ctc(tmp_path, {0: 12, 1: 12, 2: 2})
    items = load_annotated(seq)
    assert [Path(n).name for n, _, _ in items] == ["man_seg000.tif", "man_seg001.tif", "man_seg002.tif"]
    assert all(im.shape == m.shape for _, im, m in items)
    flagged = partial_annotations(items)
    assert [Path(n).name for n in flagged] == ["man_seg002.tif"]
    # the parent folder reads the same sequences
    assert len(load_annotated(tmp_path)) == 3


def test_partial_by_area_when_every_frame_is_partial(tmp_path):
    """One frame only, 2 of 12 cells labelled: the object count cannot tell, the area does."""
    image, mask = _frame(12)
    mask[mask > 2] = 0
    flagged = partial_annotations([("only", image.astype(np.float32), mask.astype(np.int32))])
    assert list(flagged) == ["only"]
    image, mask = _frame(12)
    assert partial_annotations([("full", image.astype(np.float32), mask.astype(np.int32))]) == {}


def test_cellpose_masks_layout_and_errors(tmp_path):
    image, mask = _frame(4)
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_masks.tif", mask)
    (name, im, m), = load_annotated(tmp_path)
    assert name.endswith("a_masks.tif") and np.array_equal(m, mask)

    tifffile.imwrite(tmp_path / "b.tif", image)
    tifffile.imwrite(tmp_path / "b_masks.tif", mask[:50])
    with pytest.raises(InputError, match="b_masks.tif.*shape"):
        load_annotated(tmp_path)
    tifffile.imwrite(tmp_path / "b_masks.tif", np.zeros_like(mask))
    with pytest.raises(InputError, match="b_masks.tif.*empty"):
        load_annotated(tmp_path)
    (tmp_path / "b.tif").unlink()
    with pytest.raises(InputError, match="b.tif is missing"):
        load_annotated(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_annotated(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no annotated images"):
        load_annotated(empty)


def test_cli_warns_on_partial_frames_and_scores_held_out_masks(tmp_path, capsys):
    """`uptrack train-cellpose --validate`: names the partial frame, prints AP per frame."""
    import argparse

    from pipeline.cli import train_cellpose

    seq = _ctc(tmp_path, {0: 12, 1: 2})
    parser = argparse.ArgumentParser()
    train_cellpose.add_arguments(parser)
    shipped = Path(__file__).resolve().parents[1] / "sample_data" / "models" / "uptrack_cells_cp3"
    out = tmp_path / "model"
    out.write_bytes(shipped.read_bytes())
    args = parser.parse_args([str(out), "--score-only", "--validate", str(seq), "--data", str(seq)])
    assert train_cellpose.main(args) == 0
    printed = capsys.readouterr().out
    assert "man_seg001.tif looks partially annotated" in printed
    assert printed.count("AP@0.5 ") == 2 + 1  # two frames and the mean



#: AP@0.5 of the real-cells model on the three 2×2-binned MSC 02 crops: measured 0.48 (3 frames:
#: 0.67, 0.11, 0.67) when it was shipped; the simulated-cells model scores 0.39 there.
REAL_CROPS_AP50_BAR = 0.40


def test_real_cells_model_segments_real_msc02_crops():
    """Real stem cells never trained on (Fluo-C2DL-MSC 02): AP@0.5 at the cell diameter measured on
    a crop (as `uptrack run` does) reaches the bar."""
    from pipeline.eval.train import average_precision
    from pipeline.stages.segment import SegmentParams, estimate_diameter_um

    items = load_annotated(REAL)
    model = str(REAL.parents[1] / "models" / "uptrack_real_cells_cp3")
    diameter = estimate_diameter_um(items[1][1], pixel_size_um=1.0,
                                    params=SegmentParams(model=model, gpu=False))
    ap, per_image = average_precision(model, [it[1] for it in items], [it[2] for it in items],
                                      pixel_size_um=1.0, diameter_um=diameter)
    assert ap >= REAL_CROPS_AP50_BAR, per_image
