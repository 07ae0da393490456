"""Run summaries for people: a text table of cells and rates, and a kinetics figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.eval.evaluate import true_pooled_rates
from pipeline.vocabulary import EVENT_OF_TRANSITION, EVENTS, RATES, STATE_COLORS, STATES


def _rate(row, name: str) -> str:
    value = row.get(name, np.nan)
    if not np.isfinite(value):
        return "n/a"
    low, high = row.get(f"{name}_ci_low", np.nan), row.get(f"{name}_ci_high", np.nan)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def summary_text(results, truth=None) -> str:
    """A plain-text summary of a run: counts, pooled rates, per-cell rates.

    Parameters
    ----------
    results
        :class:`pipeline.io.results.Results` of a complete run.
    truth
        Optional :class:`pipeline.sim.truth.Truth` of a simulated movie; its true rates
        are printed beside the estimates.

    Returns
    -------
    str
    """
    p, ev, cells, movie = results.particles, results.events, results.cells, results.movie
    lines = [
        f"store: {results.path}",
        f"frames: {int(results.attrs.get('n_frames', 0))} x {results.frame_interval_s:g} s, "
        f"pixel {results.pixel_size_um:g} um",
        f"cells: {len(cells)}   tracks: {p['track_id'].nunique() if len(p) else 0}   "
        f"detections: {len(p)}",
        "detections by state: " + ", ".join(f"{s} {int((p['state'] == s).sum())}" for s in STATES),
        "events: " + ", ".join(f"{k} {int((ev['kind'] == k).sum())}" for k in EVENTS),
        "",
        "pooled rates, 1/min [95% CI]" + ("      truth (events / time at risk)" if truth else ""),
    ]
    pooled = movie.iloc[0] if len(movie) else pd.Series(dtype=float)
    true_pooled = _true_pooled(truth) if truth is not None else {}
    for name, _, _ in RATES:
        line = f"  {name:<28}{_rate(pooled, name):<28}"
        if name in true_pooled:
            line += f"{true_pooled[name]:.3f}"
        lines.append(line)
    true_cells = _true_cells(results, truth) if truth is not None else pd.DataFrame()
    header = ["cell", "k_internalization", "k_release", "n_int", "n_rel"]
    if len(true_cells):
        header.append("  truth: k_int  k_rel  n_int n_rel (true cell)")
    lines += ["", "per cell: " + "   ".join(header)]
    for _, row in cells.iterrows():
        line = (f"  {int(row['cell_id']):>4}  {_rate(row, 'k_internalization_per_min'):<26}"
                f"{_rate(row, 'k_release_per_min'):<26}"
                f"{int(row.get('n_internalization', 0)):>4} {int(row.get('n_release', 0)):>4}")
        if int(row["cell_id"]) in true_cells.index:
            t = true_cells.loc[int(row["cell_id"])]
            line += (f"          {t['k_internalization_per_min']:.3f}  {t['k_release_per_min']:.3f}"
                     f" {int(t['n_internalization']):>4} {int(t['n_release']):>4}  ({int(t['cell_id'])})")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _true_cells(results, truth) -> pd.DataFrame:
    """Realised true rates of the simulated cell under each found cell (largest overlap in the
    first frame), indexed by the found cell's id; empty when labels are missing."""
    if results.cell_labels is None or truth.cell_labels is None or not len(truth.cells):
        return pd.DataFrame()
    found = np.asarray(results.cell_labels[0]).ravel()
    true = np.asarray(truth.cell_labels[0]).ravel()
    inside = (found > 0) & (true > 0)
    pairs = pd.DataFrame({"found": found[inside], "true": true[inside]}).value_counts().reset_index()
    best = pairs.sort_values("count", ascending=False).drop_duplicates("found").set_index("found")["true"]
    cells = truth.cells.set_index("cell_id")
    rows = cells.reindex(best.to_numpy()).assign(cell_id=best.to_numpy())
    rows["k_internalization_per_min"] = rows["n_internalization"] / (rows["membrane_bound_time_s"] / 60)
    rows["k_release_per_min"] = rows["n_release"] / (rows["vesicular_time_s"] / 60)
    rows.index = best.index.astype(int)
    return rows.dropna(subset=["n_internalization"])


def _true_pooled(truth) -> dict[str, float]:
    """Realised true rates of a simulation (those with time at risk)."""
    return {name: rate for name, rate in true_pooled_rates(truth).items() if np.isfinite(rate)}


def draw_cell_kinetics(figure, cell_id: int, kinetics, cell: pd.Series, movie: pd.Series) -> None:
    """Draw one cell's kinetics: particles per state, cumulative events, rates with intervals.

    The one per-cell figure: the napari plugin draws it for the chosen cell, :func:`plot_kinetics`
    once per cell for the run's PNG.

    Parameters
    ----------
    figure : matplotlib.figure.Figure or SubFigure
        Cleared and redrawn.
    cell_id : int
    kinetics : xarray.Dataset
        The cell's time series (dim ``frame``, coordinate ``time_s``).
    cell, movie : pandas.Series
        The cell's row of the cells table and the movie's pooled row.
    """
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    figure.clear()
    figure.set_facecolor(matplotlib.rcParams["figure.facecolor"])
    counts, cumulative, rates = figure.subplots(3, 1, height_ratios=[3, 2, 2])
    minutes = kinetics["time_s"].to_numpy() / 60.0
    for state in STATES:
        counts.plot(minutes, kinetics[f"n_{state}"], color=STATE_COLORS[state], label=state.replace("_", " "))
    counts.set_ylabel("particles")
    counts.set_title(f"cell {cell_id}", fontsize=10)
    counts.legend(fontsize=7, ncol=2)
    for kind in ("internalization", "release"):
        state = next(after for (_, after), event in EVENT_OF_TRANSITION.items() if event == kind)
        cumulative.step(minutes, kinetics[f"cum_{kind}"], where="post", color=STATE_COLORS[state], label=kind)
    cumulative.set_xlabel("time (min)")
    cumulative.set_ylabel("cumulative events")
    cumulative.legend(fontsize=7)
    for ax in (counts, cumulative):  # counts: whole-number ticks only
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for i, (rate, kind, _) in enumerate(RATES):
        state = next(after for (_, after), event in EVENT_OF_TRANSITION.items() if event == kind)
        for offset, row, marker in ((-0.12, cell, "o"), (0.12, movie, "s")):
            value, low, high = row[rate], row[f"{rate}_ci_low"], row[f"{rate}_ci_high"]
            if np.isfinite(value):
                rates.errorbar(i + offset, value, yerr=[[value - low], [high - value]], fmt=marker, capsize=3,
                               color=STATE_COLORS[state], alpha=1.0 if row is cell else 0.5)
    rates.set_xticks(range(len(RATES)), [kind[:8] + "." if len(kind) > 9 else kind for _, kind, _ in RATES])
    rates.set_xlim(-0.5, len(RATES) - 0.5)
    rates.set_ylabel("rate (1/min)")
    rates.set_title("rate with CI: ● cell  ■ movie", fontsize=8)


def plot_kinetics(results, path: str | Path, *, max_cells: int = 12) -> Path:
    """Per-cell kinetics figure: one column per cell (:func:`draw_cell_kinetics`).

    Parameters
    ----------
    results
        :class:`pipeline.io.results.Results` of a complete run.
    path
        PNG file to write.
    max_cells
        Cells drawn (those with the most internalization events first).

    Returns
    -------
    pathlib.Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = results.kinetics.load()
    cells = results.cells.sort_values("n_internalization", ascending=False).head(max_cells)
    movie = results.movie.iloc[0]
    n = max(len(cells), 1)
    fig = plt.figure(figsize=(2.6 * n + 1, 6.5), layout="constrained")
    columns = np.atleast_1d(fig.subfigures(1, n))
    for column, (_, cell) in zip(columns, cells.iterrows()):
        cell_id = int(cell["cell_id"])
        draw_cell_kinetics(column, cell_id, ds.sel(cell_id=cell_id), cell, movie)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
