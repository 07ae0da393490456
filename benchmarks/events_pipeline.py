"""Event accuracy of the whole pipeline on issue 13's hard regimes, and why events are missed.

For each regime and seed: simulate (``benchmarks/accuracy.py`` regimes), run uptrack with the
demo config, then re-decode the stored particles (their zones) with ``classify.min_contact_frames``
1 (before issue 13) and the default, and match events to the truth by particle, kind and ±2
frames. A predicted track's particle is the true particle most of its detections match. Each
missed true event gets one cause: ``not detected`` (the particle has no detection at the event
frame or the one before), ``movie start`` (the track carrying it starts at most 2 frames before
the event and the event is in the first 3 frames), ``track break`` (the detections before and at
the event are in different tracks, or the track starts there), ``decoded without change`` (the
same track carries it across the event but no such event is decoded within ±2 frames).

Usage::

    .venv/bin/python benchmarks/events_pipeline.py --regimes hard_medium --seeds 1
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy import BASE, REGIMES, SAMPLE_CONFIG, cell_diameter_um, run_config, simulate_movie  # noqa: E402
from events_oracle import match_events  # noqa: E402

from pipeline.eval.evaluate import match_detections  # noqa: E402
from pipeline.io.results import load_results  # noqa: E402
from pipeline.run.compute import ComputeConfig, dask_client  # noqa: E402
from pipeline.run.runner import run  # noqa: E402
from pipeline.sim.simulate import SimulationConfig  # noqa: E402
from pipeline.stages.classify import ClassifyParams, classify_tracks  # noqa: E402
from pipeline.vocabulary import EVENTS  # noqa: E402


def particle_of_track(pred: pd.DataFrame, truth_particles: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Majority true particle of each predicted track, and per matched detection (frame, particle, track)."""
    m = match_detections(pred, truth_particles)
    pairs = pd.DataFrame({"frame": m["frame"].to_numpy(),
                          "particle_id": truth_particles.loc[m["truth_index"], "particle_id"].to_numpy(),
                          "track_id": pred.loc[m["pred_index"], "track_id"].to_numpy()})
    major = pairs.groupby("track_id")["particle_id"].agg(lambda s: s.value_counts().index[0])
    return major, pairs


def miss_causes(true_events: pd.DataFrame, matched: set, pairs: pd.DataFrame,
                pred: pd.DataFrame) -> Counter:
    """Cause of each missed true event (see the module docstring)."""
    at = pairs.set_index(["particle_id", "frame"])["track_id"]
    at = at[~at.index.duplicated()]
    track_start = pred.groupby("track_id")["frame"].min()
    causes = Counter()
    for ev in true_events.itertuples():
        if ev.Index in matched:
            continue
        here, before = at.get((ev.particle_id, ev.frame)), at.get((ev.particle_id, ev.frame - 1))
        if here is None and before is None:
            cause = "not detected"
        elif here is not None and track_start[here] >= ev.frame - 2 and ev.frame <= 3:
            cause = "movie start"
        elif here is None or before is None or here != before or track_start[here] >= ev.frame:
            cause = "track break"
        else:
            cause = "decoded without change"
        causes[(ev.kind, cause)] += 1
    return causes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regimes", nargs="+", default=["hard_medium"])
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    compute = yaml.safe_load(SAMPLE_CONFIG.read_text())["compute"]
    rows, cause_rows = [], []
    with tempfile.TemporaryDirectory(prefix="uptrack-events-") as tmp, dask_client(ComputeConfig(**compute)) as client:
        folder = Path(tmp)
        for regime in args.regimes:
            for seed in range(1, args.seeds + 1):
                config = SimulationConfig(**{**BASE, **REGIMES[regime][1], "seed": seed})
                movie, truth = simulate_movie(config, folder, f"{regime}_s{seed}")
                store = run(run_config(movie, folder / "results", cell_diameter_um=cell_diameter_um(config)),
                            client=client)
                pred = load_results(store).particles.reset_index(drop=True)
                major, pairs = particle_of_track(pred, truth.particles)
                pred = pred[pred["track_id"].isin(major.index)]
                for mcf in (1, ClassifyParams().min_contact_frames):
                    _, events = classify_tracks(pred, frame_interval_s=config.frame_interval_s,
                                                params=ClassifyParams(min_contact_frames=mcf))
                    events = events.assign(track_id=events["track_id"].map(major))
                    res, matched = match_events(events, truth.events)
                    rows.append(f"| {regime} seed {seed} | {mcf} | " + " | ".join(
                        f"{t} / {r} / {m / r if r else float('nan'):.2f} / {m / t if t else float('nan'):.2f}"
                        for t, r, m in res.values()) + " |")
                    print(rows[-1], flush=True)
                causes = miss_causes(truth.events, matched, pairs, pred)
                for kind in EVENTS:
                    cause_rows.append(f"| {regime} seed {seed} | {kind} | " + ", ".join(
                        f"{c}: {n}" for (k, c), n in sorted(causes.items()) if k == kind) + " |")
                    print(cause_rows[-1], flush=True)


if __name__ == "__main__":
    main()
