"""``midaskit identify FILE``: which MiDaS variant a checkpoint is, with the evidence."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..identify import identify

__all__ = ["add_parser", "run"]

EPILOG = """\
Reads only the file's metadata (key names and shapes): no tensor bytes, no pickle code, no torch.

examples:
  midaskit identify dpt_beit_large_512.pt
  midaskit identify model.pt --json | jq .variant
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "identify",
        help="tell which MiDaS variant a checkpoint is",
        description="Tell which of the 13 MiDaS variants a checkpoint is, with the evidence and "
        "a ranked list of candidates.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="checkpoint file (.pt, .pth, .ckpt, .bin, .safetensors)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--top", type=int, default=3, help="candidates to show (default 3)")
    return p


def run(args: argparse.Namespace) -> int:
    result = identify(args.file)
    if args.json:
        payload = {
            "file": str(args.file),
            "variant": result.variant,
            "summary": result.summary(),
            "relative": result.relative,
            "wrapper": result.wrapper,
            "prefix": result.prefix,
            "drifts": result.drifts,
            "evidence": result.evidence,
            "candidates": [asdict(c) for c in result.candidates[: args.top]],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(f"{args.file}: {result.summary()}")
        for fact in result.evidence:
            print(f"  - {fact}")
        if result.candidates:
            print("  candidates:")
            for c in result.candidates[: args.top]:
                print(f"    {c.variant:<24} score {c.score:.3f}  ({c.matched} matching entries, "
                      f"{c.missing} missing, {c.unexpected} unexpected, "
                      f"{c.mismatched} other shape)")
    return 0 if result.variant else 2
