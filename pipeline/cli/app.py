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
import traceback

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
    _add_log_options(parser, argparse.SUPPRESS)
    parser.set_defaults(verbose=False, quiet=False)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS:
        try:
            module = _verb_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("pipeline.cli"):
                continue  # verb not implemented in this version
            raise
        verb_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        _add_log_options(verb_parser, argparse.SUPPRESS)  # -v/-q also after the verb
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(_main=module.main)
    return parser


def _add_log_options(parser: argparse.ArgumentParser, default) -> None:
    """``-v/--verbose`` and ``-q/--quiet``, accepted before and after the verb.

    ``default=SUPPRESS`` on both levels, so an option given before the verb is not reset by the
    verb's parser; `main` reads them with their defaults (False) set on the top-level parser.
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug logging, and the traceback of an unexpected error")
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code (0, 1 or 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.getLogger("pipeline").setLevel(level)
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
    except Exception as exc:  # a bug or an environment problem: one line, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        where = "" if args.verbose else "; run again with -v for the traceback"
        print(f"uptrack {args.verb}: unexpected error: {type(exc).__name__}: {exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
