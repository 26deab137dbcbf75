"""``midaskit identify FILE``: which MiDaS variant a checkpoint is, with the evidence."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from ..errors import EXIT_INCOMPATIBLE, EXIT_OK, EXIT_UNREADABLE
from ..identification import identify

__all__ = ["add_parser", "run"]

EPILOG = """\
Reads only the file's metadata (key names and shapes): no tensor bytes, no pickle code, no torch.
Exit codes: 0 identified, 2 not a MiDaS checkpoint (the closest variant is shown), 3 unreadable,
or the file also holds Python objects that load/predict would refuse (a warning says which).

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
            "unsafe_globals": list(result.unsafe_globals),
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
    if result.unsafe_globals:
        print(f"midaskit: warning: {args.file} also holds Python objects, not only tensors "
              f"({', '.join(result.unsafe_globals[:5])}); midaskit load/predict refuse it. "
              "Nothing was run. Re-save the weights alone: torch.save(model.state_dict(), path)",
              file=sys.stderr)
        return EXIT_UNREADABLE
    return EXIT_OK if result.variant else EXIT_INCOMPATIBLE
