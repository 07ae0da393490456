"""Particle detection: matched filter, noise-calibrated threshold, Gaussian fit, deblending.

One frame of the particle channel in, one row per particle out (columns in
:data:`COLUMNS`, see ``pipeline/README.md``). The steps, all in pixels:

1. **Local background.** Grey opening of the PSF-smoothed image with a square
   larger than a spot, smoothed by a box of the same size but never below the
   opening itself: it follows cell autofluorescence and keeps the steps at
   cell edges, but not the spots. ``sub = image - background``.
2. **Matched filter.** ``sub`` correlated with the pixel-integrated Gaussian PSF
   (the optimal linear detector for a known spot shape in white noise).
3. **Noise.** The robust level and spread (median, MAD) of the filtered image
   per tile of the frame, pixels near spots left out, interpolated between
   tiles and corrected at the borders. Noise is higher over bright cells (shot
   noise, texture): one number for the frame would over-detect there and
   under-detect in the medium.
4. **Candidates.** Local maxima of the filtered image (within ``separation``)
   whose significance ``(filtered - level) / spread`` exceeds
   ``CANDIDATE_FRACTION × min_snr``.
5. **Fit.** Every spot is fitted with a pixel-integrated Gaussian of the PSF
   width (position, flux, local offset) by least squares, its neighbours'
   fitted spots subtracted first (block coordinate descent over groups of spots
   whose windows do not overlap), so clustered vesicles do not pull on each
   other.
6. **Deblending.** The matched filter merges spots closer than about two PSF
   widths. A spot bright enough to hide two is refitted as a pair and split if
   the pair fits significantly better; significant peaks of the filtered
   residual image (image minus all fitted spots) become new spots; everything
   is refitted (``DEBLEND_ROUNDS`` times).
7. **Decision.** A spot is kept if the matched filter centred on its fitted
   sub-pixel position, its neighbours subtracted, exceeds ``min_snr`` times the
   local noise (a statistic with the candidates' null distribution, so fitting
   does not inflate it), and it is not within ``separation`` of a brighter one.

The threshold is in noise units, so one config serves dim and bright movies.
trackpy characterises the final spots: ``trackpy.refine_com`` at the fitted
positions gives ``size``, ``ecc`` and ``raw_mass`` on trackpy's terms. The fit
gives ``y``, ``x``, ``mass`` (fitted flux above the local background, image
units), ``signal`` (its peak) and ``ep`` (the fit's standard error of a
coordinate, px).

With ``psf_sigma_um`` unset, the PSF width is measured on each frame from its
bright isolated spots (a fit with a free width, repeated at the width found
until it settles), staying at ``spot_diameter_um / 4`` when a frame has too few
of them; :func:`measure_psf_sigma_um` measures it once for a whole movie.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import trackpy
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.spatial import cKDTree

from pipeline.optics import pixel_fraction

#: Columns of a detections table, in order.
COLUMNS = ("frame", "y", "x", "mass", "size", "ecc", "signal", "raw_mass", "ep")

#: Relative model error assumed when deblending: a residual peak must stand out
#: against the noise plus this fraction of the fitted spots' filtered intensity.
MODEL_ERROR = 0.05
#: The model error also covers PSF wings: the fitted spots' filtered image is
#: blurred by this many PSF sigmas before scaling by MODEL_ERROR.
WING_SIGMAS = 2.0
#: A split must lower the residual sum of squares by at least max(min_snr, this)²
#: noise variances (the significance of the extra spot; a low min_snr must not
#: split single spots on noise).
MIN_SPLIT_SNR = 5.0
#: Candidates need this fraction of min_snr in the filtered image; the final
#: test (the matched filter at the fitted sub-pixel position) needs all of it.
CANDIDATE_FRACTION = 0.8
#: Spots at least this many times ``min_snr`` (the MAX_SPOTS_FOR_PSF strongest)
#: serve to measure the PSF width.
BRIGHT_FOR_PSF = 2.0
MAX_SPOTS_FOR_PSF = 50
#: Fewest bright isolated spots that make a PSF-width measurement; at most
#: PSF_ROUNDS measurements, each at the width the last one found, until two
#: agree within PSF_TOLERANCE (relative).
MIN_SPOTS_FOR_PSF = 10
PSF_ROUNDS = 4
PSF_TOLERANCE = 0.1
#: Widths a PSF measurement may take, px.
WIDTH_BOUNDS_PX = (0.2, 10.0)
#: Noise tiles: side in PSF sigmas (at least MIN_TILE_PX); pixels within a
#: pixel of a filtered value above NOISE_MASK_SNR are left out.
TILE_SIGMAS = 25.0
MIN_TILE_PX = 24
NOISE_MASK_SNR = 3.0
#: Fit: at most FIT_SWEEPS sweeps, until no spot moves more than TOLERANCE_PX;
#: Levenberg-Marquardt damping; deblending rounds.
FIT_SWEEPS = 20
TOLERANCE_PX = 0.02
LM_DAMPING = 1e-3
DEBLEND_ROUNDS = 2


class DetectParams(BaseModel):
    """Parameters of particle detection (config section ``detect:``)."""

    model_config = ConfigDict(extra="forbid")

    spot_diameter_um: float = Field(
        0.4,
        gt=0,
        description="Apparent diameter of a particle spot, µm (about 4 PSF sigmas). Sets trackpy's "
        "characterisation mask (rounded up to an odd number of pixels) and, when psf_sigma_um is "
        "unset, the first guess of the PSF width.",
    )
    psf_sigma_um: float | None = Field(
        None,
        gt=0,
        description="Gaussian sigma of the point-spread function, µm. Unset: measured on each frame "
        "from its bright isolated spots (falls back to spot_diameter_um / 4).",
    )
    min_snr: float = Field(
        5.0,
        gt=0,
        description="Detection threshold: a spot's matched-filter response over the local noise of "
        "the matched-filtered image (robust MAD). About 5 keeps false detections below ~1 per "
        "10^5 px; at a PSF sigma of 1 px it detects spots down to a peak SNR of ~2.5.",
    )
    separation_um: float | None = Field(
        None,
        ge=0,
        description="Two detections closer than this are one particle (the dimmer is dropped), µm. "
        "Unset: one PSF sigma, at least one pixel (closer pairs cannot be told apart from one spot).",
    )
    background_size_um: float | None = Field(
        None,
        gt=0,
        description="Side of the local-background window, µm. Unset (and never less than): the "
        "smallest window that clears a spot, 2·ceil(2.5 PSF sigmas) + 3 px; smaller windows follow "
        "cell texture better, larger ones suit big aggregates.",
    )


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


def detect_frame(
    image_2d: np.ndarray,
    frame: int,
    *,
    pixel_size_um: float,
    params: DetectParams,
    mask: np.ndarray | None = None,
) -> pd.DataFrame:
    """Detect and localise the particles of one frame.

    Parameters
    ----------
    image_2d : (Y, X) array
        Particle channel, any numeric dtype (camera counts or photons).
    frame : int
        Frame index written to the ``frame`` column.
    pixel_size_um : float
        Pixel size, µm.
    params : DetectParams
    mask : (Y, X) bool array, optional
        Where particles are looked for; detections outside are dropped.

    Returns
    -------
    DataFrame
        One row per detection, columns :data:`COLUMNS`: ``y``, ``x`` in px
        (pixel centres are integers); ``mass`` the fitted flux above the local
        background and ``signal`` its peak, image units; ``size`` (radius of
        gyration, px), ``ecc`` and ``raw_mass`` from trackpy; ``ep`` the
        standard error of each coordinate, px.
    """
    image = _as_image(image_2d)
    spots = _prepare(image, pixel_size_um, params)[0]
    fit = spots.detect(_separation_px(spots, pixel_size_um, params))
    keep = np.ones(len(fit.y), bool) if mask is None else \
        np.asarray(mask, bool)[_pixel(fit.y, image.shape[0]), _pixel(fit.x, image.shape[1])]
    return _table(image, spots, fit, np.flatnonzero(keep), frame, pixel_size_um, params)


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

    Returns
    -------
    DataFrame
        One row per position found: columns :data:`COLUMNS` and ``candidate``
        (int64, the index into ``y``/``x``).
    """
    image = _as_image(image_2d)
    spots = _prepare(image, pixel_size_um, params)[0]
    y, x = np.asarray(y, float), np.asarray(x, float)
    known_y = np.zeros(0) if known is None else known["y"].to_numpy(float)
    known_x = np.zeros(0) if known is None else known["x"].to_numpy(float)
    known_flux = spots.initial_flux(known_y, known_x) if known is None or "mass" not in known \
        else known["mass"].to_numpy(float)
    at_threshold = min_snr * spots.spread[_pixel(y, image.shape[0]), _pixel(x, image.shape[1])] / spots.unit_response
    start_flux = np.maximum(spots.initial_flux(y, x), at_threshold)
    fit = _Fit(spots.sub, np.concatenate([known_y, y]), np.concatenate([known_x, x]),
               np.concatenate([known_flux, start_flux]), spots.sigma, spots.half)
    fit.run(FIT_SWEEPS)
    new = np.arange(len(known_y), len(fit.y))
    found = (spots.significance_at(fit)[new] >= min_snr) & fit.converged()[new]
    found &= np.hypot(fit.y[new] - y, fit.x[new] - x) <= max_shift_px
    if len(known_y) and len(new):
        points = np.column_stack([fit.y[:len(known_y)], fit.x[:len(known_y)]])
        distance = cKDTree(points).query(np.column_stack([fit.y[new], fit.x[new]]))[0]
        found &= distance >= _separation_px(spots, pixel_size_um, params)
    table = _table(image, spots, fit, new[found], frame, pixel_size_um, params)
    table["candidate"] = np.flatnonzero(found).astype(np.int64)
    return table


def measure_psf_sigma_um(image_2d: np.ndarray, *, pixel_size_um: float, params: DetectParams) -> float | None:
    """Measure the PSF sigma on one frame, as :func:`detect_frame` does when ``psf_sigma_um`` is unset.

    Parameters
    ----------
    image_2d : (Y, X) array
        Particle channel.
    pixel_size_um : float
    params : DetectParams
        ``spot_diameter_um`` gives the first guess; ``psf_sigma_um`` is ignored.

    Returns
    -------
    float or None
        Gaussian sigma of the PSF, µm; None when the frame has fewer than
        ``MIN_SPOTS_FOR_PSF`` bright isolated spots. Measuring once per movie
        (e.g. the median over a few bright frames) and passing the result as
        ``psf_sigma_um`` makes every frame use the same width.
    """
    spots, measured = _prepare(_as_image(image_2d), pixel_size_um, params.model_copy(update={"psf_sigma_um": None}))
    return spots.sigma * pixel_size_um if measured else None


def detect_frames(
    frames_3d: np.ndarray,
    *,
    pixel_size_um: float,
    params: DetectParams,
    masks: np.ndarray | None = None,
    first_frame: int = 0,
) -> pd.DataFrame:
    """Detect particles in a stack of frames (see :func:`detect_frame`).

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
    tables = [
        detect_frame(image, first_frame + i, pixel_size_um=pixel_size_um, params=params,
                     mask=None if masks is None else masks[i])
        for i, image in enumerate(frames_3d)
    ]
    if not tables:
        return empty_detections()
    return pd.concat(tables, ignore_index=True)


def empty_detections() -> pd.DataFrame:
    """A detections table with no rows and the right dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=np.int64 if c == "frame" else np.float64) for c in COLUMNS})


# -- implementation -------------------------------------------------------------------------------


def _as_image(image_2d: np.ndarray) -> np.ndarray:
    image = np.asarray(image_2d, dtype=float)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image (Y, X), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("the image has NaN or infinite pixels")
    return image


def _prepare(image: np.ndarray, pixel_size_um: float, params: DetectParams) -> tuple[_Spots, bool]:
    """Filtered image and noise at the PSF width: given, or measured (then the flag is True)."""
    sigma = (params.psf_sigma_um or params.spot_diameter_um / 4.0) / pixel_size_um
    background_px = (params.background_size_um or 0.0) / pixel_size_um
    spots = _Spots(image, sigma, background_px, params.min_snr)
    measured = False
    for _ in range(PSF_ROUNDS if params.psf_sigma_um is None else 0):
        width = spots.measure_sigma()
        if width is None:
            break
        measured = True
        if abs(width / spots.sigma - 1.0) <= PSF_TOLERANCE:
            break
        spots = _Spots(image, width, background_px, params.min_snr)
    return spots, measured


def _separation_px(spots: _Spots, pixel_size_um: float, params: DetectParams) -> float:
    if params.separation_um is None:
        return max(1.0, spots.sigma)
    return params.separation_um / pixel_size_um


def _table(image: np.ndarray, spots: _Spots, fit: _Fit, rows: np.ndarray, frame: int, pixel_size_um: float,
           params: DetectParams) -> pd.DataFrame:
    """The detections table of the fitted spots ``rows``."""
    y, x, flux = fit.y[rows], fit.x[rows], fit.flux[rows]
    features = _characterise(image, spots.sub, y, x, _odd_diameter_px(params.spot_diameter_um / pixel_size_um))
    table = pd.DataFrame({
        "frame": np.full(len(rows), frame, np.int64),
        "y": y,
        "x": x,
        "mass": flux,
        "size": features["size"],
        "ecc": features["ecc"],
        "signal": flux * spots.peak_fraction,
        "raw_mass": features["raw_mass"],
        "ep": fit.position_error(rows),
    })
    return table.astype({c: np.float64 for c in COLUMNS[1:]})


def _pixel(coord: np.ndarray, size: int) -> np.ndarray:
    return np.clip(np.rint(coord).astype(int), 0, size - 1)


def _odd_diameter_px(diameter_px: float) -> int:
    """Smallest odd integer >= diameter_px, at least 3 (trackpy's feature diameter)."""
    d = max(3, int(np.ceil(diameter_px - 1e-9)))
    return d if d % 2 else d + 1


def _pixel_fraction_grads(offset: np.ndarray, sigma: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Derivatives of :func:`pipeline.optics.pixel_fraction` with respect to ``offset`` and to ``sigma``."""
    scale = 1.0 / (np.sqrt(2.0) * sigma)
    up, lo = (offset + 0.5) * scale, (offset - 0.5) * scale
    g_up, g_lo = np.exp(-up**2) / np.sqrt(np.pi), np.exp(-lo**2) / np.sqrt(np.pi)
    return (g_up - g_lo) * scale, -(g_up * up - g_lo * lo) / sigma


def _characterise(image: np.ndarray, sub: np.ndarray, y: np.ndarray, x: np.ndarray,
                  diameter: int) -> dict[str, np.ndarray]:
    """trackpy's size, ecc and raw_mass at the given positions (its mask centred on the nearest pixel)."""
    if len(y) == 0:
        return {key: np.zeros(0) for key in ("size", "ecc", "raw_mass")}
    radius = diameter // 2
    pad = ((radius, radius), (radius, radius))
    raw = np.pad(image, pad, mode="reflect")
    processed = np.pad(np.clip(sub, 0.0, None), pad, mode="reflect")
    coords = np.column_stack([_pixel(y, image.shape[0]), _pixel(x, image.shape[1])]) + radius
    result = trackpy.refine_com(raw, processed, radius, coords, max_iterations=1)
    return {key: result[key].to_numpy(float) for key in ("size", "ecc", "raw_mass")}


class _Spots:
    """Background, filtered image and noise of one frame at one PSF width; finds and fits spots."""

    def __init__(self, image: np.ndarray, sigma: float, background_px: float, min_snr: float):
        self.image = image
        self.sigma = float(sigma)
        self.min_snr = float(min_snr)
        self.half = max(2, int(np.ceil(2.5 * self.sigma)))  # fit window half-width
        offsets = np.arange(-self.half, self.half + 1)
        profile = pixel_fraction(offsets, self.sigma)
        self.kernel = profile / profile.sum()
        #: matched-filter response at the centre of a unit-flux spot
        self.unit_response = float(profile @ self.kernel) ** 2
        self.peak_fraction = float(pixel_fraction(np.zeros(1), self.sigma)[0] ** 2)
        size = max(2 * self.half + 3, int(np.ceil(background_px)) | 1)
        smooth = self.filter(image)
        opened = ndimage.grey_opening(smooth, size=(size, size))
        # the box smooths the opening's blocks; the maximum keeps its steps at cell edges, where the
        # smoothed opening alone would sit below the bright side and raise a band of false spots
        self.background = np.maximum(ndimage.uniform_filter(opened, size), opened)
        self.sub = image - self.background
        self.filtered = self.filter(self.sub)
        self.level, self.spread = self._noise()

    def filter(self, image: np.ndarray) -> np.ndarray:
        """Correlate with the pixel-integrated PSF (normalised to sum 1)."""
        out = ndimage.correlate1d(image, self.kernel, axis=0, mode="reflect")
        return ndimage.correlate1d(out, self.kernel, axis=1, mode="reflect")

    # -- noise ----------------------------------------------------------------

    def _noise(self) -> tuple[np.ndarray, np.ndarray]:
        """Robust level and spread maps of the filtered image, spots left out."""
        f = self.filtered
        level = np.median(f)
        spread = 1.4826 * np.median(np.abs(f - level))
        spots = ndimage.binary_dilation((f - level) > NOISE_MASK_SNR * max(spread, 1e-12))
        level, spread = _tile_maps(f, spots, max(MIN_TILE_PX, int(round(TILE_SIGMAS * self.sigma))))
        edge = [_reflect_noise_gain(self.kernel, n) for n in f.shape]
        return level, spread * np.sqrt(edge[0][:, None] * edge[1][None, :])

    def significance(self, filtered: np.ndarray) -> np.ndarray:
        """Filtered values in units of the local noise above the local level."""
        return (filtered - self.level) / self.spread

    # -- candidates -----------------------------------------------------------

    def peaks(self, filtered: np.ndarray, z: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Local maxima of ``filtered`` within ``radius`` px, significance ``z`` above the candidate level."""
        r = max(1, int(np.floor(radius)))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        footprint = yy**2 + xx**2 <= max(radius, 1.0) ** 2 + 1e-9
        is_max = filtered == ndimage.maximum_filter(filtered, footprint=footprint, mode="nearest")
        y, x = np.nonzero(is_max & (z > CANDIDATE_FRACTION * self.min_snr))
        return y.astype(float), x.astype(float)

    # -- public steps ---------------------------------------------------------

    def measure_sigma(self) -> float | None:
        """PSF sigma (px) from a free-width fit of bright isolated spots, or None if too few.

        Spots are the strongest local maxima (at least BRIGHT_FOR_PSF × min_snr)
        with no other maximum within a fit window; the window has room for a
        spot wider than the current guess, so that repeated measurements walk
        to the true width from a guess that is off either way.
        """
        half = self.half + 2
        z = self.significance(self.filtered)
        y, x = self.peaks(self.filtered, z, 2 * half + 1)
        strength = z[y.astype(int), x.astype(int)]
        chosen = np.flatnonzero(strength >= BRIGHT_FOR_PSF * self.min_snr)
        if len(chosen) > 1:
            points = np.column_stack([y, x])
            distance = cKDTree(points).query(points[chosen], 2)[0][:, 1]
            chosen = chosen[distance > 2 * half + 1]
        chosen = chosen[np.argsort(-strength[chosen])][:MAX_SPOTS_FOR_PSF]
        if len(chosen) < MIN_SPOTS_FOR_PSF:
            return None
        y, x = y[chosen], x[chosen]
        fit = _Fit(self.sub, y, x, self.initial_flux(y, x), self.sigma, half, fit_width=True)
        fit.run(FIT_SWEEPS)
        ok = fit.converged()
        if ok.sum() < MIN_SPOTS_FOR_PSF:
            return None
        return float(np.median(fit.sigma[ok]))

    def detect(self, separation: float) -> _Fit:
        """Find, fit and deblend the spots."""
        z = self.significance(self.filtered)
        y, x = self.peaks(self.filtered, z, separation)
        fit = _Fit(self.sub, y, x, self.initial_flux(y, x), self.sigma, self.half)
        fit.run(FIT_SWEEPS)
        for _ in range(DEBLEND_ROUNDS):
            changed = False
            for step in (self._split_blends, self._residual_peaks):
                fit.keep((self.significance_at(fit) >= self.min_snr) & fit.converged())
                if step(fit, separation):
                    fit.run(FIT_SWEEPS)
                    changed = True
            if not changed:
                break
        fit.keep((self.significance_at(fit) >= self.min_snr) & fit.converged())
        fit.keep(_not_duplicate(fit.y, fit.x, fit.flux, separation))
        return fit

    def _residual_peaks(self, fit: _Fit, separation: float) -> bool:
        """Add significant peaks of the filtered residual image as new spots; True if any."""
        model = self.filter(fit.model_image())
        residual = self.filtered - model
        wings = ndimage.gaussian_filter(model, WING_SIGMAS * self.sigma)
        inflated = np.sqrt(self.spread**2 + (MODEL_ERROR * np.maximum(model, wings)) ** 2)
        ny, nx = self.peaks(residual, (residual - self.level) / inflated, separation)
        if len(fit.y) and len(ny):
            far = cKDTree(np.column_stack([fit.y, fit.x])).query(np.column_stack([ny, nx]))[0] >= separation
            ny, nx = ny[far], nx[far]
        if len(ny) == 0:
            return False
        iy, ix = ny.astype(int), nx.astype(int)
        fit.add(ny, nx, np.clip(residual[iy, ix] - self.level[iy, ix], 0.0, None) / self.unit_response)
        return True

    def _split_blends(self, fit: _Fit, separation: float) -> bool:
        """Replace spots that are better explained as two spots; True if any.

        Each spot bright enough to hide two detectable ones is refitted, alone
        in its window with its neighbours' models subtracted, once as one and
        once as two spots (started apart along the spot's long axis). The pair
        replaces it when both members are significant, at least ``separation``
        apart, and the drop in the residual sum of squares, in units of the
        pixel noise variance (plus MODEL_ERROR of the spot's peak, squared),
        exceeds ``max(min_snr, MIN_SPLIT_SNR)**2``.
        """
        iy, ix = _pixel(fit.y, self.image.shape[0]), _pixel(fit.x, self.image.shape[1])
        z = fit.flux * self.unit_response / self.spread[iy, ix]
        cand = np.flatnonzero(z >= 2 * self.min_snr)
        if len(cand) == 0:
            return False
        stamps, valid = fit.stamps(cand)
        n, w = len(cand), stamps.shape[1]
        centre = (w - 1) / 2.0
        oy, ox = fit.y[cand] - fit.cy[cand], fit.x[cand] - fit.cx[cand]
        axis, half_distance = _long_axis(stamps, oy + centre, ox + centre, self.sigma)
        mosaic = _Mosaic(stamps, valid, self.sigma, self.half)
        rss_single = mosaic.fit(oy + centre, ox + centre, fit.flux[cand])[4]
        pair_y = np.concatenate([oy + centre + half_distance * axis[:, 0], oy + centre - half_distance * axis[:, 0]])
        pair_x = np.concatenate([ox + centre + half_distance * axis[:, 1], ox + centre - half_distance * axis[:, 1]])
        py, px, pflux, pok, rss_pair = mosaic.fit(pair_y, pair_x, np.tile(0.5 * fit.flux[cand], 2))
        pixel_noise = self.spread[iy[cand], ix[cand]] / float(self.kernel @ self.kernel)
        model_error = MODEL_ERROR * fit.flux[cand] * self.peak_fraction
        gain = (rss_single - rss_pair) / (pixel_noise**2 + model_error**2)
        a, b = np.arange(n), np.arange(n, 2 * n)
        spread = np.tile(self.spread[iy[cand], ix[cand]], 2)
        ok = pok & (pflux * self.unit_response / spread >= self.min_snr)
        apart = np.hypot(py[a] - py[b], px[a] - px[b]) >= separation
        accept = ok[a] & ok[b] & apart & (gain >= max(self.min_snr, MIN_SPLIT_SNR) ** 2)
        if not accept.any():
            return False
        shift_y, shift_x = fit.cy[cand] - centre, fit.cx[cand] - centre
        sel = np.concatenate([a[accept], b[accept]])
        new_y, new_x = py[sel] + np.tile(shift_y[accept], 2), px[sel] + np.tile(shift_x[accept], 2)
        keep = np.ones(len(fit.y), bool)
        keep[cand[accept]] = False
        fit.keep(keep)
        fit.add(new_y, new_x, pflux[sel])
        return True

    # -- helpers ----------------------------------------------------------------

    def initial_flux(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Flux estimate of spots at (y, x) from the filtered image at the nearest pixel."""
        iy, ix = _pixel(y, self.image.shape[0]), _pixel(x, self.image.shape[1])
        return np.clip(self.filtered[iy, ix] - self.level[iy, ix], 0.0, None) / self.unit_response

    def significance_at(self, fit: _Fit) -> np.ndarray:
        """Matched-filter significance of each fitted spot at its fitted position, neighbours subtracted.

        The filter is the PSF centred on the fitted sub-pixel position and the
        background the local level, so the statistic has the null distribution
        of the candidate filter: free fit parameters (offset, position) do not
        inflate it, and spots between pixel centres lose nothing.
        """
        if len(fit.y) == 0:
            return np.zeros(0)
        idx = np.arange(len(fit.y))
        stamps, valid = fit.stamps(idx, offset=False)
        iy, ix = _pixel(fit.y, self.image.shape[0]), _pixel(fit.x, self.image.shape[1])
        grid = np.arange(stamps.shape[1]) - (stamps.shape[1] - 1) // 2
        profile_y = pixel_fraction(fit.cy[:, None] + grid - fit.y[:, None], fit.sigma[:, None])
        profile_x = pixel_fraction(fit.cx[:, None] + grid - fit.x[:, None], fit.sigma[:, None])
        psf = profile_y[:, :, None] * profile_x[:, None, :] * valid
        response = (psf * (stamps - self.level[iy, ix, None, None])).sum(axis=(1, 2))
        pixel_noise = self.spread[iy, ix] / float(self.kernel @ self.kernel)
        return response / (pixel_noise * np.sqrt((psf**2).sum(axis=(1, 2))))


def _not_duplicate(y: np.ndarray, x: np.ndarray, flux: np.ndarray, separation: float) -> np.ndarray:
    """False for the dimmer spot of every pair closer than ``separation`` px."""
    keep = np.ones(len(y), bool)
    if len(y) < 2 or separation <= 0:
        return keep
    pairs = cKDTree(np.column_stack([y, x])).query_pairs(separation, output_type="ndarray")
    for i, j in pairs[np.argsort(-np.maximum(flux[pairs[:, 0]], flux[pairs[:, 1]]))]:
        if keep[i] and keep[j]:
            keep[j if flux[i] >= flux[j] else i] = False
    return keep


def _tile_maps(values: np.ndarray, exclude: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-based standard deviation of ``values`` per tile (``exclude`` left out), bilinear between tiles."""
    shape = values.shape
    edges = [np.linspace(0, n, max(1, round(n / tile)) + 1).astype(int) for n in shape]
    level = np.full((len(edges[0]) - 1, len(edges[1]) - 1), np.nan)
    spread = np.full_like(level, np.nan)
    for i, (y0, y1) in enumerate(zip(edges[0][:-1], edges[0][1:])):
        for j, (x0, x1) in enumerate(zip(edges[1][:-1], edges[1][1:])):
            v = values[y0:y1, x0:x1][~exclude[y0:y1, x0:x1]]
            if v.size >= 0.25 * (y1 - y0) * (x1 - x0):
                level[i, j] = np.median(v)
                spread[i, j] = 1.4826 * np.median(np.abs(v - level[i, j]))
    keep = np.isfinite(spread) & (spread > 0)
    if not keep.any():  # nothing but spots: fall back to the whole frame
        v = values.ravel()
        level[:] = np.median(v)
        spread[:] = max(1.4826 * np.median(np.abs(v - level.flat[0])), 1e-12)
    else:
        _fill_from_nearest(level, keep)
        _fill_from_nearest(spread, keep)
    centres = [(e[:-1] + e[1:] - 1) / 2.0 for e in edges]
    grid = [np.interp(np.arange(n), c, np.arange(len(c))) for n, c in zip(shape, centres)]
    gy, gx = np.meshgrid(*grid, indexing="ij")
    return tuple(ndimage.map_coordinates(m, [gy, gx], order=1, mode="nearest") for m in (level, spread))


class _Mosaic:
    """Stamps laid out side by side with empty margins, so that :class:`_Fit` fits each on its own."""

    def __init__(self, stamps: np.ndarray, valid: np.ndarray, sigma: float, half: int):
        n, w, _ = stamps.shape
        self.n, self.sigma, self.half = n, sigma, half
        margin = half + 2
        pitch = w + 2 * margin
        columns = int(np.ceil(np.sqrt(n)))
        rows = -(-n // columns)
        self.oy = (np.arange(n) // columns) * pitch + margin
        self.ox = (np.arange(n) % columns) * pitch + margin
        self.block_rows = (self.oy[:, None] + np.arange(w))[:, :, None]
        self.block_cols = (self.ox[:, None] + np.arange(w))[:, None, :]
        self.image = np.zeros((rows * pitch, columns * pitch))
        self.valid = np.zeros_like(self.image)
        self.image[self.block_rows, self.block_cols] = stamps
        self.valid[self.block_rows, self.block_cols] = valid

    def fit(self, y: np.ndarray, x: np.ndarray, flux: np.ndarray):
        """Fit spots given in stamp coordinates (spot ``i`` in stamp ``i % n``).

        Returns y, x (stamp coordinates), flux, converged mask and the residual
        sum of squares of each stamp.
        """
        block = np.arange(len(y)) % self.n
        fit = _Fit(self.image, y + self.oy[block], x + self.ox[block], flux, self.sigma, self.half, valid=self.valid)
        fit.run(FIT_SWEEPS)
        offset = np.bincount(block, weights=fit.offset, minlength=self.n) / np.bincount(block, minlength=self.n)
        residual = (self.image - fit.model_image())[self.block_rows, self.block_cols] - offset[:, None, None]
        rss = ((residual * self.valid[self.block_rows, self.block_cols]) ** 2).sum(axis=(1, 2))
        return fit.y - self.oy[block], fit.x - self.ox[block], fit.flux, fit.converged(), rss


def _long_axis(stamps: np.ndarray, y: np.ndarray, x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Major axis of the positive intensity of each stamp around (y, x), and the half-distance of a pair.

    Returns unit vectors (n, 2) and, from the excess of the second moment
    along the major axis over the minor one, the half-distance (px) of two
    equal spots with that moment, clipped to [sigma / 2, 2 sigma].
    """
    w = stamps.shape[1]
    grid = np.arange(w, dtype=float)
    dy = grid[None, :, None] - y[:, None, None]
    dx = grid[None, None, :] - x[:, None, None]
    weight = np.clip(stamps, 0.0, None)
    total = np.maximum(weight.sum(axis=(1, 2)), 1e-12)
    syy, sxx, sxy = ((weight * m).sum(axis=(1, 2)) / total for m in (dy * dy, dx * dx, dy * dx))
    angle = 0.5 * np.arctan2(2 * sxy, syy - sxx)
    excess = np.hypot(syy - sxx, 2 * sxy)  # major minus minor eigenvalue
    return np.column_stack([np.cos(angle), np.sin(angle)]), np.clip(np.sqrt(excess), 0.5 * sigma, 2 * sigma)


def _reflect_noise_gain(kernel: np.ndarray, n: int) -> np.ndarray:
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


def _fill_from_nearest(grid: np.ndarray, known: np.ndarray) -> None:
    """Fill the unknown cells of ``grid`` in place with the value of the nearest known cell."""
    if known.all():
        return
    index = ndimage.distance_transform_edt(~known, return_distances=False, return_indices=True)
    grid[...] = grid[tuple(index)]


class _Fit:
    """Least-squares fit of pixel-integrated Gaussian spots (position, flux, local offset[, sigma]).

    Spots are fitted by block coordinate descent: spots are coloured so that
    the fit windows of a colour do not overlap; a sweep takes one damped
    Gauss-Newton step for every colour in turn, each spot seeing the image
    minus the current models of all other spots. A window follows its spot to
    the nearest pixel after every sweep.
    """

    def __init__(self, sub: np.ndarray, y: np.ndarray, x: np.ndarray, flux: np.ndarray, sigma: float,
                 half: int, *, valid: np.ndarray | None = None, fit_width: bool = False):
        self.shape = sub.shape
        self.half = half
        self.pad = half + 1
        self.data = np.pad(sub, self.pad)
        self.valid = np.pad(np.ones(sub.shape) if valid is None else valid.astype(float), self.pad)
        self.offsets = np.arange(-half, half + 1)
        self.sigma0 = float(sigma)
        self.fit_width = fit_width
        self.model = np.zeros_like(self.data)
        self.y, self.x = np.zeros(0), np.zeros(0)
        self.flux, self.offset, self.sigma = np.zeros(0), np.zeros(0), np.zeros(0)
        self.cy, self.cx = np.zeros(0, int), np.zeros(0, int)
        self.add(y, x, flux)

    # -- bookkeeping ------------------------------------------------------------

    def add(self, y: np.ndarray, x: np.ndarray, flux: np.ndarray) -> None:
        """Add spots and their models."""
        n = len(y)
        self.y = np.concatenate([self.y, y])
        self.x = np.concatenate([self.x, x])
        self.flux = np.concatenate([self.flux, flux])
        self.offset = np.concatenate([self.offset, np.zeros(n)])
        self.sigma = np.concatenate([self.sigma, np.full(n, self.sigma0)])
        self.cy = np.concatenate([self.cy, _pixel(y, self.shape[0])])
        self.cx = np.concatenate([self.cx, _pixel(x, self.shape[1])])
        new = np.arange(len(self.y) - n, len(self.y))
        np.add.at(self.model, self._index(new), self._patch(new)[0])

    def keep(self, keep: np.ndarray) -> None:
        """Drop the spots where ``keep`` is False (and their models)."""
        drop = np.flatnonzero(~keep)
        if len(drop) == 0:
            return
        np.add.at(self.model, self._index(drop), -self._patch(drop)[0])
        for name in ("y", "x", "flux", "offset", "sigma", "cy", "cx"):
            setattr(self, name, getattr(self, name)[keep])

    def model_image(self) -> np.ndarray:
        """Sum of all fitted spots (no offsets), unpadded."""
        p = self.pad
        return self.model[p:-p, p:-p]

    def stamps(self, idx: np.ndarray, offset: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Windows (n, w, w), one pixel wider than the fit's, centred on spots ``idx``: the data minus
        all other spots' models (and, if ``offset``, the spot's fitted offset); and their validity masks."""
        grid = np.arange(-self.half - 1, self.half + 2)
        rows = (self.cy[idx, None] + grid + self.pad)[:, :, None]
        cols = (self.cx[idx, None] + grid + self.pad)[:, None, :]
        sigma = self.sigma[idx, None]
        fy = pixel_fraction(self.cy[idx, None] + grid - self.y[idx, None], sigma)
        fx = pixel_fraction(self.cx[idx, None] + grid - self.x[idx, None], sigma)
        own = self.flux[idx, None, None] * fy[:, :, None] * fx[:, None, :]
        stamps = self.data[rows, cols] - self.model[rows, cols] + own
        if offset:
            stamps -= self.offset[idx, None, None]
        return stamps, self.valid[rows, cols]

    def converged(self) -> np.ndarray:
        """Spots with a finite positive flux whose centre lies in the image."""
        inside = (self.y >= -0.5) & (self.y <= self.shape[0] - 0.5) & (self.x >= -0.5) & (self.x <= self.shape[1] - 0.5)
        return inside & (self.flux > 0) & np.isfinite(self.flux) & np.isfinite(self.y) & np.isfinite(self.x)

    # -- model ----------------------------------------------------------------

    def _index(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = (self.cy[idx, None] + self.offsets + self.pad)[:, :, None]
        cols = (self.cx[idx, None] + self.offsets + self.pad)[:, None, :]
        return np.broadcast_to(rows, (len(idx), len(self.offsets), len(self.offsets))), \
            np.broadcast_to(cols, (len(idx), len(self.offsets), len(self.offsets)))

    def _patch(self, idx: np.ndarray):
        """Model patches (n, w, w) of spots ``idx`` and the 1-D profiles and gradients behind them."""
        sigma = self.sigma[idx, None]
        dy = self.cy[idx, None] + self.offsets - self.y[idx, None]
        dx = self.cx[idx, None] + self.offsets - self.x[idx, None]
        fy, fx = pixel_fraction(dy, sigma), pixel_fraction(dx, sigma)
        patch = self.flux[idx, None, None] * fy[:, :, None] * fx[:, None, :]
        return patch, fy, fx, dy, dx

    # -- fitting --------------------------------------------------------------

    def _colours(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Groups of spots whose windows cannot overlap while each centre stays within a pixel of where
        it is now (greedy colouring, brightest first), and the pairs of spots that could overlap."""
        centres = np.column_stack([self.cy, self.cx])
        pairs = cKDTree(centres).query_pairs(2 * self.half + 2, p=np.inf, output_type="ndarray")
        neighbours = [[] for _ in range(len(self.y))]
        for i, j in pairs:
            neighbours[i].append(j)
            neighbours[j].append(i)
        colour = np.full(len(self.y), -1)
        for i in np.argsort(-self.flux):
            used = {colour[j] for j in neighbours[i]}
            c = 0
            while c in used:
                c += 1
            colour[i] = c
        return [np.flatnonzero(colour == c) for c in range(colour.max() + 1)], pairs

    def run(self, sweeps: int) -> None:
        """Sweep until no spot moves by more than TOLERANCE_PX (at most ``sweeps`` times).

        Only spots that moved in the last sweep, and their neighbours, are stepped again.
        """
        if len(self.y) == 0:
            return
        colours, pairs = self._colours()
        anchor = np.column_stack([self.cy, self.cx])
        active = np.ones(len(self.y), bool)
        for _ in range(sweeps):
            moved = np.zeros(len(self.y))
            for idx in colours:
                idx = idx[active[idx]]
                if len(idx):
                    moved[idx] = self._step(idx)
            self._recentre()
            if np.abs(np.column_stack([self.cy, self.cx]) - anchor).max() > 1:
                colours, pairs = self._colours()
                anchor = np.column_stack([self.cy, self.cx])
            active = moved > TOLERANCE_PX
            if not active.any():
                break
            if len(pairs):
                touched = active[pairs[:, 0]] | active[pairs[:, 1]]
                active[pairs[touched].ravel()] = True

    def _recentre(self) -> None:
        """Move the windows of spots that left their centre pixel."""
        ny, nx = _pixel(self.y, self.shape[0]), _pixel(self.x, self.shape[1])
        idx = np.flatnonzero((ny != self.cy) | (nx != self.cx))
        if len(idx):
            np.add.at(self.model, self._index(idx), -self._patch(idx)[0])
            self.cy[idx], self.cx[idx] = ny[idx], nx[idx]
            np.add.at(self.model, self._index(idx), self._patch(idx)[0])

    def _jacobian(self, idx: np.ndarray):
        patch, fy, fx, dy, dx = self._patch(idx)
        sigma = self.sigma[idx, None]
        gy, sy = _pixel_fraction_grads(dy, sigma)
        gx, sx = _pixel_fraction_grads(dx, sigma)
        flux = self.flux[idx, None, None]
        columns = [
            -flux * gy[:, :, None] * fx[:, None, :],  # d/dy (offset = pixel - y)
            -flux * fy[:, :, None] * gx[:, None, :],  # d/dx
            fy[:, :, None] * fx[:, None, :],  # d/dflux
            np.ones_like(patch),  # d/doffset
        ]
        if self.fit_width:
            columns.append(flux * (sy[:, :, None] * fx[:, None, :] + fy[:, :, None] * sx[:, None, :]))
        n = len(idx)
        return patch, np.stack([c.reshape(n, -1) for c in columns], axis=2)

    def _step(self, idx: np.ndarray) -> np.ndarray:
        """One damped Gauss-Newton step for non-overlapping spots ``idx``; returns how far each moved, px."""
        index = self._index(idx)
        patch, jac = self._jacobian(idx)
        n = len(idx)
        weight = self.valid[index].reshape(n, -1)
        residual = (self.data[index] - self.model[index]).reshape(n, -1) - self.offset[idx, None]
        residual *= weight
        jw = (jac * weight[:, :, None]).transpose(0, 2, 1)
        normal = jw @ jac
        eye = np.eye(normal.shape[1])
        normal += LM_DAMPING * normal * eye + 1e-12 * eye
        step = np.linalg.solve(normal, jw @ residual[:, :, None])[:, :, 0]
        step[:, :2] = np.clip(step[:, :2], -0.5, 0.5)
        self.y[idx] += step[:, 0]
        self.x[idx] += step[:, 1]
        self.flux[idx] = np.maximum(self.flux[idx] + step[:, 2], 1e-9)
        self.offset[idx] += step[:, 3]
        if self.fit_width:
            width = self.sigma[idx]
            self.sigma[idx] = np.clip(width + np.clip(step[:, 4], -0.3 * width, 0.3 * width), *WIDTH_BOUNDS_PX)
        self.model[index] += self._patch(idx)[0] - patch
        return np.abs(step[:, :2]).max(axis=1)

    def position_error(self, idx: np.ndarray) -> np.ndarray:
        """Standard error of a coordinate (mean of the y and x variances) of spots ``idx``, px.

        From the fit's covariance, the noise variance estimated from each
        window's residuals (so it includes any misfit).
        """
        n = len(idx)
        if n == 0:
            return np.zeros(0)
        index = self._index(idx)
        jac = self._jacobian(idx)[1]
        weight = self.valid[index].reshape(n, -1)
        residual = ((self.data[index] - self.model[index]).reshape(n, -1) - self.offset[idx, None]) * weight
        dof = np.maximum(weight.sum(axis=1) - jac.shape[2], 1.0)
        variance = (residual**2).sum(axis=1) / dof
        jw = (jac * weight[:, :, None]).transpose(0, 2, 1)
        normal = jw @ jac + 1e-12 * np.eye(jac.shape[2])
        cov = np.linalg.inv(normal) * variance[:, None, None]
        return np.sqrt(0.5 * (cov[:, 0, 0] + cov[:, 1, 1]))
