"""Train and score a Cellpose model on simulated cells, with Cellpose's own API.

Pretrained Cellpose weights (cyto3, cpsam) cannot be downloaded everywhere (HPC
compute nodes, closed networks). uptrack therefore ships a small model trained on
simulated cell images (both cytoplasmic and membrane stains, varied size, texture and
SNR) with :func:`cellpose.train.train_seg`, saved in half precision. It loads through
the same code path as any custom Cellpose model (:func:`pipeline.stages.segment.load_model`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def train_model(
    images: np.ndarray,
    masks: np.ndarray,
    out_path: Path,
    *,
    n_epochs: int = 300,
    learning_rate: float = 0.005,
    batch_size: int = 8,
    crop_px: int = 64,
    diam_mean_px: float = 17.0,
    save_every: int = 25,
    from_model: str | None = None,
    save_each: bool = False,
) -> Path:
    """Train a Cellpose 3 model (from scratch or from weights) and save it in half precision.

    Parameters
    ----------
    images
        Training images (n, Y, X), one stain channel.
    masks
        Their label images (n, Y, X), 0 = background.
    out_path
        Weights file to write (fp16 state dict, loadable by ``CellposeModel``).
    n_epochs
        Passes over the training set.
    learning_rate
        AdamW learning rate (Cellpose's default schedule: warm-up, then halvings).
    batch_size
        Crops per optimisation step.
    crop_px
        Side of the random training crops, px after rescaling cells to ``diam_mean_px``
        (a multiple of 16). Small crops keep CPU training affordable.
    diam_mean_px
        Cell diameter the network works at, px; images are rescaled to it. 17 px (as
        Cellpose's nuclei model) keeps cells whole in small crops and makes CPU
        training and inference several times cheaper than Cellpose's usual 30 px.
    save_every
        Write a full-precision checkpoint next to ``out_path`` every this many epochs.
    from_model
        Weights path or built-in name to fine-tune (None: train from scratch). Its own
        ``diam_mean`` is kept and ``diam_mean_px`` is ignored.
    save_each
        Keep every checkpoint (``checkpoints/NAME_epoch_N``) instead of overwriting one, to
        score the model against training time.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    import torch
    from cellpose import models, train

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if from_model:
        from pipeline.stages.segment import resolve_model

        # a fresh model, not segment.load_model's cached one: training changes its weights
        model = models.CellposeModel(gpu=torch.cuda.is_available(),
                                     pretrained_model=resolve_model(str(from_model))[0])
    else:
        model = models.CellposeModel(gpu=torch.cuda.is_available(), pretrained_model=False,
                                     diam_mean=diam_mean_px)
    checkpoints = out_path.parent / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    checkpoint, train_losses, _ = train.train_seg(
        model.net,
        train_data=list(images),
        train_labels=list(masks),
        channels=[0, 0],
        n_epochs=n_epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        bsize=crop_px,
        min_train_masks=1,
        save_path=str(checkpoints),
        save_every=save_every,
        save_each=save_each,
        model_name=out_path.stem,
    )
    log.info("training loss: first epoch %.3f, last epoch %.3f", train_losses[0], train_losses[-1])
    save_half_precision(Path(checkpoint), out_path)
    return out_path


def save_half_precision(checkpoint: Path, out_path: Path) -> None:
    """Rewrite a Cellpose weights file with float tensors in fp16 (half the size)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    # diam_mean / diam_labels stay exact: they set the rescaling at inference.
    for key in ("diam_mean", "diam_labels"):
        if key in state:
            half[key] = state[key]
    torch.save(half, out_path)


def average_precision(
    model: str,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    pixel_size_um: float,
    threshold: float = 0.5,
    diameter_um: float | None = None,
) -> tuple[float, np.ndarray]:
    """Score a model with Cellpose's own ``metrics.average_precision``.

    Parameters
    ----------
    model
        Weights path or built-in name, loaded with :func:`pipeline.stages.segment.load_model`.
    images, masks
        Held-out images (n, Y, X) and their true labels.
    pixel_size_um
        Pixel size, µm.
    threshold
        IoU threshold for a match.
    diameter_um
        Cell diameter, µm; None: the model's own (its ``diam_labels``).

    Returns
    -------
    (mean_ap, per_image_ap)
        AP at ``threshold`` averaged over images, and per image.
    """
    from cellpose import metrics

    from pipeline.stages.segment import SegmentParams, segment_frame

    params = SegmentParams(model=str(model), gpu="auto", diameter_um=diameter_um)
    predicted = [segment_frame(im, pixel_size_um=pixel_size_um, params=params) for im in images]
    ap, _, _, _ = metrics.average_precision([np.asarray(m, np.int32) for m in masks],
                                            [p.astype(np.int32) for p in predicted],
                                            threshold=[threshold])
    per_image = ap[:, 0]
    return float(per_image.mean()), per_image


# --- user data: loaders, partial-annotation check, fine-tuning -------------------------------


def _read_tif(path: Path) -> np.ndarray:
    import tifffile

    from pipeline.errors import InputError

    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    arr = np.asarray(tifffile.imread(path))
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputError(f"{path}: expected one 2-D plane, got shape {arr.shape}; "
                         "give single-channel 2-D images")
    return arr


def load_annotated(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Read image/mask pairs in the Cell Tracking Challenge or Cellpose layout.

    Layouts
    -------
    * Cell Tracking Challenge: ``folder`` is a sequence ``NN`` (frames ``tNNN.tif``) next to
      ``NN_GT/SEG/man_segNNN.tif``, or the parent of such sequences (all are read).
    * Cellpose: ``folder`` holds ``name.tif`` with ``name_masks.tif``.

    Returns
    -------
    list of (name, image, mask)
        Name is the mask file path (used in warnings).

    Raises
    ------
    InputError
        Missing folder, no pairs found, a mask without its image, mismatched shapes or an
        empty mask.
    """
    from pipeline.errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found (give a Cell Tracking Challenge sequence "
                         "folder NN/ with NN_GT/SEG/, or a folder of img.tif + img_masks.tif)")
    pairs: list[tuple[Path, Path]] = []
    seqs = [folder] if (folder.parent / f"{folder.name}_GT" / "SEG").is_dir() else sorted(
        p for p in folder.iterdir() if p.is_dir() and (folder / f"{p.name}_GT" / "SEG").is_dir())
    for seq in seqs:
        for m in sorted((seq.parent / f"{seq.name}_GT" / "SEG").glob("man_seg*.tif")):
            pairs.append((seq / f"t{m.stem[len('man_seg'):]}.tif", m))
    for m in sorted(folder.glob("*_masks.tif*")):
        stem = m.name.split("_masks")[0]
        pairs.append((folder / f"{stem}.tif", m))
    if not pairs:
        raise InputError(f"{folder}: no annotated images found (expected NN/tNNN.tif with "
                         "NN_GT/SEG/man_segNNN.tif, or img.tif with img_masks.tif)")
    out = []
    for img_path, mask_path in pairs:
        if not img_path.is_file():
            raise InputError(f"{mask_path}: its image {img_path} is missing")
        image, mask = _read_tif(img_path), _read_tif(mask_path)
        if image.shape != mask.shape:
            raise InputError(f"{mask_path}: mask shape {mask.shape} differs from image "
                             f"{img_path} shape {image.shape}")
        if not mask.any():
            raise InputError(f"{mask_path}: mask is empty (no labelled cell); remove it or label it")
        out.append((str(mask_path), image.astype(np.float32), mask.astype(np.int32)))
    return out


def partial_annotations(items: list[tuple[str, np.ndarray, np.ndarray]],
                        *, min_fraction: float = 0.5) -> dict[str, str]:
    """Flag frames whose annotation looks partial.

    A frame is flagged when its labelled area covers less than ``min_fraction`` of the
    foreground the image shows (Otsu threshold of the smoothed image), or it has fewer than
    ``min_fraction`` × the largest object count of frames with the same image shape
    (frames of one sequence).

    Returns
    -------
    dict
        Name -> reason, for flagged frames only.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    counts = {name: len(np.unique(m[m > 0])) for name, _, m in items}
    by_shape: dict[tuple, int] = {}
    for name, im, _ in items:
        by_shape[im.shape] = max(by_shape.get(im.shape, 0), counts[name])
    flagged = {}
    for name, im, m in items:
        smooth = ndimage.gaussian_filter(im, 2.0)
        fg = smooth > threshold_otsu(smooth)
        covered = float((m > 0).sum()) / max(float(fg.sum()), 1.0)
        most = by_shape[im.shape]
        if counts[name] < min_fraction * most:
            flagged[name] = f"{counts[name]} cells labelled where other frames have up to {most}"
        elif covered < min_fraction:
            flagged[name] = f"labels cover {covered:.0%} of the foreground the image shows"
    return flagged
