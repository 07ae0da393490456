"""Cellpose segmentation: the shipped model, offline weight checks, clear errors."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.eval.train import average_precision
from pipeline.sim.simulate import simulate_cell_images
from pipeline.stages.segment import SegmentParams, resolve_model, segment_frame

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "sample_data" / "models" / "uptrack_cells_cp3"


def test_shipped_model_segments_held_out_simulated_cells():
    """AP@0.5 (Cellpose's own metric) on images the model never saw, both stains."""
    images, masks = simulate_cell_images(6, (256, 256), seed=4242, stain="mixed")
    ap, per_image = average_precision(SHIPPED, images, masks, pixel_size_um=0.2)
    assert ap >= 0.9, per_image


def test_segment_frame_returns_sequential_uint32_labels():
    images, masks = simulate_cell_images(1, (256, 256), seed=77, stain="cytoplasm")
    labels = segment_frame(images[0], pixel_size_um=0.2,
                           params=SegmentParams(model=str(SHIPPED), diameter_um=12.0))
    assert labels.dtype == np.uint32 and labels.shape == (256, 256)
    ids = np.unique(labels[labels > 0])
    assert list(ids) == list(range(1, len(ids) + 1))
    assert abs(len(ids) - masks[0].max()) <= 1


def test_missing_builtin_weights_error_says_where_and_how(monkeypatch, tmp_path):
    from cellpose import models

    monkeypatch.setattr(models, "MODEL_DIR", tmp_path)  # an empty models folder
    with pytest.raises(InputError) as err:
        resolve_model("cyto3")
    message = str(err.value)
    assert str(tmp_path / "cyto3") in message
    assert "CELLPOSE_LOCAL_MODELS_PATH" in message and "login node" in message


def test_cached_builtin_weights_load_through_cellpose_without_download(monkeypatch, tmp_path):
    """A built-in name whose weights were pre-fetched loads from the models folder.

    The shipped weights stand in for cyto3's file: the path through Cellpose's own
    built-in model lookup is the one a pre-fetched cyto3 takes.
    """
    from cellpose import models

    (tmp_path / "cyto3").write_bytes(SHIPPED.read_bytes())
    monkeypatch.setattr(models, "MODEL_DIR", tmp_path)
    assert resolve_model("cyto3") == ("cyto3", True)
    images, _ = simulate_cell_images(1, (256, 256), seed=5, stain="cytoplasm")
    labels = segment_frame(images[0], pixel_size_um=0.2, params=SegmentParams(model="cyto3"))
    assert labels.max() >= 1


def test_unknown_model_names_the_field_and_fix():
    with pytest.raises(InputError, match="segment.model: 'no/such/weights'"):
        resolve_model("no/such/weights")


@pytest.mark.parametrize("pixel_size_um, radius_um", [(0.1, (5.0, 9.0)), (0.4, (6.0, 10.0)),
                                                      (0.2, (3.0, 4.5))])
def test_cell_diameter_is_measured_on_the_image(pixel_size_um, radius_um):
    """Other pixel sizes and cell sizes than the model was trained on."""
    from pipeline.stages.segment import estimate_diameter_um

    images, masks = simulate_cell_images(1, (256, 256), seed=3, pixel_size_um=pixel_size_um,
                                         cell_radius_um=radius_um)
    areas = np.bincount(masks[0].ravel())[1:]
    true_um = 2 * np.sqrt(np.median(areas[areas > 0]) / np.pi) * pixel_size_um
    found = estimate_diameter_um(images[0], pixel_size_um=pixel_size_um,
                                 params=SegmentParams(model=str(SHIPPED)))
    assert found == pytest.approx(true_um, rel=0.15)


def test_typical_diameter_is_not_the_debris():
    """A sparse field of large cells and more specks than cells (real stem cells, Fluo-C2DL-MSC):
    the typical diameter is the cells', where the plain median of the masks is the specks'."""
    from skimage.draw import disk

    from pipeline.stages.segment import typical_diameter_px

    labels = np.zeros((600, 600), np.uint32)
    label = 0
    for y, x in ((100, 100), (100, 400), (300, 250), (480, 120), (480, 450)):  # 5 cells, r 45 px
        label += 1
        labels[disk((y, x), 45)] = label
    for y, x in ((20, 250), (30, 560), (200, 250), (580, 300), (560, 20), (300, 560), (250, 20)):
        label += 1  # 7 specks, r 4 px
        labels[disk((y, x), 4)] = label
    areas = np.bincount(labels.ravel())[1:]
    assert 2 * np.sqrt(np.median(areas) / np.pi) < 10  # the plain median is a speck's
    assert typical_diameter_px(labels) == pytest.approx(90, rel=0.02)
    assert typical_diameter_px(np.zeros((8, 8), np.uint32)) is None


def test_cell_diameter_of_real_cells_is_measured():
    """Real stem cells (Fluo-C2DL-MSC 02 crops, never trained on): the measured diameter is
    within 35 % of the expert masks' typical diameter (the plain-median estimate of earlier
    versions found 0.47 of it on t000, and 7.8 px on the full-size middle annotated frame, t020, whose cells are ~100 px)."""
    from pipeline.eval.train import load_annotated
    from pipeline.stages.segment import estimate_diameter_um, typical_diameter_px

    real = ROOT / "sample_data" / "real" / "msc02"
    params = SegmentParams(model=str(ROOT / "sample_data" / "models" / "uptrack_real_cells_cp3"), gpu=False)
    for name, image, truth in load_annotated(real):
        found = estimate_diameter_um(image, pixel_size_um=1.0, params=params)
        assert found == pytest.approx(typical_diameter_px(truth), rel=0.35), name


def test_cellpose_from_two_threads_of_one_process():
    """Two movies of a batch measure their cell diameter at once in the driver process: in a fresh
    process torch's first CPU pass scripts modules and two threads doing it together fail ("Can't
    redefine method ... MkldnnBatchNorm", 2 of 3 tries without the lock). Run in a subprocess so
    that the pass really is the first."""
    import subprocess
    import sys

    script = f"""
import threading
import tifffile
from pipeline.stages.segment import SegmentParams, estimate_diameter_um
image = tifffile.imread({str(ROOT / "sample_data" / "demo.ome.tif")!r})[0, 0]
params = SegmentParams(model={str(SHIPPED)!r})
found, errors = [], []
def measure():
    try:
        found.append(estimate_diameter_um(image, pixel_size_um=0.2, params=params))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=measure) for _ in range(2)]
[t.start() for t in threads]
[t.join() for t in threads]
assert not errors, errors
assert len(found) == 2 and found[0] == found[1] and found[0] > 5, found
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_weights_of_another_cellpose_generation_give_a_clear_error(tmp_path):
    """A weights file whose tensors do not fit the installed Cellpose's network (what a Cellpose 4
    model is to Cellpose 3, and the other way round) is an InputError naming the file, the
    installed Cellpose and the fix, not a torch traceback."""
    import importlib.metadata

    import torch

    from pipeline.stages.segment import load_model

    weights = tmp_path / "cpsam_like"
    torch.save({"encoder.patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}, weights)
    with pytest.raises(InputError) as err:
        load_model(str(weights), False)
    message = str(err.value)
    assert str(weights) in message
    assert importlib.metadata.version("cellpose") in message and "pip install" in message


def test_xz_weights_unpack_once_into_the_cache(tmp_path, monkeypatch):
    """A model shipped as <name>.xz is named without .xz; it is unpacked once, atomically, into the cache."""
    import lzma

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    weights = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "mine.xz").write_bytes(lzma.compress(weights))
    path, builtin = resolve_model(str(tmp_path / "mine"))
    assert not builtin and Path(path).read_bytes() == weights
    assert Path(path).parent == tmp_path / "cache" / "uptrack" / "models"
    assert resolve_model(str(tmp_path / "mine.xz"))[0] == path  # the same file, not unpacked again
    (tmp_path / "bad.xz").write_bytes(b"not xz at all")
    with pytest.raises(InputError, match=r"bad\.xz: not a readable xz file"):
        resolve_model(str(tmp_path / "bad"))
