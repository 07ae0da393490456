"""``uptrack kinetics STORE.zarr``: recompute kinetics with the reviewer's corrections applied.

Applies the latest version of the store's curation record (or ``--version N``) to
the pipeline's particles and writes the recomputed particles, events, tracks,
cells, movie and kinetics under ``curated/`` in the store (format:
:mod:`pipeline.io.curation`); the pipeline's own tables are left as they are. Prints
the movie-level rates before and after.
"""

from __future__ import annotations

from pathlib import Path

HELP = "recompute kinetics with the corrections saved in the store (writes STORE/curated)"

#: Movie-level rates printed before and after.


def add_arguments(parser) -> None:
    parser.add_argument("store", type=Path, metavar="STORE.zarr", help="a complete store written by uptrack run")
    parser.add_argument("--curation", type=int, metavar="N",
                        help="curation version to apply (default: the latest)")


def main(args) -> int:
    from pipeline.io.curation import curation_versions
    from pipeline.io.results import load_results
    from pipeline.run.curate import apply_curation
    from pipeline.vocabulary import RATES

    load_results(args.store)  # an incomplete or damaged store is an error (exit 2), not "no corrections"
    version = apply_curation(args.store, version=args.curation)
    if version is None:
        print(f"{args.store}: no corrections saved; the pipeline's kinetics stand. Review and correct "
              "tracks in napari (napari --plugin uptrack STORE.zarr).")
        return 0
    entry = next(e for e in curation_versions(args.store) if e["version"] == version)
    note = f": {entry['note']}" if entry["note"] else ""
    print(f"applied curation v{version} (corrections: {entry['n_corrections']}, by {entry['author']}, "
          f"{entry['created']}{note})")
    before = load_results(args.store).movie.iloc[0]
    after = load_results(args.store, curated=True).movie.iloc[0]
    print(f"{'movie':<26}{'pipeline':>26}{'curated':>26}")
    for rate, _, _ in RATES:
        print(f"{rate:<26}{_estimate(before, rate):>26}{_estimate(after, rate):>26}")
    print(f"curated tables: {args.store / 'curated'} (pipeline.load_results(path, curated=True))")
    return 0


def _estimate(row, column: str) -> str:
    """A rate with its interval, e.g. ``0.412 [0.301, 0.552]``."""
    return f"{row[column]:.3g} [{row[column + '_ci_low']:.3g}, {row[column + '_ci_high']:.3g}]"
