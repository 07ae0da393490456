"""Stable cell ids across frames: a linear-assignment linker on overlap, motion and size.

Each frame's cells are matched to the cells seen in the last ``max_gap_frames + 1`` frames (so a
cell missed by segmentation for a few frames keeps its id) by one optimal one-to-one assignment
(``scipy.optimize.linear_sum_assignment``) over the cost of every candidate pair (new mask ``j``,
known cell ``i`` last seen ``g`` frames ago):

    cost = min(d² + a², 1) - IoU - 1 + GAP_COST × (g - 1)

- ``d``: distance of ``j``'s centroid from where ``i`` is predicted to be (its last centroid plus
  ``velocity_weight`` × its last velocity × g), in units of ``max_move_radii`` × the cell radius
  (the radius of a disk of the larger area), growing with √g;
- ``a``: |log area ratio| / log ``max_area_ratio``;
- ``IoU``: overlap of ``j`` with ``i``'s last mask.

A pair is a candidate when it overlaps (IoU ≥ ``min_iou``) or is near and alike in size
(d ≤ 1 and a ≤ 1); every candidate costs less than leaving both unmatched (0), and pairs that
overlap more, sit nearer the prediction and keep their size win. Overlap alone (the former
tracker) loses every cell that moves more than its width between frames: on the Cell Tracking
Challenge Fluo-C2DL-MSC sequence 02 (20 min between frames, cells moving a median of 0.9 and up to
5 radii) it kept 0-1 of 10 expert tracks under one id (``benchmarks/real_celltracking.py``).
Cells that match nothing get a new id: cells entering the field, and new cells.

Divisions: a dividing cell's larger daughter (the one overlapping the mother most and nearest
her size) keeps the mother's id; the other daughter gets a new id. Merged masks (two cells
segmented as one) keep the id of the cell they match best; the other id pauses and resumes when
the cells are separated again within ``max_gap_frames``.

The matching works frame by frame on label images and returns per-frame id maps, so
a runner can stream label frames from disk without holding the movie in memory.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy.optimize import linear_sum_assignment

from pipeline.params import Params


class CellTrackParams(Params):
    """Parameters of cell tracking (``track_cells:`` in a run config)."""

    min_iou: float = Field(
        0.2, gt=0, le=1, description="Least intersection over union for two masks to be one cell."
    )
    max_gap_frames: int = Field(
        3, ge=0, description="A cell missing for up to this many frames keeps its id, frames."
    )
    max_move_radii: float = Field(
        5.0, gt=0, description="Farthest a cell may move between two frames from where its motion predicts "
        "it and keep its id without overlapping its last mask, in cell radii (radius of a disk of its "
        "area; × √gap across missed frames). Expert tracks of Fluo-C2DL-MSC (20 min frames): 90 % of "
        "steps ≤ 2.7 radii, the largest 5.1.",
    )
    max_area_ratio: float = Field(
        3.0, gt=1, description="Largest area ratio (either way) between a cell's masks in two frames "
        "for a match without overlap; also scales the size term of the cost.",
    )
    velocity_weight: float = Field(
        0.5, ge=0, le=1, description="Fraction of a cell's last velocity carried forward to predict "
        "where it is next (0: it is expected where it was; 1: it keeps going at its last velocity).",
    )


def overlap_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection over union of every pair of labels of two label images.

    Parameters
    ----------
    a, b
        Label images of the same shape, 0 = background.

    Returns
    -------
    (ids_a, ids_b, iou)
        Non-zero ids of ``a`` and ``b`` and the IoU matrix (len(ids_a), len(ids_b)).
    """
    ids_a = np.unique(a[a > 0])
    ids_b = np.unique(b[b > 0])
    if ids_a.size == 0 or ids_b.size == 0:
        return ids_a, ids_b, np.zeros((ids_a.size, ids_b.size))
    ia = np.searchsorted(ids_a, a.ravel())
    ib = np.searchsorted(ids_b, b.ravel())
    both = (a.ravel() > 0) & (b.ravel() > 0)
    inter = np.zeros((ids_a.size, ids_b.size))
    np.add.at(inter, (ia[both], ib[both]), 1)
    area_a = np.bincount(ia[a.ravel() > 0], minlength=ids_a.size)
    area_b = np.bincount(ib[b.ravel() > 0], minlength=ids_b.size)
    union = area_a[:, None] + area_b[None, :] - inter
    return ids_a, ids_b, inter / union


#: Extra cost per missed frame: a cell seen in the last frame beats an equally good one seen earlier.
GAP_COST = 0.05


class CellTracker:
    """Assigns stable ids to the cells of successive label frames.

    Feed frames in time order to :meth:`update`; it returns each frame's map from
    segmentation label to stable cell id.
    """

    def __init__(self, params: CellTrackParams):
        self.params = params
        self.next_id = 1
        #: (frame, label image in stable ids) of the last frames, newest last
        self._recent: list[tuple[int, np.ndarray]] = []
        #: stable id -> (last frame, centroid y, x px, area px², velocity y, x px/frame)
        self._cells: dict[int, tuple[int, float, float, float, float, float]] = {}

    def update(self, labels: np.ndarray, frame: int) -> dict[int, int]:
        """Match one frame's labels to the cells seen before.

        Parameters
        ----------
        labels
            Segmentation of this frame (Y, X), 0 = background.
        frame
            Frame index (frames must come in increasing order).

        Returns
        -------
        dict
            Segmentation label -> stable cell id, for every label in the frame.
        """
        new_ids, centroids, areas = mask_geometry(labels)
        horizon = self.params.max_gap_frames + 1
        known = [i for i, c in self._cells.items() if frame - c[0] <= horizon]
        mapping: dict[int, int] = {}
        if new_ids.size and known:
            cost = self._cost(labels, new_ids, centroids, areas, known, frame)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] < 0:
                    mapping[int(new_ids[r])] = known[c]
        for r, label in enumerate(new_ids):
            label = int(label)
            if label not in mapping:
                mapping[label] = self.next_id
                self.next_id += 1
            self._remember(mapping[label], frame, centroids[r], areas[r])
        stable = relabel(labels, mapping)
        self._recent.append((frame, stable))
        self._recent = [(f, s) for f, s in self._recent if frame - f <= horizon]
        return mapping

    def _cost(self, labels: np.ndarray, new_ids: np.ndarray, centroids: np.ndarray, areas: np.ndarray,
              known: list[int], frame: int) -> np.ndarray:
        """Cost matrix (new labels × known cells); 0 where a pair is no candidate (see the module doc)."""
        p = self.params
        iou = np.zeros((new_ids.size, len(known)))
        column = {cell: k for k, cell in enumerate(known)}
        for f, previous in self._recent:
            ids_new, ids_old, overlap = overlap_iou(labels, previous)
            for c, cell in enumerate(ids_old):
                k = column.get(int(cell))
                if k is not None and self._cells[int(cell)][0] == f:  # the cell's last mask
                    iou[np.searchsorted(new_ids, ids_new), k] = overlap[:, c]
        state = np.array([self._cells[i] for i in known])
        gap = frame - state[:, 0]
        predicted = state[:, 1:3] + p.velocity_weight * state[:, 4:6] * gap[:, None]
        radius = np.sqrt(np.maximum(areas[:, None], state[None, :, 3]) / np.pi)
        distance = np.hypot(*(centroids[:, None, :] - predicted[None, :, :]).transpose(2, 0, 1))
        d = distance / (p.max_move_radii * radius * np.sqrt(gap)[None, :])
        a = np.abs(np.log(areas[:, None] / state[None, :, 3])) / np.log(p.max_area_ratio)
        candidate = (iou >= p.min_iou) | ((d <= 1) & (a <= 1))
        cost = np.minimum(d**2 + a**2, 1.0) - iou - 1.0 + GAP_COST * (gap[None, :] - 1)
        return np.where(candidate, np.minimum(cost, -1e-9), 0.0)

    def _remember(self, cell: int, frame: int, centroid: np.ndarray, area: float) -> None:
        """Store a cell's latest frame, centroid, area and velocity (from its previous sighting)."""
        if cell in self._cells:
            last = self._cells[cell]
            velocity = (centroid - np.array(last[1:3])) / max(frame - last[0], 1)
        else:
            velocity = np.zeros(2)
        self._cells[cell] = (frame, float(centroid[0]), float(centroid[1]), float(area),
                             float(velocity[0]), float(velocity[1]))


def mask_geometry(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero labels of a label image with their centroids (y, x px) and areas (px²).

    Returns
    -------
    (ids, centroids, areas)
        Sorted ids (n,), centroids (n, 2) and areas (n,).
    """
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    ids, index = np.unique(flat[inside], return_inverse=True)
    if ids.size == 0:
        return ids, np.zeros((0, 2)), np.zeros(0)
    y, x = np.divmod(inside, labels.shape[1])
    areas = np.bincount(index, minlength=ids.size).astype(float)
    centroids = np.stack([np.bincount(index, y, ids.size), np.bincount(index, x, ids.size)], axis=1) / areas[:, None]
    return ids, centroids, areas


def relabel(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Apply a label -> id map to a label image (labels not in the map become 0)."""
    if not mapping:
        return np.zeros_like(labels, dtype=np.uint32)
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    for label, cell_id in mapping.items():
        lut[label] = cell_id
    return lut[labels]


def track_cells(label_frames, params: CellTrackParams | None = None) -> np.ndarray:
    """Give the cells of a label movie stable ids (in-memory convenience).

    Parameters
    ----------
    label_frames
        Iterable of label images (Y, X) in time order.
    params
        Matching parameters.

    Returns
    -------
    numpy.ndarray
        Label movie (T, Y, X), uint32, with stable cell ids.
    """
    tracker = CellTracker(params or CellTrackParams())
    return np.stack(
        [relabel(labels, tracker.update(labels, t)) for t, labels in enumerate(label_frames)]
    )
