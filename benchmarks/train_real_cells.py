"""Train the shipped Cellpose 3 model on real annotated cells + simulated cells, and score it
(issue 10, item 5).

Training data: Cell Tracking Challenge Fluo-C2DL-MSC 01 (fully annotated frames), Fluo-N2DH-GOWT1
01 + 02 (fully annotated frames, GOWT1 02 t055 and t072 held out) and simulated cells (cytoplasm
and membrane stains, ``pipeline.sim``). Fluo-C2DL-MSC 02 is never trained on. Cellpose's
``train_seg`` rescales every image so that its median cell diameter (from its masks) becomes the
model's ``diam_mean`` (17 px), with ±25 % random scaling: there is no fixed pixel size.

    python benchmarks/train_real_cells.py train OUT --epochs 200 [--from WEIGHTS]
    python benchmarks/train_real_cells.py score WEIGHTS [WEIGHTS ...]    # AP@0.5 table (JSON lines)

Needs /work/data (see its README); not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/data")
MSC = DATA / "Fluo-C2DL-MSC"
GOWT1 = DATA / "Fluo-N2DH-GOWT1"
GOWT1_HELD = ("man_seg055", "man_seg072")  # of GOWT1 02
SIM_PX_UM = 0.2


def _full(items):
    from pipeline.eval.train import partial_annotations

    flagged = partial_annotations(items)
    return [it for it in items if it[0] not in flagged]


def real_sets():
    """(train items, GOWT1 held-out items, MSC 02 items: all 33 annotated frames)."""
    from pipeline.eval.train import load_annotated

    msc01 = _full(load_annotated(MSC / "01"))
    gowt = _full(load_annotated(GOWT1 / "01")) + _full(load_annotated(GOWT1 / "02"))
    held = [it for it in gowt if any(h in it[0] for h in GOWT1_HELD)]
    gowt_train = [it for it in gowt if it not in held]
    return msc01, gowt_train, held, load_annotated(MSC / "02")


def train(args) -> None:
    import logging

    import torch

    from pipeline.eval.train import train_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from pipeline.sim.cells import simulate_cell_images

    torch.set_num_threads(args.threads)
    msc01, gowt_train, _, _ = real_sets()
    sim_images, sim_masks = simulate_cell_images(args.n_sim, (256, 256), seed=1, pixel_size_um=SIM_PX_UM)
    real = (msc01 + gowt_train) * args.repeat_real
    images = [it[1] for it in real] + list(sim_images)
    masks = [it[2] for it in real] + list(sim_masks)
    print(f"training on {len(msc01)} MSC 01 + {len(gowt_train)} GOWT1 frames (x{args.repeat_real}) "
          f"+ {args.n_sim} simulated: {len(images)} images per epoch", flush=True)
    start = time.perf_counter()
    train_model(images, masks, args.out, n_epochs=args.epochs, learning_rate=args.learning_rate,
                crop_px=args.crop_px, save_every=args.save_every, save_each=True,
                from_model=args.from_model)
    print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)


def _gt_diameter(mask) -> float:
    from cellpose import utils

    return float(utils.diameters(mask)[0])


def score(weights: str, *, px_um: float = 1.0) -> dict:
    """AP@0.5 on MSC 02 (diameter measured on the middle frame as `uptrack run` does, and with
    each frame's true median diameter), GOWT1 held-out frames and held-out simulated images."""
    from pipeline.eval.train import average_precision
    from pipeline.sim.cells import simulate_cell_images
    from pipeline.stages.segment import SegmentParams, estimate_diameter_um

    _, _, held, msc02 = real_sets()
    out = {"weights": str(weights)}
    for name, items in (("msc02", msc02), ("gowt1_held", held)):
        params = SegmentParams(model=str(weights), gpu="auto")
        middle = items[len(items) // 2][1]
        diam = estimate_diameter_um(middle, pixel_size_um=px_um, params=params)
        ims, ms = [it[1] for it in items], [it[2] for it in items]
        ap, per = average_precision(weights, ims, ms, pixel_size_um=px_um, diameter_um=diam)
        out[f"{name}_ap50"] = round(ap, 4)
        out[f"{name}_diameter_px_measured"] = round(diam or 0.0, 1)
        if name == "msc02":
            true = [average_precision(weights, [im], [m], pixel_size_um=px_um,
                                      diameter_um=_gt_diameter(m) * px_um)[0] for im, m in zip(ims, ms)]
            out["msc02_ap50_true_diameter"] = round(float(np.mean(true)), 4)
            out["msc02_ap50_per_frame"] = [round(float(a), 3) for a in per]
    sim_i, sim_m = simulate_cell_images(16, (256, 256), seed=1001, pixel_size_um=SIM_PX_UM)
    ap, per = average_precision(weights, sim_i, sim_m, pixel_size_um=SIM_PX_UM)
    out["sim_ap50"], out["sim_ap50_min"] = round(ap, 4), round(float(per.min()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("out", type=Path)
    t.add_argument("--epochs", type=int, default=200)
    t.add_argument("--from", dest="from_model", default=None)
    t.add_argument("--learning-rate", type=float, default=0.005)
    t.add_argument("--crop-px", type=int, default=96)
    t.add_argument("--save-every", type=int, default=25)
    t.add_argument("--n-sim", type=int, default=32)
    t.add_argument("--repeat-real", type=int, default=2)
    t.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("score")
    s.add_argument("weights", nargs="+")
    s.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.cmd == "train":
        train(args)
    else:
        import torch

        torch.set_num_threads(args.threads)
        for w in args.weights:
            print(json.dumps(score(w)), flush=True)


if __name__ == "__main__":
    main()
