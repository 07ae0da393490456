"""Zones: where each detection sits relative to the cells of its frame.

For every detection this stage adds ``cell_id`` (the cell it belongs to or is
nearest to; 0 when no cell is within ``max_cell_distance_um``), ``distance_um``
(signed distance to that cell's membrane, negative inside) and ``zone``
(``inside`` / ``membrane`` / ``outside``, see :mod:`pipeline.vocabulary`).

Geometry
--------
The membrane of a cell is its mask boundary, half-way between the centres of a
cell pixel and a 4-adjacent pixel that is not in the cell. At a pixel centre the
signed distance to cell ``c`` is

- inside ``c``: ``-(distance to the nearest pixel centre not in c - 0.5 px)``,
- outside ``c``: ``+(distance to the nearest pixel centre in c - 0.5 px)``,

i.e. the Euclidean distance transform with its half-pixel offset corrected, so
that the zero level lies on the pixel edges. The nearest such pixel is always
4-adjacent to the other side (step from it towards the query point: the step
would be nearer), so the distances come from k-d trees over the boundary pixels
only, evaluated at the four pixel centres around a detection and interpolated
bilinearly to its sub-pixel position. The zero level of the interpolant runs
through the mid-points of the boundary pixel edges (the marching-squares
contour), which follows diagonal outlines more closely than the pixel staircase.

A detection belongs to the cell it is most inside of: among the cells at its
four surrounding pixels and the cell with the nearest pixel, the one with the
smallest signed distance. So a detection inside cell A next to a touching cell B
belongs to A; one outside all cells belongs to the nearest. The image edge is
not a membrane: a cell cut by it is taken to continue beyond it. A detection
beyond the image edge is measured from the nearest in-image point, plus its
distance beyond the edge when it is outside cells. Frames without cells give
``cell_id`` 0, ``distance_um`` NaN and zone ``outside``. For ``cell_id`` 0 (no
cell within reach) ``distance_um`` is still the distance to the nearest membrane.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.spatial import cKDTree

from pipeline.errors import UptrackError
from pipeline.params import Params
from pipeline.vocabulary import BACKGROUND, INSIDE, MEMBRANE, OUTSIDE

__all__ = ["ZoneParams", "assign_zones", "zones_for_frame", "cell_geometry"]


class ZoneParams(Params):
    """Parameters of the zones stage (``zones:`` in a run config)."""

    membrane_band_um: float = Field(
        0.5,
        gt=0,
        description="Half-width of the membrane zone around the mask boundary, µm. A membrane-bound "
        "particle's measured distance spreads by the segmentation boundary error (~1 px = 0.2 µm with "
        "Cellpose at 0.2 µm/px) and the localisation error (~0.35 px = 0.07 µm) in quadrature, "
        "sigma ~0.21-0.25 µm; ±0.5 µm (~2 sigma, about one PSF FWHM) holds ~95 % of them. Use about "
        "2 px at coarser pixel sizes.",
    )
    max_cell_distance_um: float = Field(
        5.0,
        gt=0,
        description="Detections farther than this outside every cell get cell_id 0 (no cell), µm. "
        "About half a cell radius: the range where a particle can reach the membrane within a few "
        "frames at sedimented diffusion (0.01-0.1 µm²/s).",
    )


def zones_for_frame(
    det_frame: pd.DataFrame, labels_2d: np.ndarray, *, pixel_size_um: float, params: ZoneParams
) -> pd.DataFrame:
    """Zones of the detections of one frame.

    Parameters
    ----------
    det_frame : DataFrame
        Detections of one frame with columns ``y``, ``x`` (px, sub-pixel; pixel
        centres are integers).
    labels_2d : ndarray, (Y, X) int
        Cell label image of that frame; 0 is background.
    pixel_size_um : float
        Pixel size, µm.
    params : ZoneParams

    Returns
    -------
    DataFrame
        A copy of ``det_frame`` with ``cell_id`` (int64), ``distance_um``
        (float64, µm, negative inside) and ``zone`` (str) added.
    """
    cell, distance_px = _signed_distance(det_frame["y"].to_numpy(float), det_frame["x"].to_numpy(float),
                                         np.asarray(labels_2d))
    return _with_zones(det_frame, cell, distance_px, pixel_size_um, params)


def assign_zones(
    detections: pd.DataFrame, labels: np.ndarray, *, pixel_size_um: float, params: ZoneParams
) -> pd.DataFrame:
    """Zones of all detections, frame by frame (see :func:`zones_for_frame`).

    Parameters
    ----------
    detections : DataFrame
        Columns ``frame`` (index into ``labels``), ``y``, ``x`` (px).
    labels : array, (T, Y, X) int
        Cell labels per frame (numpy or a lazy array; read one frame at a time).
    pixel_size_um : float
        Pixel size, µm.
    params : ZoneParams

    Returns
    -------
    DataFrame
        A copy of ``detections`` (same row order) with ``cell_id``,
        ``distance_um`` and ``zone`` added.

    Raises
    ------
    UptrackError
        If a detection's frame is not a frame of ``labels``.
    """
    frames = detections["frame"].to_numpy(np.int64)
    n_frames = labels.shape[0]
    bad = (frames < 0) | (frames >= n_frames)
    if bad.any():
        raise UptrackError(f"zones: detections refer to frame {frames[bad][0]}, but the cell label image has "
                           f"{n_frames} frames (0..{n_frames - 1})")
    y, x = detections["y"].to_numpy(float), detections["x"].to_numpy(float)
    cell = np.zeros(len(detections), np.int64)
    distance_px = np.full(len(detections), np.nan)
    order = np.argsort(frames, kind="stable")
    unique, starts = np.unique(frames[order], return_index=True)
    for frame, rows in zip(unique, np.split(order, starts[1:])):
        cell[rows], distance_px[rows] = _signed_distance(y[rows], x[rows], np.asarray(labels[frame]))
    return _with_zones(detections, cell, distance_px, pixel_size_um, params)


def cell_geometry(labels: np.ndarray, *, pixel_size_um: float) -> pd.DataFrame:
    """One row per cell: ``cell_id``, ``first_frame``, ``last_frame``, ``mean_area_um2``.

    Parameters
    ----------
    labels : array, (T, Y, X) int
        Cell labels per frame with stable ids (numpy or lazy; read frame by frame).
    pixel_size_um : float
        Pixel size, µm.

    Returns
    -------
    DataFrame
        ``mean_area_um2`` is the mean mask area over the frames the cell is in, µm².
    """
    counts = [np.bincount(np.asarray(labels[t]).ravel()) for t in range(labels.shape[0])]
    width = max((len(c) for c in counts), default=1)
    area_px = np.zeros((len(counts), width), np.int64)
    for t, c in enumerate(counts):
        area_px[t, : len(c)] = c
    area_px[:, BACKGROUND] = 0
    present = area_px > 0
    cell_ids = np.flatnonzero(present.any(axis=0))
    present = present[:, cell_ids]
    n_present = present.sum(axis=0)
    return pd.DataFrame({
        "cell_id": cell_ids.astype(np.int64),
        "first_frame": present.argmax(axis=0).astype(np.int64),
        "last_frame": (len(counts) - 1 - present[::-1].argmax(axis=0)).astype(np.int64),
        "mean_area_um2": area_px[:, cell_ids].sum(axis=0) / n_present * pixel_size_um**2,
    })


def _with_zones(df: pd.DataFrame, cell: np.ndarray, distance_px: np.ndarray, pixel_size_um: float,
                params: ZoneParams) -> pd.DataFrame:
    distance_um = distance_px * pixel_size_um
    out = df.copy()
    out["cell_id"] = np.where(distance_um <= params.max_cell_distance_um, cell, BACKGROUND).astype(np.int64)
    out["distance_um"] = distance_um
    band = params.membrane_band_um
    out["zone"] = np.where(distance_um < -band, INSIDE, np.where(np.abs(distance_um) <= band, MEMBRANE, OUTSIDE))
    return out


def _signed_distance(y: np.ndarray, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Owning cell and signed distance (px) to its membrane for points (y, x) in one label image."""
    n = len(y)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    ny, nx = labels.shape
    boundary = _Boundary(labels)
    if boundary.empty:  # no membrane in view: no cells (NaN distance) or one cell filling the frame (deep inside)
        uniform = int(labels.flat[0])
        return np.full(n, uniform, np.int64), np.full(n, np.nan if uniform == BACKGROUND else -np.inf)
    yc, xc = np.clip(y, 0, ny - 1), np.clip(x, 0, nx - 1)
    y0 = np.minimum(np.floor(yc).astype(np.int64), max(ny - 2, 0))
    x0 = np.minimum(np.floor(xc).astype(np.int64), max(nx - 2, 0))
    y1, x1 = np.minimum(y0 + 1, ny - 1), np.minimum(x0 + 1, nx - 1)
    wy, wx = yc - y0, xc - x0
    corner_y = np.stack([y0, y0, y1, y1], axis=1)  # (n, 4)
    corner_x = np.stack([x0, x1, x0, x1], axis=1)
    weights = np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], axis=1)
    corner_labels = labels[corner_y, corner_x]
    candidates = np.concatenate([corner_labels, boundary.nearest_cell(yc, xc)[:, None]], axis=1)  # (n, 5)

    # signed distance of every corner pixel to every candidate cell, queried once per (pixel, cell)
    shape = (n, candidates.shape[1], 4)
    cand = np.broadcast_to(candidates[:, :, None], shape)
    cy = np.broadcast_to(corner_y[:, None, :], shape)
    cx = np.broadcast_to(corner_x[:, None, :], shape)
    valid = cand != BACKGROUND
    keys = (cy[valid] * nx + cx[valid]) * (boundary.max_label + 1) + cand[valid]
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    key_cell = unique_keys % (boundary.max_label + 1)
    key_pixel = unique_keys // (boundary.max_label + 1)
    corner_values = np.full(shape, np.inf)
    corner_values[valid] = boundary.signed_pixel_distance(key_pixel // nx, key_pixel % nx, key_cell)[inverse]
    with np.errstate(invalid="ignore"):  # inf * 0 for invalid candidates
        per_candidate = np.einsum("ijk,ik->ij", corner_values, weights)
    per_candidate[~valid[:, :, 0]] = np.inf
    best = np.argmin(per_candidate, axis=1)
    rows = np.arange(n)
    distance = per_candidate[rows, best]
    beyond_edge = np.hypot(y - yc, x - xc)
    distance = np.where(distance > 0, distance + beyond_edge, distance)
    return candidates[rows, best].astype(np.int64), distance


class _Boundary:
    """Boundary pixels of all cells of one label image, in k-d trees.

    ``inner``: cell pixels 4-adjacent to a pixel of another label; ``outer``:
    (pixel, cell) pairs of pixels not in the cell, 4-adjacent to it. Per-cell
    queries use a third coordinate ``label * spread`` larger than any in-image
    distance, so the nearest point always has the queried label when it has any.
    """

    def __init__(self, labels: np.ndarray):
        lab = labels.astype(np.int64, copy=False)
        ny, nx = lab.shape
        self.max_label = int(lab.max(initial=0))
        self.spread = 4.0 * (ny + nx + 1)
        lin = np.arange(lab.size).reshape(lab.shape)
        a_parts, b_parts = [], []
        pairs = ((lab[:-1], lab[1:], lin[:-1], lin[1:]), (lab[:, :-1], lab[:, 1:], lin[:, :-1], lin[:, 1:]))
        for a, b, ia, ib in pairs:  # vertical, then horizontal neighbours
            differ = a != b
            a_parts.append(ia[differ])
            b_parts.append(ib[differ])
        pix_a, pix_b = np.concatenate(a_parts), np.concatenate(b_parts)
        flat = lab.ravel()
        self.empty = len(pix_a) == 0
        if self.empty:
            return
        # inner: both sides of every differing pair that are cell pixels
        inner = np.unique(np.concatenate([pix_a, pix_b]))
        inner = inner[flat[inner] != BACKGROUND]
        # outer: (pixel, cell) for each side's neighbour cell
        pix = np.concatenate([pix_b, pix_a])
        cell = np.concatenate([flat[pix_a], flat[pix_b]])
        keep = cell != BACKGROUND
        outer = np.unique(pix[keep] * (self.max_label + 1) + cell[keep])
        outer_pix, outer_cell = outer // (self.max_label + 1), outer % (self.max_label + 1)
        self.inner_labels = flat[inner]
        inner_yx = np.column_stack([inner // nx, inner % nx]).astype(float)
        self.inner2d = cKDTree(inner_yx)
        self.inner3d = cKDTree(np.column_stack([inner_yx, self.inner_labels * self.spread]))
        self.outer3d = cKDTree(np.column_stack([outer_pix // nx, outer_pix % nx, outer_cell * self.spread]))
        self.labels_flat, self.nx = flat, nx

    def nearest_cell(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Label of the cell whose pixel centre is nearest to each point."""
        _, idx = self.inner2d.query(np.column_stack([y, x]))
        return self.inner_labels[idx]

    def signed_pixel_distance(self, py: np.ndarray, px: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """Signed distance (px) from pixel centres (py, px) to the membrane of ``cell`` (one per pixel)."""
        points = np.column_stack([py, px, cell * self.spread]).astype(float)
        own = self.labels_flat[py * self.nx + px] == cell
        out = np.empty(len(py))
        if own.any():
            d, _ = self.outer3d.query(points[own])
            out[own] = -(d - 0.5)
        if (~own).any():
            d, _ = self.inner3d.query(points[~own])
            out[~own] = d - 0.5
        return out
