"""``midaskit predict``: images to depth maps with the official preprocessing."""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_FIXED, EXIT_OK

__all__ = ["add_parser", "run"]

EPILOG = """\
Outputs mirror the input names under OUTDIR: NAME.pfm (raw float32 prediction, the official
format), NAME.png (16-bit, min-max scaled) and NAME-inferno.png (colour). Unreadable images are
skipped with a warning; the run then ends with exit code 1. Existing outputs are never replaced
without --overwrite.

examples:
  midaskit predict photo.jpg -o depth/ --weights dpt_beit_large_512.pt
  midaskit predict frames/ -o depth/ --weights model.pt --format png16 --batch 4
  midaskit predict 'shots/*.png' -o out/ --weights w.pt --variant dpt_hybrid_384 --dtype bf16
"""


def _formats(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="turn images into depth maps",
        description="Predict relative inverse depth for images with any MiDaS checkpoint: the "
        "variant is identified from the file, the official preprocessing applied, the "
        "prediction resized back to each image's size.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--weights", required=True, metavar="FILE", help="MiDaS checkpoint")
    p.add_argument("--variant", help="variant name (default: identified from the file)")
    p.add_argument("--format", type=_formats, default=["pfm", "png16", "color"],
                   help="comma-separated: pfm,png16,color (default: all three)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="compute precision (default fp32; bf16/fp16 run under autocast)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ..prediction import predict

    summary = predict(
        args.inputs, args.out, weights=args.weights, variant=args.variant, device=args.device,
        formats=args.format, batch=args.batch, dtype=args.dtype, overwrite=args.overwrite,
        progress=None if not args.quiet else False,
    )
    for step in summary.load_steps:
        print(f"midaskit: fixed while loading: {step.summary} ({step.reason})", file=sys.stderr)
    print(f"{summary.variant}: {summary.predicted} image(s) predicted, "
          f"{len(summary.written)} file(s) written to {args.out}"
          + (f", {len(summary.skipped)} skipped" if summary.skipped else ""))
    for path, reason in summary.skipped:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    return EXIT_OK if summary.ok else EXIT_FIXED
