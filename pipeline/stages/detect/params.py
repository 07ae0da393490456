"""Parameters, constants and the table layout of particle detection."""

from __future__ import annotations

from pydantic import Field

from pipeline.params import Params

#: Columns of a detections table, in order. ``size_um`` (Gaussian sigma of the
#: object, µm: the PSF's for a point spot, fitted for an extended one) and
#: ``integrated_intensity`` (background-subtracted sum of the object's pixels,
#: image units, i.e. camera counts above the local background) describe objects
#: bigger than the PSF (aggregates, clusters, endosomes) as well as point spots.
COLUMNS = ("frame", "y", "x", "mass", "size", "ecc", "signal", "raw_mass", "ep", "size_um", "integrated_intensity")

#: Relative model error assumed when deblending: a residual peak must stand out
#: against the noise plus this fraction of the fitted spots' filtered intensity.
#: ``detect.psf_model_error`` overrides it. ``PSFEstimate.model_error`` reports the
#: misfit measured on bright spots (a QC number: not used by default, since crowded
#: movies inflate it, 0.076 on the dense benchmark regime, and a larger value
#: costs recall next to bright spots; measured values below 0.05 cost precision).
MODEL_ERROR = 0.05
MODEL_ERROR_BOUNDS = (0.0, 0.2)
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
#: Widths a PSF measurement may take, px. A measurement within 5 % of a bound is
#: flagged (``PSFEstimate.at_bound``): the data do not determine the width.
WIDTH_BOUNDS_PX = (0.3, 10.0)
#: Frames a movie-wide PSF estimate uses (evenly spaced).
PSF_FRAMES = 4
#: Noise tiles: side in PSF sigmas (at least MIN_TILE_PX); pixels within a
#: pixel of a filtered value above NOISE_MASK_SNR are left out.
TILE_SIGMAS = 25.0
MIN_TILE_PX = 24
NOISE_MASK_SNR = 3.0
#: Noise statistics use every NOISE_STRIDE-th pixel along each axis where a tile
#: keeps at least MIN_TILE_PX sample pixels a side (wide PSFs: neighbouring
#: filtered pixels are correlated anyway).
NOISE_STRIDE = 2
#: A tile's noise is never taken below this fraction of the median over tiles
#: (a tile of clipped, all-zero pixels has no measurable noise).
MIN_TILE_NOISE_FRACTION = 0.2
#: A tile's spread is at least its upper-tail estimate ((q95 - median) / 1.645)
#: divided by this; Gaussian noise never reaches it (the estimates agree within
#: a few per cent), heavy-tailed backgrounds do.
HEAVY_TAIL_TOLERANCE = 1.25
#: Saturation: when at least SATURATED_MIN_PIXELS (and under SATURATED_MAX_FRACTION)
#: of a frame's pixels hold its maximum value, those pixels are clipped and left
#: out of the fits (they only bound the intensity from below).
SATURATED_MIN_PIXELS = 3
SATURATED_MAX_FRACTION = 0.05
#: Fit: at most FIT_SWEEPS sweeps, until no spot moves more than TOLERANCE_PX;
#: Levenberg-Marquardt damping; deblending rounds.
FIT_SWEEPS = 20
TOLERANCE_PX = 0.02
LM_DAMPING = 1e-3
DEBLEND_ROUNDS = 2
#: Extended objects: a group of at least EXTENDED_MIN_SPOTS overlapping spots is
#: one object when one Gaussian of free width, at least EXTENDED_SIGMA_RATIO PSF
#: widths, fits it within the model error (see ``spots.Spots.merge_extended``).
EXTENDED_MIN_SPOTS = 2
EXTENDED_SIGMA_RATIO = 1.0
#: Model error of a blob (fraction of its peak) when a Gaussian is compared with its spots.
EXTENDED_MODEL_ERROR = 0.1
#: Member spots farther than this many fitted object sigmas from its centre must not stand out
#: in the object model's residual (they are neighbours, not texture).
EXTENDED_CORE_SIGMAS = 1.5
#: Two spots are one object when one free-width Gaussian leaves at most this many pixel-noise
#: variances more residual (2 per parameter the pair has in excess: 3).
PAIR_MERGE_UNITS = 6.0
#: ... and that Gaussian is at least this many PSF sigmas wide (a pair 2 sigma apart fits ~1.2).
PAIR_SIGMA_RATIO = 1.3
#: Spots of a group are closer than this many PSF sigmas to one another.
EXTENDED_LINK_SIGMAS = 3.0
#: Largest extended-object sigma fitted, in PSF sigmas.
EXTENDED_MAX_SIGMAS = 6.0


class DetectParams(Params):
    """Parameters of particle detection (config section ``detect:``)."""

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
        description="Gaussian sigma of the point-spread function, µm. Unset: measured once per movie from "
        "the bright isolated spots of a few frames (falls back to spot_diameter_um / 4, with a warning).",
    )
    psf_model_error: float | None = Field(
        None,
        ge=0,
        description="Relative misfit of the Gaussian PSF model (RMS residual of a bright spot over its peak): "
        "a residual near a bright spot must stand out against this fraction of it to be a spot of its own. "
        "Unset: 0.05. estimate_psf reports the value measured on bright spots (PSFEstimate.model_error).",
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
    extended_objects: bool = Field(
        True,
        description="Report an object bigger than the PSF (aggregate, cluster, endosome) as one detection "
        "with its fitted size (size_um) and integrated intensity, instead of several point spots.",
    )
