"""Stable cell ids across frames, by overlap matching of consecutive label images.

Each frame's cells are matched to the cells of the previous frame (and of a few
frames before it, so a cell missed by segmentation in one frame keeps its id) by
intersection over union, with an optimal one-to-one assignment. Cells that match
nothing get a new id: cells entering the field, and new cells.

Divisions: a dividing cell's larger daughter (the one overlapping the mother most)
keeps the mother's id; the other daughter gets a new id. Merged masks (two cells
segmented as one) keep the id of the cell they overlap most; the other id pauses and
resumes when the cells are separated again within ``max_gap_frames``.

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
        mapping: dict[int, int] = {}
        unmatched = np.unique(labels[labels > 0])
        taken: set[int] = set()
        for _, previous in reversed(self._recent):  # most recent frame first
            if unmatched.size == 0:
                break
            candidate = np.where(np.isin(labels, unmatched), labels, 0)
            ids_new, ids_old, iou = overlap_iou(candidate, previous)
            free = ~np.isin(ids_old, list(taken))
            rows, cols = linear_sum_assignment(-(iou * free[None, :]))
            for r, c in zip(rows, cols):
                if free[c] and iou[r, c] >= self.params.min_iou:
                    mapping[int(ids_new[r])] = int(ids_old[c])
                    taken.add(int(ids_old[c]))
            unmatched = np.array([i for i in unmatched if int(i) not in mapping])
        for label in unmatched:
            mapping[int(label)] = self.next_id
            self.next_id += 1
        stable = relabel(labels, mapping)
        self._recent.append((frame, stable))
        self._recent = [(f, s) for f, s in self._recent if frame - f <= self.params.max_gap_frames + 1]
        return mapping


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
