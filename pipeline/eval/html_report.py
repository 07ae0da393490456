"""Self-contained HTML reports, one per movie and one per batch, with vector figures beside them.

Each report is one ``.html`` file with its figures inline (PNG, base64), so it can be mailed or
archived on its own; every figure is also written as SVG and PDF next to it (``<name>_figures/``)
for papers. Template: ``pipeline/eval/templates/report.html`` (``string.Template``).

Movie report (:func:`write_movie_report`)
    run parameters, warnings, QC images (a frame with cell outlines and particles coloured by
    state; every track drawn over the cells, coloured by its final state), pooled rates,
    release and membrane-dwell curves (Kaplan–Meier with band, exponential and two-phase fits,
    the fit check's verdict, "x % released within 30 min", half-lives), per-cell rate table
    with CIs and a forest plot of per-cell rates.
Batch report (:func:`write_batch_report`)
    rates per condition (hierarchical-bootstrap and Poisson CIs), ratios to the reference
    condition, a forest plot of both, curves per condition on one plot, and the movies.

Warnings (:func:`warnings_for`)
    fewer than :data:`FEW_EVENTS` events behind a pooled rate; cells whose interval spans more
    than :data:`WIDE_CI_FOLD` × (high / low, or low = 0 with events); cells touching the image
    border in any frame (their particles leave the field, their area is cut); a two-phase
    verdict (one rate does not describe the curve); a horizon beyond the movie's follow-up
    (only the model's extrapolation is given).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.eval.compare import compare_conditions
from pipeline.eval.report import SURVIVAL_PANELS, draw_survival
from pipeline.stages.aggregates import label_aggregates, rates_by_label
from pipeline.stages.motion import MOTION_CLASSES, MotionParams, directed_runs, motion_segments
from pipeline.stages.survival import spells, survival_table
from pipeline.vocabulary import RATES, STATE_COLORS, STATES

log = logging.getLogger(__name__)

__all__ = ["write_movie_report", "write_batch_report", "warnings_for"]

TEMPLATE = Path(__file__).with_name("templates") / "report.html"
#: A pooled rate from fewer events than this is flagged.
FEW_EVENTS = 10
#: A per-cell interval whose high / low exceeds this is flagged as wide.
WIDE_CI_FOLD = 10.0
#: Fewer top-level units (replicates, else movies) per condition than this is flagged in a batch report.
MIN_TOP_UNITS = 3
#: Time at which "x % released" is reported, min.
HORIZON_MIN = 30.0


class _Figures:
    """Collects figures: PNG for inline use, SVG and PDF files in a folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: list[Path] = []

    def add(self, fig, name: str, caption: str) -> str:
        import matplotlib.pyplot as plt

        self.folder.mkdir(parents=True, exist_ok=True)
        for ext in ("svg", "pdf"):
            path = self.folder / f"{name}.{ext}"
            fig.savefig(path)
            self.files.append(path)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{caption}</figcaption></figure>")

    def links(self, base: Path) -> str:
        rel = [p.relative_to(base.parent) if p.is_relative_to(base.parent) else p for p in self.files]
        return ", ".join(f'<a href="{html.escape(str(r))}">{html.escape(r.name)}</a>' for r in rel) or "none"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.{digits}g}"


def _ci(row, name: str, scale: float = 1.0, digits: int = 3) -> str:
    v, lo, hi = (row.get(f"{name}{p}", np.nan) for p in ("", "_ci_low", "_ci_high"))
    if not np.isfinite(v):
        return "n/a"
    return f"{_fmt(v * scale, digits)} [{_fmt(lo * scale, digits)}, {_fmt(hi * scale, digits)}]"


def _table(header: list[str], rows: list[list[str]], text_cols: int = 1) -> str:
    def cell(tag, i, v):
        cls = ' class="text"' if i < text_cols else ""
        return f"<{tag}{cls}>{v}</{tag}>"

    head = "".join(cell("th", i, html.escape(h)) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, subtitle: str, body: str, figures: _Figures, path: Path) -> Path:
    text = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(title), subtitle=subtitle, body=body, version=__version__,
        vector_links=figures.links(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _warnings_html(items: list[str]) -> str:
    if not items:
        return '<div class="ok">No warnings.</div>'
    return '<div class="warn"><ul>' + "".join(f"<li>{html.escape(w)}</li>" for w in items) + "</ul></div>"


def border_cells(labels) -> list[int]:
    """Cell ids touching the image border in any frame of a (t, y, x) label image."""
    if labels is None:
        return []
    lab = np.asarray(labels)
    edges = np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
    return sorted(int(c) for c in np.unique(edges) if c > 0)


def warnings_for(cells: pd.DataFrame, movie: pd.DataFrame, survival: pd.DataFrame,
                 border: list[int]) -> list[str]:
    """The warnings of a movie report (module docstring), as sentences."""
    out = []
    pooled = movie.iloc[0] if len(movie) else pd.Series(dtype=float)
    for rate, event, _ in RATES:
        n = int(pooled.get(f"n_{event}", 0) or 0)
        if n < FEW_EVENTS:
            out.append(f"{rate}: only {n} {event} events in the movie; its interval is wide "
                       f"({_ci(pooled, rate)} /min). Pool movies (uptrack compare) for a usable estimate.")
    for rate, event, _ in RATES:
        if not len(cells) or rate not in cells:
            continue
        lo, hi, n = cells[f"{rate}_ci_low"], cells[f"{rate}_ci_high"], cells[f"n_{event}"]
        with np.errstate(divide="ignore", invalid="ignore"):
            wide = ((hi / lo > WIDE_CI_FOLD) | ((lo == 0) & (n > 0))) & np.isfinite(hi)
        if wide.any():
            ids = ", ".join(str(int(c)) for c in cells.loc[wide, "cell_id"].head(12))
            out.append(f"{rate}: {int(wide.sum())} of {len(cells)} cells have intervals wider than "
                       f"{WIDE_CI_FOLD:g}x (cells {ids}{' ...' if wide.sum() > 12 else ''}).")
    if border:
        out.append(f"{len(border)} cells touch the image border (cells {', '.join(map(str, border[:12]))}"
                   f"{' ...' if len(border) > 12 else ''}): particles leaving the field are censored and the "
                   "cell's area is cut; consider excluding them.")
    pooled_surv = survival[survival["cell_id"] == 0] if len(survival) else survival
    for _, row in pooled_surv.iterrows():
        if row.get("verdict") == "two-phase":
            out.append(f"{row['kind']}: one exponential rate does not describe the curve (two-phase model "
                       f"preferred, p = {row['p_value']:.2g}); the single rate is an average of a fast and a "
                       "slow phase.")
        if row["n_spells"] and row["horizon_min"] > row["follow_up_min"]:
            out.append(f"{row['kind']}: the movie follows spells for at most {row['follow_up_min']:.1f} min; "
                       f"the fraction by {row['horizon_min']:g} min is the exponential model's extrapolation.")
    return out


def _qc_figures(results, figures: _Figures) -> str:
    """A frame with outlines and state-coloured particles; the track overlay."""
    from skimage.segmentation import find_boundaries

    plt = _plt()
    p = results.particles
    labels = results.cell_labels
    n_frames = int(results.attrs.get("n_frames", 0) or (labels.shape[0] if labels is not None else 1))
    frame = n_frames // 2
    lab = np.asarray(labels[frame]) if labels is not None else None
    image = _particle_frame(results, frame)
    parts = []
    fig, ax = plt.subplots(figsize=(6, 6))
    if image is not None:
        lo, hi = np.percentile(image, [1, 99.7])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
    elif lab is not None:
        ax.imshow(lab > 0, cmap="Greys", alpha=0.15)
    if lab is not None:
        edge = np.ma.masked_where(~find_boundaries(lab, mode="outer"), np.ones(lab.shape))
        ax.imshow(edge, cmap="autumn", alpha=0.9, interpolation="nearest")
    here = p[p["frame"] == frame]
    for state in STATES:
        s = here[here["state"] == state]
        ax.scatter(s["x"], s["y"], s=28, facecolors="none", edgecolors=STATE_COLORS[state], linewidths=1.2,
                   label=f"{state} ({len(s)})")
    ax.set_title(f"frame {frame}: cell outlines, particles by state", fontsize=9)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    ax.set_axis_off()
    parts.append(figures.add(fig, "qc_frame", f"Frame {frame}: segmented cell outlines (red) and detected "
                             "particles coloured by state."))
    fig, ax = plt.subplots(figsize=(6, 6))
    if lab is not None:
        ax.imshow(lab > 0, cmap="Greys", alpha=0.25)
        edge = np.ma.masked_where(~find_boundaries(lab, mode="outer"), np.ones(lab.shape))
        ax.imshow(edge, cmap="autumn", alpha=0.6, interpolation="nearest")
    final = p.sort_values("frame").groupby("track_id")["state"].last() if len(p) else pd.Series(dtype=str)
    for tid, track in p.sort_values("frame").groupby("track_id"):
        if len(track) > 1:
            ax.plot(track["x"], track["y"], color=STATE_COLORS.get(final.get(tid), "k"), linewidth=0.7, alpha=0.8)
    shape = image.shape if image is not None else (lab.shape if lab is not None else None)
    if shape is not None:
        ax.set_xlim(0, shape[1])
        ax.set_ylim(shape[0], 0)
    ax.set_aspect("equal")
    ax.set_title(f"{p['track_id'].nunique() if len(p) else 0} tracks, coloured by final state", fontsize=9)
    ax.set_axis_off()
    parts.append(figures.add(fig, "qc_tracks", f"Every track over the cells of frame {frame}, coloured by the "
                             "state it ends in."))
    return '<div class="row">' + "".join(parts) + "</div>"


def _particle_frame(results, frame: int) -> np.ndarray | None:
    """One frame of the particle channel of the run's input, or None when it cannot be read."""
    from pipeline.io.movie import open_movie

    path = results.attrs.get("input_path")
    try:
        movie = open_movie(path)
        channels = (results.attrs.get("config") or {}).get("input", {}).get("channels", {})
        index = movie.channel_index(channels.get("particles", "particles"))
        return np.asarray(movie.data[frame, index, 0].compute(), float)
    except Exception as exc:  # the report is still useful without pixels
        log.info("report: movie %s not readable for the QC image (%s)", path, exc)
        return None


def _forest(ax, labels: list[str], values, lows, highs, pooled=None, color="C0", title=""):
    y = np.arange(len(labels))[::-1]
    values, lows, highs = (np.asarray(v, float) for v in (values, lows, highs))
    ok = np.isfinite(values)
    ax.errorbar(values[ok], y[ok], xerr=[values[ok] - lows[ok], highs[ok] - values[ok]], fmt="o", color=color,
                capsize=2, markersize=4)
    if pooled is not None and np.isfinite(pooled[0]):
        ax.axvline(pooled[0], color="k", linewidth=1)
        ax.axvspan(pooled[1], pooled[2], color="k", alpha=0.1)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_title(title, fontsize=9)


def _cell_forest(cells: pd.DataFrame, movie: pd.DataFrame, figures: _Figures) -> str:
    plt = _plt()
    shown = cells[cells[[f"n_{e}" for _, e, _ in RATES]].sum(axis=1) > 0] if len(cells) else cells
    if not len(shown):
        return "<p>No cell has events.</p>"
    pooled = movie.iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.25 * len(shown) + 1.6), sharey=True, layout="constrained")
    for ax, (rate, kind, _) in zip(axes, RATES[:2]):
        _forest(ax, [f"cell {int(c)}" for c in shown["cell_id"]], shown[rate], shown[f"{rate}_ci_low"],
                shown[f"{rate}_ci_high"], pooled=[pooled[rate], pooled[f"{rate}_ci_low"], pooled[f"{rate}_ci_high"]],
                color=STATE_COLORS["vesicular" if kind == "internalization" else "released"],
                title=f"{rate} (1/min)")
    return figures.add(fig, "forest_cells", "Per-cell rates with exact 95 % intervals; the line and band are the "
                       "movie's pooled rate.")


def _survival_rows(summaries: list[dict], horizon_min: float) -> str:
    header = ["group", "curve", "spells", "events", "rate (1/min)", "half-life ln2/k (min)", "KM median (min)",
              f"% exited by {horizon_min:g} min (KM)", f"% by {horizon_min:g} min (exp.)", "fit check"]
    rows = []
    for s in summaries:
        verdict = s.get("verdict", "")
        if verdict == "two-phase":
            verdict += (f" (p={s['p_value']:.2g}; fast {100 * s['p_fast']:.0f} % at {s['k_fast_per_min']:.3g}/min, "
                        f"slow {s['k_slow_per_min']:.3g}/min)")
        elif verdict == "one rate":
            verdict += f" (p={s['p_value']:.2g})"
        rows.append([html.escape(str(s["group"])), s["kind"], str(s["n_spells"]), str(s["n_events"]),
                     _ci(s, "k_per_min"), _ci(s, "half_life_min"), _ci(s, "km_median_min"),
                     _ci(s, "fraction_by_horizon_km", 100, 3), _ci(s, "fraction_by_horizon_exp", 100, 3),
                     html.escape(verdict)])
    return _table(header, rows, text_cols=2)


def _curves(groups: dict[str, pd.DataFrame], figures: _Figures, name: str, caption: str) -> tuple[str, list[dict]]:
    plt = _plt()
    fig, axes = plt.subplots(1, len(SURVIVAL_PANELS), figsize=(11, 4.2), layout="constrained")
    summaries = draw_survival(axes, groups)
    return figures.add(fig, name, caption), summaries


def _motion(results, figures: _Figures) -> str:
    """Motion classes per state, D against the MSD exponent, directed runs (pipeline/stages/motion.py)."""
    plt = _plt()
    scale = {"pixel_size_um": results.pixel_size_um, "frame_interval_s": results.frame_interval_s}
    seg = motion_segments(results.particles, **scale)
    runs = directed_runs(results.particles, **scale)
    params = MotionParams()
    counts = pd.crosstab(seg["state"], seg["motion"]).reindex(columns=list(MOTION_CLASSES), fill_value=0)
    rows = []
    for state, row in counts.iterrows():
        mine = seg[(seg["state"] == state) & (seg["motion"] != "short")]
        rows.append([state] + [str(int(v)) for v in row] + [_fmt(mine["D_um2_s"].median()), _fmt(mine["alpha"].median())])
    table = _table(["state", *MOTION_CLASSES, "median D (µm²/s)", "median alpha"], rows)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    colors = {"immobile": "#555555", "confined": "#2e9d5b", "free": "#1f77b4", "directed": "#d62728"}
    measured = seg[seg["motion"] != "short"]
    for motion, g in measured.groupby("motion"):
        ax.scatter(g["D_um2_s"].clip(lower=1e-6), g["alpha"], s=12, color=colors.get(motion, "k"),
                   label=f"{motion} ({len(g)})")
    ax.axvline(params.immobile_D_um2_s, color="k", linewidth=0.8, linestyle=":")
    for a in (params.confined_alpha, params.directed_alpha):
        ax.axhline(a, color="k", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("D (µm²/s, linear MSD fit of the first lags)")
    ax.set_ylabel("MSD exponent alpha")
    if len(measured):
        ax.legend(fontsize=7)
    fig_html = figures.add(fig, "motion", f"Track segments with at least {params.min_detections} detections: "
                           "diffusion coefficient against MSD exponent; dotted: the class thresholds.")
    run_text = (f"<p>{len(runs)} directed runs (straight over {params.run_window} frames, at least "
                f"{params.run_speed_um_s:g} µm/s): median speed {_fmt(runs['speed_um_s'].median())} µm/s, "
                f"median duration {_fmt(runs['duration_s'].median())} s"
                + (f", {int((runs['state'] == 'vesicular').sum())} of them vesicular" if len(runs) else "")
                + ".</p>")
    return table + fig_html + run_text


def _aggregates(results, figures: _Figures) -> str:
    """Brightness mixture, particles per spot and rates split single / aggregate (pipeline/stages/aggregates.py)."""
    from scipy.stats import norm

    plt = _plt()
    p = results.particles
    if p["track_id"].nunique() < 5 if len(p) else True:
        return "<p>Too few tracks for the brightness analysis.</p>"
    labelled, tracks, fit = label_aggregates(p)
    rates = rates_by_label(labelled, results.events, tracks, frame_interval_s=results.frame_interval_s)
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    x = np.log(tracks["brightness"][tracks["brightness"] > 0])
    ax.hist(x, bins=40, density=True, color="#bbbbbb")
    grid = np.linspace(x.min(), x.max(), 300)
    mu, sigma = np.log(fit["unit_brightness"]), fit["log_sigma"]
    for k, w in enumerate(fit["weights"], start=1):
        ax.plot(grid, w * norm.pdf(grid, mu + np.log(k), sigma), label=f"{k} particle{'s' if k > 1 else ''} "
                f"({100 * w:.0f} %)")
    ax.set_xlabel(f"ln median {fit['brightness_column']} per track")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig_html = figures.add(fig, "aggregates", f"Track brightness and the fitted mixture: unit brightness "
                           f"{fit['unit_brightness']:.4g} ({fit['brightness_column']}), k-particle spots at k times it.")
    table = _table(["label", "tracks", "n release", "k_release_per_min [95 % CI]", "n internalization",
                    "k_internalization_per_min [95 % CI]"],
                   [[r["aggregate_label"], str(int(r["n_tracks"])), str(int(r["n_release"])), _ci(r, "k_release_per_min"),
                     str(int(r["n_internalization"])), _ci(r, "k_internalization_per_min")]
                    for _, r in rates.iterrows()])
    state_of = p.groupby("track_id")["state"].agg(lambda v: v.value_counts().index[0])
    by_state = (tracks.set_index("track_id")["aggregate_label"] == "aggregate").groupby(state_of).mean()
    note = ""
    if len(by_state) > 1 and by_state.max() - by_state.min() > 0.4:
        note = _warnings_html([
            "The aggregate fraction differs strongly between states (" + ", ".join(
                f"{k} {100 * v:.0f} %" for k, v in by_state.items()) + "): the brightness measure depends on where "
            "the particle is (background under cells), so these labels may reflect location, not aggregation. "
            "Use a locally background-subtracted brightness (integrated_intensity) before trusting them."])
    return note + fig_html + table


def _stored(results, name: str) -> pd.DataFrame | None:
    """A table of the store that not every store has (None when absent)."""
    from pipeline.io.results import read_table
    from pipeline.io.store import has_table

    if not has_table(results.path, name):
        return None
    return read_table(results.path, name)


def _compartments(rates: pd.DataFrame, over_time: pd.DataFrame | None, frame_interval_s: float,
                  figures: _Figures) -> str:
    """Arrival rate per compartment and the colocalised fraction over time (pipeline/stages/compartments.py)."""
    plt = _plt()
    table = _table(["compartment", "vesicular spells", "arrivals", "k_arrival (1/min) [95 % CI]",
                    "half-time ln2/k (min)", "KM median (min)"],
                   [[html.escape(str(r["compartment"])), str(int(r["n_spells"])), str(int(r["n_events"])),
                     _ci(r, "k_per_min"), _ci(r, "half_life_min"), _ci(r, "km_median_min")]
                    for _, r in rates.iterrows()])
    if over_time is None or not len(over_time):
        return table
    fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
    for name, g in over_time.groupby("compartment"):
        ax.plot(g["frame"] * frame_interval_s / 60, g["fraction"], label=str(name))
    ax.set_xlabel("time (min)")
    ax.set_ylabel("fraction of vesicular particles")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return table + figures.add(fig, "colocalization", "Fraction of vesicular particles in each marker's compartment "
                               "over time.")


def write_movie_report(results, path: str | Path | None = None) -> Path:
    """Write the HTML report of one movie (module docstring); default ``<store>.report.html``.

    Parameters
    ----------
    results
        :class:`pipeline.io.results.Results` of a complete run.
    path
        The ``.html`` file; its figures go to ``<stem>_figures/`` beside it.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path) if path is not None else results.path.with_suffix(".report.html")
    figures = _Figures(path.with_name(path.stem.replace(".", "_") + "_figures"))
    spell_table = spells(results.particles, frame_interval_s=results.frame_interval_s)
    surv = survival_table(spell_table, horizon_min=HORIZON_MIN)
    cells, movie = results.cells, results.movie
    border = border_cells(results.cell_labels)
    body = ["<h2>Warnings</h2>", _warnings_html(warnings_for(cells, movie, surv, border))]
    body += ["<h2>Quality control</h2>", _qc_figures(results, figures)]
    pooled = movie.iloc[0] if len(movie) else pd.Series(dtype=float)
    body += ["<h2>Pooled rates (exact Poisson 95 % CI)</h2>",
             _table(["rate", "events", "estimate [95 % CI] (1/min)"],
                    [[r, str(int(pooled.get(f"n_{e}", 0) or 0)), _ci(pooled, r)] for r, e, _ in RATES]),
             "<p>Exocytosis half-life ln2/k_release: " + _ci(pooled, "exocytosis_half_life_min") +
             " min; membrane dwell 1/(k_int + k_unb): " + _ci(pooled, "membrane_dwell_min") + " min.</p>"]
    fig_html, summaries = _curves({"movie": spell_table}, figures, "curves",
                                  "Kaplan–Meier curves (steps, band: 95 % log(−log) Greenwood interval) with "
                                  "right-censoring at track ends; dashed: the exponential of the rate; dotted: the "
                                  "two-phase fit when preferred.")
    internalization = surv[(surv["kind"] == "internalization") & (surv["cell_id"] == 0)]
    summaries += [{"group": "movie", **r} for r in internalization.to_dict("records")]
    body += ["<h2>Release and retention curves</h2>", fig_html, _survival_rows(summaries, HORIZON_MIN),
             "<p>Spells with an observed start only (internalization for release, binding for membrane dwell). "
             "The fit check compares one exponential with a two-phase model (likelihood ratio, AIC; "
             "see pipeline/stages/survival.py).</p>"]
    cell_rows = []
    for _, row in cells.iterrows():
        cell_rows.append([str(int(row["cell_id"])), _fmt(row.get("mean_area_um2"), 4)]
                         + [str(int(row.get(f"n_{e}", 0) or 0)) for _, e, _ in RATES]
                         + [_ci(row, r) for r, _, _ in RATES] + [_ci(row, "exocytosis_half_life_min")]
                         + ["border" if int(row["cell_id"]) in border else ""])
    body += ["<h2>Per-cell rates</h2>", _cell_forest(cells, movie, figures),
             _table(["cell", "area (µm²)"] + [f"n {e}" for _, e, _ in RATES] + [f"{r} [95 % CI]" for r, _, _ in RATES]
                    + ["half-life (min)", "note"], cell_rows, text_cols=1)]
    body += ["<h2>Motion</h2>", _motion(results, figures)]
    body += ["<h2>Aggregates</h2>", _aggregates(results, figures)]
    compartments = _stored(results, "compartments")
    if compartments is not None and len(compartments):
        body += ["<h2>Compartments</h2>", _compartments(compartments, _stored(results, "colocalization_over_time"),
                                                         results.frame_interval_s, figures)]
    config = json.dumps(results.attrs.get("config", {}), indent=2, default=str)
    body += ["<h2>Run parameters</h2>", f"<details><summary>full config</summary><pre>{html.escape(config)}</pre>"
             "</details>"]
    n_frames = int(results.attrs.get("n_frames", 0) or 0)
    subtitle = (f"store {html.escape(str(results.path))} · input {html.escape(str(results.attrs.get('input_path')))}"
                f" · {n_frames} frames × {results.frame_interval_s:g} s · pixel {results.pixel_size_um:g} µm"
                f" · {len(cells)} cells · {results.particles['track_id'].nunique() if len(results.particles) else 0}"
                " tracks")
    return _page(f"uptrack report: {results.path.name.removesuffix('.zarr')}", subtitle, "\n".join(body), figures,
                 path)


def write_batch_report(cells: pd.DataFrame, spell_table: pd.DataFrame, results: list, out_dir: str | Path, *,
                       reference: str | None = None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Write the batch comparison: CSV tables, curves per condition, forest plot, HTML report.

    Parameters
    ----------
    cells, spell_table, results
        From :func:`pipeline.eval.compare.batch_tables`.
    out_dir
        Folder written: ``rates.csv``, ``ratios.csv``, ``survival.csv``, ``report.html``,
        ``report_figures/`` (SVG, PDF).
    reference, n_boot, seed
        As in :func:`pipeline.eval.compare.compare_conditions`.

    Returns
    -------
    dict
        Paths (``rates``, ``ratios``, ``survival``, ``curves_svg``, ``report``) and the tables
        (``rates_table``, ``ratios_table``).
    """
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    figures = _Figures(out / "report_figures")
    rates, ratios = compare_conditions(cells, reference=reference, n_boot=n_boot, seed=seed)
    groups = {str(c): g for c, g in spell_table.groupby("condition", sort=True)}
    curves_html, summaries = _curves(groups, figures, "curves_by_condition",
                                     "Release and membrane-dwell curves per condition (Kaplan–Meier with 95 % band; "
                                     "dashed: exponential).")
    surv = pd.DataFrame(summaries)
    conditions = sorted(rates["condition"].unique())
    fig, axes = plt.subplots(1, len(RATES), figsize=(12, 0.35 * len(conditions) + 1.8), layout="constrained")
    for ax, (rate, _, _) in zip(axes, RATES):
        r = rates[rates["rate"] == rate].set_index("condition").reindex(conditions)
        _forest(ax, conditions, r["estimate"], r["ci_low"], r["ci_high"], title=f"{rate} (1/min)")
    forest = figures.add(fig, "forest_conditions", "Pooled rate per condition with the hierarchical-bootstrap "
                         "95 % interval.")
    ref = ratios["reference"].iloc[0] if len(ratios) else (conditions[0] if conditions else "")
    notes = []
    for cond in conditions:
        mine = cells[cells["condition"].astype(str) == cond]
        by_rep = mine["replicate"].astype(str).ne("").all()
        top, unit = (mine["replicate"].nunique(), "replicates") if by_rep else (mine["movie"].nunique(), "movies")
        if top < MIN_TOP_UNITS:
            notes.append(f"{cond}: only {top} {unit} at the top of the hierarchy; a bootstrap over fewer than "
                         f"{MIN_TOP_UNITS} units understates the between-replicate spread. Add replicates before "
                         "trusting the interval.")
    for _, r in rates.iterrows():
        if r["n_events"] < FEW_EVENTS:
            notes.append(f"{r['condition']}, {r['rate']}: only {r['n_events']} events.")
    body = ["<h2>Warnings</h2>", _warnings_html(notes), "<h2>Rates per condition</h2>", forest,
            _table(["condition", "rate", "movies", "cells", "events", "estimate (1/min)",
                    "95 % CI, hierarchical bootstrap", "95 % CI, Poisson (ignores hierarchy)", "resampled"],
                   [[html.escape(r["condition"]), r["rate"], str(r["n_movies"]), str(r["n_cells"]), str(r["n_events"]),
                     _fmt(r["estimate"]), f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]",
                     f"[{_fmt(r['poisson_ci_low'])}, {_fmt(r['poisson_ci_high'])}]", r["hierarchy"]]
                    for _, r in rates.iterrows()], text_cols=2),
            f"<h2>Ratios to {html.escape(str(ref))}</h2>",
            _table(["condition", "rate", "ratio", "95 % CI (hierarchical bootstrap)", "resampled"],
                   [[html.escape(r["condition"]), r["rate"], _fmt(r["ratio"]),
                     f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]", r["hierarchy"]] for _, r in ratios.iterrows()],
                   text_cols=2),
            "<p>Bootstrap: replicates, then movies within them, then cells within movies are resampled with "
            "replacement and the pooled rate (events / time at risk) recomputed (pipeline/eval/compare.py).</p>",
            "<h2>Curves per condition</h2>", curves_html, _survival_rows(summaries, HORIZON_MIN)]
    movie_rows = []
    for res in results:
        report = res.path.with_suffix(".report.html")
        meta = res.attrs.get("metadata") or {}
        link = (f'<a href="{html.escape(str(report))}">report</a>' if report.is_file() else "")
        movie_rows.append([html.escape(res.path.name), html.escape(", ".join(f"{k}={v}" for k, v in meta.items())),
                           str(len(res.cells)), link])
    body += ["<h2>Movies</h2>", _table(["store", "metadata", "cells", ""], movie_rows, text_cols=2)]
    rates.to_csv(out / "rates.csv", index=False)
    ratios.to_csv(out / "ratios.csv", index=False)
    surv.to_csv(out / "survival.csv", index=False)
    subtitle = f"{len(results)} movies · {len(conditions)} conditions · reference {html.escape(str(ref))}"
    _page("uptrack batch comparison", subtitle, "\n".join(body), figures, path)
    return {"rates": out / "rates.csv", "ratios": out / "ratios.csv", "survival": out / "survival.csv",
            "curves_svg": figures.folder / "curves_by_condition.svg", "report": path,
            "rates_table": rates, "ratios_table": ratios}
