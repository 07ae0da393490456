"""Particle detection: matched filter, noise-calibrated threshold, Gaussian fit, deblending, extended objects.

One frame of the particle channel in, one row per particle out (columns in
:data:`COLUMNS`, see ``pipeline/README.md``). The steps, all in pixels, each in
its module:

0. **PSF** (:mod:`.psf`). The Gaussian PSF width is measured once per movie or
   chunk of frames (:func:`estimate_psf`: free-width fits of bright isolated
   spots of a few frames, median, bounded, flagged at a bound) and passed to
   :func:`detect_frame`; only without one is it measured on the frame itself.
1. **Local background** (:mod:`.noise`). Grey opening of the PSF-smoothed image
   with a square larger than a spot, smoothed by a box of the same size but
   never below the opening itself: it follows cell autofluorescence and keeps
   the steps at cell edges, but not the spots. ``sub = image - background``.
2. **Matched filter.** ``sub`` correlated with the pixel-integrated Gaussian PSF
   (the optimal linear detector for a known spot shape in white noise).
3. **Noise** (:mod:`.noise`). The robust level and spread (median, MAD) of the
   filtered image per tile, pixels near spots left out, interpolated between
   tiles and corrected at the borders; never below the pixels' quantisation
   noise nor a fraction of the typical tile's (clipped, all-zero backgrounds of
   8-bit cameras have no measurable spread).
4. **Candidates** (:mod:`.peaks`). Local maxima of the filtered image (square
   neighbourhood of half-side ``separation``, separable) whose significance
   ``(filtered - level) / spread`` exceeds ``CANDIDATE_FRACTION × min_snr``;
   one per plateau.
5. **Fit** (:mod:`.fit`). Every spot is fitted with a pixel-integrated Gaussian
   of the PSF width (position, flux, local offset) by least squares, its
   neighbours' fitted spots subtracted (Gauss-Seidel sweeps compiled with
   numba), so clustered vesicles do not pull on each other.
6. **Deblending** (:mod:`.spots`). A spot bright enough to hide two is refitted
   as a pair and split if the pair fits significantly better; significant peaks
   of the filtered residual image become new spots; everything is refitted
   (``DEBLEND_ROUNDS`` times).
7. **Decision.** A spot is kept if the matched filter centred on its fitted
   sub-pixel position, its neighbours subtracted, exceeds ``min_snr`` times the
   local noise, and it is not within ``separation`` of a brighter one.
8. **Extended objects** (:meth:`.spots.Spots.merge_extended`). A group of
   overlapping spots that one Gaussian of free width (≥ 1.5 PSF sigmas) fits
   within the model error is one object (an aggregate, EV cluster, endosome),
   reported with its fitted width (``size_um``).

The threshold is in noise units, so one config serves dim and bright movies.
trackpy characterises the final spots (:mod:`.characterise`):
``trackpy.refine_com`` at the fitted positions gives ``size``, ``ecc`` and
``raw_mass`` on trackpy's terms. The fit gives ``y``, ``x``, ``mass`` (fitted
flux above the local background, image units), ``signal`` (its peak), ``ep``
(the fit's standard error of a coordinate, px), ``size_um`` (the object's
Gaussian sigma, µm) and ``integrated_intensity`` (background-subtracted sum of
its pixels, image units).
"""

from pipeline.optics import localization_crlb_px
from pipeline.stages.detect.frame import detect_frame, detect_frames, detect_near, empty_detections
from pipeline.stages.detect.params import COLUMNS, DetectParams
from pipeline.stages.detect.psf import PSFEstimate, estimate_psf, measure_psf_sigma_um

__all__ = [
    "COLUMNS",
    "DetectParams",
    "PSFEstimate",
    "detect_frame",
    "detect_frames",
    "detect_near",
    "empty_detections",
    "estimate_psf",
    "localization_crlb_px",
    "measure_psf_sigma_um",
]
