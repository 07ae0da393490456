"""Accuracy of a run against the simulator's ground truth (:mod:`pipeline.sim.truth`).

Pure functions: tables and arrays in, numbers out. :func:`evaluate` runs them all
on a store's :class:`~pipeline.io.results.Results` and a :class:`~pipeline.sim.truth.Truth`
and returns one flat, JSON-able dict; :func:`format_report` prints it.

Definitions
-----------
Detection
    In each frame, predicted detections are paired one-to-one with the *visible*
    true particles: the assignment with the most pairs closer than
    ``max_distance_px`` and, among those, the smallest summed distance
    (:func:`scipy.optimize.linear_sum_assignment`). Precision = pairs / predicted
    detections, recall = pairs / visible true particles, F1 their harmonic mean.
    Localisation RMSE is the radial root-mean-square distance of the pairs, px;
    next to it the Cramér–Rao bound (Mortensen et al. 2010) of the same pairs'
    true particles, as the radial RMS of the per-particle bounds, and the bound of
    a median-brightness particle. The bound uses the medium background
    ``background_photons``; over cells autofluorescence raises it slightly.
States
    Over matched pairs: accuracy = fraction whose predicted state equals the true
    state; confusion matrix rows = true state, columns = predicted state
    (:data:`pipeline.vocabulary.STATES` order); a state's recall = correct / pairs
    truly in it, precision = correct / pairs predicted in it.
Tracking
    A predicted link is two consecutive detections of one predicted track; it is
    correct when both are matched to the same true particle (links with an
    unmatched end are not scored). A true link is two consecutive visible
    appearances of one true particle; it is recovered when both are matched and
    their detections are consecutive in one predicted track; link recall is taken
    over true links whose both ends were detected (detection recall is reported
    separately). Track purity is, per predicted track with at least two matched
    detections, the fraction of them that belong to its most frequent true
    particle; averaged over tracks.
Segmentation
    AP at IoU 0.5 (Cellpose's ``metrics.average_precision``: TP / (TP + FP + FN))
    averaged over sampled frames. Cell-id consistency: in each sampled frame, true
    and predicted cells are matched when their IoU is at least 0.5; for each true
    cell, over the frames where it is matched, the fraction in which the predicted
    id equals the id it is most often matched to; averaged over true cells that are
    matched at least once. 1.0 means every cell keeps one id for the whole movie.
Rates
    Pooled estimates (``results.movie``) against the realised truth (true events /
    true time at risk, summed over cells, per min) and against the configured
    rate; relative error = estimate / reference - 1. Event counts: estimated and
    true number of each event kind and their ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from pipeline.stages.detect import localization_crlb_px
from pipeline.stages.track_cells import overlap_iou
from pipeline.vocabulary import EVENTS, STATES
from pipeline.vocabulary import RATES as VOCABULARY_RATES

#: Rate -> (event kind, truth column of the time at risk, s), from :data:`pipeline.vocabulary.RATES`.
RATES = {column: (kind, f"{state}_time_s") for column, kind, state in VOCABULARY_RATES}


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


# --- detection -------------------------------------------------------------------------


def _visible(truth_particles: pd.DataFrame) -> pd.DataFrame:
    """The rows of true particles rendered in their frame (all rows without a ``visible`` column)."""
    if "visible" not in truth_particles:
        return truth_particles
    return truth_particles[truth_particles["visible"].to_numpy(bool)]


def match_detections(pred: pd.DataFrame, truth: pd.DataFrame, *,
                     max_distance_px: float = 2.0) -> pd.DataFrame:
    """Pair predicted detections with visible true particles, frame by frame.

    Parameters
    ----------
    pred : DataFrame
        Predicted detections with columns ``frame``, ``y``, ``x`` (px).
    truth : DataFrame
        True particles (``truth.particles``): ``frame``, ``y``, ``x``, ``visible``;
        rows with ``visible`` False are left out.
    max_distance_px : float
        Pairs farther apart than this are not matches, px.

    Returns
    -------
    DataFrame
        One row per matched pair: ``frame``, ``pred_index``, ``truth_index``
        (index labels in ``pred`` and ``truth``), ``distance_px``. ``attrs`` holds
        ``n_pred``, ``n_truth`` (visible), ``n_unmatched_pred`` (false
        detections) and ``n_unmatched_truth`` (missed particles).
    """
    truth = _visible(truth)
    pred = pred.sort_values("frame", kind="stable")
    truth = truth.sort_values("frame", kind="stable")
    p_frame, t_frame = pred["frame"].to_numpy(), truth["frame"].to_numpy()
    p_yx, t_yx = pred[["y", "x"]].to_numpy(float), truth[["y", "x"]].to_numpy(float)
    frames = np.intersect1d(p_frame, t_frame)
    p_start, p_stop = np.searchsorted(p_frame, frames), np.searchsorted(p_frame, frames, "right")
    t_start, t_stop = np.searchsorted(t_frame, frames), np.searchsorted(t_frame, frames, "right")
    pred_rows, truth_rows, distances = [], [], []
    for i0, i1, j0, j1 in zip(p_start, p_stop, t_start, t_stop):
        d = cdist(p_yx[i0:i1], t_yx[j0:j1])
        close = d <= max_distance_px
        rows, cols = np.flatnonzero(close.any(axis=1)), np.flatnonzero(close.any(axis=0))
        if not rows.size:
            continue
        sub = d[np.ix_(rows, cols)]
        # A far pair costs more than any set of close pairs: most matches first, then least distance.
        far = max_distance_px * (min(sub.shape) + 1) + 1.0
        r, c = linear_sum_assignment(np.where(sub <= max_distance_px, sub, far))
        keep = sub[r, c] <= max_distance_px
        pred_rows.append(i0 + rows[r[keep]])
        truth_rows.append(j0 + cols[c[keep]])
        distances.append(sub[r, c][keep])
    pred_rows = np.concatenate(pred_rows) if pred_rows else np.zeros(0, int)
    truth_rows = np.concatenate(truth_rows) if truth_rows else np.zeros(0, int)
    matches = pd.DataFrame({
        "frame": p_frame[pred_rows],
        "pred_index": pred.index.to_numpy()[pred_rows],
        "truth_index": truth.index.to_numpy()[truth_rows],
        "distance_px": np.concatenate(distances) if distances else np.zeros(0),
    })
    matches.attrs = {"n_pred": len(pred), "n_truth": len(truth),
                     "n_unmatched_pred": len(pred) - len(matches),
                     "n_unmatched_truth": len(truth) - len(matches)}
    return matches


def _crlb_rms_px(photons: np.ndarray, meta: dict) -> float:
    """Radial RMS of the localisation bounds of spots with these photon counts, px."""
    config = meta["config"]
    per_axis = localization_crlb_px(meta["psf_sigma_px"], photons, config["background_photons"],
                                    read_noise_e=config["read_noise_e"])
    return float(np.sqrt(2 * np.mean(np.square(per_axis)))) if np.size(per_axis) else math.nan


def detection_scores(matches: pd.DataFrame, truth_particles: pd.DataFrame | None = None,
                     meta: dict | None = None) -> dict:
    """Precision, recall, F1 and localisation error of matched detections.

    Parameters
    ----------
    matches : DataFrame
        From :func:`match_detections`.
    truth_particles : DataFrame, optional
        The true particles the matches index (``photons`` column), for the bound.
    meta : dict, optional
        Truth ``meta`` (``psf_sigma_px``, ``particle_photons_median``,
        ``config.background_photons``, ``config.read_noise_e``); without it the
        bounds are NaN.

    Returns
    -------
    dict
        ``detection_precision``, ``detection_recall``, ``detection_f1``,
        ``n_pred``, ``n_truth``, ``n_matched``, ``localization_rmse_px`` (radial),
        ``localization_crlb_px`` (radial RMS bound of the matched particles),
        ``localization_crlb_median_px`` (radial bound of a median particle).
    """
    n_pred, n_truth, n = matches.attrs["n_pred"], matches.attrs["n_truth"], len(matches)
    scores = {
        "detection_precision": _ratio(n, n_pred),
        "detection_recall": _ratio(n, n_truth),
        "detection_f1": _ratio(2 * n, n_pred + n_truth),
        "n_pred": n_pred,
        "n_truth": n_truth,
        "n_matched": n,
        "localization_rmse_px": float(np.sqrt(np.mean(matches["distance_px"] ** 2))) if n else math.nan,
        "localization_crlb_px": math.nan,
        "localization_crlb_median_px": math.nan,
    }
    if meta is not None and truth_particles is not None:
        photons = truth_particles.loc[matches["truth_index"], "photons"].to_numpy(float)
        scores["localization_crlb_px"] = _crlb_rms_px(photons, meta)
        scores["localization_crlb_median_px"] = _crlb_rms_px(np.array([meta["particle_photons_median"]]), meta)
    return scores


# --- states ----------------------------------------------------------------------------


def _state_codes(states: np.ndarray) -> np.ndarray:
    """Index of each state in STATES; -1 for anything else (missing, misspelt)."""
    return pd.Categorical(states, categories=STATES).codes.astype(int)


def confusion_matrix(matches: pd.DataFrame, pred: pd.DataFrame,
                     truth_particles: pd.DataFrame) -> pd.DataFrame:
    """Matched detections counted by true state (rows) and predicted state (columns).

    Predicted states outside the vocabulary are not counted.
    """
    t = _state_codes(truth_particles.loc[matches["truth_index"], "state"].to_numpy())
    p = _state_codes(pred.loc[matches["pred_index"], "state"].to_numpy())
    ok = (t >= 0) & (p >= 0)
    n = len(STATES)
    counts = np.bincount(t[ok] * n + p[ok], minlength=n * n).reshape(n, n)
    return pd.DataFrame(counts, index=pd.Index(STATES, name="truth"), columns=pd.Index(STATES, name="pred"))


def state_scores(matches: pd.DataFrame, pred: pd.DataFrame, truth_particles: pd.DataFrame) -> dict:
    """Per-detection state accuracy over matched detections.

    Returns
    -------
    dict
        ``state_accuracy``; per state ``state_recall_<state>``,
        ``state_precision_<state>``, ``state_n_<state>`` (matched detections truly
        in it); ``state_confusion.<truth>.<pred>`` counts.
    """
    confusion = confusion_matrix(matches, pred, truth_particles)
    true_counts = truth_particles.loc[matches["truth_index"], "state"].value_counts()
    correct = np.diag(confusion.to_numpy())
    scores = {"state_accuracy": _ratio(correct.sum(), len(matches))}
    for i, state in enumerate(STATES):
        n_true = int(true_counts.get(state, 0))
        scores[f"state_recall_{state}"] = _ratio(correct[i], n_true)
        scores[f"state_precision_{state}"] = _ratio(correct[i], confusion[state].sum())
        scores[f"state_n_{state}"] = n_true
    for t in STATES:
        for p in STATES:
            scores[f"state_confusion.{t}.{p}"] = int(confusion.loc[t, p])
    return scores


# --- tracking --------------------------------------------------------------------------


def tracking_scores(matches: pd.DataFrame, pred: pd.DataFrame, truth_particles: pd.DataFrame) -> dict:
    """Link precision, link recall and track purity (definitions in the module docstring).

    Parameters
    ----------
    matches : DataFrame
        From :func:`match_detections`.
    pred : DataFrame
        Predicted detections with ``track_id`` and ``frame``.
    truth_particles : DataFrame
        True particles with ``particle_id``, ``frame`` and ``visible``.

    Returns
    -------
    dict
        ``link_precision``, ``n_links_scored``, ``link_recall``,
        ``n_true_links``, ``n_true_links_detected``, ``track_purity``,
        ``n_tracks_scored``.
    """
    tracks = pred[["track_id", "frame"]].sort_values(["track_id", "frame"], kind="stable")
    position = pd.Series(np.arange(len(tracks)), index=tracks.index)
    true_id = np.full(len(tracks), -1)
    matched_pos = position.loc[matches["pred_index"]].to_numpy()
    true_id[matched_pos] = truth_particles.loc[matches["truth_index"], "particle_id"].to_numpy()
    track = tracks["track_id"].to_numpy()

    # predicted links
    same_track = track[1:] == track[:-1]
    a, b = true_id[:-1][same_track], true_id[1:][same_track]
    scored = (a >= 0) & (b >= 0)

    # true links
    visible = _visible(truth_particles).sort_values(["particle_id", "frame"], kind="stable")
    pos = pd.Series(matched_pos, index=matches["truth_index"].to_numpy()).reindex(visible.index, fill_value=-1)
    pos = pos.to_numpy()
    pid = visible["particle_id"].to_numpy()
    link = pid[1:] == pid[:-1]
    start, end = pos[:-1][link], pos[1:][link]
    detected = (start >= 0) & (end >= 0)
    start, end = start[detected], end[detected]
    recovered = (end == start + 1) & (track[end] == track[start])

    # purity
    has_truth = true_id >= 0
    counts = pd.DataFrame({"track": track[has_truth], "true_id": true_id[has_truth]}).value_counts()
    per_track = counts.groupby(level="track").agg(["max", "sum"])
    per_track = per_track[per_track["sum"] >= 2]
    return {
        "link_precision": _ratio(np.sum(a[scored] == b[scored]), scored.sum()),
        "n_links_scored": int(scored.sum()),
        "link_recall": _ratio(recovered.sum(), len(recovered)),
        "n_true_links": int(link.sum()),
        "n_true_links_detected": int(detected.sum()),
        "track_purity": float((per_track["max"] / per_track["sum"]).mean()) if len(per_track) else math.nan,
        "n_tracks_scored": len(per_track),
    }


# --- segmentation ----------------------------------------------------------------------


def _iou_matches(true: np.ndarray, pred: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """(true ids, predicted ids) of the cell pairs of one frame with IoU >= min_iou."""
    ids_true, ids_pred, iou = overlap_iou(true, pred)
    rows, cols = np.nonzero(iou >= min_iou)
    return ids_true[rows].astype(np.int64), ids_pred[cols].astype(np.int64)


def cell_id_consistency(pred_frames: Sequence[np.ndarray], true_frames: Sequence[np.ndarray], *,
                        min_iou: float = 0.5) -> float:
    """How stably each true cell keeps one predicted id (definition in the module docstring).

    Parameters
    ----------
    pred_frames, true_frames : sequences of (Y, X) int arrays
        Label images of the same frames; 0 = background.
    min_iou : float
        IoU at which a true and a predicted cell match.

    Returns
    -------
    float
        In [0, 1]; NaN when no true cell is ever matched.
    """
    pairs = [_iou_matches(np.asarray(t), np.asarray(p), min_iou) for p, t in zip(pred_frames, true_frames)]
    ids = pd.DataFrame({"true": np.concatenate([t for t, _ in pairs]),
                        "pred": np.concatenate([p for _, p in pairs])})
    if ids.empty:
        return math.nan
    counts = ids.value_counts().groupby(level="true").agg(["max", "sum"])
    return float((counts["max"] / counts["sum"]).mean())


def segmentation_scores(pred_labels, true_labels, *, max_frames: int = 25) -> dict:
    """AP@0.5 and cell-id consistency on up to ``max_frames`` evenly spaced frames.

    Parameters
    ----------
    pred_labels : (T, Y, X) array-like
        Predicted cell labels with stable ids (a lazy dask array is fine: only the
        sampled frames are read).
    true_labels : (T, Y, X) array-like
        True cell labels.
    max_frames : int
        Frames sampled (all when the movie is shorter).

    Returns
    -------
    dict
        ``segmentation_ap50``, ``cell_id_consistency``, ``segmentation_frames``.
    """
    from cellpose import metrics

    if tuple(pred_labels.shape) != tuple(true_labels.shape):
        raise ValueError(f"label shapes differ: predicted {tuple(pred_labels.shape)}, "
                         f"true {tuple(true_labels.shape)}")
    n = true_labels.shape[0]
    frames = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int))
    true = [np.asarray(true_labels[t]).astype(np.int32) for t in frames]
    pred = [np.asarray(pred_labels[t]).astype(np.int32) for t in frames]
    ap = metrics.average_precision(true, pred, threshold=[0.5])[0][:, 0]
    return {
        "segmentation_ap50": float(np.nanmean(ap)),
        "cell_id_consistency": cell_id_consistency(pred, true),
        "segmentation_frames": len(frames),
    }


# --- rates -----------------------------------------------------------------------------


def true_pooled_rates(truth) -> dict[str, float]:
    """Realised true rates of a simulation, per min: true events / true time at risk (NaN without time).

    Parameters
    ----------
    truth
        Has ``events`` (``kind``) and ``cells`` (``<state>_time_s``), like :class:`pipeline.sim.truth.Truth`.
    """
    counts = truth.events["kind"].value_counts()
    return {name: _ratio(counts.get(kind, 0), truth.cells[at_risk].sum() / 60) for name, (kind, at_risk) in RATES.items()}


def rate_scores(results, truth) -> dict:
    """Pooled rates and event counts against the truth.

    Parameters
    ----------
    results
        Has ``movie`` (pooled rates, one row, with ``_ci_low`` / ``_ci_high``) and
        ``events`` (``kind`` column), like :class:`pipeline.io.results.Results`.
    truth
        Has ``cells``, ``events`` and ``meta``, like :class:`pipeline.sim.truth.Truth`.

    Returns
    -------
    dict
        Per rate ``<rate>_estimated``, ``<rate>_true`` (realised: true events /
        true time at risk), ``<rate>_configured``, ``<rate>_error_vs_true``,
        ``<rate>_error_vs_configured`` (relative), ``<rate>_ci_covers_true``; per
        event kind ``n_<kind>_true``, ``n_<kind>_estimated``,
        ``<kind>_count_ratio`` (estimated / true).
    """
    pooled = results.movie.iloc[0] if len(results.movie) else pd.Series(dtype=float)
    true_counts = truth.events["kind"].value_counts()
    est_counts = results.events["kind"].value_counts()
    true_rates = true_pooled_rates(truth)
    scores = {}
    for name in RATES:
        true_rate = true_rates[name]
        configured = truth.meta["config"][name]
        estimate = float(pooled.get(name, math.nan))
        scores[f"{name}_estimated"] = estimate
        scores[f"{name}_true"] = true_rate
        scores[f"{name}_configured"] = configured
        scores[f"{name}_error_vs_true"] = _ratio(estimate, true_rate) - 1
        scores[f"{name}_error_vs_configured"] = _ratio(estimate, configured) - 1
        low, high = pooled.get(f"{name}_ci_low", math.nan), pooled.get(f"{name}_ci_high", math.nan)
        scores[f"{name}_ci_covers_true"] = bool(low <= true_rate <= high)
    for kind in EVENTS:
        n_true, n_est = int(true_counts.get(kind, 0)), int(est_counts.get(kind, 0))
        scores[f"n_{kind}_true"] = n_true
        scores[f"n_{kind}_estimated"] = n_est
        scores[f"{kind}_count_ratio"] = _ratio(n_est, n_true)
    return scores


# --- everything ------------------------------------------------------------------------


def _jsonable(value):
    """Plain Python numbers; NaN and infinities become None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def evaluate(results, truth, *, max_distance_px: float = 2.0, max_frames: int = 25) -> dict:
    """All scores of one run against its ground truth.

    Parameters
    ----------
    results : pipeline.io.results.Results
        A complete run.
    truth : pipeline.sim.truth.Truth
        The ground truth of the simulated movie it ran on.
    max_distance_px : float
        Largest detection-to-particle distance of a match, px.
    max_frames : int
        Frames sampled for the segmentation scores.

    Returns
    -------
    dict
        Flat and JSON-able (NaN as None): the keys of :func:`detection_scores`,
        :func:`state_scores`, :func:`tracking_scores`,
        :func:`segmentation_scores` (when the store has cell labels) and
        :func:`rate_scores`, plus ``store``, ``seed``, ``n_frames`` and
        ``max_distance_px``.
    """
    pred = results.particles
    matches = match_detections(pred, truth.particles, max_distance_px=max_distance_px)
    scores = {"store": str(results.path), "seed": truth.meta["seed"],
              "n_frames": int(truth.cell_labels.shape[0]), "max_distance_px": max_distance_px}
    scores.update(detection_scores(matches, truth.particles, truth.meta))
    scores.update(state_scores(matches, pred, truth.particles))
    scores.update(tracking_scores(matches, pred, truth.particles))
    if results.cell_labels is not None:
        scores.update(segmentation_scores(results.cell_labels, truth.cell_labels, max_frames=max_frames))
    scores.update(rate_scores(results, truth))
    return {key: _jsonable(value) for key, value in scores.items()}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:+.0%}"


def format_report(scores: dict) -> str:
    """A readable (markdown) report of :func:`evaluate`'s scores."""
    s = scores
    lines = [f"# Evaluation of {s.get('store')}", ""]
    lines += [
        "## Detection",
        f"precision {_fmt(s['detection_precision'])}, recall {_fmt(s['detection_recall'])}, "
        f"F1 {_fmt(s['detection_f1'])} ({s['n_matched']} matched of {s['n_pred']} detections and "
        f"{s['n_truth']} visible particles, within {s['max_distance_px']} px)",
        f"localisation RMSE {_fmt(s['localization_rmse_px'])} px; Cramér–Rao bound "
        f"{_fmt(s['localization_crlb_px'])} px (median particle {_fmt(s['localization_crlb_median_px'])} px)",
        "",
        "## States",
        f"per-detection accuracy {_fmt(s['state_accuracy'])}",
        "",
        "| truth \\ predicted | " + " | ".join(STATES) + " | recall | precision |",
        "|---" * (len(STATES) + 3) + "|",
    ]
    for t in STATES:
        row = [str(s[f"state_confusion.{t}.{p}"]) for p in STATES]
        lines.append(f"| {t} | " + " | ".join(row)
                     + f" | {_fmt(s[f'state_recall_{t}'])} | {_fmt(s[f'state_precision_{t}'])} |")
    lines += [
        "",
        "## Tracking",
        f"link precision {_fmt(s['link_precision'])} ({s['n_links_scored']} links scored), "
        f"link recall {_fmt(s['link_recall'])} ({s['n_true_links_detected']} of {s['n_true_links']} "
        "true links detected at both ends)",
        f"track purity {_fmt(s['track_purity'])} ({s['n_tracks_scored']} tracks)",
        "",
    ]
    if "segmentation_ap50" in s:
        lines += [
            "## Segmentation",
            f"AP@0.5 {_fmt(s['segmentation_ap50'])}, cell-id consistency "
            f"{_fmt(s['cell_id_consistency'])} ({s['segmentation_frames']} frames)",
            "",
        ]
    lines += [
        "## Rates (pooled, 1/min)",
        "| rate | estimated | true (realised) | configured | error vs true | error vs configured | CI covers true |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in RATES:
        lines.append(f"| {name} | {_fmt(s[f'{name}_estimated'])} | {_fmt(s[f'{name}_true'])} | "
                     f"{_fmt(s[f'{name}_configured'])} | {_pct(s[f'{name}_error_vs_true'])} | "
                     f"{_pct(s[f'{name}_error_vs_configured'])} | {s[f'{name}_ci_covers_true']} |")
    lines += ["", "| event | estimated | true | ratio |", "|---|---|---|---|"]
    for kind in EVENTS:
        lines.append(f"| {kind} | {s[f'n_{kind}_estimated']} | {s[f'n_{kind}_true']} | "
                     f"{_fmt(s[f'{kind}_count_ratio'], 2)} |")
    return "\n".join(lines) + "\n"
