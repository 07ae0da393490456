"""Cell tracking: stable ids through permuted labels, gaps, entries and divisions."""

import numpy as np
from skimage.draw import disk

from pipeline.stages.track_cells import CellTrackParams, overlap_iou, track_cells


def _frame(shape, cells):
    labels = np.zeros(shape, dtype=np.uint32)
    for label, (cy, cx, r) in cells.items():
        rr, cc = disk((cy, cx), r, shape=shape)
        labels[rr, cc] = label
    return labels


def _moving_cells(n_frames, rng):
    """Three drifting disks; labels randomly permuted in every frame."""
    truth, frames = [], []
    for t in range(n_frames):
        cells = {1: (30 + t, 30, 12), 2: (30, 80 + 0.5 * t, 14), 3: (85, 60 - t, 10)}
        perm = rng.permutation(3) + 1
        truth.append(_frame((120, 120), cells))
        frames.append(_frame((120, 120), {int(perm[k - 1]): v for k, v in cells.items()}))
    return truth, frames


def _consistent(truth, tracked):
    """Each true cell maps to one tracked id over the whole movie, and vice versa."""
    pairs = {(int(a), int(b)) for t, s in zip(truth, tracked) for a, b in zip(t.ravel(), s.ravel()) if a}
    true_ids = {a for a, _ in pairs}
    return len(pairs) == len(true_ids) == len({b for _, b in pairs})


def test_overlap_iou_of_identical_and_disjoint_masks():
    a = _frame((50, 50), {1: (15, 15, 6), 2: (35, 35, 6)})
    ids_a, ids_b, iou = overlap_iou(a, a)
    assert list(ids_a) == [1, 2] and np.allclose(iou, np.eye(2))


def test_ids_stable_when_segmentation_permutes_labels():
    truth, frames = _moving_cells(10, np.random.default_rng(0))
    tracked = track_cells(frames)
    assert _consistent(truth, tracked)
    assert set(np.unique(tracked)) == {0, 1, 2, 3}


def test_cell_missing_for_a_frame_keeps_its_id():
    truth, frames = _moving_cells(8, np.random.default_rng(1))
    frames[4] = np.where(truth[4] == 2, 0, frames[4]).astype(np.uint32)  # cell 2 missed
    truth[4] = np.where(truth[4] == 2, 0, truth[4])
    tracked = track_cells(frames, CellTrackParams(max_gap_frames=2))
    assert _consistent(truth, tracked)


def test_gap_longer_than_allowed_gives_a_new_id():
    truth, frames = _moving_cells(8, np.random.default_rng(2))
    for t in (3, 4, 5):
        frames[t] = np.where(truth[t] == 2, 0, frames[t]).astype(np.uint32)
    tracked = track_cells(frames, CellTrackParams(max_gap_frames=1))
    ids_of_cell2 = {int(np.bincount(s[truth[t] == 2]).argmax()) for t, s in enumerate(tracked)
                    if t not in (3, 4, 5)}
    assert len(ids_of_cell2) == 2


def test_division_larger_daughter_keeps_id_other_is_new():
    mother = _frame((100, 100), {1: (50, 50, 20)})
    daughters = _frame((100, 100), {7: (50, 38, 14), 9: (50, 66, 9)})
    tracked = track_cells([mother, mother, daughters])
    assert tracked[2][50, 38] == 1  # larger daughter
    assert tracked[2][50, 66] == 2  # new id


def test_entering_cell_gets_new_id():
    a = _frame((80, 80), {1: (40, 20, 10)})
    b = _frame((80, 80), {3: (40, 21, 10), 1: (40, 70, 8)})
    tracked = track_cells([a, b])
    assert tracked[1][40, 21] == 1 and tracked[1][40, 70] == 2


def test_cells_moving_more_than_their_width_keep_their_ids():
    """Elongated cells jumping ~1.5 radii per frame (as MSC cells do at 20 min frames): no overlap left."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(3)
    truth, frames = [], []
    starts = [(60, 40, 30, 0.3), (150, 360, -30, 1.2), (240, 40, 25, 2.0)]  # y, x, x step px/frame, angle
    for t in range(10):
        true = np.zeros((300, 400), np.uint32)
        perm = rng.permutation(3) + 1
        frame = np.zeros_like(true)
        for k, (cy, cx, step, angle) in enumerate(starts):
            y, x = cy + 10 * np.sin(0.6 * t + k), cx + step * t
            rr, cc = ellipse(y, x, 10, 28, shape=true.shape, rotation=angle + 0.1 * t)
            true[rr, cc] = k + 1
            frame[rr, cc] = perm[k]
        truth.append(true)
        frames.append(frame)
    assert overlap_iou(truth[0] == 1, truth[1] == 1)[2].max() < 0.2  # overlap alone cannot follow them
    assert _consistent(truth, track_cells(frames))
