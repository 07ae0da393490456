"""``uptrack train-cellpose``: train the shipped Cellpose model on simulated cells."""

from __future__ import annotations

import json
import time
from pathlib import Path

HELP = "train a Cellpose model on simulated cells (or score one) with Cellpose's own API"


def add_arguments(parser) -> None:
    parser.add_argument("out", type=Path, help="weights file to write (or to score with --score-only)")
    parser.add_argument("--n-train", type=int, default=48, help="simulated training images (256×256)")
    parser.add_argument("--n-test", type=int, default=16, help="held-out simulated images for AP")
    parser.add_argument("--epochs", type=int, default=300, help="training epochs")
    parser.add_argument("--crop-px", type=int, default=64, help="training crop side, px (multiple of 16)")
    parser.add_argument("--diam-mean-px", type=float, default=17.0,
                        help="cell diameter the network works at, px")
    parser.add_argument("--seed", type=int, default=1, help="seed of the training images; held-out use seed+1000")
    parser.add_argument("--pixel-size-um", type=float, default=0.2, help="pixel size of the simulated images, µm")
    parser.add_argument("--score-only", action="store_true", help="do not train: score the weights file OUT")


def main(args) -> int:
    from pipeline.eval.train import average_precision, train_model
    from pipeline.sim.simulate import simulate_cell_images

    report = {"weights": str(args.out), "pixel_size_um": args.pixel_size_um}
    if not args.score_only:
        images, masks = simulate_cell_images(args.n_train, (256, 256), seed=args.seed,
                                             pixel_size_um=args.pixel_size_um)
        start = time.perf_counter()
        train_model(images, masks, args.out, n_epochs=args.epochs, crop_px=args.crop_px,
                    diam_mean_px=args.diam_mean_px)
        report.update(n_train=args.n_train, epochs=args.epochs, crop_px=args.crop_px,
                      diam_mean_px=args.diam_mean_px,
                      train_seconds=round(time.perf_counter() - start, 1))
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
