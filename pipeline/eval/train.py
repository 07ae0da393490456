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
) -> Path:
    """Train a Cellpose 3 model from scratch and save it in half precision.

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

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    import torch
    from cellpose import models, train

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
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

    Returns
    -------
    (mean_ap, per_image_ap)
        AP at ``threshold`` averaged over images, and per image.
    """
    from cellpose import metrics

    from pipeline.stages.segment import SegmentParams, segment_frame

    params = SegmentParams(model=str(model), gpu="auto")
    predicted = [segment_frame(im, pixel_size_um=pixel_size_um, params=params) for im in images]
    ap, _, _, _ = metrics.average_precision(list(masks.astype(np.int32)),
                                            [p.astype(np.int32) for p in predicted],
                                            threshold=[threshold])
    per_image = ap[:, 0]
    return float(per_image.mean()), per_image
