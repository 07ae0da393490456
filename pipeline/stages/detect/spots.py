"""One frame at one PSF width: background, matched filter, noise; finds, fits, deblends and merges spots."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from pipeline.optics import centred_peak_fraction, pixel_fraction
from pipeline.stages.detect.fit import Fit, Mosaic, long_axis, pixel
from pipeline.stages.detect.noise import local_background, quantisation_step, reflect_noise_gain, tile_maps
from pipeline.stages.detect.params import (
    BRIGHT_FOR_PSF,
    CANDIDATE_FRACTION,
    DEBLEND_ROUNDS,
    EXTENDED_CORE_SIGMAS,
    EXTENDED_LINK_SIGMAS,
    EXTENDED_MAX_SIGMAS,
    EXTENDED_MIN_SPOTS,
    EXTENDED_MODEL_ERROR,
    EXTENDED_SIGMA_RATIO,
    FIT_SWEEPS,
    MAX_SPOTS_FOR_PSF,
    MIN_SPLIT_SNR,
    MIN_SPOTS_FOR_PSF,
    MIN_TILE_PX,
    MODEL_ERROR,
    NOISE_MASK_SNR,
    NOISE_STRIDE,
    PAIR_MERGE_UNITS,
    PAIR_SIGMA_RATIO,
    SATURATED_MAX_FRACTION,
    SATURATED_MIN_PIXELS,
    TILE_SIGMAS,
    WIDTH_BOUNDS_PX,
    WING_SIGMAS,
)
from pipeline.stages.detect.peaks import local_maxima, not_duplicate


class Spots:
    """Background, filtered image and noise of one frame at one PSF width; finds and fits spots.

    Parameters
    ----------
    image : (Y, X) float array
    sigma : float
        PSF Gaussian sigma, px.
    background_px : float
        Side of the local-background window, px (never below the smallest that clears a spot).
    min_snr : float
        Detection threshold in noise units of the matched-filtered image.
    model_error : float
        Relative misfit of the Gaussian PSF model, measured with the PSF
        (:func:`pipeline.stages.detect.estimate_psf`); sets how far a residual
        near a bright spot must stand out to be a spot of its own.
    """

    def __init__(self, image: np.ndarray, sigma: float, background_px: float, min_snr: float,
                 model_error: float = MODEL_ERROR):
        self.image = image
        #: relative misfit of the Gaussian PSF model (fraction of a spot's peak, per pixel)
        self.model_error = float(model_error)
        self.sigma = float(sigma)
        self.min_snr = float(min_snr)
        self.half = max(2, int(np.ceil(2.5 * self.sigma)))  # fit window half-width
        offsets = np.arange(-self.half, self.half + 1)
        profile = pixel_fraction(offsets, self.sigma)
        self.kernel = profile / profile.sum()
        #: matched-filter response at the centre of a unit-flux spot
        self.unit_response = float(profile @ self.kernel) ** 2
        self.peak_fraction = centred_peak_fraction(self.sigma)
        size = max(2 * self.half + 3, int(np.ceil(background_px)) | 1)
        self.background = local_background(self.filter(image), size)
        self.sub = image - self.background
        self.filtered = self.filter(self.sub)
        top = float(image.max()) if image.size else 0.0
        n_top = int(np.count_nonzero(image == top)) if image.size else 0
        #: pixel weights of the fits: saturated pixels (the frame's maximum, held by a few pixels) left out
        self.valid = (image != top).astype(float) \
            if SATURATED_MIN_PIXELS <= n_top <= SATURATED_MAX_FRACTION * image.size else None
        self.level, self.spread = self._noise()

    def filter(self, image: np.ndarray) -> np.ndarray:
        """Correlate with the pixel-integrated PSF (normalised to sum 1)."""
        out = ndimage.correlate1d(image, self.kernel, axis=0, mode="reflect")
        return ndimage.correlate1d(out, self.kernel, axis=1, mode="reflect")

    # -- noise ----------------------------------------------------------------

    def _noise(self) -> tuple[np.ndarray, np.ndarray]:
        """Robust level and spread maps of the filtered image, spots left out.

        The spread is never below the quantisation noise of the pixels
        (step / √12, filtered), so quantised 8-bit frames with clipped, all-zero
        backgrounds keep a finite threshold.
        """
        f = self.filtered
        tile = max(MIN_TILE_PX, int(round(TILE_SIGMAS * self.sigma)))
        stride = NOISE_STRIDE if tile >= NOISE_STRIDE * MIN_TILE_PX and min(f.shape) >= 2 * tile else 1
        sample = f[::stride, ::stride]
        level = np.median(sample)
        spread = 1.4826 * np.median(np.abs(sample - level))
        if not spread > 0:
            spread = float(np.std(sample))
        spots = ndimage.binary_dilation((sample - level) > NOISE_MASK_SNR * max(spread, 1e-12))
        level, spread = tile_maps(sample, spots, tile // stride, stride)
        level, spread = level[:f.shape[0], :f.shape[1]], spread[:f.shape[0], :f.shape[1]]
        floor = quantisation_step(self.image) / np.sqrt(12.0) * float(self.kernel @ self.kernel)
        scale = max(float(np.abs(sample).max()), 1.0)
        edge = [np.sqrt(reflect_noise_gain(self.kernel, n)) for n in f.shape]
        return level, np.maximum(spread, max(floor, 1e-9 * scale)) * edge[0][:, None] * edge[1][None, :]

    def significance(self, filtered: np.ndarray) -> np.ndarray:
        """Filtered values in units of the local noise above the local level."""
        return (filtered - self.level) / self.spread

    def peaks(self, filtered: np.ndarray, z: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Local maxima of ``filtered`` within ``radius`` px, significance ``z`` above the candidate level."""
        return local_maxima(filtered, z, radius, CANDIDATE_FRACTION * self.min_snr)

    # -- PSF ----------------------------------------------------------------------

    def psf_candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """Strongest bright isolated maxima (positions, px) that serve to measure the PSF width."""
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
        return y[chosen], x[chosen]

    def fitted_psf(self) -> tuple[np.ndarray, np.ndarray]:
        """Free-width fits of the bright isolated spots: widths (px) and relative model errors.

        The window has room for a spot wider than the current guess, so that
        repeated measurements walk to the true width. The model error of a
        spot is the RMS of its fit residual beyond the pixel noise, over its
        peak: how far real spots are from the Gaussian model.
        """
        y, x = self.psf_candidates()
        if len(y) == 0:
            return np.zeros(0), np.zeros(0)
        fit = Fit(self.sub, y, x, self.initial_flux(y, x), self.sigma, self.half + 2, valid=self.valid,
                  fit_width=True)
        fit.run(FIT_SWEEPS)
        idx = np.flatnonzero(fit.converged())
        if len(idx) == 0:
            return np.zeros(0), np.zeros(0)
        stamps, valid = fit.stamps(idx)
        w = stamps.shape[1]
        grid = np.arange(w) - (w - 1) / 2.0
        sigma = fit.sigma[idx, None, None]
        own = fit.flux[idx, None, None] * pixel_fraction(grid[None, :, None] - (fit.y - fit.cy)[idx, None, None], sigma) \
            * pixel_fraction(grid[None, None, :] - (fit.x - fit.cx)[idx, None, None], sigma)
        n_px = np.maximum(valid.sum(axis=(1, 2)), 1.0)
        mean_square = (((stamps - own) * valid) ** 2).sum(axis=(1, 2)) / n_px
        iy, ix = pixel(fit.y[idx], self.image.shape[0]), pixel(fit.x[idx], self.image.shape[1])
        pixel_noise = self.spread[iy, ix] / float(self.kernel @ self.kernel)
        peak = fit.flux[idx] * np.array([centred_peak_fraction(s) for s in fit.sigma[idx]])
        return fit.sigma[idx], np.sqrt(np.clip(mean_square - pixel_noise**2, 0.0, None)) / peak

    def fitted_widths(self) -> np.ndarray:
        """Free-width fits (px) of the bright isolated spots (see :meth:`fitted_psf`)."""
        return self.fitted_psf()[0]

    def measure_sigma(self) -> float | None:
        """PSF sigma (px): median of the free-width fits, or None with fewer than MIN_SPOTS_FOR_PSF."""
        widths = self.fitted_widths()
        return float(np.median(widths)) if len(widths) >= MIN_SPOTS_FOR_PSF else None

    # -- detection -----------------------------------------------------------

    def detect(self, separation: float) -> Fit:
        """Find, fit and deblend the spots."""
        z = self.significance(self.filtered)
        y, x = self.peaks(self.filtered, z, separation)
        fit = Fit(self.sub, y, x, self.initial_flux(y, x), self.sigma, self.half, valid=self.valid)
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
        fit.keep(not_duplicate(fit.y, fit.x, fit.flux, separation))
        return fit

    def _residual_peaks(self, fit: Fit, separation: float) -> bool:
        """Add significant peaks of the filtered residual image as new spots; True if any."""
        model = self.filter(fit.model_image())
        residual = self.filtered - model
        wings = ndimage.gaussian_filter(model, WING_SIGMAS * self.sigma)
        inflated = np.sqrt(self.spread**2 + (self.model_error * np.maximum(model, wings)) ** 2)
        ny, nx = self.peaks(residual, (residual - self.level) / inflated, separation)
        if len(fit.y) and len(ny):
            far = cKDTree(np.column_stack([fit.y, fit.x])).query(np.column_stack([ny, nx]))[0] >= separation
            ny, nx = ny[far], nx[far]
        if len(ny) == 0:
            return False
        iy, ix = ny.astype(int), nx.astype(int)
        fit.add(ny, nx, np.clip(residual[iy, ix] - self.level[iy, ix], 0.0, None) / self.unit_response)
        return True

    def _split_blends(self, fit: Fit, separation: float) -> bool:
        """Replace spots that are better explained as two spots; True if any.

        Each spot bright enough to hide two detectable ones is refitted, alone
        in its window with its neighbours' models subtracted, once as one and
        once as two spots (started apart along the spot's long axis). The pair
        replaces it when both members are significant, at least ``separation``
        apart, and the drop in the residual sum of squares, in units of the
        pixel noise variance (plus MODEL_ERROR of the spot's peak, squared),
        exceeds ``max(min_snr, MIN_SPLIT_SNR)**2``.
        """
        iy, ix = pixel(fit.y, self.image.shape[0]), pixel(fit.x, self.image.shape[1])
        z = fit.flux * self.unit_response / self.spread[iy, ix]
        cand = np.flatnonzero(z >= 2 * self.min_snr)
        if len(cand) == 0:
            return False
        stamps, valid = fit.stamps(cand)
        if self.valid is not None:  # a saturated core hides any structure: such spots are not split
            unsaturated = valid.min(axis=(1, 2)) > 0
            cand, stamps, valid = cand[unsaturated], stamps[unsaturated], valid[unsaturated]
            if len(cand) == 0:
                return False
        n, w = len(cand), stamps.shape[1]
        centre = (w - 1) / 2.0
        oy, ox = fit.y[cand] - fit.cy[cand], fit.x[cand] - fit.cx[cand]
        # a pair can only gain what the single spot leaves unexplained: skip spots whose window's
        # residual is within two standard deviations of pure noise plus the required gain
        pixel_noise = self.spread[iy[cand], ix[cand]] / float(self.kernel @ self.kernel)
        model_error = self.model_error * fit.flux[cand] * self.peak_fraction
        grid = np.arange(w) - centre
        own = fit.flux[cand, None, None] * pixel_fraction(grid[None, :, None] - oy[:, None, None], self.sigma) \
            * pixel_fraction(grid[None, None, :] - ox[:, None, None], self.sigma)
        chi2 = (((stamps - own) * valid) ** 2).sum(axis=(1, 2)) / (pixel_noise**2 + model_error**2)
        n_px = valid.sum(axis=(1, 2))
        needed = max(self.min_snr, MIN_SPLIT_SNR) ** 2
        worth = chi2 >= n_px - 4 + needed - 2 * np.sqrt(2 * n_px)
        if not worth.any():
            return False
        cand, stamps, valid, oy, ox = cand[worth], stamps[worth], valid[worth], oy[worth], ox[worth]
        n = len(cand)
        axis, half_distance = long_axis(stamps, oy + centre, ox + centre, self.sigma)
        mosaic = Mosaic(stamps, valid, self.sigma, self.half)
        rss_single = mosaic.fit(oy + centre, ox + centre, fit.flux[cand])[4]
        pair_y = np.concatenate([oy + centre + half_distance * axis[:, 0], oy + centre - half_distance * axis[:, 0]])
        pair_x = np.concatenate([ox + centre + half_distance * axis[:, 1], ox + centre - half_distance * axis[:, 1]])
        py, px, pflux, pok, rss_pair, _ = mosaic.fit(pair_y, pair_x, np.tile(0.5 * fit.flux[cand], 2))
        pixel_noise = self.spread[iy[cand], ix[cand]] / float(self.kernel @ self.kernel)
        model_error = self.model_error * fit.flux[cand] * self.peak_fraction
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

    # -- extended objects -------------------------------------------------------

    def merge_extended(self, fit: Fit) -> Fit:
        """Replace groups of overlapping spots that are one object bigger than the PSF by that object.

        Spots closer than EXTENDED_LINK_SIGMAS PSF sigmas form groups; each group
        of at least EXTENDED_MIN_SPOTS is refitted, alone (the other spots'
        models subtracted), as one Gaussian of free width and (groups of 3 or
        more) as a core (a PSF spot at the brightest member) in a halo (a
        Gaussian of free width, at least 2 PSF sigmas: a bright endosome in a
        diffuse cloud). It is one object when that width is at least
        EXTENDED_SIGMA_RATIO PSF sigmas, the spots lower the residual sum of
        squares by less than ``max(min_snr, MIN_SPLIT_SNR)**2`` per extra spot
        (in units of the pixel noise variance plus MODEL_ERROR of the object's
        peak, squared: the split test's criterion, reversed; a group of two:
        by less than PAIR_MERGE_UNITS pixel-noise variances), and no member spot
        beyond EXTENDED_CORE_SIGMAS of the object's fitted sigma from its centre
        (structure within it is texture) is significant (``min_snr``) in the residual of that
        model, the noise of each pixel being the pixel noise plus
        EXTENDED_MODEL_ERROR of the model there. The last is the test a spot
        passes to be detected at all, so a dim spot next to a bright one stays
        a spot
        of its own. The group's spots are removed from ``fit``; returns the
        objects as a :class:`Fit`, one Gaussian each (the core + halo as its
        flux-weighted centre and second-moment sigma).
        """
        n = len(fit.y)
        empty = Fit(self.sub, np.zeros(0), np.zeros(0), np.zeros(0), self.sigma, self.half, fit_width=True)
        if n < EXTENDED_MIN_SPOTS:
            return empty
        points = np.column_stack([fit.y, fit.x])
        pairs = cKDTree(points).query_pairs(EXTENDED_LINK_SIGMAS * self.sigma, output_type="ndarray")
        if len(pairs) == 0:
            return empty
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        labels = connected_components(graph, directed=False)[1]
        sizes = np.bincount(labels)
        groups = np.flatnonzero(sizes >= EXTENDED_MIN_SPOTS)
        if len(groups) == 0:
            return empty
        member = np.flatnonzero(np.isin(labels, groups))
        block = np.searchsorted(groups, labels[member])
        weight = fit.flux[member]
        total = np.bincount(block, weights=weight)
        cy = np.bincount(block, weights=weight * fit.y[member]) / total
        cx = np.bincount(block, weights=weight * fit.x[member]) / total
        var = np.bincount(block, weights=weight * ((fit.y[member] - cy[block]) ** 2
                                                   + (fit.x[member] - cx[block]) ** 2)) / total / 2
        start_sigma = np.sqrt(self.sigma**2 + var)
        extent = np.sqrt(np.max((fit.y[member] - cy[block]) ** 2 + (fit.x[member] - cx[block]) ** 2))
        max_sigma = EXTENDED_MAX_SIGMAS * self.sigma
        half = int(np.ceil(min(2.5 * max(start_sigma.max(), 1.5 * self.sigma), 2.5 * max_sigma) + 0.5 * extent))
        half = max(half, self.half + 1)
        # stamps of the image minus every spot outside the group, centred on the group's pixel
        residual = np.pad(self.sub - fit.model_image(), half + 1)
        own = Fit(self.sub, fit.y[member], fit.x[member], fit.flux[member], self.sigma, self.half)
        own_model = np.pad(own.model_image(), half + 1)
        py, px = pixel(cy, self.image.shape[0]), pixel(cx, self.image.shape[1])
        grid = np.arange(-half, half + 1)
        rows = (py[:, None] + grid + half + 1)[:, :, None]
        cols = (px[:, None] + grid + half + 1)[:, None, :]
        stamps = residual[rows, cols] + own_model[rows, cols]
        inside = np.pad(np.ones(self.image.shape) if self.valid is None else self.valid, half + 1)[rows, cols]
        mosaic = Mosaic(stamps, inside, self.sigma, half)
        centre = float(half)
        rss_multi = mosaic.fit(fit.y[member] - py[block] + centre, fit.x[member] - px[block] + centre,
                               fit.flux[member], block=block, half=self.half)[4]
        sy, sx, sflux, sok, rss_single, swidth = mosaic.fit(cy - py + centre, cx - px + centre, total,
                                                            fit_width=True, sigma=float(np.median(start_sigma)),
                                                            half=half)
        pixel_noise = self.spread[py, px] / float(self.kernel @ self.kernel)
        local_y, local_x = fit.y[member] - py[block] + centre, fit.x[member] - px[block] + centre
        z_single = self._member_significance(mosaic, block, local_y, local_x, pixel_noise)
        # structure within the object is its texture; a significant spot on its edge is a neighbour
        outside = np.hypot(local_y - sy[block], local_x - sx[block]) > EXTENDED_CORE_SIGMAS * swidth[block]
        z_single = np.where(outside, z_single, -np.inf)
        # core + halo: a PSF spot at the brightest member and a wide Gaussian at the centroid
        order = np.lexsort((-fit.flux[member], block))
        core = order[np.r_[0, np.flatnonzero(np.diff(block[order])) + 1]]
        two_y = np.r_[fit.y[member][core] - py + centre, cy - py + centre]
        two_x = np.r_[fit.x[member][core] - px + centre, cx - px + centre]
        two_flux = np.r_[fit.flux[member][core], np.maximum(total - fit.flux[member][core], 1e-9)]
        g = len(groups)
        hy, hx, hflux, hok, rss_halo, hwidth = mosaic.fit(
            two_y, two_x, two_flux, block=np.r_[np.arange(g), np.arange(g)], half=half,
            fit_width=np.r_[np.zeros(g, bool), np.ones(g, bool)],
            sigma=np.r_[np.full(g, self.sigma), np.maximum(start_sigma, 2 * self.sigma)])
        z_halo = self._member_significance(mosaic, block, local_y, local_x, pixel_noise)
        not_core = np.ones(len(member), bool)
        not_core[core] = False
        outside = np.hypot(local_y - hy[g + block], local_x - hx[g + block]) > EXTENDED_CORE_SIGMAS * hwidth[g + block]
        z_halo = np.where(not_core & outside, z_halo, -np.inf)
        worst_single = np.full(g, -np.inf)
        worst_halo = np.full(g, -np.inf)
        np.maximum.at(worst_single, block, z_single)
        np.maximum.at(worst_halo, block, z_halo)
        k = sizes[groups]
        peak = sflux * np.array([centred_peak_fraction(s) for s in swidth])
        variance = pixel_noise**2 + (self.model_error * peak) ** 2
        per_spot = max(self.min_snr, MIN_SPLIT_SNR) ** 2
        wide = min(max_sigma, WIDTH_BOUNDS_PX[1])
        single = sok & (swidth >= EXTENDED_SIGMA_RATIO * self.sigma) & (swidth < wide) & (worst_single < self.min_snr)
        # two spots (the split test found them better than one PSF spot) are one object only if one
        # Gaussian of free width fits them as well, in pure noise units (2 per parameter saved)
        single &= np.where(k == 2, ((rss_single - rss_multi) / pixel_noise**2 < PAIR_MERGE_UNITS)
                           & (swidth >= PAIR_SIGMA_RATIO * self.sigma),
                           (rss_single - rss_multi) / variance < (k - 1) * per_spot)
        c, h = np.arange(g), np.arange(g, 2 * g)
        halo = (k >= 3) & hok[c] & hok[h] & (hwidth[h] >= 2 * self.sigma) & (hwidth[h] < wide) \
            & (worst_halo < self.min_snr) & ((rss_halo - rss_multi) / variance < (k - 2) * per_spot) & ~single
        accept = single | halo
        if not accept.any():
            return empty
        oy_img = np.where(halo, (hflux[c] * hy[c] + hflux[h] * hy[h]) / (hflux[c] + hflux[h]), sy) + py - centre
        ox_img = np.where(halo, (hflux[c] * hx[c] + hflux[h] * hx[h]) / (hflux[c] + hflux[h]), sx) + px - centre
        accept &= (oy_img >= -0.5) & (oy_img <= self.image.shape[0] - 0.5)
        accept &= (ox_img >= -0.5) & (ox_img <= self.image.shape[1] - 0.5)
        if not accept.any():
            return empty
        # one Gaussian per object: the single fit, or the core + halo's moments (flux-weighted)
        flux2 = hflux[c] + hflux[h]
        obj_y = np.where(halo, (hflux[c] * hy[c] + hflux[h] * hy[h]) / flux2, sy)
        obj_x = np.where(halo, (hflux[c] * hx[c] + hflux[h] * hx[h]) / flux2, sx)
        obj_flux = np.where(halo, flux2, sflux)
        obj_sigma = np.where(halo, np.sqrt((hflux[c] * self.sigma**2 + hflux[h] * hwidth[h] ** 2) / flux2), swidth)
        keep = np.ones(n, bool)
        keep[member[accept[block]]] = False
        fit.keep(keep)
        objects = Fit(self.sub - fit.model_image(), np.zeros(0), np.zeros(0), np.zeros(0), self.sigma, half,
                      valid=self.valid, fit_width=True)
        objects.add(obj_y[accept] + py[accept] - centre, obj_x[accept] + px[accept] - centre, obj_flux[accept],
                    obj_sigma[accept])
        return objects

    def _member_significance(self, mosaic: Mosaic, block: np.ndarray, y: np.ndarray, x: np.ndarray,
                             pixel_noise: np.ndarray) -> np.ndarray:
        """Matched-filter significance of the residual of ``mosaic``'s last fit at spots (y, x) of stamps
        ``block``: the noise is the pixel noise plus EXTENDED_MODEL_ERROR of the fitted model, per pixel."""
        w = mosaic.residual.shape[1]
        grid = np.arange(w, dtype=float)
        psf = pixel_fraction(grid[None, :, None] - y[:, None, None], self.sigma) \
            * pixel_fraction(grid[None, None, :] - x[:, None, None], self.sigma)
        valid = mosaic.valid[mosaic.block_rows, mosaic.block_cols][block]
        psf = psf * valid
        variance = pixel_noise[block, None, None] ** 2 + (EXTENDED_MODEL_ERROR * mosaic.model[block]) ** 2
        response = (psf * mosaic.residual[block]).sum(axis=(1, 2))
        return response / np.sqrt(np.maximum((psf**2 * variance).sum(axis=(1, 2)), 1e-300))

    # -- helpers ----------------------------------------------------------------

    def initial_flux(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Flux estimate of spots at (y, x) from the filtered image at the nearest pixel."""
        iy, ix = pixel(y, self.image.shape[0]), pixel(x, self.image.shape[1])
        return np.clip(self.filtered[iy, ix] - self.level[iy, ix], 0.0, None) / self.unit_response

    def significance_at(self, fit: Fit) -> np.ndarray:
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
        iy, ix = pixel(fit.y, self.image.shape[0]), pixel(fit.x, self.image.shape[1])
        grid = np.arange(stamps.shape[1]) - (stamps.shape[1] - 1) // 2
        profile_y = pixel_fraction(fit.cy[:, None] + grid - fit.y[:, None], fit.sigma[:, None])
        profile_x = pixel_fraction(fit.cx[:, None] + grid - fit.x[:, None], fit.sigma[:, None])
        psf = profile_y[:, :, None] * profile_x[:, None, :] * valid
        response = (psf * (stamps - self.level[iy, ix, None, None])).sum(axis=(1, 2))
        pixel_noise = self.spread[iy, ix] / float(self.kernel @ self.kernel)
        return response / (pixel_noise * np.sqrt(np.maximum((psf**2).sum(axis=(1, 2)), 1e-300)))
