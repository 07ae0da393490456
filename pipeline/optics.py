"""Optics and camera model shared by the simulators.

Particles are pixel-integrated Gaussian spots (:func:`render_spots`); the
Gaussian sigma approximates the in-focus widefield PSF (:func:`psf_sigma_px`).
Photons are detected photo-electrons (quantum efficiency folded in). The camera
adds Poisson shot noise to the expected photon image, Gaussian read noise (in
electrons), multiplies by the gain and adds the offset, giving ADU counts.

SNR definition (Chenouard et al. 2014, ISBI particle-tracking challenge): the
peak intensity of an object above the local background, divided by the noise
standard deviation at the object's peak. With expected peak ``A`` and background
``B`` (photons per pixel) and read noise ``r`` (electrons)::

    SNR = A / sqrt(A + B + r**2)

:func:`peak_photons_for_snr` inverts this to set the photon scale.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

#: Largest uint16 value; the camera saturates there.
ADU_MAX = 65535


def psf_sigma_px(wavelength_nm: float, numerical_aperture: float, pixel_size_um: float) -> float:
    """Gaussian approximation of the in-focus widefield PSF, sigma ≈ 0.21 λ / NA, in pixels."""
    return 0.21 * wavelength_nm * 1e-3 / numerical_aperture / pixel_size_um


def peak_photons_for_snr(snr: float, background_photons: float, read_noise_e: float) -> float:
    """Peak photons ``A`` above background that give ``A / sqrt(A + B + r²) = snr``."""
    floor = background_photons + read_noise_e**2
    return 0.5 * (snr**2 + np.sqrt(snr**4 + 4.0 * snr**2 * floor))


def pixel_fraction(offset_px: np.ndarray, sigma_px: float) -> np.ndarray:
    """Fraction of a 1-D Gaussian (sigma in px) falling in the pixel at ``offset_px`` from its centre."""
    scale = 1.0 / (np.sqrt(2.0) * sigma_px)
    return 0.5 * (erf((offset_px + 0.5) * scale) - erf((offset_px - 0.5) * scale))


def centred_peak_fraction(sigma_px: float) -> float:
    """Fraction of a spot's photons in its peak pixel when the spot is centred on that pixel."""
    return float(pixel_fraction(np.zeros(1), sigma_px)[0] ** 2)


def render_spots(shape: tuple[int, int], y: np.ndarray, x: np.ndarray, photons: np.ndarray,
                 sigma_px: float) -> np.ndarray:
    """Expected photon image (float32) of pixel-integrated Gaussian spots at (y, x) px."""
    half = int(np.ceil(4 * sigma_px))
    offsets = np.arange(-half, half + 1)
    iy = np.rint(y).astype(int)[:, None] + offsets
    ix = np.rint(x).astype(int)[:, None] + offsets
    wy = pixel_fraction(iy - y[:, None], sigma_px)
    wx = pixel_fraction(ix - x[:, None], sigma_px)
    weights = photons[:, None, None] * wy[:, :, None] * wx[:, None, :]
    yy = np.broadcast_to(iy[:, :, None], weights.shape)
    xx = np.broadcast_to(ix[:, None, :], weights.shape)
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    image = np.bincount(yy[ok] * shape[1] + xx[ok], weights=weights[ok], minlength=shape[0] * shape[1])
    return image.reshape(shape).astype(np.float32)


def camera(
    expected_photons: np.ndarray,
    rng: np.random.Generator,
    *,
    read_noise_e: float,
    gain_adu_per_e: float,
    offset_adu: float,
) -> np.ndarray:
    """Expose a camera to an expected photon image; return uint16 ADU counts."""
    electrons = rng.poisson(np.clip(expected_photons, 0, None)).astype(np.float32)
    electrons += np.float32(read_noise_e) * rng.standard_normal(electrons.shape, dtype=np.float32)
    adu = np.rint(offset_adu + gain_adu_per_e * electrons)
    return np.clip(adu, 0, ADU_MAX).astype(np.uint16)


def localization_crlb_px(
    psf_sigma_px: float | np.ndarray,
    photons: float | np.ndarray,
    background_photons_per_px: float | np.ndarray,
    *,
    read_noise_e: float = 0.0,
    excess_noise_factor: float = 1.0,
) -> np.ndarray:
    """Localisation precision bound for a Gaussian spot, per axis, px.

    Mortensen et al. 2010 (Nat. Methods 7:377), eq. 6, with pixel size ``a = 1 px``::

        s_a² = s² + 1/12
        σ² = F · s_a² / N · (16/9 + 8π s_a² b / N)

    Parameters
    ----------
    psf_sigma_px : PSF Gaussian sigma ``s``, px.
    photons : detected photons ``N`` in the spot.
    background_photons_per_px : background ``b``, photons per pixel.
    read_noise_e : camera read noise, electrons; added to the background as ``r²``.
    excess_noise_factor : ``F``, 1 for sCMOS/CCD, 2 for an EMCCD.

    Returns
    -------
    ndarray
        Standard deviation of one coordinate, px (multiply by √2 for the
        radial RMS error).
    """
    s2 = np.asarray(psf_sigma_px, float) ** 2 + 1.0 / 12.0
    n = np.asarray(photons, float)
    b = np.asarray(background_photons_per_px, float) + read_noise_e**2
    return np.sqrt(excess_noise_factor * s2 / n * (16.0 / 9.0 + 8.0 * np.pi * s2 * b / n))
