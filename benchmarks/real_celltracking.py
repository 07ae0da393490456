"""Cell tracking against expert tracks (Cell Tracking Challenge): do moving cells keep one id?

The expert tracking masks (``man_track*.tif``) are fed to ``pipeline.stages.track_cells`` with their
labels permuted at random in every frame (as a segmentation numbers its cells), so only the tracker
can carry identities. Scores per sequence:

- ``kept``: fraction of expert tracks (man_track.txt rows) whose pixels all carry one tracker id;
- ``ids``: tracker ids made, against the number of expert tracks;
- ``merged``: tracker ids covering more than one expert track (a dividing mother and her larger
  daughter share an id by design; the lineage file says so: they are counted separately as
  ``merged_by_division``).

Usage::

    PYTHONPATH=. python benchmarks/real_celltracking.py [--data /work/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SEQUENCES = ["Fluo-C2DL-MSC/02_GT/TRA", "Fluo-C2DL-MSC/01_GT/TRA", "Fluo-N2DH-GOWT1/01_GT/TRA",
             "Fluo-N2DH-GOWT1/02_GT/TRA"]


def load(folder: Path) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Expert TRA masks (one per frame) and the lineage table (id, start, end, parent)."""
    import tifffile

    masks = [tifffile.imread(f) for f in sorted(folder.glob("man_track*.tif"))]
    lineage = pd.read_csv(folder / "man_track.txt", sep=r"\s+", header=None, names=["id", "start", "end", "parent"])
    return masks, lineage


def permuted(masks: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Each frame's labels renumbered 1..n in a random order."""
    rng = np.random.default_rng(seed)
    out = []
    for m in masks:
        ids = np.unique(m[m > 0])
        lut = np.zeros(int(m.max()) + 1, np.uint32)
        lut[ids] = rng.permutation(len(ids)) + 1
        out.append(lut[m])
    return out


def score(masks: list[np.ndarray], tracked: np.ndarray, lineage: pd.DataFrame) -> dict:
    """kept / ids / merged (see the module docstring)."""
    pairs = set()
    for truth, got in zip(masks, tracked):
        inside = truth > 0
        pairs |= set(zip(truth[inside].tolist(), got[inside].tolist()))
    table = pd.DataFrame(sorted(pairs), columns=["expert", "got"])
    table = table[table["got"] > 0]
    per_expert = table.groupby("expert")["got"].nunique()
    per_id = table.groupby("got")["expert"].apply(set)
    parent = dict(zip(lineage["id"], lineage["parent"]))
    by_division = sum(1 for s in per_id if len(s) == 2 and (parent.get(min(s)) == max(s) or parent.get(max(s)) == min(s)))
    return {"expert_tracks": int(len(lineage)), "kept": float((per_expert == 1).reindex(lineage["id"]).fillna(False).mean()),
            "ids": int(table["got"].nunique()), "merged": int(sum(len(s) > 1 for s in per_id)) - by_division,
            "merged_by_division": by_division}


def main() -> None:
    from pipeline.stages.track_cells import CellTrackParams, track_cells

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in SEQUENCES:
        folder = args.data / name
        if not folder.exists():
            continue
        masks, lineage = load(folder)
        tracked = track_cells(permuted(masks, args.seed), CellTrackParams())
        print(f"| {name} ({len(masks)} frames) | {score(masks, tracked, lineage)} |", flush=True)


if __name__ == "__main__":
    main()
