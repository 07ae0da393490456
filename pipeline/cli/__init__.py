"""The ``uptrack`` command line: one module per verb (see README.md); options shared by verbs."""

from __future__ import annotations


def add_set_option(parser, what: str, example: str) -> None:
    """The ``--set KEY=VALUE`` option (repeatable) of the verbs that read a YAML config.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    what : str
        The config it overrides, e.g. "a config field".
    example : str
        One or more example overrides, e.g. "--set detect.min_snr=4".
    """
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override {what} (dotted path, YAML value), e.g. {example} (repeatable)")
