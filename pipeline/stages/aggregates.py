"""Particle brightness → aggregates: particles per spot, single/aggregate labels, kinetics by label.

Brightness
    The detector's integrated brightness of a spot: ``integrated_intensity`` when the particles
    table has it (background-subtracted sum over the spot), else trackpy's ``mass``.

Unit brightness (one particle)
    Brightness along a track fluctuates (blinking, focus, noise), so each track is summarised by
    the median of its detections' brightness. On the log scale, a spot of ``k`` particles is
    ``log u + log k`` plus noise: the track medians are fit by a mixture of Gaussians with means
    ``log u + log k`` (``k = 1 .. max_particles``), one shared width and free weights (EM).
    The fit starts at the *first mode* of the distribution (the lowest peak of a kernel density
    estimate holding at least ``FIRST_MODE_FRACTION`` of the highest peak's density), so
    aggregates, even when they outnumber singles, are not taken for the unit.

Model choice
    The mixture is kept only when its BIC is lower than that of one log-normal (every track a
    single particle): a broad brightness distribution without aggregates is otherwise split into
    "1" and "2" components (seen on the demo movie, log-normal brightness with σ = 0.4: 39 %
    "aggregates" before this check).

Labels
    ``n_particles`` of a track: its most probable ``k``; ``aggregate`` when ``k ≥ 2``, else
    ``single``. Per detection ``particles_per_spot = brightness / u`` (a float: real aggregates
    and spots of unequal particles are not whole multiples).

Kinetics by label
    :func:`rates_by_label` restricts particles and events to the tracks of each label and calls
    :func:`pipeline.stages.kinetics.cell_rates` (the same estimator as the whole movie).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import gaussian_kde, norm

from pipeline.stages.kinetics import KineticsParams, cell_rates

__all__ = ["AGGREGATE_LABELS", "brightness_column", "fit_unit_brightness", "label_aggregates", "rates_by_label"]

AGGREGATE_LABELS = ("single", "aggregate")
#: A density peak lower than this fraction of the highest is not taken as the first mode.
FIRST_MODE_FRACTION = 0.3


def brightness_column(particles: pd.DataFrame) -> str:
    """``integrated_intensity`` when present, else ``mass``."""
    return "integrated_intensity" if "integrated_intensity" in particles else "mass"


def _first_mode(x: np.ndarray) -> float:
    grid = np.linspace(x.min(), x.max(), 512)
    density = gaussian_kde(x)(grid)
    peaks = np.flatnonzero((density[1:-1] >= density[:-2]) & (density[1:-1] >= density[2:])) + 1
    peaks = peaks[density[peaks] >= FIRST_MODE_FRACTION * density.max()]
    return float(grid[peaks[0]]) if len(peaks) else float(np.median(x))


def fit_unit_brightness(track_brightness: np.ndarray, *, max_particles: int = 4, n_iter: int = 200) -> dict:
    """Fit the log-brightness mixture (module docstring) to per-track brightness values.

    Returns
    -------
    dict
        ``unit_brightness`` (u, the detector's brightness unit), ``log_sigma`` (width on the
        natural-log scale), ``weights`` (fraction of tracks with k = 1 .. max_particles) and
        ``responsibilities`` ((n, max_particles) posterior of k per track).
    """
    b = np.asarray(track_brightness, float)
    x = np.log(b[b > 0])
    if len(x) < 5:
        raise ValueError("fit_unit_brightness needs at least 5 positive brightness values")
    log_k = np.log(np.arange(1, max_particles + 1))
    mu = _first_mode(x)
    sigma = max(np.std(x[np.abs(x - mu) < 0.35]) if np.sum(np.abs(x - mu) < 0.35) > 2 else 0.3, 0.05)
    w = np.full(max_particles, 1.0 / max_particles)
    for _ in range(n_iter):
        like = w * norm.pdf(x[:, None], mu + log_k, sigma)
        r = like / np.maximum(like.sum(axis=1, keepdims=True), 1e-300)
        mu_new = np.sum(r * (x[:, None] - log_k)) / len(x)
        sigma = max(np.sqrt(np.sum(r * (x[:, None] - mu_new - log_k) ** 2) / len(x)), 0.02)
        w = np.maximum(r.mean(axis=0), 1e-6)
        w /= w.sum()
        if abs(mu_new - mu) < 1e-7:
            mu = mu_new
            break
        mu = mu_new
    # model choice: the mixture only if it beats a single log-normal (all singles) by BIC
    loglik_mix = np.sum(np.log(np.maximum((w * norm.pdf(x[:, None], mu + log_k, sigma)).sum(axis=1), 1e-300)))
    mu1, sigma1 = float(np.mean(x)), max(float(np.std(x)), 0.02)
    loglik_one = np.sum(norm.logpdf(x, mu1, sigma1))
    bic_mix, bic_one = (max_particles + 1) * np.log(len(x)) - 2 * loglik_mix, 2 * np.log(len(x)) - 2 * loglik_one
    if bic_one <= bic_mix:
        mu, sigma = mu1, sigma1
        w = np.r_[1.0, np.zeros(max_particles - 1)]
    full = np.zeros((len(b), max_particles))
    like = w * norm.pdf(np.log(np.where(b > 0, b, np.nan))[:, None], mu + log_k, sigma)
    full[:] = np.nan_to_num(like / like.sum(axis=1, keepdims=True), nan=0.0)
    full[b <= 0, 0] = 1.0
    return {"unit_brightness": float(np.exp(mu)), "log_sigma": float(sigma), "weights": w, "responsibilities": full,
            "model": "single" if bic_one <= bic_mix else "mixture", "bic_single": float(bic_one),
            "bic_mixture": float(bic_mix)}


def label_aggregates(particles: pd.DataFrame, *, max_particles: int = 4) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Particles per spot and a single/aggregate label per track.

    Parameters
    ----------
    particles : DataFrame
        Detections with ``track_id`` and a brightness column (:func:`brightness_column`).
    max_particles : int
        Largest number of particles per spot in the mixture.

    Returns
    -------
    particles : DataFrame
        With ``particles_per_spot`` (float) added.
    tracks : DataFrame
        ``track_id``, ``brightness`` (median), ``n_particles`` (most probable k), ``p_single``
        (posterior of k = 1), ``aggregate_label`` (:data:`AGGREGATE_LABELS`).
    fit : dict
        :func:`fit_unit_brightness` result plus ``brightness_column``.
    """
    column = brightness_column(particles)
    tracks = particles.groupby("track_id", sort=True)[column].median().rename("brightness").reset_index()
    fit = fit_unit_brightness(tracks["brightness"].to_numpy(), max_particles=max_particles)
    r = fit["responsibilities"]
    tracks["n_particles"] = (np.argmax(r, axis=1) + 1).astype(np.int64)
    tracks["p_single"] = r[:, 0]
    tracks["aggregate_label"] = np.where(tracks["n_particles"] >= 2, "aggregate", "single")
    out = particles.copy()
    out["particles_per_spot"] = out[column].to_numpy(float) / fit["unit_brightness"]
    fit["brightness_column"] = column
    return out, tracks, fit


def rates_by_label(particles: pd.DataFrame, events: pd.DataFrame, tracks: pd.DataFrame, *,
                   frame_interval_s: float, params: KineticsParams | None = None) -> pd.DataFrame:
    """Pooled rates (the movie row of :func:`pipeline.stages.kinetics.cell_rates`) per aggregate label.

    Returns
    -------
    DataFrame
        One row per label in :data:`AGGREGATE_LABELS`: ``aggregate_label``, ``n_tracks`` and the
        movie table's columns.
    """
    params = params or KineticsParams()
    rows = []
    for label in AGGREGATE_LABELS:
        ids = tracks.loc[tracks["aggregate_label"] == label, "track_id"]
        p = particles[particles["track_id"].isin(ids)]
        e = events[events["track_id"].isin(ids)]
        _, movie = cell_rates(p, e, frame_interval_s=frame_interval_s, params=params)
        rows.append(movie.assign(aggregate_label=label, n_tracks=len(ids)))
    table = pd.concat(rows, ignore_index=True)
    return table[["aggregate_label", "n_tracks", *[c for c in table if c not in ("aggregate_label", "n_tracks")]]]
