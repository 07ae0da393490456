"""Least-squares fit of pixel-integrated Gaussian spots, compiled with numba.

Spots are fitted by Gauss-Seidel block coordinate descent: one damped
Gauss-Newton step per spot in turn (brightest first), each spot seeing the image
minus the current models of all other spots, its window following it to the
nearest pixel; sweeps repeat until no spot moves more than ``TOLERANCE_PX``.
Parameters per spot: position (px), flux (image units), local offset and,
optionally, the Gaussian width (px). The step runs in one compiled loop over all
spots (no Python loop per spot).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy.spatial import cKDTree

from pipeline.optics import pixel_fraction
from pipeline.stages.detect.params import FIT_SWEEPS, LM_DAMPING, TOLERANCE_PX, WIDTH_BOUNDS_PX

_SQRT2 = math.sqrt(2.0)
_SQRTPI = math.sqrt(math.pi)


def pixel(coord: np.ndarray, size: int) -> np.ndarray:
    """Nearest pixel index of coordinates (px), clipped to ``[0, size)``."""
    return np.clip(np.rint(np.nan_to_num(coord)).astype(int), 0, size - 1)


def pixel_fraction_grads(offset: np.ndarray, sigma: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Derivatives of :func:`pipeline.optics.pixel_fraction` with respect to ``offset`` and to ``sigma``."""
    scale = 1.0 / (np.sqrt(2.0) * sigma)
    up, lo = (offset + 0.5) * scale, (offset - 0.5) * scale
    g_up, g_lo = np.exp(-up**2) / np.sqrt(np.pi), np.exp(-lo**2) / np.sqrt(np.pi)
    return (g_up - g_lo) * scale, -(g_up * up - g_lo * lo) / sigma


@numba.njit(cache=True)
def _profile(centre_px, position, sigma, half, f, g, s):
    """1-D pixel fractions ``f`` and their derivatives by offset ``g`` and sigma ``s`` on the window."""
    scale = 1.0 / (_SQRT2 * sigma)
    for k in range(2 * half + 1):
        d = centre_px + k - half - position
        up, lo = (d + 0.5) * scale, (d - 0.5) * scale
        f[k] = 0.5 * (math.erf(up) - math.erf(lo))
        e_up, e_lo = math.exp(-up * up) / _SQRTPI, math.exp(-lo * lo) / _SQRTPI
        g[k] = (e_up - e_lo) * scale
        s[k] = -(e_up * up - e_lo * lo) / sigma


@numba.njit(cache=True)
def _add_patch(model, cy, cx, pad, half, flux, fy, fx, sign):
    for a in range(2 * half + 1):
        for b in range(2 * half + 1):
            model[cy + pad + a - half, cx + pad + b - half] += sign * flux * fy[a] * fx[b]


@numba.njit(cache=True)
def _solve(normal, rhs, n):
    """Solve the small symmetric system in place (Gaussian elimination, partial pivoting); False if singular."""
    for c in range(n):
        p = c
        for r in range(c + 1, n):
            if abs(normal[r, c]) > abs(normal[p, c]):
                p = r
        if not abs(normal[p, c]) > 0.0:
            return False
        if p != c:
            for k in range(n):
                normal[c, k], normal[p, k] = normal[p, k], normal[c, k]
            rhs[c], rhs[p] = rhs[p], rhs[c]
        for r in range(c + 1, n):
            m = normal[r, c] / normal[c, c]
            for k in range(c, n):
                normal[r, k] -= m * normal[c, k]
            rhs[r] -= m * rhs[c]
    for c in range(n - 1, -1, -1):
        v = rhs[c]
        for k in range(c + 1, n):
            v -= normal[c, k] * rhs[k]
        rhs[c] = v / normal[c, c]
    return True


@numba.njit(cache=True)
def _sweeps(data, valid, model, y, x, flux, offset, sigma, cy, cx, order, start, neighbours, half, fit_width,
            max_sweeps, tolerance, damping, width_lo, width_hi, shape_y, shape_x):
    """Gauss-Seidel sweeps over the spots (in ``order``), in place; returns the number of sweeps run.

    Spot ``i``'s neighbours (whose windows can overlap its own) are
    ``neighbours[start[i]:start[i + 1]]``; after the first sweep only spots
    that moved by more than ``tolerance``, and their neighbours, are stepped.
    """
    pad = half + 1
    w = 2 * half + 1
    fy, gy, sy = np.empty(w), np.empty(w), np.empty(w)
    fx, gx, sx = np.empty(w), np.empty(w), np.empty(w)
    jac = np.empty(5)
    normal = np.empty((5, 5))
    rhs = np.empty(5)
    n = len(y)
    active = np.ones(n, np.bool_)
    moved = np.zeros(n)
    sweeps = 0
    for _ in range(max_sweeps):
        sweeps += 1
        moved[:] = 0.0
        for i in order:
            if not active[i]:
                continue
            free = fit_width[i]
            npar = 5 if free else 4
            _profile(cy[i], y[i], sigma[i], half, fy, gy, sy)
            _profile(cx[i], x[i], sigma[i], half, fx, gx, sx)
            normal[:, :] = 0.0
            rhs[:] = 0.0
            f = flux[i]
            for a in range(w):
                r = cy[i] + pad + a - half
                for b in range(w):
                    c = cx[i] + pad + b - half
                    wt = valid[r, c]
                    if wt == 0.0:
                        continue
                    res = data[r, c] - model[r, c] - offset[i]
                    jac[0] = -f * gy[a] * fx[b]
                    jac[1] = -f * fy[a] * gx[b]
                    jac[2] = fy[a] * fx[b]
                    jac[3] = 1.0
                    if free:
                        jac[4] = f * (sy[a] * fx[b] + fy[a] * sx[b])
                    for p in range(npar):
                        rhs[p] += wt * jac[p] * res
                        for q in range(p, npar):
                            normal[p, q] += wt * jac[p] * jac[q]
            for p in range(npar):
                for q in range(p):
                    normal[p, q] = normal[q, p]
                normal[p, p] += damping * normal[p, p] + 1e-12
            if not _solve(normal, rhs, npar):
                continue
            ok = True
            for p in range(npar):
                if not math.isfinite(rhs[p]):
                    ok = False
            if not ok:
                continue
            step_y = min(max(rhs[0], -0.5), 0.5)
            step_x = min(max(rhs[1], -0.5), 0.5)
            _add_patch(model, cy[i], cx[i], pad, half, f, fy, fx, -1.0)
            y[i] += step_y
            x[i] += step_x
            flux[i] = max(f + rhs[2], 1e-9)
            offset[i] += rhs[3]
            if free:
                width = sigma[i]
                sigma[i] = min(max(width + min(max(rhs[4], -0.3 * width), 0.3 * width), width_lo), width_hi)
            cy[i] = min(max(int(round(y[i])), 0), shape_y - 1)
            cx[i] = min(max(int(round(x[i])), 0), shape_x - 1)
            _profile(cy[i], y[i], sigma[i], half, fy, gy, sy)
            _profile(cx[i], x[i], sigma[i], half, fx, gx, sx)
            _add_patch(model, cy[i], cx[i], pad, half, flux[i], fy, fx, 1.0)
            moved[i] = max(abs(step_y), abs(step_x))
        any_moved = False
        for i in range(n):
            active[i] = False
        for i in range(n):
            if moved[i] > tolerance:
                any_moved = True
                active[i] = True
                for k in range(start[i], start[i + 1]):
                    active[neighbours[k]] = True
        if not any_moved:
            break
    return sweeps


class Fit:
    """Least-squares fit of pixel-integrated Gaussian spots (position, flux, local offset[, sigma]).

    Parameters
    ----------
    sub : (Y, X) array
        Background-subtracted image.
    y, x : (n,) arrays
        Starting positions, px.
    flux : (n,) array
        Starting fluxes, image units.
    sigma : float
        Gaussian width of every spot (the start when ``fit_width``), px.
    half : int
        Fit window half-width, px.
    valid : (Y, X) array, optional
        Pixel weights (0 leaves a pixel out).
    fit_width : bool
        Also fit each spot's width (bounded by ``WIDTH_BOUNDS_PX``); see also
        :attr:`free_width`, per spot.
    """

    def __init__(self, sub: np.ndarray, y: np.ndarray, x: np.ndarray, flux: np.ndarray, sigma: float,
                 half: int, *, valid: np.ndarray | None = None, fit_width: bool = False):
        self.shape = sub.shape
        self.half = half
        self.pad = half + 1
        self.data = np.pad(np.asarray(sub, float), self.pad)
        self.valid = np.pad(np.ones(sub.shape) if valid is None else valid.astype(float), self.pad)
        self.offsets = np.arange(-half, half + 1)
        self.sigma0 = float(sigma)
        self.fit_width = fit_width
        self.model = np.zeros_like(self.data)
        self.y, self.x = np.zeros(0), np.zeros(0)
        self.flux, self.offset, self.sigma = np.zeros(0), np.zeros(0), np.zeros(0)
        self.cy, self.cx = np.zeros(0, np.int64), np.zeros(0, np.int64)
        #: which spots have a free width
        self.free_width = np.zeros(0, bool)
        self.add(y, x, flux)

    # -- bookkeeping ------------------------------------------------------------

    def add(self, y: np.ndarray, x: np.ndarray, flux: np.ndarray, sigma: np.ndarray | None = None) -> None:
        """Add spots (widths ``sigma`` px, default the fit's) and their models."""
        n = len(y)
        self.y = np.concatenate([self.y, np.asarray(y, float)])
        self.x = np.concatenate([self.x, np.asarray(x, float)])
        self.flux = np.concatenate([self.flux, np.asarray(flux, float)])
        self.offset = np.concatenate([self.offset, np.zeros(n)])
        self.sigma = np.concatenate([self.sigma, np.full(n, self.sigma0) if sigma is None else np.asarray(sigma, float)])
        self.free_width = np.concatenate([self.free_width, np.full(n, self.fit_width)])
        self.cy = np.concatenate([self.cy, pixel(np.asarray(y, float), self.shape[0])])
        self.cx = np.concatenate([self.cx, pixel(np.asarray(x, float), self.shape[1])])
        new = np.arange(len(self.y) - n, len(self.y))
        np.add.at(self.model, self._index(new), self._patch(new)[0])

    def keep(self, keep: np.ndarray) -> None:
        """Drop the spots where ``keep`` is False (and their models)."""
        drop = np.flatnonzero(~keep)
        if len(drop) == 0:
            return
        np.add.at(self.model, self._index(drop), -self._patch(drop)[0])
        for name in ("y", "x", "flux", "offset", "sigma", "cy", "cx", "free_width"):
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
        return inside & (self.flux > 1e-9) & np.isfinite(self.flux) & np.isfinite(self.y) & np.isfinite(self.x)

    # -- model ----------------------------------------------------------------

    def _index(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = (self.cy[idx, None] + self.offsets + self.pad)[:, :, None]
        cols = (self.cx[idx, None] + self.offsets + self.pad)[:, None, :]
        return np.broadcast_to(rows, (len(idx), len(self.offsets), len(self.offsets))), \
            np.broadcast_to(cols, (len(idx), len(self.offsets), len(self.offsets)))

    def _patch(self, idx: np.ndarray):
        """Model patches (n, w, w) of spots ``idx`` and the 1-D profiles and offsets behind them."""
        sigma = self.sigma[idx, None]
        dy = self.cy[idx, None] + self.offsets - self.y[idx, None]
        dx = self.cx[idx, None] + self.offsets - self.x[idx, None]
        fy, fx = pixel_fraction(dy, sigma), pixel_fraction(dx, sigma)
        patch = self.flux[idx, None, None] * fy[:, :, None] * fx[:, None, :]
        return patch, fy, fx, dy, dx

    def _jacobian(self, idx: np.ndarray):
        patch, fy, fx, dy, dx = self._patch(idx)
        sigma = self.sigma[idx, None]
        gy, _ = pixel_fraction_grads(dy, sigma)
        gx, _ = pixel_fraction_grads(dx, sigma)
        flux = self.flux[idx, None, None]
        columns = [
            -flux * gy[:, :, None] * fx[:, None, :],  # d/dy (offset = pixel - y)
            -flux * fy[:, :, None] * gx[:, None, :],  # d/dx
            fy[:, :, None] * fx[:, None, :],  # d/dflux
            np.ones_like(patch),  # d/doffset
        ]
        n = len(idx)
        return patch, np.stack([c.reshape(n, -1) for c in columns], axis=2)

    # -- fitting --------------------------------------------------------------

    def run(self, sweeps: int = FIT_SWEEPS) -> None:
        """Sweep until no spot moves by more than TOLERANCE_PX (at most ``sweeps`` times)."""
        if len(self.y) == 0:
            return
        order = np.argsort(-self.flux, kind="stable").astype(np.int64)
        n = len(self.y)
        pairs = cKDTree(np.column_stack([self.cy, self.cx])).query_pairs(2 * self.half + 3, p=np.inf,
                                                                         output_type="ndarray")
        both = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else np.zeros((0, 2), np.int64)
        both = both[np.argsort(both[:, 0], kind="stable")]
        start = np.searchsorted(both[:, 0], np.arange(n + 1)).astype(np.int64)
        _sweeps(self.data, self.valid, self.model, self.y, self.x, self.flux, self.offset, self.sigma,
                self.cy, self.cx, order, start, both[:, 1].astype(np.int64), self.half, self.free_width, sweeps,
                TOLERANCE_PX, LM_DAMPING, WIDTH_BOUNDS_PX[0], WIDTH_BOUNDS_PX[1], self.shape[0], self.shape[1])

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
        try:
            cov = np.linalg.solve(normal, np.broadcast_to(np.eye(normal.shape[1]), normal.shape))
        except np.linalg.LinAlgError:  # a window without valid pixels
            cov = np.linalg.pinv(normal)
        cov = cov * variance[:, None, None]
        return np.sqrt(np.clip(0.5 * (cov[:, 0, 0] + cov[:, 1, 1]), 0.0, None))


class Mosaic:
    """Stamps laid out side by side with empty margins, so that :class:`Fit` fits each on its own."""

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

    def fit(self, y: np.ndarray, x: np.ndarray, flux: np.ndarray, *, block: np.ndarray | None = None,
            fit_width: bool | np.ndarray = False, sigma: float | np.ndarray | None = None, half: int | None = None):
        """Fit spots given in stamp coordinates (spot ``i`` in stamp ``block[i]``, default ``i % n``).

        ``fit_width`` and ``sigma`` may be given per spot.

        Returns y, x (stamp coordinates), flux, converged mask, the residual
        sum of squares of each stamp and the fitted widths (px); the residual
        and model stamps are kept as ``self.residual`` and ``self.model``.
        """
        block = np.arange(len(y)) % self.n if block is None else np.asarray(block)
        fit = Fit(self.image, np.zeros(0), np.zeros(0), np.zeros(0), self.sigma, self.half if half is None else half,
                  valid=self.valid)
        n = len(y)
        fit.add(y + self.oy[block], x + self.ox[block], flux, np.broadcast_to(self.sigma if sigma is None else sigma, n))
        fit.free_width[:] = np.broadcast_to(fit_width, n)
        fit.run(FIT_SWEEPS)
        count = np.maximum(np.bincount(block, minlength=self.n), 1)
        offset = np.bincount(block, weights=fit.offset, minlength=self.n) / count
        model = fit.model_image()[self.block_rows, self.block_cols]
        residual = self.image[self.block_rows, self.block_cols] - model - offset[:, None, None]
        rss = ((residual * self.valid[self.block_rows, self.block_cols]) ** 2).sum(axis=(1, 2))
        self.residual, self.model = residual, model
        return fit.y - self.oy[block], fit.x - self.ox[block], fit.flux, fit.converged(), rss, fit.sigma


def long_axis(stamps: np.ndarray, y: np.ndarray, x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
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
