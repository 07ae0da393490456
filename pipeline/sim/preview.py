"""PNG montage of a simulated movie with its ground truth drawn on top.

Top row: the cells channel (grey) with the true cell outlines. Bottom row: the
particles channel with the true particles as circles coloured by state
(:data:`pipeline.vocabulary.STATE_COLORS`; dashed when blinked off). Each
panel carries its time in seconds and a scale bar in µm.

As a script, for a movie already written by ``uptrack simulate``::

    python -m pipeline.sim.preview OUT/sim.ome.tif montage.png [--panels 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from pipeline.sim.truth import Truth, load_truth
from pipeline.vocabulary import STATE_COLORS, STATES

#: Colour of the true cell outlines.
OUTLINE_COLOR = "#ff5a5a"


def _stretch(image: np.ndarray, low: float = 1.0, high: float = 99.95) -> tuple[float, float]:
    lo, hi = np.percentile(image, [low, high])
    return float(lo), float(max(hi, lo + 1))


def _scale_bar_um(width_um: float) -> float:
    """A round scale-bar length, about a fifth of the field width (µm)."""
    for length in (1, 2, 5, 10, 20, 50, 100, 200, 500):
        if length >= width_um / 5:
            return float(length)
    return 1000.0


def write_montage(movie: np.ndarray, truth: Truth, path: str | Path, *, n_panels: int = 6,
                  dpi: int = 100) -> Path:
    """Write a PNG montage of ``n_panels`` evenly spaced frames of ``movie`` (T, C, Y, X).

    Parameters
    ----------
    movie : (T, C, Y, X) array with channels named in ``truth.meta["channels"]``.
    truth : the movie's ground truth (labels, particles, pixel size, frame interval).
    path : PNG file to write.
    n_panels : number of frames shown.
    dpi : resolution of the PNG; panels are drawn at about one PNG pixel per image pixel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from skimage.segmentation import find_boundaries

    channels = truth.meta["channels"]
    pixel_um, dt_s = truth.meta["pixel_size_um"], truth.meta["frame_interval_s"]
    n_frames, _, height, width = movie.shape
    frames = np.unique(np.linspace(0, n_frames - 1, n_panels).round().astype(int))
    rows = {"cells": movie[:, channels.index("cells")], "particles": movie[:, channels.index("particles")]}
    limits = {name: _stretch(stack[frames]) for name, stack in rows.items()}
    bar_um = _scale_bar_um(width * pixel_um)
    outline_cmap = ListedColormap([OUTLINE_COLOR])

    panel_in = min(width, 400) / dpi  # about one screen pixel per image pixel
    fig, axes = plt.subplots(2, len(frames), figsize=(panel_in * len(frames), panel_in * 2 * height / width + 0.6),
                             squeeze=False)
    for col, frame in enumerate(frames):
        outline = np.ma.masked_equal(find_boundaries(truth.cell_labels[frame], mode="inner"), 0)
        spots = truth.particles[truth.particles["frame"] == frame]
        for row, (name, stack) in enumerate(rows.items()):
            ax = axes[row, col]
            ax.imshow(stack[frame], cmap="gray", vmin=limits[name][0], vmax=limits[name][1],
                      interpolation="nearest")
            ax.imshow(outline, cmap=outline_cmap, alpha=0.6 if row == 0 else 0.35, interpolation="nearest")
            if name == "particles":
                for state in STATES:
                    these = spots[spots["state"] == state]
                    for visible, style in ((True, "-"), (False, ":")):
                        sel = these[these["visible"] == visible]
                        ax.scatter(sel["x"], sel["y"], s=60, facecolors="none", linewidths=0.8,
                                   edgecolors=STATE_COLORS[state], linestyle=style)
            ax.plot([0.05 * width, 0.05 * width + bar_um / pixel_um], [0.94 * height] * 2, color="white", lw=2.5)
            ax.text(0.05 * width, 0.91 * height, f"{bar_um:g} µm", color="white", fontsize=7)
            ax.text(0.03 * width, 0.08 * height, f"t = {frame * dt_s:g} s", color="white", fontsize=8)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            ax.set_axis_off()
        axes[0, col].set_title(f"frame {frame}", fontsize=8)
    handles = [Line2D([], [], marker="o", ls="", mfc="none", mec=STATE_COLORS[s], label=s) for s in STATES]
    handles.append(Line2D([], [], color=OUTLINE_COLOR, label="cell outline (truth)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    axes[0, 0].text(-0.08, 0.5, "cells", transform=axes[0, 0].transAxes, rotation=90, va="center", fontsize=9)
    axes[1, 0].text(-0.08, 0.5, "particles", transform=axes[1, 0].transAxes, rotation=90, va="center", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.995, top=0.95, bottom=0.07, wspace=0.03, hspace=0.03)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the montage of a simulated movie on disk (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.sim.preview", description=__doc__.splitlines()[0])
    parser.add_argument("movie", type=Path, help="NAME.ome.tif written by uptrack simulate")
    parser.add_argument("png", type=Path, help="PNG file to write")
    parser.add_argument("--panels", type=int, default=6, help="number of frames shown (default 6)")
    args = parser.parse_args(argv)
    truth = load_truth(args.movie)
    movie = tifffile.imread(args.movie)
    movie = movie.reshape(-1, len(truth.meta["channels"]), *movie.shape[-2:])  # tifffile drops size-1 axes
    print(f"wrote {write_montage(movie, truth, args.png, n_panels=args.panels)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
