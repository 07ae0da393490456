"""The detections table: fitted values, trackpy's characterisation, object size and integrated intensity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import trackpy

from pipeline.optics import centred_peak_fraction, pixel_fraction
from pipeline.stages.detect.fit import Fit, pixel
from pipeline.stages.detect.params import COLUMNS


def odd_diameter_px(diameter_px: float) -> int:
    """Smallest odd integer >= diameter_px, at least 3 (trackpy's feature diameter)."""
    d = max(3, int(np.ceil(diameter_px - 1e-9)))
    return d if d % 2 else d + 1


def trackpy_features(image: np.ndarray, sub: np.ndarray, y: np.ndarray, x: np.ndarray,
                     diameter: int) -> dict[str, np.ndarray]:
    """trackpy's size, ecc and raw_mass at the given positions (its mask centred on the nearest pixel).

    A window without positive signal (all-zero patches of a clipped camera)
    has no centroid: its size and ecc are NaN instead of a division by zero
    in ``trackpy.refine_com``.
    """
    out = {key: np.full(len(y), np.nan) for key in ("size", "ecc", "raw_mass")}
    if len(y) == 0:
        return out
    radius = diameter // 2
    pad = ((radius, radius), (radius, radius))
    raw = np.pad(image, pad, mode="reflect")
    processed = np.pad(np.clip(sub, 0.0, None), pad, mode="reflect")
    coords = np.column_stack([pixel(y, image.shape[0]), pixel(x, image.shape[1])]) + radius
    grid = np.arange(-radius, radius + 1)
    window = processed[(coords[:, 0, None] + grid)[:, :, None], (coords[:, 1, None] + grid)[:, None, :]]
    ok = window.sum(axis=(1, 2)) > 0
    if ok.any():
        result = trackpy.refine_com(raw, processed, radius, coords[ok], max_iterations=1)
        for key in out:
            out[key][ok] = result[key].to_numpy(float)
    return out


def integrated_intensity(image: np.ndarray, others: np.ndarray, fit: Fit, idx: np.ndarray) -> np.ndarray:
    """Background-subtracted sum of each object's pixels in its fit window, image units.

    ``others`` is the model of every other fitted object (each object's own
    model is added back, so neighbours' light does not count and the object
    need not be Gaussian). The background is the median of the image, minus
    ``others``, on the 2-px ring just outside the window: measured around the
    object itself, so an object bigger than the local-background window is
    not eaten by it.
    """
    if len(idx) == 0:
        return np.zeros(0)
    half = fit.half
    pad = half + 3
    residual = np.pad(image - others, pad)
    inside = np.pad(np.ones(image.shape, bool), pad)
    grid = np.arange(-half - 2, half + 3)
    rows = (fit.cy[idx, None] + grid + pad)[:, :, None]
    cols = (fit.cx[idx, None] + grid + pad)[:, None, :]
    sigma = fit.sigma[idx, None]
    fy = pixel_fraction(fit.cy[idx, None] + grid - fit.y[idx, None], sigma)
    fx = pixel_fraction(fit.cx[idx, None] + grid - fit.x[idx, None], sigma)
    own = fit.flux[idx, None, None] * fy[:, :, None] * fx[:, None, :]
    values = residual[rows, cols] + own
    real = inside[rows, cols]
    ring_mask = np.maximum(np.abs(grid)[:, None], np.abs(grid)[None, :]) > half
    ring = np.where(real & ring_mask, values, np.nan).reshape(len(idx), -1)
    has_ring = np.isfinite(ring).any(axis=1)
    level = np.zeros(len(idx))
    if has_ring.any():
        level[has_ring] = np.nanmedian(ring[has_ring], axis=1)
    core = real & ~ring_mask
    return ((values - level[:, None, None]) * core).sum(axis=(1, 2))


def table(image: np.ndarray, sub: np.ndarray, fits: list[tuple[Fit, np.ndarray]], frame: int,
          pixel_size_um: float, spot_diameter_um: float) -> pd.DataFrame:
    """The detections table (columns :data:`COLUMNS`) of the rows ``idx`` of each ``(fit, idx)``.

    ``sub`` is the background-subtracted image (for trackpy's
    characterisation); every fit's models (all its spots, not only the rows
    kept) are subtracted for the integrated intensity.
    """
    models = [fit.model_image() for fit, _ in fits]
    total = np.sum(models, axis=0) if models else np.zeros(image.shape)
    parts = []
    for fit, idx in fits:
        idx = np.asarray(idx, int)
        sigma = fit.sigma[idx]
        peak = np.array([centred_peak_fraction(s) for s in sigma]) if len(idx) else np.zeros(0)
        parts.append(pd.DataFrame({
            "y": fit.y[idx], "x": fit.x[idx], "mass": fit.flux[idx], "signal": fit.flux[idx] * peak,
            "ep": fit.position_error(idx), "size_um": sigma * pixel_size_um,
            "integrated_intensity": integrated_intensity(image, total, fit, idx),
        }))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in COLUMNS[1:]})
    y, x = out["y"].to_numpy(float), out["x"].to_numpy(float)
    features = trackpy_features(image, sub, y, x, odd_diameter_px(spot_diameter_um / pixel_size_um))
    out["frame"] = np.full(len(out), frame, np.int64)
    for key, values in features.items():
        out[key] = values
    return out[list(COLUMNS)].astype({c: np.float64 for c in COLUMNS[1:]})
