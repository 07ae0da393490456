"""Reviewers' corrections applied to the pipeline's particles: pure tables in, tables out.

A correction (see :mod:`pipeline.io.curation` for the record and its table) either gives a
track's detections in a frame range a state, or removes them as not a particle
(:data:`pipeline.vocabulary.CORRECTION_ACTIONS`). Events follow from the corrected states.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.stages.classify import events_from_states
from pipeline.vocabulary import STATES


def apply_corrections(
    particles: pd.DataFrame, corrections: pd.DataFrame, *, frame_interval_s: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The particles with corrected states (false detections removed) and their events.

    Parameters
    ----------
    particles : DataFrame
        The pipeline's particles table (``track_id``, ``frame``, ``cell_id``, ``state``).
    corrections : DataFrame
        A valid corrections table (:func:`pipeline.io.curation.validate_corrections`), applied in row order.
    frame_interval_s : float
        Time between frames, s.

    Returns
    -------
    particles, events : DataFrame
        As :func:`pipeline.stages.classify.events_from_states` returns them.
    """
    track = particles["track_id"].to_numpy(np.int64)
    frame = particles["frame"].to_numpy(np.int64)
    order = np.lexsort((frame, track))
    sorted_track = track[order]
    state = particles["state"].to_numpy(dtype=object).copy()
    keep = np.ones(len(particles), bool)
    for row in corrections.itertuples(index=False):
        lo, hi = np.searchsorted(sorted_track, [row.track_id, row.track_id + 1])
        rows = order[lo:hi]
        rows = rows[(frame[rows] >= row.first_frame) & (frame[rows] <= row.last_frame)]
        if row.action == "false_track":
            keep[rows] = False
        else:
            state[rows] = row.state
    kept = particles[keep].reset_index(drop=True)
    codes = pd.Categorical(state[keep], categories=STATES).codes.astype(np.int64)
    return events_from_states(kept, codes, frame_interval_s=frame_interval_s)
