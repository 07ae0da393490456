"""Plausibility checks: is the movie what the analysis assumes? (QC warnings, never errors.)

Pure functions over arrays and tables that return messages (``list[str]``, empty when all is
plausible); the runner logs them and records them in the store's ``qc_warnings`` attribute.
They catch what real data does and simulated data never does:

- :func:`duplicated_frames`: bit-identical consecutive frames (a movie saved at twice its real
  rate, e.g. the MosaicSuite virus movie: 66 of 72 frame pairs identical), which halves every
  rate and diffusion coefficient unless the frame interval is corrected; blank frames (a dropped
  frame, a damaged page read as zeros) and saturated frames;
- :func:`background_warnings`: a constant background (many pixels at exactly one value: clipped or
  offset-subtracted, 8-bit) and a noise estimate at its floor (no noise measurable: detection
  thresholds then rest on nothing);
- :func:`cell_warnings`: no cells, cells on few frames (phantom cells of a blank or wrong cell
  channel), cell masks whose area jumps between frames;
- :func:`blank_channel`: a cell channel without contrast (the cells found there are phantoms).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: A background is "constant" when at least this fraction of a frame's pixels hold one value.
CONSTANT_FRACTION = 0.3
#: Cells are "on few frames" when frames with any cell are fewer than this fraction of the movie,
#: or when most cell ids last fewer than SHORT_CELL_FRAMES frames.
FEW_FRAMES_FRACTION = 0.5
SHORT_CELL_FRAMES = 3
#: A cell mask's area "jumps" when it changes by more than this fraction between consecutive frames.
AREA_JUMP = 0.4
#: A frame is "saturated" when at least this fraction of its pixels hold the integer type's maximum.
SATURATED_FRACTION = 0.01
#: A channel is "blank" when its 99th percentile stands less than this many noise SDs above its median.
BLANK_CONTRAST_SIGMAS = 5.0


def duplicated_frames(frames, frame_interval_s: float) -> list[str]:
    """Warn about bit-identical consecutive frames, and about blank and saturated frames.

    Parameters
    ----------
    frames : sequence of (Y, X) arrays
        One channel, in time order (numpy or dask frames; read one at a time).
    frame_interval_s : float
        The frame interval the run uses, s.

    Returns
    -------
    list of str
        A message when at least one consecutive pair is identical, with the interval the unique
        frames imply (frame_interval_s × frames per unique frame); one naming the blank frames (every
        pixel one value: a dropped frame, a corrupt page read as zeros, a closed shutter); one naming
        the saturated frames (≥ SATURATED_FRACTION of the pixels at the integer type's maximum).
    """
    previous, identical, n = None, 0, 0
    blank, saturated = [], []
    for index, frame in enumerate(frames):
        frame = np.asarray(frame)
        if previous is not None and frame.shape == previous.shape and np.array_equal(frame, previous):
            identical += 1
        if frame.size and frame.min() == frame.max():
            blank.append(index)
        elif frame.size and np.issubdtype(frame.dtype, np.integer) and \
                np.count_nonzero(frame == np.iinfo(frame.dtype).max) >= SATURATED_FRACTION * frame.size:
            saturated.append(index)
        previous, n = frame, n + 1
    messages = []
    if identical:
        unique = n - identical
        factor = n / unique
        messages.append(
            f"{identical} of {n - 1} consecutive frame pairs are bit-identical (repeated frames): the movie "
            f"holds {unique} distinct frames, each saved {factor:.2g}× on average: the real interval is then "
            f"~{factor * frame_interval_s:.3g} s, not {frame_interval_s:.3g} s. Drop the repeats (keep one frame of "
            "each identical run) and set input.frame_interval_s, or rates and diffusion come out wrong")
    if blank:
        messages.append(
            f"{len(blank)} of {n} frames are blank (every pixel one value): frames {_frame_list(blank)}. A dropped "
            "or damaged frame reads as no particles: check the file, or cut those frames out")
    if saturated:
        messages.append(
            f"{len(saturated)} of {n} frames have ≥ {SATURATED_FRACTION:.0%} of their pixels saturated: frames "
            f"{_frame_list(saturated)}. Saturated spots lose their brightness (aggregates, intensities) and "
            "their shape; lower the exposure or gain at acquisition")
    return messages


def _frame_list(frames: list[int], most: int = 10) -> str:
    """``"3, 4, 5"`` or ``"3, 4, ... (12 frames)"`` (0-based frame indices)."""
    shown = ", ".join(str(f) for f in frames[:most])
    return shown + (f", ... ({len(frames)} frames)" if len(frames) > most else "") + " (0-based)"


def background_warnings(frame: np.ndarray, frame_index: int, *, channel: str = "particles") -> list[str]:
    """Warn about a constant background and a noise estimate at its floor.

    Parameters
    ----------
    frame : (Y, X) array
    frame_index : int
        Named in the messages.
    channel : str
        Channel name for the messages.

    Returns
    -------
    list of str
        A message if ≥ CONSTANT_FRACTION of the pixels hold one value, and one if the noise
        (1.4826 × MAD of neighbouring-pixel differences / √2, over pixels off that value) is zero.
    """
    values = np.asarray(frame, dtype=float)
    out = []
    levels, counts = np.unique(values, return_counts=True)
    mode = levels[np.argmax(counts)]
    fraction = counts.max() / values.size
    if fraction >= CONSTANT_FRACTION:
        out.append(f"{channel} channel, frame {frame_index}: {100 * fraction:.0f} % of the pixels are exactly "
                   f"{mode:g} (a clipped or offset-subtracted background): no noise can be measured there, "
                   "so detection thresholds rest on the other pixels; export the raw camera counts if possible")
    a, b = values[:, :-1], values[:, 1:]
    off = (a != mode) & (b != mode)
    diff = (a - b)[off]
    noise = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / np.sqrt(2) if diff.size else 0.0
    if noise == 0.0:
        out.append(f"{channel} channel, frame {frame_index}: the noise estimate is zero (at its floor; "
                   "flat or heavily quantised image): significance thresholds are not calibrated; "
                   "set detect parameters by hand and check the detections")
    return out


def blank_channel(frame: np.ndarray, frame_index: int, *, channel: str = "cells") -> list[str]:
    """Warn when a channel shows no contrast above its noise (no cells to segment).

    Parameters
    ----------
    frame : (Y, X) array
    frame_index : int
    channel : str

    Returns
    -------
    list of str
        A message if the 99th percentile is less than BLANK_CONTRAST_SIGMAS noise SDs (from
        neighbouring-pixel differences) above the median.
    """
    values = np.asarray(frame, dtype=float)
    diff = (values[:, 1:] - values[:, :-1]).ravel()
    noise = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / np.sqrt(2)
    contrast = float(np.percentile(values, 99) - np.median(values))
    if contrast < BLANK_CONTRAST_SIGMAS * max(noise, 1e-12):
        return [f"{channel} channel, frame {frame_index} looks blank (99th percentile {contrast:.3g} above the "
                f"median, {contrast / max(noise, 1e-12):.2g} noise SDs): cells found there are phantoms; check "
                "input.channels"]
    return []


def cell_warnings(cells: pd.DataFrame, n_frames: int) -> list[str]:
    """Warn about implausible cell tracks.

    Parameters
    ----------
    cells : DataFrame
        One row per cell per frame: ``frame`` (int), ``cell_id`` (int), ``area_px`` (px²), and
        optionally ``border`` (bool: the mask touches the image edge; such masks, of cells entering
        or leaving the field, are left out of the area-jump check), as :func:`cell_areas` makes it.
    n_frames : int
        Frames in the movie.

    Returns
    -------
    list of str
        Messages for: no cells at all; cells on fewer than FEW_FRAMES_FRACTION of the frames;
        most cell ids shorter than SHORT_CELL_FRAMES frames; masks whose area changes by more
        than AREA_JUMP between consecutive frames (count and the largest jump).
    """
    if n_frames == 0:
        return []
    if cells.empty:
        return [f"no cells found in any of the {n_frames} frames: check input.channels.cells and segment "
                "settings (diameter, model)"]
    out = []
    with_cells = cells["frame"].nunique()
    if with_cells < FEW_FRAMES_FRACTION * n_frames:
        out.append(f"cells found on only {with_cells} of {n_frames} frames: segmentation is unreliable on this "
                   "movie (blank or wrong cell channel, or a model that does not fit these cells)")
    lifetime = cells.groupby("cell_id")["frame"].nunique()
    short = int((lifetime < SHORT_CELL_FRAMES).sum())
    if n_frames >= 2 * SHORT_CELL_FRAMES and short > 0.5 * len(lifetime):
        out.append(f"{short} of {len(lifetime)} cell ids last fewer than {SHORT_CELL_FRAMES} frames: flickering "
                   "or phantom cells (is there a cell stain in input.channels.cells?)")
    t = cells.sort_values(["cell_id", "frame"])
    same = (t["cell_id"].to_numpy()[1:] == t["cell_id"].to_numpy()[:-1]) & (np.diff(t["frame"].to_numpy()) == 1)
    if "border" in t:
        inside = ~t["border"].to_numpy(bool)
        same &= inside[1:] & inside[:-1]
    area = t["area_px"].to_numpy(float)
    change = np.abs(area[1:] / area[:-1] - 1.0)[same]
    jumps = change > AREA_JUMP
    if jumps.any():
        k = int(np.flatnonzero(same)[np.argmax(np.where(jumps, change, -1))])
        out.append(f"{int(jumps.sum())} cell masks change area by more than {100 * AREA_JUMP:.0f} % between "
                   f"consecutive frames (largest: cell {int(t['cell_id'].iloc[k])}, frames {int(t['frame'].iloc[k])}"
                   f"-{int(t['frame'].iloc[k + 1])}, {100 * change.max():.0f} %): check the segmentation there")
    return out


def cell_areas(stable: np.ndarray, frame: int) -> pd.DataFrame:
    """Area of every cell of one label frame: (frame, cell_id, area_px, border).

    Parameters
    ----------
    stable : (Y, X) int array
        Label image with stable cell ids, 0 = background.
    frame : int

    Returns
    -------
    DataFrame
        ``border``: the cell's mask touches the image edge.
    """
    stable = np.asarray(stable).astype(np.int64)
    counts = np.bincount(stable.ravel())
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    edge = np.unique(np.concatenate([stable[0], stable[-1], stable[:, 0], stable[:, -1]]))
    return pd.DataFrame({"frame": np.full(len(ids), frame, np.int64), "cell_id": ids,
                         "area_px": counts[ids].astype(np.int64), "border": np.isin(ids, edge)})
