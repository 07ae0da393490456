"""``uptrack train-cellpose``: train or fine-tune a Cellpose model on simulated cells, on the
user's own annotated images (Cell Tracking Challenge or Cellpose ``*_masks`` layout), and score
it on held-out masks."""

from __future__ import annotations

import json
import time
from pathlib import Path

HELP = ("train or fine-tune a Cellpose model on your annotated images (or simulated cells) "
        "and score it on held-out masks")


def add_arguments(parser) -> None:
    parser.add_argument("out", type=Path, help="weights file to write (or to score with --score-only)")
    parser.add_argument("--data", type=Path, action="append", default=[],
                        help="annotated images: a Cell Tracking Challenge sequence NN/ (with NN_GT/SEG/) "
                        "or a folder of img.tif + img_masks.tif; repeatable. Without it: simulated cells")
    parser.add_argument("--from", dest="from_model", default=None,
                        help="weights path or built-in name to fine-tune (default: train from scratch)")
    parser.add_argument("--validate", type=Path, default=None,
                        help="held-out annotated images (same layouts) to score AP@0.5 on")
    parser.add_argument("--holdout-fraction", type=float, default=0.0,
                        help="without --validate: score on this fraction of --data frames, kept out of training")
    parser.add_argument("--keep-partial", action="store_true",
                        help="train on frames flagged as partially annotated (default: drop them)")
    parser.add_argument("--n-train", type=int, default=48, help="simulated training images (256×256)")
    parser.add_argument("--n-test", type=int, default=16, help="held-out simulated images for AP")
    parser.add_argument("--epochs", type=int, default=300, help="training epochs")
    parser.add_argument("--learning-rate", type=float, default=0.005, help="AdamW learning rate")
    parser.add_argument("--crop-px", type=int, default=64, help="training crop side, px (multiple of 16)")
    parser.add_argument("--diam-mean-px", type=float, default=17.0,
                        help="cell diameter the network works at, px")
    parser.add_argument("--seed", type=int, default=1, help="seed of the training images; held-out use seed+1000")
    parser.add_argument("--pixel-size-um", type=float, default=0.2, help="pixel size of the images, µm")
    parser.add_argument("--score-only", action="store_true", help="do not train: score the weights file OUT")


def _load_user(folders, keep_partial: bool):
    from pipeline.eval.train import load_annotated, partial_annotations

    items = [it for f in folders for it in load_annotated(f)]
    flagged = partial_annotations(items)
    for name, why in flagged.items():
        print(f"warning: {name} looks partially annotated ({why}); "
              + ("kept (--keep-partial)" if keep_partial else "left out of training"))
    if not keep_partial:
        items = [it for it in items if it[0] not in flagged]
    return items


def main(args) -> int:
    import numpy as np

    from pipeline.errors import InputError
    from pipeline.eval.train import average_precision, train_model
    from pipeline.sim.simulate import simulate_cell_images

    report = {"weights": str(args.out), "pixel_size_um": args.pixel_size_um}
    held: list = []
    if args.data:
        items = _load_user(args.data, args.keep_partial)
        if not items:
            raise InputError("no fully annotated frame left to train on; label all cells of a frame "
                             "or pass --keep-partial")
        if args.validate is None and args.holdout_fraction > 0:
            n_held = max(1, int(round(args.holdout_fraction * len(items))))
            rng = np.random.default_rng(args.seed)
            order = rng.permutation(len(items))
            held = [items[i] for i in order[:n_held]]
            items = [items[i] for i in order[n_held:]]
        train_images = [it[1] for it in items]
        train_masks = [it[2] for it in items]
    else:
        train_images, train_masks = simulate_cell_images(args.n_train, (256, 256), seed=args.seed,
                                                         pixel_size_um=args.pixel_size_um)
    if args.validate is not None:
        held = _load_user([args.validate], keep_partial=True)
    if not args.score_only:
        start = time.perf_counter()
        print(f"training on {len(train_images)} images, {args.epochs} epochs "
              "(progress in the log every epoch at -v)")
        train_model(train_images, train_masks, args.out, n_epochs=args.epochs,
                    learning_rate=args.learning_rate, crop_px=args.crop_px,
                    diam_mean_px=args.diam_mean_px, from_model=args.from_model)
        report.update(n_train=len(train_images), epochs=args.epochs, crop_px=args.crop_px,
                      from_model=args.from_model,
                      train_seconds=round(time.perf_counter() - start, 1))
    if held:
        names = [h[0] for h in held]
        ap, per_image = average_precision(args.out, [h[1] for h in held], [h[2] for h in held],
                                          pixel_size_um=args.pixel_size_um)
        for name, a in zip(names, per_image):
            print(f"AP@0.5 {a:.3f}  {name}")
        report.update(n_validate=len(held), validate_ap50=round(ap, 4))
        print(f"AP@0.5 mean over {len(held)} held-out frames: {ap:.3f}")
    elif not args.data:
        test_images, test_masks = simulate_cell_images(args.n_test, (256, 256), seed=args.seed + 1000,
                                                       pixel_size_um=args.pixel_size_um)
        ap, per_image = average_precision(args.out, test_images, test_masks,
                                          pixel_size_um=args.pixel_size_um)
        report.update(n_test=args.n_test, ap50=round(ap, 4), ap50_min=round(float(per_image.min()), 4))
        print(f"AP@0.5 on {args.n_test} held-out simulated images: {ap:.3f} "
              f"(worst image {per_image.min():.3f})")
    report_path = Path(str(args.out) + ".json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {report_path}")
    return 0
