#!/usr/bin/env python3
"""Shapes without bytes: read_state_dict_meta vs torch.load on a ~1 GB checkpoint, side by side.

Writes a synthetic ViT-like float32 checkpoint (many tensors; --size-gb, default 1) into a temporary
folder (or --path), warms the page cache, then times in fresh interpreters:
  meta:        midaskit.checkpoint.read_state_dict_meta (no torch import, no tensor bytes read)
  torch:       torch.load(weights_only=True)
  torch-mmap:  torch.load(mmap=True, weights_only=True)
Only the call is timed (imports are not); peak RSS is the whole child process, and an
imports-only child of each kind is shown so the increase is visible. Median of --repeat runs.

    .venv/bin/python bench/bench_read.py [--size-gb 1] [--repeat 3] [--path FILE] [--keep]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

from _common import median, run_isolated

DIM = 768  # ViT-B width: 12 tensors and ~28 MB per block

BODIES = {
    "imports only (midaskit)": "from midaskit.checkpoint import read_state_dict_meta\n",
    "imports only (torch)": "import torch\n",
    # "t0 = ..." restarts _common's clock after the imports: only the call is timed
    "read_state_dict_meta": (
        "from midaskit.checkpoint import read_state_dict_meta\n"
        "t0 = time.perf_counter()\n"
        "assert len(read_state_dict_meta({path!r})) == {count}\n"
    ),
    "torch.load(weights_only)": (
        "import torch\n"
        "t0 = time.perf_counter()\n"
        "assert len(torch.load({path!r}, weights_only=True)) == {count}\n"
    ),
    "torch.load(mmap, weights_only)": (
        "import torch\n"
        "t0 = time.perf_counter()\n"
        "assert len(torch.load({path!r}, mmap=True, weights_only=True)) == {count}\n"
    ),
}


BLOCK = {
    "norm1.weight": (DIM,), "norm1.bias": (DIM,),
    "attn.qkv.weight": (3 * DIM, DIM), "attn.qkv.bias": (3 * DIM,),
    "attn.proj.weight": (DIM, DIM), "attn.proj.bias": (DIM,),
    "norm2.weight": (DIM,), "norm2.bias": (DIM,),
    "mlp.fc1.weight": (4 * DIM, DIM), "mlp.fc1.bias": (4 * DIM,),
    "mlp.fc2.weight": (DIM, 4 * DIM), "mlp.fc2.bias": (DIM,),
}  # fmt: skip

WRITER = """
import torch
state = {{
    f"pretrained.model.blocks.{{i}}.{{name}}": torch.full(shape, float(i))
    for i in range({blocks})
    for name, shape in {block!r}.items()
}}
torch.save(state, {path!r})
"""


def write_synthetic(path: Path, size_gb: float) -> int:
    """A ViT-like state dict of about ``size_gb`` GB of float32; returns its tensor count.

    Written by a child process: Linux carries a parent's peak RSS into its children's
    ``ru_maxrss``, so this process must never hold torch or the tensors itself.
    """
    per_block = sum(math.prod(shape) for shape in BLOCK.values()) * 4
    blocks = max(1, round(size_gb * 1e9 / per_block))
    run_isolated(WRITER.format(blocks=blocks, block=BLOCK, path=str(path)))
    return blocks * len(BLOCK)


def warm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--path", type=Path, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    args = ap.parse_args()

    folder = None if args.path else Path(tempfile.mkdtemp(prefix="midaskit-bench-"))
    path = args.path or folder / "synthetic.pt"  # type: ignore[operator]
    try:
        count = write_synthetic(path, args.size_gb)
        size = path.stat().st_size
        print(f"checkpoint: {path} ({size / 1e9:.2f} GB, {count} float32 tensors)")
        print(f"repeats: {args.repeat} (median shown), page cache warm\n")
        results = {}
        for name, body in BODIES.items():
            warm(path)
            runs = [
                run_isolated(body.format(path=str(path), count=count)) for _ in range(args.repeat)
            ]
            results[name] = (
                median([r["seconds"] for r in runs]),
                median([r["peak_rss_mb"] for r in runs]),
            )
        meta_s = results["read_state_dict_meta"][0]
        print(f"{'method':34} {'time (s)':>10} {'x meta':>8} {'peak RSS (MB)':>14}")
        for name, (seconds, rss) in results.items():
            ratio = "" if name.startswith("imports") else f"{seconds / meta_s:7.1f}x"
            shown = "" if name.startswith("imports") else f"{seconds:10.4f}"
            print(f"{name:34} {shown:>10} {ratio:>8} {rss:14.0f}")
        speedup = results["torch.load(weights_only)"][0] / meta_s
        print(f"\nmetadata read is {speedup:.0f}x faster than torch.load (target >= 20x)")
    finally:
        if folder is not None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif args.path is None:
            print(f"kept {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
