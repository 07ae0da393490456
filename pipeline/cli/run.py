"""``uptrack run CONFIG.yaml``: one movie from pixels to per-cell kinetics in Zarr."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.cli import add_set_option

HELP = "run the pipeline on one movie (config YAML) and write its Zarr store"

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.epilog = "Every config field, its unit, default and meaning: configs/REFERENCE.md."
    parser.add_argument("config", type=Path, help="run config (YAML), e.g. configs/sample.yaml")
    add_set_option(parser, "a config field", "--set detect.min_snr=4")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars or progress lines (bars are drawn only on a terminal; "
                             "elsewhere progress is plain log lines)")


def main(args) -> int:
    from contextlib import nullcontext

    from pipeline.eval.html_report import write_movie_report
    from pipeline.eval.report import plot_kinetics, summary_text
    from pipeline.io.results import load_results
    from pipeline.run.compute import progress_to
    from pipeline.run.config import load_config
    from pipeline.run.runner import run
    from pipeline.sim.truth import find_truth

    config = load_config(args.config, args.overrides)
    with progress_to(lambda *_: None) if args.no_progress else nullcontext():
        path = run(config)
    results = load_results(path)
    truth = find_truth(config.input.path)
    text = summary_text(results, truth)
    summary = path.with_suffix(".summary.txt")
    summary.write_text(text)
    figure = plot_kinetics(results, path.with_suffix(".kinetics.png"))
    report = write_movie_report(results)
    print(text)
    print(f"results: {path}\nsummary: {summary}\nfigure:  {figure}")
    print(f"open in Python: pipeline.load_results({str(path)!r})")
    print(f"report:  {report}  (open it in a browser)")
    return 0
