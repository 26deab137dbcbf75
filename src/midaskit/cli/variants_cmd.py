"""``midaskit variants``: the registry as a table (or JSON)."""

from __future__ import annotations

import argparse
import json

from ..variants import all_variants

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "variants",
        help="list the 13 official MiDaS variants midaskit builds",
        description="List every variant: name, MiDaS version, backbone, native input size, "
        "parameters, torch.hub name and release file names.",
        epilog="example:\n  midaskit variants --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    specs = all_variants()
    if args.json:
        print(json.dumps([{
            "name": s.name, "version": s.version, "backbone": s.backbone, "family": s.family,
            "input_size": [s.preprocess.net_h, s.preprocess.net_w], "num_params": s.num_params,
            "hub_name": s.hub_name, "file_names": list(s.file_names),
            "native_size_only": s.native_size_only,
        } for s in specs], indent=2))
        return 0
    header = f"{'name':<24} {'ver':<4} {'backbone':<18} {'input':<8} {'params':>7}  hub name"
    print(header)
    print("-" * len(header))
    for s in specs:
        size = f"{s.preprocess.net_w}x{s.preprocess.net_h}"
        print(f"{s.name:<24} {s.version:<4} {s.backbone:<18} {size:<8} "
              f"{s.num_params / 1e6:>6.0f}M  {s.hub_name}")
    return 0
