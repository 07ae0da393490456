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
        # plateaus (every pixel a maximum): keep one maximum per group of tied, touching maxima
        value = filtered[y, x]
        tied = np.zeros(len(y), bool)
        for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
            ny, nx = np.clip(y + dy, 0, filtered.shape[0] - 1), np.clip(x + dx, 0, filtered.shape[1] - 1)
            tied |= is_max[ny, nx] & (filtered[ny, nx] == value) & ((ny != y) | (nx != x))
        if tied.any():
            points = np.column_stack([y, x])
            pairs = cKDTree(points).query_pairs(1.5, output_type="ndarray")
            pairs = pairs[value[pairs[:, 0]] == value[pairs[:, 1]]]
            drop = np.zeros(len(y), bool)
            drop[np.max(pairs, axis=1)] = True  # the later one in raster order
            y, x = y[~drop], x[~drop]
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
