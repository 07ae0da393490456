"""Candidate spots: local maxima of the filtered image, and duplicates among fitted spots."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def local_maxima(filtered: np.ndarray, z: np.ndarray, radius_px: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Maxima of ``filtered`` over a square of half-side ``floor(radius_px)`` (at least 1) where ``z > threshold``.

    The square maximum filter is separable (two 1-D passes). On a plateau
    (flat tops, saturated spots, constant patches) every pixel is a maximum;
    only the first of each plateau in raster order is kept.
    """
    r = max(1, int(np.floor(radius_px)))
    is_max = (filtered == ndimage.maximum_filter(filtered, size=2 * r + 1, mode="nearest")) & (z > threshold)
    y, x = np.nonzero(is_max)
    if len(y) > 1:
        # plateaus: a maximum with an equal value among its 8 neighbours that is also a maximum
        flat = ndimage.uniform_filter(is_max.astype(np.float32), 3) * 9 > 1.5
        tied = flat[y, x]
        if tied.any():
            labels, _ = ndimage.label(is_max & flat, structure=np.ones((3, 3)))
            lab = labels[y, x]
            first = np.ones(len(y), bool)
            order = np.flatnonzero(lab > 0)
            _, first_idx = np.unique(lab[order], return_index=True)
            first[order] = False
            first[order[first_idx]] = True
            y, x = y[first], x[first]
    return y.astype(float), x.astype(float)


def not_duplicate(y: np.ndarray, x: np.ndarray, flux: np.ndarray, separation: float) -> np.ndarray:
    """False for the dimmer spot of every pair closer than ``separation`` px."""
    keep = np.ones(len(y), bool)
    if len(y) < 2 or separation <= 0:
        return keep
    pairs = cKDTree(np.column_stack([y, x])).query_pairs(separation, output_type="ndarray")
    for i, j in pairs[np.argsort(-np.maximum(flux[pairs[:, 0]], flux[pairs[:, 1]]))]:
        if keep[i] and keep[j]:
            keep[j if flux[i] >= flux[j] else i] = False
    return keep
