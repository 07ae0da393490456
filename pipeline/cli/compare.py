"""``uptrack compare BATCH_DIR``: rates per condition, ratios with hierarchical-bootstrap CIs, curves."""

from __future__ import annotations

from pathlib import Path

HELP = "compare conditions across a batch's stores: rates, ratios (hierarchical bootstrap), curves, report"


def add_arguments(parser) -> None:
    parser.add_argument("batch_dir", type=Path, help="a batch's output.dir (holds the *.zarr stores)")
    parser.add_argument("--by", default="condition",
                        help="metadata key that names the condition (default: condition)")
    parser.add_argument("--reference", default=None,
                        help="condition in the denominator of the ratios, e.g. control (default: first in order)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: BATCH_DIR/compare)")


def main(args) -> int:
    from pipeline.eval.compare import batch_tables, find_stores
    from pipeline.eval.html_report import write_batch_report

    stores = find_stores(args.batch_dir)
    cells, spell_table, results = batch_tables(stores, by=args.by)
    out = args.out or args.batch_dir / "compare"
    written = write_batch_report(cells, spell_table, results, out, reference=args.reference,
                                 n_boot=args.n_boot, seed=args.seed)
    ratios = written["ratios_table"]
    for _, row in ratios.iterrows():
        print(f"{row['rate']:<26} {row['condition']} / {row['reference']}: {row['ratio']:.3f} "
              f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] ({row['hierarchy']} bootstrap)")
    for key in ("rates", "ratios", "curves_svg", "report"):
        print(f"{key + ':':<12}{written[key]}")
    return 0
