"""``uptrack migrate STORE.zarr``: bring a store written by an older uptrack up to the current format.

Rewrites tables kept as Zarr groups of columns (before Parquet) as ``<group>/<name>.parquet``
(:func:`pipeline.io.store.migrate_tables`), the GEFF graphs without text arrays, with units and
the link to the labels (``tracks.geff``, and ``curated/tracks.geff`` for a curated store), and
the cell labels' colours. The movie as the root OME-Zarr image needs the movie itself: rerun
``uptrack run`` with the store's config (set ``output.overwrite: true``) to add it.
"""

from __future__ import annotations

from pathlib import Path

HELP = "upgrade an older store in place: Parquet tables, GEFF readable by other tools, label colours"


def add_arguments(parser) -> None:
    parser.add_argument("store", type=Path, metavar="STORE.zarr", help="a complete store written by uptrack run")


def main(args) -> int:
    from pipeline.io import store
    from pipeline.io.results import CURATED, load_results

    results = load_results(args.store)
    migrated = store.migrate_tables(args.store)
    attrs = results.attrs
    for prefix, curated in (("", False), (f"{CURATED}/", True)):
        particles = load_results(args.store, curated=curated)
        if curated and particles.curation_version is None:
            continue
        store.write_geff(args.store, particles.particles, attrs["pixel_size_um"], attrs["frame_interval_s"],
                         z_step_um=attrs.get("z_step_um"), name=f"{prefix}{store.GEFF}")
    n_cells = store.label_colors(args.store) if results.cell_labels is not None else 0
    print(f"{args.store}: {len(migrated)} table(s) rewritten as Parquet, GEFF rewritten, {n_cells} cell colour(s)")
    if "ome" not in attrs:
        print("the store root has no OME-Zarr image (the movie); rerun `uptrack run` with output.overwrite: true "
              "to add it")
    return 0
