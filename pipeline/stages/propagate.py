"""Carry cell masks from a segmented keyframe to the next frames, and say when that fails.

Cells move little between frames taken seconds apart, so Cellpose need not run on every
frame (``segment.keyframe_interval``). Between keyframes each frame's masks come from the
previous frame's (:func:`propagate_labels`): each cell's core (its mask shrunk by
``band_px``) and the background farther than ``band_px`` from every cell seed a watershed of
the smoothed cell channel's gradient, so each boundary settles on the strongest edge within
``band_px`` of where it was (cytoplasm and membrane stains alike).

The check (:func:`propagation_agrees`) compares, cell by cell, the propagated masks with the
previous frame's: a frame whose cells change area by more than ``max_area_change`` (the
watershed leaked into a neighbour or lost a cell), or whose cells lose their seeds, is
segmented again (it becomes a keyframe).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import ndimage
from skimage.segmentation import watershed

from pipeline.params import Params


class PropagateParams(Params):
    """How masks are carried between keyframes."""

    band_px: int = Field(
        3, ge=1, description="Width of the band each side of a cell boundary where it may move in one frame, px: "
                             "the cell's core (its mask shrunk by this) and the background beyond it seed the "
                             "watershed.")
    smooth_px: float = Field(1.0, ge=0, description="Gaussian smoothing before the gradient, px.")
    max_area_change: float = Field(
        0.15, gt=0, description="Largest relative change of a cell's area between frames that is accepted "
                                "without segmenting the frame again.")
    min_edge_ratio: float = Field(
        0.8, gt=0, description="Smallest ratio of a cell's boundary contrast (image gradient along it) to the "
                               "previous frame's that is accepted without segmenting the frame again.")


def membrane_stain(labels: np.ndarray, image: np.ndarray) -> bool:
    """Whether the cell stain outlines the cells (brighter on their boundaries than inside them)."""
    if not labels.any():
        return False
    edge = (ndimage.grey_erosion(labels, size=3) != labels) & (labels > 0)
    core = _cores(labels, 3) > 0
    image = np.asarray(image, float)
    background = float(np.median(image[labels == 0])) if (labels == 0).any() else 0.0
    return bool(np.mean(image[edge]) - background > 1.2 * (np.mean(image[core]) - background))


def _landscape(image: np.ndarray, membrane: bool, smooth_px: float) -> np.ndarray:
    """What boundaries follow: the stain's ridges (membrane stain) or its strongest change (cytoplasm)."""
    smooth = np.asarray(image, float)
    if smooth_px:
        smooth = ndimage.gaussian_filter(smooth, smooth_px)
    return smooth if membrane else ndimage.gaussian_gradient_magnitude(smooth, 1.0)


def propagate_labels(previous: np.ndarray, image: np.ndarray, params: PropagateParams | None = None, *,
                     membrane: bool = False) -> np.ndarray:
    """The masks of ``image`` carried from ``previous`` (labels of the frame before).

    Seeds: each cell's core (its mask shrunk by ``band_px``) and the background farther
    than ``band_px`` from every cell. A watershed of the smoothed image's gradient grows
    them, so each boundary settles on the strongest edge within ``band_px`` of where it was.

    Parameters
    ----------
    previous : (Y, X) int array
        Cell labels of the previous frame (0 background).
    image : (Y, X) array
        Cell channel of this frame.
    params : PropagateParams, optional
    membrane : bool
        The stain outlines the cells (:func:`membrane_stain`): boundaries follow its ridges.

    Returns
    -------
    (Y, X) int32 array
        Labels with the same ids as ``previous``.
    """
    params = params or PropagateParams()
    previous = np.asarray(previous)
    if not previous.any():
        return np.zeros(previous.shape, np.int32)
    seeds = _cores(previous, params.band_px)
    background = ndimage.distance_transform_edt(previous == 0) > params.band_px
    bg_label = int(previous.max()) + 1
    seeds[background] = bg_label
    labels = watershed(_landscape(image, membrane, params.smooth_px), markers=seeds)
    labels[labels == bg_label] = 0
    return labels.astype(np.int32)


def _cores(labels: np.ndarray, band_px: int) -> np.ndarray:
    """Each mask shrunk by ``band_px`` (a mask too small to shrink keeps its innermost pixel)."""
    own = ndimage.grey_erosion(labels, size=3) == labels  # a pixel whose 3×3 neighbourhood is its own cell
    inside = ndimage.distance_transform_edt(own & (labels > 0))
    cores = np.where(inside > band_px, labels, 0).astype(np.int32)
    ids = np.unique(labels[labels > 0])
    missing = np.setdiff1d(ids, np.unique(cores))
    if len(missing):
        centres = ndimage.maximum_position(inside, labels, missing)
        for cell, (y, x) in zip(missing, centres, strict=True):
            cores[y, x] = cell
    return cores


def boundary_contrast(labels: np.ndarray, image: np.ndarray, smooth_px: float = 1.0, *,
                      membrane: bool = False) -> np.ndarray:
    """How strongly each cell's boundary sits on the stain's edge (ids 1..max): the mean, along the boundary,
    of the smoothed image's gradient magnitude (cytoplasm stain) or of the smoothed image (membrane stain)."""
    n = int(labels.max())
    if n == 0:
        return np.zeros(0)
    gradient = _landscape(image, membrane, smooth_px)
    edge = (ndimage.grey_erosion(labels, size=3) != labels) & (labels > 0)
    ids = np.arange(1, n + 1)
    total = ndimage.sum_labels(gradient, np.where(edge, labels, 0), ids)
    count = ndimage.sum_labels(edge, np.where(edge, labels, 0), ids)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def propagation_agrees(propagated: np.ndarray, image: np.ndarray, previous: np.ndarray, previous_image: np.ndarray,
                       params: PropagateParams | None = None, *, membrane: bool = False) -> bool:
    """Whether carried masks can stand without segmenting the frame again.

    Every cell must be kept, change its area by at most ``max_area_change``, and keep its
    boundary on an edge: the image gradient along its new boundary at least
    ``min_edge_ratio`` of the gradient along its previous boundary in the previous frame
    (a cell that moved farther than ``band_px`` leaves its carried boundary off the edge).

    Parameters
    ----------
    propagated, image : (Y, X) arrays
        This frame's carried labels and its cell channel.
    previous, previous_image : (Y, X) arrays
        The previous frame's labels and cell channel.
    params : PropagateParams, optional
    membrane : bool
        As in :func:`propagate_labels`.

    Returns
    -------
    bool
    """
    params = params or PropagateParams()
    ids = np.unique(previous[previous > 0])
    if len(ids) == 0:
        return not propagated.any()
    before = ndimage.sum_labels(np.ones(previous.shape), previous, ids)
    after = ndimage.sum_labels(np.ones(propagated.shape), propagated, ids)
    change = np.abs(after - before) / np.maximum(before, 1.0)
    if not (np.all(after > 0) and np.all(change <= params.max_area_change)):
        return False
    old = boundary_contrast(previous, previous_image, params.smooth_px, membrane=membrane)[ids - 1]
    new = boundary_contrast(propagated, image, params.smooth_px, membrane=membrane)[ids - 1]
    return bool(np.all(new >= params.min_edge_ratio * old))
