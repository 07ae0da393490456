"""Simulated cells: geometry, motion and the cell-channel rendering.

Geometry
--------
A cell is star-shaped around its centre ``c`` (pixels). Along the unit direction
``u = (cos θ, sin θ)`` (θ measured from +x towards +y) its boundary lies at

    r(θ) = r0 · clip(1 + Re Σ_k a_k e^{ikθ}, 0.5, 1.5),   k = 2 … K+1

(a few low Fourier harmonics with small complex amplitudes ``a_k``), cut by one
half-plane per neighbour: the line perpendicular to the centre-centre segment,
at the fraction ``r0_i / (r0_i + r0_j)`` of the segment, moved back by half the
gap. The half-planes of two cells are disjoint, so cells never overlap; with
a spacing below 1 they touch along flat contacts (dense packing), separated by
``gap_px``. Cell-relative coordinates of a point are the direction ``u`` and the
relative radius ``rho = |p - c| / r_eff(u)``: ``rho < 1`` is inside.

Cells drift (Brownian centres, pushed apart to the minimum spacing) and deform
(the amplitudes ``a_k`` follow Ornstein-Uhlenbeck processes).

Rendering
---------
Cell-relative maps are computed per bounding box. Texture and the nucleus are
defined in the cell's normalised coordinates ``q = rho · u`` so they follow the
cell as it moves and deforms. :func:`render_cells` returns relative images (a
typical cell pixel ≈ 1) that the callers scale to photons.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from scipy import ndimage

from pipeline.optics import camera, peak_photons_for_snr

#: Fourier orders of the outline harmonics (order 1 would only shift the cell).
HARMONIC_ORDERS = np.arange(2, 6)

#: Side of the per-cell texture grid, which spans q in [-TEXTURE_EXTENT, TEXTURE_EXTENT].
TEXTURE_GRID = 48
TEXTURE_EXTENT = 1.3

#: Cell-channel stains.
STAINS = ("cytoplasm", "membrane")


def _outline(harmonics: np.ndarray, radius: np.ndarray, uy: np.ndarray, ux: np.ndarray) -> np.ndarray:
    """Harmonic outline ``r0 · clip(1 + Re Σ a_k e^{ikθ}, 0.5, 1.5)`` before contact cuts (px).

    ``harmonics`` (..., K) and ``radius`` broadcast against the directions.
    """
    z = ux + 1j * uy
    power = z
    term = np.zeros(np.shape(z))
    for column in range(harmonics.shape[-1]):  # orders 2, 3, ... in sequence
        power = power * z
        term += np.real(harmonics[..., column] * power)
    return radius * np.clip(1.0 + term, 0.5, 1.5)


@dataclass(frozen=True)
class CellLayout:
    """Geometry of all cells at one time point.

    Attributes
    ----------
    centers : (N, 2) float, pixels (y, x).
    radii : (N,) float, base radius ``r0`` in pixels.
    harmonics : (N, K) complex, relative amplitudes of the orders in HARMONIC_ORDERS.
    gap_px : float, gap left between touching cells, pixels.
    """

    centers: np.ndarray
    radii: np.ndarray
    harmonics: np.ndarray
    gap_px: float

    @property
    def n_cells(self) -> int:
        return len(self.radii)

    @cached_property
    def _contact_planes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit normals (N, N, 2) from cell i towards j and plane distances (N, N) from i."""
        delta = self.centers[None, :, :] - self.centers[:, None, :]
        dist = np.hypot(delta[..., 0], delta[..., 1])
        np.fill_diagonal(dist, np.inf)
        normals = delta / dist[..., None]
        share = self.radii[:, None] / (self.radii[:, None] + self.radii[None, :])
        return normals, dist * share - 0.5 * self.gap_px

    def radius(self, cell: np.ndarray | int, uy: np.ndarray, ux: np.ndarray) -> np.ndarray:
        """Boundary distance ``r_eff`` (px) from the centre of ``cell`` along unit direction (uy, ux).

        ``cell`` is one 0-based cell index or an array of them broadcasting with ``uy``, ``ux``.
        """
        normals, plane = self._contact_planes
        if np.ndim(cell) == 0:  # one cell: only neighbours whose plane is within reach can cut
            r = _outline(self.harmonics[cell], self.radii[cell], uy, ux)
            for j in np.flatnonzero(plane[cell] < 1.5 * self.radii[cell]):
                cos = uy * normals[cell, j, 0] + ux * normals[cell, j, 1]
                with np.errstate(divide="ignore"):
                    r = np.where(cos > 1e-9, np.minimum(r, plane[cell, j] / cos), r)
            return r
        cell, uy, ux = np.broadcast_arrays(cell, uy, ux)
        r = _outline(self.harmonics[cell], self.radii[cell], uy, ux)
        cos = uy[..., None] * normals[cell, :, 0] + ux[..., None] * normals[cell, :, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            cut = np.where(cos > 1e-9, plane[cell] / cos, np.inf)
        return np.minimum(r, cut.min(axis=-1, initial=np.inf))

    def locate(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cell-relative coordinates of points (y, x) (px) with respect to their nearest cell.

        Returns
        -------
        cell : (P,) int, 0-based index of the cell with the smallest ``rho``.
        rho : (P,) float, relative radius in that cell (``< 1`` inside).
        uy, ux : (P,) float, unit direction from that cell's centre.
        """
        dy = np.asarray(y)[:, None] - self.centers[None, :, 0]
        dx = np.asarray(x)[:, None] - self.centers[None, :, 1]
        dist = np.maximum(np.hypot(dy, dx), 1e-9)
        uy, ux = dy / dist, dx / dist
        cells = np.broadcast_to(np.arange(self.n_cells), dist.shape)
        rho = dist / self.radius(cells, uy, ux)
        best = np.argmin(rho, axis=1)
        pick = np.arange(len(best))
        return best, rho[pick, best], uy[pick, best], ux[pick, best]

    def point(self, cell: np.ndarray, uy: np.ndarray, ux: np.ndarray, rho: np.ndarray,
              offset_px: float | np.ndarray = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Absolute (y, x) in px of cell-relative points, moved ``offset_px`` outward."""
        dist = rho * self.radius(cell, uy, ux) + offset_px
        return self.centers[cell, 0] + dist * uy, self.centers[cell, 1] + dist * ux


@dataclass(frozen=True)
class CellLooks:
    """Per-cell appearance, fixed over a movie.

    Attributes
    ----------
    brightness : (N,) relative stain brightness (cell-to-cell variation, mean ≈ 1).
    texture : (N, G, G) float32, zero-mean texture sampled at q in [-1.3, 1.3]².
    nucleus_center : (N, 2) nucleus centre in q coordinates.
    nucleus_axes : (N, 2) nucleus semi-axes in q units.
    nucleus_brightness : (N,) cytoplasmic-stain brightness of the nucleus relative to cytoplasm.
    """

    brightness: np.ndarray
    texture: np.ndarray
    nucleus_center: np.ndarray
    nucleus_axes: np.ndarray
    nucleus_brightness: np.ndarray


@dataclass(frozen=True)
class CellImages:
    """One frame of rendered cells: labels and relative (unit-brightness) images."""

    labels: np.ndarray  # (H, W) uint16, cell id = index + 1
    stain: np.ndarray  # (H, W) float32, cell channel
    autofluorescence: np.ndarray  # (H, W) float32, 0..~1 inside cells
    nuclei: np.ndarray  # (H, W) float32, nuclear stain


def lognormal_factor(rng: np.random.Generator, cv: float, size) -> np.ndarray:
    """Mean-one log-normal factors with coefficient of variation ``cv``."""
    sigma = np.sqrt(np.log1p(cv**2))
    return np.exp(rng.normal(-0.5 * sigma**2, sigma, size=size))


def random_harmonics(rng: np.random.Generator, n: int, irregularity: float) -> np.ndarray:
    """Stationary draws of outline harmonics: std ``irregularity / k`` for order k."""
    scale = irregularity * 2.0 / HARMONIC_ORDERS
    noise = rng.normal(size=(n, len(HARMONIC_ORDERS))) + 1j * rng.normal(size=(n, len(HARMONIC_ORDERS)))
    return noise * scale / np.sqrt(2.0)


def place_cells(rng: np.random.Generator, n: int, shape: tuple[int, int], radius_px: tuple[float, float], *,
                spacing: float, irregularity: float, gap_px: float, candidates: int = 400) -> CellLayout:
    """Place up to ``n`` cells at random, centres inside the field.

    Two cells keep a centre distance of at least ``spacing · (r0_i + r0_j)``. A
    spacing below 1 packs cells densely: each new cell goes to the free spot
    (of ``candidates`` random draws) closest to the cells already placed, so
    they grow as a colony whose cells touch. Returns fewer than ``n`` cells
    when no free spot is found.
    """
    radii = np.sort(rng.uniform(*radius_px, size=n))[::-1]  # big ones first
    centers = np.zeros((0, 2))
    kept = np.zeros(0)
    for r in radii:
        dense_start = spacing < 1 and len(kept) == 0  # a colony starts in the central half
        draws = (rng.uniform(0.25, 0.75, size=(candidates, 2)) if dense_start
                 else rng.uniform(0, 1, size=(candidates, 2))) * np.asarray(shape)
        dist = np.hypot(*(draws[:, None, :] - centers[None, :, :]).transpose(2, 0, 1))
        slack = (dist / (spacing * (r + kept))).min(axis=1, initial=np.inf)
        free = np.flatnonzero(slack >= 1.0)
        if len(free) == 0:
            continue
        pick = free[np.argmin(slack[free])] if spacing < 1 and len(kept) else free[0]
        centers = np.vstack([centers, draws[pick]])
        kept = np.append(kept, r)
    return CellLayout(centers=centers, radii=kept, harmonics=random_harmonics(rng, len(kept), irregularity),
                      gap_px=gap_px)


def evolve_layout(layout: CellLayout, rng: np.random.Generator, shape: tuple[int, int], *, dt_s: float,
                  diffusion_px2_s: float, shape_tau_s: float, irregularity: float, spacing: float) -> CellLayout:
    """Advance the cells by ``dt_s``: Brownian drift kept apart and in the field, OU shape change."""
    centers = layout.centers + rng.normal(0.0, np.sqrt(2 * diffusion_px2_s * dt_s), size=layout.centers.shape)
    min_dist = spacing * (layout.radii[:, None] + layout.radii[None, :])
    for _ in range(10):
        delta = centers[None, :, :] - centers[:, None, :]
        dist = np.hypot(delta[..., 0], delta[..., 1])
        np.fill_diagonal(dist, np.inf)
        deficit = np.clip(min_dist - dist, 0, None)
        if not deficit.any():
            break
        push = (delta / dist[..., None]) * (0.5 * deficit)[..., None]
        centers -= push.sum(axis=1)
    centers = np.clip(centers, 0, np.asarray(shape) - 1)
    keep = np.exp(-dt_s / shape_tau_s)
    fresh = random_harmonics(rng, layout.n_cells, irregularity)
    harmonics = layout.harmonics * keep + fresh * np.sqrt(1 - keep**2)
    return replace(layout, centers=centers, harmonics=harmonics)


def random_looks(rng: np.random.Generator, n: int, *, brightness_cv: float,
                 nucleus_brightness: tuple[float, float] = (0.6, 1.3)) -> CellLooks:
    """Draw per-cell brightness, texture and nucleus (its stain brightness uniform in
    ``nucleus_brightness``, relative to the cytoplasm)."""
    grid = rng.normal(size=(n, TEXTURE_GRID, TEXTURE_GRID))
    coarse = ndimage.gaussian_filter(grid, (0, 4, 4))
    fine = ndimage.gaussian_filter(rng.normal(size=grid.shape), (0, 1, 1))
    texture = coarse / coarse.std(axis=(1, 2), keepdims=True) + 0.6 * fine / fine.std(axis=(1, 2), keepdims=True)
    return CellLooks(
        brightness=lognormal_factor(rng, brightness_cv, n),
        texture=(texture / 1.17).astype(np.float32),
        nucleus_center=rng.uniform(-0.15, 0.15, size=(n, 2)),
        nucleus_axes=rng.uniform(0.3, 0.45, size=(n, 2)),
        nucleus_brightness=rng.uniform(*nucleus_brightness, size=n),
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def render_cells(layout: CellLayout, looks: CellLooks, shape: tuple[int, int], *, stain: str,
                 blur_px: float, texture_strength: float = 0.25) -> CellImages:
    """Rasterise the cells of one frame and render their relative intensities.

    Parameters
    ----------
    layout, looks : geometry and appearance of the cells.
    shape : (H, W) of the frame in pixels.
    stain : "cytoplasm" (filled cells, brighter where thick) or "membrane" (bright rim).
    blur_px : Gaussian blur (px) applied to the rendered images (the PSF).
    texture_strength : relative amplitude of the intensity texture.
    """
    if stain not in STAINS:
        raise ValueError(f"stain must be one of {STAINS}, not {stain!r}")
    labels = np.zeros(shape, np.uint16)
    images = {key: np.zeros(shape, np.float32) for key in ("stain", "autofluorescence", "nuclei")}
    pad = 4
    for i in range(layout.n_cells):
        reach = 1.5 * layout.radii[i] + pad
        cy, cx = layout.centers[i]
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, shape[0])
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = np.meshgrid(np.arange(y0, y1, dtype=np.float32) - np.float32(cy),
                             np.arange(x0, x1, dtype=np.float32) - np.float32(cx), indexing="ij")
        dist = np.maximum(np.hypot(dy, dx), 1e-9)
        uy, ux = dy / dist, dx / dist
        r_eff = layout.radius(i, uy, ux)
        signed = dist - r_eff  # radial signed distance to the boundary, px (< 0 inside)
        rho = np.minimum(dist / r_eff, TEXTURE_EXTENT)
        block = (slice(y0, y1), slice(x0, x1))
        inside = signed < 0
        if labels[block][inside].any():
            raise AssertionError(f"cell {i + 1} overlaps another cell")  # impossible by construction
        labels[block][inside] = i + 1
        values = _cell_values(looks, i, rho * uy, rho * ux, rho, signed, stain, texture_strength)
        for key, value in values.items():
            np.maximum(images[key][block], value, out=images[key][block])
    blurred = {key: ndimage.gaussian_filter(value, blur_px) for key, value in images.items()}
    return CellImages(labels=labels, **blurred)


def _cell_values(looks: CellLooks, i: int, qy: np.ndarray, qx: np.ndarray, rho: np.ndarray,
                 signed: np.ndarray, stain: str, texture_strength: float) -> dict[str, np.ndarray]:
    """Relative intensities of one cell's bounding box for each rendered image."""
    scale = (TEXTURE_GRID - 1) / (2 * TEXTURE_EXTENT)
    coords = [(qy + TEXTURE_EXTENT) * scale, (qx + TEXTURE_EXTENT) * scale]
    texture = 1.0 + texture_strength * ndimage.map_coordinates(looks.texture[i], coords, order=1)
    body = _sigmoid(-signed / 0.5)  # soft-edged filled cell
    nq = (qy - looks.nucleus_center[i, 0]) / looks.nucleus_axes[i, 0]
    nx = (qx - looks.nucleus_center[i, 1]) / looks.nucleus_axes[i, 1]
    nucleus = _sigmoid((1.0 - np.hypot(nq, nx)) * 12.0)
    if stain == "cytoplasm":
        thickness = 0.55 + 0.45 * np.sqrt(np.clip(1.0 - rho**2, 0, None))
        stained = body * thickness * (1 + (looks.nucleus_brightness[i] - 1) * nucleus)
    else:
        stained = np.exp(-0.5 * ((signed + 0.6) / 0.9) ** 2) + 0.12 * body
    return {
        "stain": (looks.brightness[i] * stained * texture).astype(np.float32),
        "autofluorescence": (body * (0.7 + 0.3 * texture)).astype(np.float32),
        "nuclei": (nucleus * body * (0.8 + 0.2 * texture)).astype(np.float32),
    }


def simulate_cell_images(n_images: int, shape=(256, 256), seed=0, *, stain="mixed", pixel_size_um=0.2,
                         cell_radius_um=(5.0, 9.0), n_cells=(4, 9),
                         snr_range=(3.0, 20.0)) -> tuple[np.ndarray, np.ndarray]:
    """Independent single frames of the cell channel and their exact label masks.

    Uses the same geometry and rendering as the movie simulator. Each image draws
    its cell count, packing (spacing 0.8 … 1.25: touching to separate), outline
    irregularity, stain, background and SNR (log-uniform in ``snr_range``; SNR
    of a typical cell pixel, see :mod:`pipeline.optics`).

    Parameters
    ----------
    n_images : number of images.
    shape : (H, W) in pixels.
    seed : random seed; the same seed gives the same images.
    stain : "cytoplasm", "membrane" or "mixed" (random per image).
    pixel_size_um : pixel size, µm.
    cell_radius_um : range of base cell radii, µm.
    n_cells : inclusive range of cells per image (fewer when they do not fit).
    snr_range : range of cell-channel SNR.

    Returns
    -------
    images : (n, H, W) float32, camera counts (ADU).
    masks : (n, H, W) uint16, 0 = background, 1..N cells.
    """
    if stain not in (*STAINS, "mixed"):
        raise ValueError(f"stain must be 'cytoplasm', 'membrane' or 'mixed', not {stain!r}")
    rng = np.random.default_rng(seed)
    radius_px = (cell_radius_um[0] / pixel_size_um, cell_radius_um[1] / pixel_size_um)
    images = np.zeros((n_images, *shape), np.float32)
    masks = np.zeros((n_images, *shape), np.uint16)
    for k in range(n_images):
        layout = place_cells(rng, int(rng.integers(n_cells[0], n_cells[1] + 1)), shape, radius_px,
                             spacing=rng.uniform(0.8, 1.25), irregularity=rng.uniform(0.06, 0.2),
                             gap_px=rng.uniform(0.5, 2.0))
        looks = random_looks(rng, layout.n_cells, brightness_cv=rng.uniform(0.1, 0.5))
        this_stain = STAINS[rng.integers(2)] if stain == "mixed" else stain
        rendered = render_cells(layout, looks, shape, stain=this_stain, blur_px=rng.uniform(0.5, 1.5),
                                texture_strength=rng.uniform(0.1, 0.4))
        background = rng.uniform(5.0, 50.0)
        snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1])))
        signal = peak_photons_for_snr(snr, background, 1.5)
        expected = background + signal * rendered.stain
        images[k] = camera(expected, rng, read_noise_e=1.5, gain_adu_per_e=2.0, offset_adu=100.0)
        masks[k] = rendered.labels
    return images, masks
