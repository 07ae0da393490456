"""Independent test frames for the detector, rendered with :mod:`pipeline.optics` (not the movie simulator).

Log-normal brightness, PSF sigma 0.8-1.5 px, SNR 3-20, sparse to dense, dim
spots next to bright ones, flat or uneven background (a gradient plus smooth
cell-like blobs). The truth is exact: positions, photons and the local
background of every spot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.optics import camera, centred_peak_fraction, peak_photons_for_snr, render_spots

READ_NOISE_E = 1.5
GAIN_ADU_PER_E = 2.0
OFFSET_ADU = 100.0


@dataclass(frozen=True)
class Regime:
    """One kind of frame.

    Attributes
    ----------
    psf_sigma_px : PSF Gaussian sigma, px.
    snr : peak SNR of a median-brightness spot (``pipeline.optics`` definition).
    brightness_sigma : sigma of the log-normal brightness (of ln photons).
    per_kpx : particles per 1000 px.
    near_bright : fraction of the particles placed 2-4 PSF sigmas from another one, 3-10x dimmer.
    uneven : background amplitude of the gradient and blobs (0: flat).
    background_photons : mean background, photons per px.
    """

    psf_sigma_px: float = 1.0
    snr: float = 5.0
    brightness_sigma: float = 0.5
    per_kpx: float = 1.0
    near_bright: float = 0.0
    uneven: float = 0.0
    background_photons: float = 20.0


def background_image(shape: tuple[int, int], regime: Regime, rng: np.random.Generator) -> np.ndarray:
    """Expected background photons per px: flat, or a gradient plus smooth blobs (cells) of up to 1 + uneven."""
    b = np.full(shape, regime.background_photons)
    if regime.uneven > 0:
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        blobs = ndimage.gaussian_filter((rng.random(shape) < 0.0004).astype(float), 18.0)
        blobs /= max(blobs.max(), 1e-12)
        gradient = 0.5 * (xx / shape[1] + yy / shape[0])
        b *= 1.0 + regime.uneven * np.clip(blobs + gradient * 0.5, 0, 1.5)
    return b


def frame(shape: tuple[int, int], regime: Regime, rng: np.random.Generator) -> tuple[np.ndarray, pd.DataFrame]:
    """One camera frame (uint16 ADU) and its truth (``y``, ``x``, ``photons``, ``background``, px / photons)."""
    margin = 3.0
    n = rng.poisson(regime.per_kpx * shape[0] * shape[1] / 1000.0)
    n_near = int(round(regime.near_bright * n))
    y = rng.uniform(margin, shape[0] - 1 - margin, n - n_near)
    x = rng.uniform(margin, shape[1] - 1 - margin, n - n_near)
    background = background_image(shape, regime, rng)
    peak = peak_photons_for_snr(regime.snr, regime.background_photons, READ_NOISE_E)
    photons = peak / centred_peak_fraction(regime.psf_sigma_px) * rng.lognormal(0.0, regime.brightness_sigma, len(y))
    if n_near and len(y):
        host = rng.integers(0, len(y), n_near)
        distance = rng.uniform(2.0, 4.0, n_near) * regime.psf_sigma_px
        angle = rng.uniform(0, 2 * np.pi, n_near)
        ny = np.clip(y[host] + distance * np.sin(angle), margin, shape[0] - 1 - margin)
        nx = np.clip(x[host] + distance * np.cos(angle), margin, shape[1] - 1 - margin)
        photons[host] = np.maximum(photons[host], peak / centred_peak_fraction(regime.psf_sigma_px) * 4.0)
        near = photons[host] / rng.uniform(3.0, 10.0, n_near)
        y, x, photons = np.r_[y, ny], np.r_[x, nx], np.r_[photons, near]
    expected = background + render_spots(shape, y, x, photons, regime.psf_sigma_px)
    image = camera(expected, rng, read_noise_e=READ_NOISE_E, gain_adu_per_e=GAIN_ADU_PER_E, offset_adu=OFFSET_ADU)
    iy, ix = np.clip(np.rint(y).astype(int), 0, shape[0] - 1), np.clip(np.rint(x).astype(int), 0, shape[1] - 1)
    truth = pd.DataFrame({"y": y, "x": x, "photons": photons, "background": background[iy, ix], "visible": True})
    return image, truth
