"""uptrack: particle uptake and exocytosis kinetics from live-cell fluorescence movies.

The library imports as ``pipeline``; the command line is ``uptrack``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import ``load_results`` on first use, so ``import pipeline`` stays light."""
    if name == "load_results":
        from pipeline.io.results import load_results

        return load_results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
