"""Oracle event benchmark (issue 13): true tracks and true cell masks fed to zones + classify.

What the data allows the classifier: detection, linking and segmentation are perfect, so every
event error left is the temporal model's. Events are matched to the truth by particle, kind and
frame within ±2 frames (the event frame is the first frame in the new state). Compares
``classify.min_contact_frames`` 1 (every decoded contact kept, the behaviour before issue 13) with
the default.

Usage (from the repository root)::

    .venv/bin/python benchmarks/events_oracle.py --regimes hard_medium hard_sedimented --seeds 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy import BASE, REGIMES  # noqa: E402

from pipeline.sim.simulate import SimulationConfig, simulate  # noqa: E402
from pipeline.stages.classify import ClassifyParams, classify_tracks  # noqa: E402
from pipeline.stages.zones import ZoneParams, assign_zones  # noqa: E402
from pipeline.vocabulary import EVENTS  # noqa: E402

TOLERANCE_FRAMES = 2


def match_events(pred: pd.DataFrame, true: pd.DataFrame, tol: int = TOLERANCE_FRAMES) -> tuple[dict, set]:
    """Per kind (true, reported, matched), greedy matching on the same particle (``track_id`` of
    ``pred``, ``particle_id`` of ``true``) and kind with |Δframe| ≤ tol; and the index labels of
    the true events matched."""
    out, used = {}, set()
    for kind in EVENTS:
        p = pred[pred["kind"] == kind]
        t = true[true["kind"] == kind]
        matched = 0
        by_track = {k: g for k, g in t.groupby("particle_id")}
        for row in p.itertuples():
            cand = by_track.get(row.track_id)
            if cand is None:
                continue
            near = cand[(abs(cand["frame"] - row.frame) <= tol) & ~cand.index.isin(used)]
            if len(near):
                used.add(near.index[abs(near["frame"] - row.frame).argmin()])
                matched += 1
        out[kind] = (len(t), len(p), matched)
    return out, used


def oracle(config: SimulationConfig, min_contact_frames: int) -> dict:
    """Event matches of the classifier on the true tracks of one simulated movie."""
    truth = simulate(config).truth
    det = truth.particles[truth.particles["visible"]].rename(columns={"particle_id": "track_id"})
    det = det[["frame", "track_id", "y", "x"]].reset_index(drop=True)
    zoned = assign_zones(det, truth.cell_labels, pixel_size_um=config.pixel_size_um, params=ZoneParams())
    _, events = classify_tracks(zoned, frame_interval_s=config.frame_interval_s,
                                params=ClassifyParams(min_contact_frames=min_contact_frames))
    return match_events(events, truth.events)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regimes", nargs="+", default=["hard_medium", "hard_sedimented"])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print("| regime | min_contact_frames | " + " | ".join(f"{k} true / reported / P / R" for k in EVENTS) + " |")
    print("|" + "---|" * (2 + len(EVENTS)))
    for regime in args.regimes:
        for mcf in (1, ClassifyParams().min_contact_frames):
            tot = {k: [0, 0, 0] for k in EVENTS}
            for seed in range(1, args.seeds + 1):
                config = SimulationConfig(**{**BASE, **REGIMES[regime][1], "seed": seed})
                for k, v in oracle(config, mcf).items():
                    tot[k] = [a + b for a, b in zip(tot[k], v, strict=True)]
            cells = [f"{t} / {r} / {m / r if r else float('nan'):.2f} / {m / t if t else float('nan'):.2f}"
                     for t, r, m in tot.values()]
            print(f"| {regime} ({args.seeds} seeds) | {mcf} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
