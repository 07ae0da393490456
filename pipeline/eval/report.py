"""Run summaries for people: a text table of cells and rates, and a kinetics figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.vocabulary import EVENTS, STATE_COLORS, STATES

RATES = ("k_internalization_per_min", "k_release_per_min", "k_unbinding_per_min")


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
    for name in RATES:
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
    """Realised true rates of a simulation: true events / true time at risk."""
    counts = truth.events["kind"].value_counts()
    cells = truth.cells
    at_risk_min = {
        "k_internalization_per_min": ("internalization", cells["membrane_bound_time_s"].sum() / 60),
        "k_unbinding_per_min": ("unbinding", cells["membrane_bound_time_s"].sum() / 60),
        "k_release_per_min": ("release", cells["vesicular_time_s"].sum() / 60),
    }
    return {name: counts.get(kind, 0) / t for name, (kind, t) in at_risk_min.items() if t > 0}


def plot_kinetics(results, path: str | Path, *, max_cells: int = 12) -> Path:
    """Per-cell kinetics figure: particles per state over time, cumulative events.

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
    from matplotlib.ticker import MaxNLocator

    ds = results.kinetics.load()
    cells = results.cells.sort_values("n_internalization", ascending=False).head(max_cells)
    n = max(len(cells), 1)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n + 1, 5), sharex=True, squeeze=False)
    t_min = ds["time_s"].values / 60
    for col, cell_id in enumerate(cells["cell_id"]):
        cell = ds.sel(cell_id=cell_id)
        top, bottom = axes[0, col], axes[1, col]
        for state in STATES:
            top.plot(t_min, cell[f"n_{state}"], color=STATE_COLORS[state], label=state)
        for kind, style in (("internalization", "-"), ("release", "--")):
            bottom.step(t_min, cell[f"cum_{kind}"], style, where="post", color="k", label=kind)
        top.set_title(f"cell {int(cell_id)}")
        bottom.set_xlabel("time (min)")
        for ax in (top, bottom):  # counts: whole-number ticks only
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_ylabel("particles")
    axes[1, 0].set_ylabel("cumulative events")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    axes[1, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
