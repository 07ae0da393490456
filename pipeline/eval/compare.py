"""Condition comparison across a batch: pooled rates, ratios and a hierarchical bootstrap.

Statistics
----------
A condition's rate is pooled the way a movie's is (:mod:`pipeline.stages.kinetics`):
events / time at risk over all its cells. Its exact Poisson interval treats every particle
as independent, which ignores that cells, movies and replicates (days, dishes) differ more
than Poisson noise allows. The interval reported for comparisons is therefore a
**hierarchical bootstrap** (Saravanan et al. 2020, "Application of the hierarchical
bootstrap to multi-level data in neuroscience"): for each condition, resample replicates
with replacement, then movies within each drawn replicate, then cells within each drawn
movie, and recompute the pooled rate. Levels used: ``replicate`` → ``movie`` → ``cell``
when the movies carry a ``replicate`` metadata value, else ``movie`` → ``cell`` (the table
says which, column ``hierarchy``). Conditions are independent samples, so the ratio of two
conditions' rates is computed on independent draws of each; its interval is the percentile
interval of those ratios. With one movie per condition the bootstrap reduces to resampling
cells (column ``n_movies`` shows it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.io.results import load_results
from pipeline.stages.kinetics import poisson_rate_ci
from pipeline.stages.survival import spells
from pipeline.vocabulary import RATES

log = logging.getLogger(__name__)

__all__ = ["RATE_COLUMNS", "batch_tables", "bootstrap_rates", "compare_conditions", "find_stores"]

#: Rate column -> (event count column, time-at-risk column) of the cells table.
RATE_COLUMNS = {rate: (f"n_{event}", f"{state}_time_min") for rate, event, state in RATES}


def find_stores(batch_dir: str | Path) -> list[Path]:
    """The ``*.zarr`` stores in a batch's output folder (and its sub-folders), sorted."""
    batch_dir = Path(batch_dir)
    if not batch_dir.is_dir():
        raise InputError(f"{batch_dir}: not a folder; give the output.dir of a batch (it holds the *.zarr stores)")
    found = sorted(p for p in batch_dir.rglob("*.zarr") if (p / "zarr.json").is_file()
                   and not any(part.endswith(".zarr") for part in p.relative_to(batch_dir).parts[:-1]))
    if not found:
        raise InputError(f"{batch_dir}: no *.zarr stores found; run `uptrack batch` (or `uptrack run`) first")
    return found


def batch_tables(stores: list[Path], *, by: str = "condition") -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """Cells and spells of every complete store, labelled with movie, condition and replicate.

    Parameters
    ----------
    stores : list of Path
    by : str
        Metadata key that names the condition; a movie without it is its own condition (its name).

    Returns
    -------
    cells : DataFrame
        The stores' cells tables with ``movie``, ``condition``, ``replicate`` ("" when absent).
    spells : DataFrame
        :func:`pipeline.stages.survival.spells` of each store, same labels.
    results : list
        The :class:`pipeline.io.results.Results` read (incomplete stores are skipped with a warning).
    """
    cells, spell_tables, loaded = [], [], []
    for path in stores:
        try:
            res = load_results(path)
        except InputError as exc:
            log.warning("compare: skipping %s: %s", path, exc)
            continue
        meta = res.attrs.get("metadata") or {}
        labels = {"movie": path.name.removesuffix(".zarr"), "condition": str(meta.get(by, path.name.removesuffix(".zarr"))),
                  "replicate": str(meta.get("replicate", ""))}
        cells.append(res.cells.assign(**labels))
        spell_tables.append(spells(res.particles, frame_interval_s=res.frame_interval_s).assign(**labels))
        loaded.append(res)
    if not loaded:
        raise InputError("compare: none of the stores is complete; finish the runs first")
    return pd.concat(cells, ignore_index=True), pd.concat(spell_tables, ignore_index=True), loaded


def _groups(cells: pd.DataFrame, count: str, time: str, hierarchical_replicates: bool) -> list[list[np.ndarray]]:
    """Per replicate, per movie: (n_cells, 2) arrays of (events, time at risk)."""
    top = "replicate" if hierarchical_replicates else "movie"
    out = []
    for _, rep in cells.groupby(top, sort=True):
        out.append([m[[count, time]].to_numpy(float) for _, m in rep.groupby("movie", sort=True)])
    return out


def bootstrap_rates(cells: pd.DataFrame, rate: str, *, n_boot: int = 2000, seed: int = 0) -> tuple[np.ndarray, str]:
    """Hierarchical bootstrap of one condition's pooled rate (module docstring).

    Parameters
    ----------
    cells : DataFrame
        Cells of one condition: ``movie``, ``replicate`` and the count and time columns of ``rate``.
    rate : str
        A key of :data:`RATE_COLUMNS`, e.g. ``k_release_per_min``.
    n_boot : int
    seed : int

    Returns
    -------
    draws : (n_boot,) array of float
        Pooled rate of each resample (NaN where a resample has no time at risk), 1/min.
    hierarchy : str
        The levels resampled, e.g. ``replicate > movie > cell``.
    """
    count, time = RATE_COLUMNS[rate]
    cells = cells[cells[time] > 0]
    by_rep = cells["replicate"].astype(str).ne("").all() and cells["replicate"].nunique() > 1
    hierarchy = "replicate > movie > cell" if by_rep else "movie > cell"
    groups = _groups(cells, count, time, by_rep)
    rng = np.random.default_rng(seed)
    draws = np.full(n_boot, np.nan)
    if not groups:
        return draws, hierarchy
    for b in range(n_boot):
        events = at_risk = 0.0
        for g in rng.integers(0, len(groups), len(groups)):
            movies = groups[g]
            for m in rng.integers(0, len(movies), len(movies)):
                arr = movies[m]
                pick = arr[rng.integers(0, len(arr), len(arr))]
                events += pick[:, 0].sum()
                at_risk += pick[:, 1].sum()
        draws[b] = events / at_risk if at_risk > 0 else np.nan
    return draws, hierarchy


def compare_conditions(cells: pd.DataFrame, *, rates: tuple[str, ...] = tuple(RATE_COLUMNS),
                       reference: str | None = None, n_boot: int = 2000, ci_level: float = 0.95,
                       seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rates per condition with CIs, and each condition's ratio to the reference condition.

    Parameters
    ----------
    cells : DataFrame
        Cells of a batch (:func:`batch_tables`): ``condition``, ``movie``, ``replicate`` and
        the count and time columns of each rate.
    rates : tuple of str
        Rate columns to compare (keys of :data:`RATE_COLUMNS`).
    reference : str, optional
        Condition in the denominator of the ratios (e.g. ``control``); default: the first
        condition in sorted order.
    n_boot, ci_level, seed
        Bootstrap resamples, confidence level, random seed.

    Returns
    -------
    rates : DataFrame
        One row per (``condition``, ``rate``): ``n_movies``, ``n_cells``, ``n_events``,
        ``time_at_risk_min``, ``estimate`` (pooled, 1/min), ``poisson_ci_low/high`` (exact,
        ignores the hierarchy), ``ci_low/high`` (hierarchical bootstrap), ``hierarchy``.
    ratios : DataFrame
        One row per (``condition`` ≠ reference, ``rate``): ``reference``, ``ratio``,
        ``ci_low/high`` (bootstrap percentile), ``hierarchy``.
    """
    if not len(cells):
        raise InputError("compare: no cells in the batch's stores")
    conditions = sorted(cells["condition"].astype(str).unique())
    reference = conditions[0] if reference is None else str(reference)
    if reference not in conditions:
        raise InputError(f"compare: reference condition {reference!r} is not in the batch "
                         f"(conditions: {', '.join(conditions)}); pass one of them with --reference")
    alpha = 1 - ci_level
    rate_rows, ratio_rows, draws = [], [], {}
    for ci, cond in enumerate(conditions):
        mine = cells[cells["condition"].astype(str) == cond]
        for ri, rate in enumerate(rates):
            count, time = RATE_COLUMNS[rate]
            n, t = float(mine[count].sum()), float(mine[time].sum())
            est, plo, phi = (float(v[0]) for v in poisson_rate_ci(np.array([n]), np.array([t]), ci_level))
            boot, hierarchy = bootstrap_rates(mine, rate, n_boot=n_boot, seed=seed + 1000 * ci + ri)
            draws[cond, rate] = boot
            lo, hi = (np.nanquantile(boot, [alpha / 2, 1 - alpha / 2]) if np.isfinite(boot).any()
                      else (np.nan, np.nan))
            rate_rows.append({"condition": cond, "rate": rate, "n_movies": int(mine["movie"].nunique()),
                              "n_cells": int((mine[time] > 0).sum()), "n_events": int(n), "time_at_risk_min": t,
                              "estimate": est, "poisson_ci_low": plo, "poisson_ci_high": phi,
                              "ci_low": float(lo), "ci_high": float(hi), "hierarchy": hierarchy})
    table = pd.DataFrame(rate_rows)
    for cond in conditions:
        if cond == reference:
            continue
        for rate in rates:
            num, den = draws[cond, rate], draws[reference, rate]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = num / den
            ratio = ratio[np.isfinite(ratio)]
            row = table[(table["condition"] == cond) & (table["rate"] == rate)].iloc[0]
            ref = table[(table["condition"] == reference) & (table["rate"] == rate)].iloc[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                point = row["estimate"] / ref["estimate"]
            lo, hi = np.quantile(ratio, [alpha / 2, 1 - alpha / 2]) if len(ratio) else (np.nan, np.nan)
            ratio_rows.append({"condition": cond, "reference": reference, "rate": rate, "ratio": float(point),
                               "ci_low": float(lo), "ci_high": float(hi), "hierarchy": row["hierarchy"]})
    ratios = pd.DataFrame(ratio_rows, columns=["condition", "reference", "rate", "ratio", "ci_low", "ci_high",
                                               "hierarchy"])
    return table, ratios
