"""Detector speed and accuracy against ``trackpy.batch``, on independent frames, in one process.

Frames come from :mod:`benchmarks.spot_frames` (rendered with ``pipeline.optics``, not
the movie simulator): log-normal brightness, PSF sigma 0.8-1.5 px, SNR 3-20, sparse
to dense, dim spots near bright ones, uneven background. Per regime, one stack of
``--frames`` frames of 320×384 px is detected, timed in interleaved rounds:

- uptrack: :func:`pipeline.stages.detect.estimate_psf` once on the stack (timed
  with it), then ``detect_frame`` on every frame with the PSF given, defaults otherwise;
- ``--before FILE``: the same with an older detector module (e.g.
  ``git show REV:pipeline/stages/detect.py > /tmp/before.py``), called as that
  version is called (its own per-frame PSF measurement);
- ``trackpy.batch(processes=1)`` at diameter ``odd(4 sigma + 1)`` and the ``minmass``
  giving its best F1 against the truth (an oracle no user has).

Scores: detections paired one-to-one with true spots within 2 px
(``pipeline.eval.evaluate.match_detections``); RMSE per axis over the paired
spots against the per-axis Cramér–Rao bound of the same spots
(``localization_crlb_px``, their true photons and local background), for all
pairs and for isolated spots (nearest neighbour ≥ 4 sigma). Writes
``benchmarks/DETECTION_SPEED.md``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/detect_speed.py [--frames 6] [--rounds 3] [--before /tmp/before.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import trackpy
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from spot_frames import READ_NOISE_E, Regime, frame  # noqa: E402

from pipeline.eval.evaluate import detection_scores, match_detections  # noqa: E402
from pipeline.optics import localization_crlb_px, pixel_fraction  # noqa: E402
from pipeline.stages.detect import DetectParams, detect_frame, estimate_psf  # noqa: E402

OUT = Path(__file__).resolve().parent / "DETECTION_SPEED.md"
SHAPE = (320, 384)
PX_UM = 0.1
REGIMES = {
    "psf1.0_snr5_ln0.5": Regime(1.0, 5, 0.5, 1.3),
    "psf0.8_snr5_ln0.5": Regime(0.8, 5, 0.5, 1.3),
    "psf1.5_snr5_ln0.5": Regime(1.5, 5, 0.5, 0.8),
    "psf1.2_snr3_ln0.3": Regime(1.2, 3, 0.3, 1.0),
    "psf1.2_snr20_ln0.8": Regime(1.2, 20, 0.8, 1.0),
    "psf1.2_snr5_ln0.8_near": Regime(1.2, 5, 0.8, 1.0, near_bright=0.3),
    "psf1.0_snr5_ln0.5_dense": Regime(1.0, 5, 0.5, 4.0),
    "psf1.2_snr5_ln0.5_uneven": Regime(1.2, 5, 0.5, 1.0, uneven=3.0),
}


def odd(d: float) -> int:
    d = max(3, int(np.ceil(d)))
    return d if d % 2 else d + 1


def load_before(path: str):
    spec = importlib.util.spec_from_file_location("detect_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def true_significance(truth: pd.DataFrame, sigma: float) -> np.ndarray:
    """Matched-filter significance each true spot has alone, centred on a pixel, in background noise."""
    profile = pixel_fraction(np.arange(-10, 11), sigma)
    return truth["photons"].to_numpy() * np.sum(profile**2) / np.sqrt(truth["background"].to_numpy() + READ_NOISE_E**2)


def scores(detections: pd.DataFrame, truth: pd.DataFrame, sigma: float) -> dict:
    matches = match_detections(detections, truth, max_distance_px=2.0)
    s = detection_scores(matches)
    detectable = truth["z_true"].to_numpy() >= DetectParams().min_snr
    found = np.zeros(len(truth), bool)
    found[truth.index.get_indexer(matches["truth_index"])] = True
    t = truth.loc[matches["truth_index"]]
    bound = localization_crlb_px(sigma, t["photons"].to_numpy(), t["background"].to_numpy(), read_noise_e=READ_NOISE_E)
    err2 = matches["distance_px"].to_numpy() ** 2 / 2
    iso = t["nn_px"].to_numpy() >= 4 * sigma
    ratio = np.sqrt(err2.mean() / np.mean(bound**2)) if len(bound) else np.nan
    ratio_iso = np.sqrt(err2[iso].mean() / np.mean(bound[iso] ** 2)) if iso.any() else np.nan
    return dict(precision=s["detection_precision"], recall=s["detection_recall"], f1=s["detection_f1"],
                rmse_px=float(np.sqrt(err2.mean())) if len(err2) else np.nan, ratio=ratio, ratio_iso=ratio_iso,
                detectable=float(detectable.mean()), recall_detectable=float(found[detectable].mean()))


def trackpy_best(frames: np.ndarray, truth: pd.DataFrame, diameter: int) -> tuple[float, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = trackpy.batch(frames, diameter, minmass=0, processes=1)
    best = None
    for minmass in np.unique(np.quantile(features["mass"], np.linspace(0, 0.995, 150))):
        s = detection_scores(match_detections(features[features["mass"] > minmass], truth))
        if best is None or s["detection_f1"] > best[1]["f1"]:
            best = (float(minmass), dict(precision=s["detection_precision"], recall=s["detection_recall"],
                                         f1=s["detection_f1"]))
    return best


def run_regime(name: str, regime: Regime, n_frames: int, rounds: int, before, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    frames, truths = [], []
    for f in range(n_frames):
        image, truth = frame(SHAPE, regime, rng)
        points = truth[["y", "x"]].to_numpy()
        truth["nn_px"] = cKDTree(points).query(points, 2)[0][:, 1] if len(points) > 1 else np.inf
        truth["z_true"] = true_significance(truth, regime.psf_sigma_px)
        frames.append(image)
        truths.append(truth.assign(frame=f, particle_id=np.arange(len(truth))))
    frames = np.stack(frames)
    truth = pd.concat(truths, ignore_index=True)
    params = DetectParams(spot_diameter_um=4 * regime.psf_sigma_px * PX_UM * 0.8)  # a guess 20 % off
    diameter = odd(4 * regime.psf_sigma_px + 1)
    minmass, tp_scores = trackpy_best(frames, truth, diameter)

    def uptrack():
        psf = estimate_psf(frames, pixel_size_um=PX_UM, params=params)
        measured = params.model_copy(update={"psf_sigma_um": psf.sigma_um})
        return pd.concat([detect_frame(im, f, pixel_size_um=PX_UM, params=measured)
                          for f, im in enumerate(frames)], ignore_index=True), psf

    def old():
        p = before.DetectParams(spot_diameter_um=params.spot_diameter_um)
        return pd.concat([before.detect_frame(im, f, pixel_size_um=PX_UM, params=p)
                          for f, im in enumerate(frames)], ignore_index=True)

    def tp():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return trackpy.batch(frames, diameter, minmass=minmass, processes=1)

    runs = {"uptrack": uptrack, "trackpy": tp} | ({"before": old} if before else {})
    seconds = {k: [] for k in runs}
    results = {}
    for _ in range(rounds):
        for key, fn in runs.items():
            start = time.perf_counter()
            results[key] = fn()
            seconds[key].append(time.perf_counter() - start)
    detections, psf = results["uptrack"]
    row = dict(name=name, regime=regime, spots=len(truth) / n_frames, psf_px=psf.sigma_um / PX_UM,
               fps={k: n_frames / statistics.median(v) for k, v in seconds.items()},
               uptrack=scores(detections, truth, regime.psf_sigma_px), trackpy=tp_scores)
    if before:
        row["before"] = scores(results["before"], truth, regime.psf_sigma_px)
    return row


def report(rows: list[dict], args) -> str:
    has_before = "before" in rows[0]
    head = ("| regime | spots / frame | PSF σ found (true) px | uptrack fps | trackpy fps | ratio "
            + ("| before fps " if has_before else "")
            + "| uptrack P / R / F1 | trackpy best F1: P / R / F1 | ΔF1 "
            + ("| before P / R / F1 " if has_before else "")
            + "| RMSE / CRLB all (isolated) " + ("| before RMSE / CRLB " if has_before else "")
            + "| z ≥ 5 share | recall of z ≥ 5 |")
    cols = 12 + (3 if has_before else 0)
    lines = [head, "| --- " + "| ---: " * (cols - 1) + "|"]
    for r in rows:
        u, t = r["uptrack"], r["trackpy"]
        line = (f"| `{r['name']}` | {r['spots']:.0f} | {r['psf_px']:.2f} ({r['regime'].psf_sigma_px}) "
                f"| {r['fps']['uptrack']:.1f} | {r['fps']['trackpy']:.1f} | {r['fps']['uptrack'] / r['fps']['trackpy']:.2f} ")
        if has_before:
            line += f"| {r['fps']['before']:.1f} "
        line += (f"| {u['precision']:.3f} / {u['recall']:.3f} / {u['f1']:.3f} "
                 f"| {t['precision']:.3f} / {t['recall']:.3f} / {t['f1']:.3f} | {u['f1'] - t['f1']:+.3f} ")
        if has_before:
            b = r["before"]
            line += f"| {b['precision']:.3f} / {b['recall']:.3f} / {b['f1']:.3f} "
        line += f"| {u['ratio']:.2f} ({u['ratio_iso']:.2f}) "
        if has_before:
            line += f"| {r['before']['ratio']:.2f} ({r['before']['ratio_iso']:.2f}) "
        line += f"| {u['detectable']:.3f} | {u['recall_detectable']:.3f} "
        lines.append(line + "|")
    return f"""# Detector speed and accuracy against trackpy.batch

Generated by `benchmarks/detect_speed.py --frames {args.frames} --rounds {args.rounds}` on
{platform.processor() or platform.machine()}, Python {platform.python_version()}, trackpy {trackpy.__version__},
one process, one thread per detector, interleaved rounds (median time of {args.rounds}). Frames
{SHAPE[0]}×{SHAPE[1]} px from `benchmarks/spot_frames.py` (pipeline.optics, not the movie simulator).
uptrack's time includes `estimate_psf` on the stack (its first guess 20 % too narrow); trackpy's
`minmass` is the oracle best-F1 one. RMSE / CRLB: per-axis RMSE of the paired spots over the RMS
Mortensen bound of the same spots (isolated: nearest neighbour ≥ 4 σ). **z ≥ 5 share**: the
fraction of true spots whose matched-filter significance alone (true photons, pixel-centred, against
the background and read noise) reaches the default `min_snr` of 5, i.e. the recall the threshold
allows (an oracle); **recall of z ≥ 5**: uptrack's recall among those.

{chr(10).join(lines)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--regimes", nargs="*", default=list(REGIMES))
    parser.add_argument("--before", help="an older detect module file to compare with")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    trackpy.quiet()
    before = load_before(args.before) if args.before else None
    warm = frame((64, 64), Regime(), np.random.default_rng(0))[0]
    detect_frame(warm, 0, pixel_size_um=PX_UM, params=DetectParams())  # compile numba code
    rows = []
    for i, name in enumerate(args.regimes):
        rows.append(run_regime(name, REGIMES[name], args.frames, args.rounds, before, seed=100 + i))
        r = rows[-1]
        print(name, {k: round(v, 1) for k, v in r["fps"].items()}, r["uptrack"], r["trackpy"], flush=True)
    Path(args.out).write_text(report(rows, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
