"""Accuracy benchmark: simulate movies in several regimes, run uptrack on them, score them.

For every regime and seed: simulate a movie with its ground truth
(:mod:`pipeline.sim.simulate`) into a work folder, run the whole pipeline on it with the
demo config ``configs/sample.yaml`` (the shipped Cellpose model, default stage
parameters; only the input, the output and the typical cell diameter change), score
the store against the truth (:func:`pipeline.eval.evaluate.evaluate`) and write the
section "Accuracy" of ``benchmarks/RESULTS.md`` (other sections are left as they are).

Usage (from the repository root)::

    .venv/bin/python benchmarks/accuracy.py                  # every regime, 3 seeds
    .venv/bin/python benchmarks/accuracy.py --quick          # 1 seed, small movies
    .venv/bin/python benchmarks/accuracy.py --regimes snr2 many_events --seeds 5

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.eval.evaluate import evaluate  # noqa: E402
from pipeline.io.results import load_results  # noqa: E402
from pipeline.run.compute import ComputeConfig, dask_client  # noqa: E402
from pipeline.run.config import RunConfig, config_from_dict  # noqa: E402
from pipeline.run.runner import run  # noqa: E402
from pipeline.sim.simulate import SimulationConfig, simulate, write_simulation  # noqa: E402
from pipeline.vocabulary import STATES  # noqa: E402

log = logging.getLogger("accuracy")

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SAMPLE_CONFIG = REPO / "configs" / "sample.yaml"

#: Every regime's movie: 256×256 px (0.2 µm), 60 frames of 3 s, 5 cells; over it the simulator's
#: defaults (SNR 5, D_free 0.05 µm²/s, PSF sigma 1 px, cytoplasm stain) and the regime's fields.
BASE = {"shape": (256, 256), "n_frames": 60, "n_cells": 5}
#: name -> (what it tests, SimulationConfig fields over BASE).
REGIMES: dict[str, tuple[str, dict]] = {
    "snr2": ("SNR 2", {"snr": 2.0}),
    "snr4": ("SNR 4", {"snr": 4.0}),
    "snr5": ("SNR 5 (reference)", {}),
    "snr10": ("SNR 10", {"snr": 10.0}),
    "sedimented": ("D_free 0.02 µm²/s", {"D_free_um2_s": 0.02}),
    "fast": ("D_free 0.2 µm²/s", {"D_free_um2_s": 0.2}),
    "membrane_stain": ("membrane stain", {"stain": "membrane"}),
    "psf0.7": ("PSF sigma 0.7 px", {"psf_sigma_px": 0.7}),
    "psf1.2": ("PSF sigma 1.2 px", {"psf_sigma_px": 1.2}),
    "many_events": ("512², 160 frames, 14 cells, high uptake", {
        "shape": (512, 512), "n_frames": 160, "n_cells": 14, "n_bound_initial": 80,
        "n_vesicular_initial": 80, "particle_arrival_per_min": 40.0, "p_binding_per_contact": 0.8,
        "k_internalization_per_min": 0.5, "k_release_per_min": 0.3,
    }),
}
#: Issue 13's hard movies: log-normal brightness (sigma 0.6), dim nucleus in the cytoplasm stain, wide
#: PSF, membrane crossings over 3 frames, 80 frames, many events; free particles in the medium or
#: sedimented.
HARD = {"n_frames": 80, "brightness_sigma": 0.6, "nucleus_brightness": (0.3, 0.6), "cell_texture": 0.35,
        "crossing_frames": 3, "n_bound_initial": 30, "n_vesicular_initial": 30, "particle_arrival_per_min": 30.0,
        "p_binding_per_contact": 0.6, "k_internalization_per_min": 0.5, "k_release_per_min": 0.3}
REGIMES |= {
    "hard_medium": ("hard: D_free 0.5 µm²/s, PSF 1.3 px", {**HARD, "D_free_um2_s": 0.5, "psf_sigma_px": 1.3}),
    "hard_sedimented": ("hard: D_free 0.05 µm²/s, PSF 1.1 px", {**HARD, "D_free_um2_s": 0.05,
                                                                 "psf_sigma_px": 1.1}),
    "hard_psf1.5": ("hard: D_free 0.3 µm²/s, PSF 1.5 px", {**HARD, "D_free_um2_s": 0.3, "psf_sigma_px": 1.5}),
}
#: --quick: these fields over every regime's.
QUICK = {"shape": (256, 256), "n_frames": 40, "n_cells": 4}

#: score -> lowest value that meets the target.
TARGETS = {
    "segmentation_ap50": 0.90,
    "cell_id_consistency": 0.95,
    "detection_precision": 0.95,
    "detection_recall": 0.95,
    "state_accuracy": 0.90,
}
#: Pooled rates must be within this relative error of the realised truth ...
RATE_TOLERANCE = 0.20
#: ... on movies with at least this many true events of the rate's kind.
MIN_EVENTS = 100
RATES = {"k_internalization_per_min": "internalization", "k_release_per_min": "release"}


# --- shared with speed.py ------------------------------------------------------------


def simulate_movie(config: SimulationConfig, folder: Path, name: str):
    """Simulate and write ``folder/NAME.ome.tif`` (+ truth); return (movie path, truth)."""
    start = time.perf_counter()
    sim = simulate(config)
    movie = write_simulation(sim, folder, name)["movie"]
    counts = sim.truth.events["kind"].value_counts().to_dict()
    log.info("simulated %s in %.0f s: %d cells, events %s", movie.name, time.perf_counter() - start,
             len(sim.truth.cells), counts)
    return movie, sim.truth


def run_config(movie: Path, out_dir: Path, *, cell_diameter_um: float) -> RunConfig:
    """The demo config (configs/sample.yaml) pointed at ``movie``, writing into ``out_dir``."""
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["input"]["path"] = str(movie)
    raw["output"] = {"dir": str(out_dir), "overwrite": True}
    raw.setdefault("segment", {})["diameter_um"] = cell_diameter_um
    return config_from_dict(raw, base=SAMPLE_CONFIG.parent, source=str(SAMPLE_CONFIG))


def cell_diameter_um(config: SimulationConfig) -> float:
    """Typical cell diameter of a simulation (what a user would put in the config), µm."""
    return sum(config.cell_radius_um)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """CPU model and core count of this machine."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        cpu = models[0] if models else cpu
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def replace_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Write ``## title`` of RESULTS.md with ``body``, keeping the other sections."""
    text = path.read_text() if path.exists() else "# uptrack benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
    log.info("wrote section %r of %s", title, path)


# --- the benchmark -------------------------------------------------------------------


def run_one(regime: str, seed: int, folder: Path, *, quick: bool, client=None) -> dict:
    """Simulate, run and score one movie (on ``client``'s cluster, if given); the scores plus
    regime, seed and run time."""
    fields = {**BASE, **REGIMES[regime][1], **(QUICK if quick else {}), "seed": seed}
    config = SimulationConfig(**fields)
    name = f"{regime}_s{seed}"
    movie, truth = simulate_movie(config, folder, name)
    start = time.perf_counter()
    store = run(run_config(movie, folder / "results", cell_diameter_um=cell_diameter_um(config)), client=client)
    seconds = time.perf_counter() - start
    scores = evaluate(load_results(store), truth)
    log.info("%s: pipeline %.0f s; AP %s, precision %s, recall %s, state accuracy %s, k_int error %s, "
             "k_rel error %s", name, seconds, *(_num(scores.get(k)) for k in (
                 "segmentation_ap50", "detection_precision", "detection_recall", "state_accuracy",
                 "k_internalization_per_min_error_vs_true", "k_release_per_min_error_vs_true")))
    return {**scores, "regime": regime, "seed": seed, "pipeline_seconds": seconds}


def _num(value, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _mean(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _target(value: float | None, key: str) -> str:
    """The value, and pass/miss where it has a target."""
    text = _num(value)
    if key in TARGETS and value is not None:
        text += " pass" if value >= TARGETS[key] else " miss"
    return text


def regime_table(runs: list[dict]) -> str:
    """One row per regime: scores averaged over its seeds."""
    header = ["regime", "movies", "AP@0.5", "cell-id consistency", "precision", "recall", "RMSE / CRLB, px",
              "state accuracy", *(f"recall {s}" for s in STATES), "link precision"]
    rows = []
    for regime, (label, _) in REGIMES.items():
        mine = [r for r in runs if r["regime"] == regime]
        if not mine:
            continue
        mean = partial(_mean, mine)
        rows.append([
            f"{regime}: {label}", str(len(mine)),
            *(_target(mean(k), k) for k in ("segmentation_ap50", "cell_id_consistency", "detection_precision",
                                            "detection_recall")),
            f"{_num(mean('localization_rmse_px'))} / {_num(mean('localization_crlb_px'))}",
            _target(mean("state_accuracy"), "state_accuracy"),
            *(_num(mean(f"state_recall_{s}")) for s in STATES),
            _num(mean("link_precision")),
        ])
    return markdown_table(header, rows)


def _rate_cell(run: dict, rate: str) -> str:
    """Estimate vs realised truth, relative error, and pass/miss where the movie has enough events."""
    error = run[f"{rate}_error_vs_true"]
    text = (f"{_num(run[f'{rate}_estimated'])} vs {_num(run[f'{rate}_true'])} "
            f"({'n/a' if error is None else format(error, '+.0%')})")
    kind = RATES.get(rate)
    if kind and run[f"n_{kind}_true"] >= MIN_EVENTS:
        text += " pass" if error is not None and abs(error) <= RATE_TOLERANCE else " miss"
    return text


def rate_table(runs: list[dict]) -> str:
    """One row per movie: pooled rates against the realised truth, event counts."""
    header = ["movie", "internalization events (est. / true)", "release events (est. / true)",
              "k_internalization, 1/min", "k_release, 1/min", "k_unbinding, 1/min"]
    rows = [[
        f"{r['regime']} seed {r['seed']}",
        f"{r['n_internalization_estimated']} / {r['n_internalization_true']}",
        f"{r['n_release_estimated']} / {r['n_release_true']}",
        *(_rate_cell(r, rate) for rate in (*RATES, "k_unbinding_per_min")),
    ] for r in runs]
    return markdown_table(header, rows)


def report(runs: list[dict], failures: list[str], *, quick: bool) -> str:
    """The body of the Accuracy section."""
    targets = ", ".join(f"{k} ≥ {v}" for k, v in TARGETS.items())
    lines = [
        f"Written by `benchmarks/accuracy.py{' --quick' if quick else ''}` on {time.strftime('%Y-%m-%d')} "
        f"({machine_line()}). Config: `configs/sample.yaml` (shipped Cellpose model), cell diameter "
        "from the simulation. Definitions: `pipeline/eval/evaluate.py`, benchmarks/README.md.",
        "",
        f"Targets: {targets}; pooled k_internalization and k_release within "
        f"{RATE_TOLERANCE:.0%} of the realised truth on movies with ≥ {MIN_EVENTS} true events of that "
        "kind. `pass` / `miss` mark them (means over seeds).",
        "",
        "### Per regime (mean over seeds)",
        "",
        regime_table(runs),
        "",
        "### Pooled rates per movie (estimate vs realised truth, relative error)",
        "",
        rate_table(runs),
    ]
    if failures:
        lines += ["", "### Failed runs", "", *(f"- {f}" for f in failures)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"1 seed, small movies ({QUICK})")
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES),
                        metavar="REGIME", help=f"regimes to run (default: all): {', '.join(REGIMES)}")
    parser.add_argument("--seeds", type=int, help="seeds per regime (default: 3; 1 with --quick)")
    parser.add_argument("--workdir", type=Path, help="keep movies and stores here (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    n_seeds = args.seeds or (1 if args.quick else 3)
    runs, failures = [], []
    compute = yaml.safe_load(SAMPLE_CONFIG.read_text())["compute"]
    with (tempfile.TemporaryDirectory(prefix="uptrack-accuracy-") as tmp,
          dask_client(ComputeConfig(**compute)) as client):  # one cluster for every movie
        folder = args.workdir or Path(tmp)
        jobs = [(regime, seed) for regime in args.regimes for seed in range(1, n_seeds + 1)]
        for i, (regime, seed) in enumerate(jobs, 1):
            log.info("[%d/%d] %s seed %d", i, len(jobs), regime, seed)
            try:
                runs.append(run_one(regime, seed, folder, quick=args.quick, client=client))
            except Exception as exc:  # one failed movie must not lose the others' results
                log.exception("%s seed %d failed", regime, seed)
                failures.append(f"{regime} seed {seed}: {type(exc).__name__}: {exc}")
    replace_section("Accuracy", report(runs, failures, quick=args.quick))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
