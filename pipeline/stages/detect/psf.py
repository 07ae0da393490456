"""PSF width measured once per movie (or chunk of frames) from its bright isolated spots."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.stages.detect.params import (
    MIN_SPOTS_FOR_PSF,
    MODEL_ERROR,
    MODEL_ERROR_BOUNDS,
    PSF_FRAMES,
    PSF_ROUNDS,
    PSF_TOLERANCE,
    WIDTH_BOUNDS_PX,
    DetectParams,
)
from pipeline.stages.detect.spots import Spots

#: A width within this fraction of a bound counts as at the bound.
BOUND_MARGIN = 0.05


@dataclass(frozen=True)
class PSFEstimate:
    """A PSF-width measurement.

    Attributes
    ----------
    sigma_um : float
        Gaussian sigma of the PSF, µm (the first guess, ``spot_diameter_um / 4``,
        when ``measured`` is False).
    n_spots : int
        Bright isolated spots the last measurement used.
    measured : bool
        False when the frames had fewer than ``MIN_SPOTS_FOR_PSF`` such spots.
    model_error : float
        Relative misfit of the Gaussian model on those spots (median RMS residual
        beyond the noise, over the peak), within ``MODEL_ERROR_BOUNDS``;
        ``MODEL_ERROR`` when not measured.
    at_bound : bool
        True when the width sits at (within 5 % of) ``WIDTH_BOUNDS_PX``: the data
        do not determine it (hot pixels, no real spots, objects far bigger than
        the PSF); set ``detect.psf_sigma_um`` instead.
    """

    sigma_um: float
    n_spots: int
    measured: bool
    at_bound: bool
    model_error: float = MODEL_ERROR

    def warning(self) -> str | None:
        """A message for the run's QC warnings, or None when the estimate is sound."""
        if self.at_bound:
            return (f"PSF sigma estimate {self.sigma_um:.3g} µm is at its bound ({WIDTH_BOUNDS_PX[0]}-"
                    f"{WIDTH_BOUNDS_PX[1]} px): the data do not determine it; set detect.psf_sigma_um")
        if not self.measured:
            return (f"too few bright isolated spots (< {MIN_SPOTS_FOR_PSF}) to measure the PSF; using "
                    f"spot_diameter_um / 4 = {self.sigma_um:.3g} µm (set detect.psf_sigma_um if that is wrong)")
        return None


def estimate_psf(frames: np.ndarray, *, pixel_size_um: float, params: DetectParams,
                 max_frames: int = PSF_FRAMES) -> PSFEstimate:
    """Measure the PSF sigma once for a stack of frames.

    Bright isolated spots of up to ``max_frames`` evenly spaced frames are fitted
    with a free width; the median width is the estimate, and the measurement is
    repeated at that width until two agree within PSF_TOLERANCE (at most
    PSF_ROUNDS times), so that a first guess off either way walks to the true
    width. The width is bounded by ``WIDTH_BOUNDS_PX``.

    Parameters
    ----------
    frames : (T, Y, X) or (Y, X) array
        Particle channel.
    pixel_size_um : float
    params : DetectParams
        ``spot_diameter_um / 4`` is the first guess; ``psf_sigma_um`` is ignored.
    max_frames : int

    Returns
    -------
    PSFEstimate
        Its :meth:`PSFEstimate.warning` is the QC message to log when the
        width is at a bound or could not be measured.
    """
    from pipeline.stages.detect.frame import as_image

    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise ValueError(f"expected frames (T, Y, X) or one frame (Y, X), got shape {frames.shape}")
    pick = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)) \
        if len(frames) else np.zeros(0, int)
    images = [as_image(frames[i], int(i)) for i in pick]
    guess = params.spot_diameter_um / 4.0 / pixel_size_um
    background_px = (params.background_size_um or 0.0) / pixel_size_um
    sigma, n_spots, measured, model_error = guess, 0, False, MODEL_ERROR
    for _ in range(PSF_ROUNDS):
        fits = [Spots(im, sigma, background_px, params.min_snr).fitted_psf() for im in images]
        widths = np.concatenate([f[0] for f in fits]) if fits else np.zeros(0)
        if len(widths) < MIN_SPOTS_FOR_PSF:
            break
        width = float(np.clip(np.median(widths), *WIDTH_BOUNDS_PX))
        model_error = float(np.clip(np.median(np.concatenate([f[1] for f in fits])), *MODEL_ERROR_BOUNDS))
        n_spots, measured = len(widths), True
        done = abs(width / sigma - 1.0) <= PSF_TOLERANCE
        sigma = width
        if done:
            break
    lo, hi = WIDTH_BOUNDS_PX
    at_bound = measured and (sigma <= lo * (1 + BOUND_MARGIN) or sigma >= hi * (1 - BOUND_MARGIN))
    return PSFEstimate(sigma_um=sigma * pixel_size_um, n_spots=n_spots, measured=measured, at_bound=at_bound,
                       model_error=model_error)


def measure_psf_sigma_um(image_2d: np.ndarray, *, pixel_size_um: float, params: DetectParams) -> float | None:
    """Measure the PSF sigma on one frame (see :func:`estimate_psf`).

    Returns
    -------
    float or None
        Gaussian sigma of the PSF, µm; None when the frame has fewer than
        ``MIN_SPOTS_FOR_PSF`` bright isolated spots.
    """
    estimate = estimate_psf(np.asarray(image_2d)[None], pixel_size_um=pixel_size_um, params=params)
    return estimate.sigma_um if estimate.measured else None
