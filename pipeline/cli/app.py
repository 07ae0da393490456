"""The ``uptrack`` command line: one verb per job, each in ``pipeline.cli``.

Every verb module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``main(args) -> int``. Verbs are imported only when used, so ``uptrack --help``
stays fast and a verb's heavy dependencies (torch, napari) load only for it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline import __version__
from pipeline.errors import UptrackError

#: verb name -> module in pipeline.cli, in the order --help lists them.
VERBS = {
    "simulate": "simulate",
    "train-cellpose": "train_cellpose",
    "run": "run",
    "kinetics": "kinetics",
    "evaluate": "evaluate",
    "batch": "batch",
    "compare": "compare",
    "export": "export",
    "migrate": "migrate",
}


def _verb_module(name: str):
    return importlib.import_module(f"pipeline.cli.{VERBS[name]}")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per available verb."""
    parser = argparse.ArgumentParser(
        prog="uptrack",
        description="Particle uptake and exocytosis kinetics from live-cell movies.",
    )
    parser.add_argument("--version", action="version", version=f"uptrack {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS:
        try:
            module = _verb_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("pipeline.cli"):
                continue  # verb not implemented in this version
            raise
        verb_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code (0, 1 or 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pipeline").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except UptrackError as exc:
        print(f"uptrack {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"uptrack {args.verb}: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
