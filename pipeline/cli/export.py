"""``uptrack export STORE.zarr --format csv|trackmate|ctc``: a store's results for other tools.

Formats (writers in :mod:`pipeline.io.export`): ``csv`` the tables (particles, tracks, events,
cells, movie) and their units; ``trackmate`` a TrackMate XML of the particle tracks for Fiji;
``ctc`` the cell labels in the Cell Tracking Challenge layout. ``--curated`` exports the tables
recomputed with the reviewer's corrections (``uptrack kinetics``) instead of the pipeline's own.
"""

from __future__ import annotations

from pathlib import Path

HELP = "export a store for other tools: CSV tables, TrackMate XML (Fiji), Cell Tracking Challenge labels"
FORMATS = ("csv", "trackmate", "ctc")


def add_arguments(parser) -> None:
    parser.add_argument("store", type=Path, metavar="STORE.zarr", help="a complete store written by uptrack run")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--curated", action="store_true",
                        help="export the curated tables (an error if the store has none)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder, or .xml file for trackmate (default: next to the store, "
                             "STORE_<format>[_curated])")


def main(args) -> int:
    from pipeline.errors import InputError
    from pipeline.io.export import export_csv, export_ctc, export_trackmate
    from pipeline.io.results import load_results

    results = load_results(args.store, curated=args.curated)
    if args.curated and results.curation_version is None:
        raise InputError(f"{args.store}: no curated results; save corrections in napari and run "
                         f"`uptrack kinetics {args.store}` first, or export without --curated")
    stem = args.store.with_suffix("").name + f"_{args.format}" + ("_curated" if args.curated else "")
    out = args.out or args.store.parent / stem
    if args.format == "trackmate":
        written = [export_trackmate(results, out if out.suffix == ".xml" else out.with_suffix(".xml"))]
    else:
        written = (export_csv if args.format == "csv" else export_ctc)(results, out)
    source = f"curated v{results.curation_version}" if args.curated else "pipeline output"
    print(f"exported {args.format} ({source}): {len(written)} file(s) in {written[0].parent}")
    return 0
