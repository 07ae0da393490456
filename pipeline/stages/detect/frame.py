"""Detection of one frame (and of a stack, and near given positions): the public entry points."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from pipeline.errors import InputError
from pipeline.stages.detect.characterise import table
from pipeline.stages.detect.fit import Fit, pixel
from pipeline.stages.detect.params import COLUMNS, FIT_SWEEPS, MODEL_ERROR, DetectParams
from pipeline.stages.detect.psf import estimate_psf
from pipeline.stages.detect.spots import Spots


def detect_frame(
    image_2d: np.ndarray,
    frame: int,
    *,
    pixel_size_um: float,
    params: DetectParams,
    mask: np.ndarray | None = None,
    psf_sigma_um: float | None = None,
) -> pd.DataFrame:
    """Detect and localise the particles of one frame.

    Parameters
    ----------
    image_2d : (Y, X) array
        Particle channel, any numeric dtype (camera counts or photons).
    frame : int
        Frame index written to the ``frame`` column (and named in errors).
    pixel_size_um : float
        Pixel size, µm.
    params : DetectParams
    mask : (Y, X) bool array, optional
        Where particles are looked for; detections outside are dropped.
    psf_sigma_um : float, optional
        PSF sigma, µm, measured beforehand for the movie (:func:`estimate_psf`);
        overrides ``params.psf_sigma_um``. With neither, the width is measured
        on this frame.

    Returns
    -------
    DataFrame
        One row per detection, columns :data:`COLUMNS`: ``y``, ``x`` in px
        (pixel centres are integers); ``mass`` the fitted flux above the local
        background and ``signal`` its peak, image units; ``size`` (radius of
        gyration, px), ``ecc`` and ``raw_mass`` from trackpy; ``ep`` the
        standard error of each coordinate, px; ``size_um`` the Gaussian sigma
        of the object's image, µm (the PSF's for a point spot, fitted for an
        object bigger than the PSF); ``integrated_intensity`` its
        background-subtracted sum, image units (camera counts above the local
        background, not photons).

    Raises
    ------
    InputError
        The frame has NaN or infinite pixels.
    """
    image = as_image(image_2d, frame)
    spots = _prepare(image, frame, pixel_size_um, params, psf_sigma_um)
    fit = spots.detect(_separation_px(spots, pixel_size_um, params))
    objects = spots.merge_extended(fit) if params.extended_objects else None
    fits = [fit] if objects is None else [fit, objects]
    kept = [np.flatnonzero(_inside(f, mask, image.shape)) for f in fits]
    return table(image, spots.sub, list(zip(fits, kept)), frame, pixel_size_um, params.spot_diameter_um)


def detect_near(
    image_2d: np.ndarray,
    frame: int,
    y: np.ndarray,
    x: np.ndarray,
    *,
    pixel_size_um: float,
    params: DetectParams,
    min_snr: float,
    max_shift_px: float | np.ndarray,
    known: pd.DataFrame | None = None,
    psf_sigma_um: float | None = None,
) -> pd.DataFrame:
    """Look for one spot near each of the given positions, e.g. where a track lost its particle.

    Each position starts a spot that is fitted together with the frame's
    ``known`` detections (so it cannot take their light); it is found if its
    matched-filter significance at the fitted position reaches ``min_snr``
    (lower than ``params.min_snr`` is sound here: the position is known
    beforehand), it stayed within ``max_shift_px`` of where it started, and it
    is not on a known detection (closer than the separation).

    Parameters
    ----------
    image_2d : (Y, X) array
        Particle channel of the frame.
    frame : int
        Frame index written to the ``frame`` column.
    y, x : (n,) arrays
        Expected positions, px.
    pixel_size_um : float
    params : DetectParams
    min_snr : float
        Significance threshold for these spots.
    max_shift_px : float or (n,) array
        How far each spot may be from its expected position, px.
    known : DataFrame, optional
        The frame's detections (``y``, ``x``, ``mass``), fitted along.
    psf_sigma_um : float, optional
        As in :func:`detect_frame`.

    Returns
    -------
    DataFrame
        One row per position found: columns :data:`COLUMNS` and ``candidate``
        (int64, the index into ``y``/``x``).
    """
    image = as_image(image_2d, frame)
    spots = _prepare(image, frame, pixel_size_um, params, psf_sigma_um)
    y, x = np.asarray(y, float), np.asarray(x, float)
    known_y = np.zeros(0) if known is None else known["y"].to_numpy(float)
    known_x = np.zeros(0) if known is None else known["x"].to_numpy(float)
    known_flux = spots.initial_flux(known_y, known_x) if known is None or "mass" not in known \
        else known["mass"].to_numpy(float)
    at_threshold = min_snr * spots.spread[pixel(y, image.shape[0]), pixel(x, image.shape[1])] / spots.unit_response
    start_flux = np.maximum(spots.initial_flux(y, x), at_threshold)
    fit = Fit(spots.sub, np.concatenate([known_y, y]), np.concatenate([known_x, x]),
              np.concatenate([known_flux, start_flux]), spots.sigma, spots.half, valid=spots.valid)
    fit.run(FIT_SWEEPS)
    new = np.arange(len(known_y), len(fit.y))
    found = (spots.significance_at(fit)[new] >= min_snr) & fit.converged()[new]
    found &= np.hypot(fit.y[new] - y, fit.x[new] - x) <= max_shift_px
    if len(known_y) and len(new):
        points = np.column_stack([fit.y[:len(known_y)], fit.x[:len(known_y)]])
        distance = cKDTree(points).query(np.column_stack([fit.y[new], fit.x[new]]))[0]
        found &= distance >= _separation_px(spots, pixel_size_um, params)
    result = table(image, spots.sub, [(fit, new[found])], frame, pixel_size_um, params.spot_diameter_um)
    result["candidate"] = np.flatnonzero(found).astype(np.int64)
    return result


def detect_frames(
    frames_3d: np.ndarray,
    *,
    pixel_size_um: float,
    params: DetectParams,
    masks: np.ndarray | None = None,
    first_frame: int = 0,
) -> pd.DataFrame:
    """Detect particles in a stack of frames (see :func:`detect_frame`), the PSF measured once for the stack.

    Parameters
    ----------
    frames_3d : (T, Y, X) array
    pixel_size_um : float
    params : DetectParams
    masks : (T, Y, X) bool array, optional
    first_frame : int
        Frame index of ``frames_3d[0]``.

    Returns
    -------
    DataFrame
        All detections, columns :data:`COLUMNS`, sorted by frame.
    """
    if len(frames_3d) == 0:
        return empty_detections()
    if params.psf_sigma_um is None:
        psf = estimate_psf(frames_3d, pixel_size_um=pixel_size_um, params=params)
        params = params.model_copy(update={"psf_sigma_um": psf.sigma_um})
    sigma_um = params.psf_sigma_um
    tables = [
        detect_frame(image, first_frame + i, pixel_size_um=pixel_size_um, params=params,
                     mask=None if masks is None else masks[i], psf_sigma_um=sigma_um)
        for i, image in enumerate(frames_3d)
    ]
    return pd.concat(tables, ignore_index=True)


def empty_detections() -> pd.DataFrame:
    """A detections table with no rows and the right dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=np.int64 if c == "frame" else np.float64) for c in COLUMNS})


# -- implementation -------------------------------------------------------------------------------


def as_image(image_2d: np.ndarray, frame: int | None = None) -> np.ndarray:
    """The frame as a float array; InputError (naming the frame) for NaN or infinite pixels."""
    image = np.asarray(image_2d, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image (Y, X), got shape {image.shape}")
    bad = ~np.isfinite(image)
    if bad.any():
        where = "the image" if frame is None else f"frame {frame}"
        raise InputError(f"{where} of the particle channel has {int(bad.sum())} NaN or infinite pixels; "
                         "replace them (e.g. with the local background) before detection")
    return image


def _prepare(image: np.ndarray, frame: int, pixel_size_um: float, params: DetectParams,
             psf_sigma_um: float | None) -> Spots:
    """Filtered image and noise at the PSF width (given, or measured on this frame) and model error."""
    sigma_um = psf_sigma_um or params.psf_sigma_um
    model_error = params.psf_model_error
    if sigma_um is None:
        sigma_um = estimate_psf(image, pixel_size_um=pixel_size_um, params=params).sigma_um
    background_px = (params.background_size_um or 0.0) / pixel_size_um
    return Spots(image, sigma_um / pixel_size_um, background_px, params.min_snr,
                 MODEL_ERROR if model_error is None else model_error)


def _separation_px(spots: Spots, pixel_size_um: float, params: DetectParams) -> float:
    if params.separation_um is None:
        return max(1.0, spots.sigma)
    return params.separation_um / pixel_size_um


def _inside(fit: Fit, mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.ones(len(fit.y), bool)
    return np.asarray(mask, bool)[pixel(fit.y, shape[0]), pixel(fit.x, shape[1])]
