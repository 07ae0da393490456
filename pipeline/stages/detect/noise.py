"""Local background and noise maps of the matched-filtered image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.stages.detect.params import HEAVY_TAIL_TOLERANCE, MIN_TILE_NOISE_FRACTION

#: Upper quantile of a tile's values and its Gaussian z, for the tail estimate of the spread.
TAIL_QUANTILE = 0.95
TAIL_Z = 1.645


def local_background(smooth: np.ndarray, size_px: int) -> np.ndarray:
    """Grey opening of the PSF-smoothed image with a ``size_px`` square, box-smoothed but never below the opening.

    The box smooths the opening's blocks; the maximum keeps its steps at cell
    edges, where the smoothed opening alone would sit below the bright side and
    raise a band of false spots. Both filters are separable.
    """
    opened = ndimage.grey_opening(smooth, size=(size_px, size_px))
    return np.maximum(ndimage.uniform_filter(opened, size_px), opened)


def quantisation_step(image: np.ndarray) -> float:
    """Smallest step between distinct pixel values of a sample of the image (0 for non-quantised data).

    8-bit and rescaled movies hold only a few levels (e.g. multiples of 2 or
    4); the step bounds the noise from below: a pixel is known to ± step / 2.
    """
    sample = image.ravel()[:: max(1, image.size // 20_000)]
    values = np.unique(sample)
    if len(values) < 2 or len(values) > 4096:
        return 0.0
    return float(np.min(np.diff(values)))


def tile_maps(values: np.ndarray, exclude: np.ndarray, tile: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-based standard deviation of ``values`` per tile (``exclude`` left out), bilinear between tiles.

    ``values`` and ``exclude`` may be a sample of the full image, every
    ``stride``-th pixel along each axis (the maps are returned at full size,
    ``stride`` times the sample's shape); ``tile`` is in sample pixels.

    A tile with under a quarter of its pixels left, or with no spread, takes the
    values of the nearest good tile; the spread is never below
    ``MIN_TILE_NOISE_FRACTION`` of the median spread over tiles (tiles of
    clipped pixels, e.g. exact zeros of an 8-bit camera, have none). Where a
    tile's MAD is zero but its values are not all equal (more than half the
    pixels tied), the standard deviation about the median is used.
    """
    shape = values.shape
    counts = [max(1, round(n / tile)) for n in shape]
    sides = [-(-n // c) for n, c in zip(shape, counts)]
    counts = [-(-n // s) for n, s in zip(shape, sides)]
    padded = np.full((counts[0] * sides[0], counts[1] * sides[1]), np.nan)
    padded[:shape[0], :shape[1]] = np.where(exclude, np.nan, values)
    blocks = padded.reshape(counts[0], sides[0], counts[1], sides[1]).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(counts[0], counts[1], -1)
    real = np.zeros(padded.shape, bool)
    real[:shape[0], :shape[1]] = True
    area = real.reshape(counts[0], sides[0], counts[1], sides[1]).sum(axis=(1, 3))
    n_ok = np.isfinite(blocks).sum(axis=2)
    enough = n_ok >= 0.25 * area
    level = np.full(counts, np.nan)
    spread = np.full(counts, np.nan)
    if enough.any():
        ordered = np.sort(blocks[enough], axis=1)  # NaN (left out) sort last
        count = n_ok[enough]
        rows = np.arange(len(ordered))
        med = 0.5 * (ordered[rows, (count - 1) // 2] + ordered[rows, count // 2])
        dev = np.abs(ordered - med[:, None])
        mad = 1.4826 * _row_medians(dev, count)
        rms = np.sqrt(np.nanmean(dev**2, axis=1))
        tail = (ordered[rows, np.floor(TAIL_QUANTILE * (count - 1)).astype(int)] - med) / TAIL_Z
        level[enough] = med
        spread[enough] = np.maximum(np.where(mad > 0, mad, rms), tail / HEAVY_TAIL_TOLERANCE)
    keep = np.isfinite(spread) & (spread > 0)
    if not keep.any():  # nothing but spots, or a constant frame: fall back to the whole frame
        v = values.ravel()
        level[:] = np.median(v)
        dev = np.abs(v - level.flat[0])
        mad = 1.4826 * np.median(dev)
        spread[:] = mad if mad > 0 else np.sqrt(np.mean(dev**2))
    else:
        fill_from_nearest(level, keep)
        fill_from_nearest(spread, keep)
        spread = np.maximum(spread, MIN_TILE_NOISE_FRACTION * np.median(spread[keep]))
    edges = [np.minimum(np.arange(c + 1) * s, n) for c, s, n in zip(counts, sides, shape)]
    centres = [(e[:-1] + e[1:] - 1) / 2.0 * stride for e in edges]
    return tuple(bilinear(m, centres, (shape[0] * stride, shape[1] * stride)) for m in (level, spread))


def bilinear(grid: np.ndarray, centres: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Separable linear interpolation of ``grid`` (values at the tile ``centres``) onto an image of ``shape``."""
    (ly, hy, fy), (lx, hx, fx) = (_linear_weights(n, c) for n, c in zip(shape, centres))
    rows = (1 - fy)[:, None] * grid[ly] + fy[:, None] * grid[hy]
    return (1 - fx) * rows[:, lx] + fx * rows[:, hx]


def _row_medians(values: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Median of each row of ``values`` over its ``count`` finite entries (NaN sort last)."""
    ordered = np.sort(values, axis=1)
    rows = np.arange(len(values))
    return 0.5 * (ordered[rows, (count - 1) // 2] + ordered[rows, count // 2])


def _linear_weights(n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper tile index and the weight of the upper one for each of ``n`` pixels (linear
    interpolation between tile centres, constant beyond the ends)."""
    position = np.interp(np.arange(n), centres, np.arange(len(centres)))
    lo = np.floor(position).astype(int)
    return lo, np.minimum(lo + 1, len(centres) - 1), position - lo


def reflect_noise_gain(kernel: np.ndarray, n: int) -> np.ndarray:
    """Variance of a 1-D correlation with ``kernel`` (mode "reflect") of white noise, relative to the interior.

    Near the border the reflected kernel weights the same pixel twice, which
    raises the variance of the filtered noise; returns the factor per position
    along an axis of length ``n``.
    """
    half = len(kernel) // 2
    gain = np.ones(n)
    total = float(kernel @ kernel)
    for pos in range(min(half, n)):
        for end in (pos, n - 1 - pos):
            idx = end + np.arange(-half, half + 1)
            idx = np.where(idx < 0, -idx - 1, idx)
            idx = np.where(idx >= n, 2 * n - idx - 1, idx)
            folded = np.bincount(np.clip(idx, 0, n - 1), weights=kernel, minlength=n)
            gain[end] = float(folded @ folded) / total
    return gain


def fill_from_nearest(grid: np.ndarray, known: np.ndarray) -> None:
    """Fill the unknown cells of ``grid`` in place with the value of the nearest known cell."""
    if known.all():
        return
    index = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
    grid[...] = grid[tuple(index)]
