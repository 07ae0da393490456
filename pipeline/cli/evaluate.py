"""``uptrack evaluate STORE.zarr``: score a run on a simulated movie against its ground truth.

Prints the report (:func:`pipeline.eval.evaluate.format_report`) and writes the scores
to ``STORE.evaluation.json`` beside the store (``movie.zarr`` ->
``movie.evaluation.json``). The truth defaults to the ``NAME.truth`` folder next to
the movie the store was made from.
"""

from __future__ import annotations

import json
from pathlib import Path

HELP = "score a run on a simulated movie against its ground truth (writes STORE.evaluation.json)"


def add_arguments(parser) -> None:
    parser.add_argument("store", type=Path, metavar="STORE.zarr", help="a complete store written by uptrack run")
    parser.add_argument("--truth", type=Path, metavar="PATH", help="ground truth: the NAME.truth folder or the "
                        "simulated movie (default: the truth next to the store's input movie)")
    parser.add_argument("--max-distance-px", type=float, default=2.0,
                        help="largest detection-to-particle distance of a match, px (default: 2)")


def main(args) -> int:
    from pipeline.errors import InputError
    from pipeline.eval.evaluate import evaluate, format_report
    from pipeline.io.results import load_results
    from pipeline.sim.truth import load_truth, truth_dir_for

    results = load_results(args.store)
    truth_path = args.truth or truth_dir_for(results.attrs["input_path"])
    try:
        truth = load_truth(truth_path)
    except InputError as exc:
        raise InputError(f"{exc}. Fix: pass --truth PATH, the NAME.truth folder that `uptrack simulate` "
                         f"wrote next to the movie {results.attrs['input_path']}") from None
    scores = evaluate(results, truth, max_distance_px=args.max_distance_px)
    out = args.store.with_suffix(".evaluation.json")
    out.write_text(json.dumps(scores, indent=2) + "\n")
    print(format_report(scores))
    print(f"scores: {out}")
    return 0
