#!/usr/bin/env python3
"""Time to a ready model and peak RSS: midaskit.load vs the plain PyTorch path, side by side.

For each variant (default dpt_large_384 and dpt_beit_large_512, official-layout files with seeded
synthetic weights, generated once into .cache/test-weights), timed after ``import torch``:
  plain:    build the model on CPU (random init), torch.load(weights_only=True), load_state_dict
  midaskit: midaskit.load(path)  (build on meta, memory-map, assign)
and the wall time of ``midaskit identify FILE`` as a process. Each measurement runs in a fresh
interpreter (so peak RSS is its own); the median of --repeat runs is printed with ratios.

    .venv/bin/python bench/bench_load.py [--variants dpt_large_384 ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, median, run_isolated

# imported before the clock starts in both paths: the comparison is of building and loading
SETUP = "import torch, midaskit, midaskit.loading"

PLAIN = """
from midaskit.variants import build_model
model = build_model({variant!r})
state = torch.load({path!r}, map_location="cpu", weights_only=True)
model.load_state_dict(state, strict=False)  # strict=False: buffers the file lacks stay as built
"""

OURS = """
loaded = midaskit.load({path!r})
assert loaded.spec.name == {variant!r}
"""


def _checkpoint_path(variant: str) -> Path:
    """Generate/find the cached file in a child, so this parent never imports torch (a parent's
    peak RSS would be inherited by the measured children)."""
    code = f"import refweights; print(refweights.reference_checkpoint({variant!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=True, cwd=ROOT / "tests",
    )
    return Path(out.stdout.strip().splitlines()[-1])


def identify_wall(path: Path, repeat: int) -> float:
    exe = ROOT / ".venv" / "bin" / "midaskit"
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([str(exe), "identify", str(path)], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["dpt_large_384", "dpt_beit_large_512"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    print(f"threads: {args.threads}, repeats: {args.repeat} (median shown); times exclude the "
          "torch import, which both paths pay; RSS is the whole process's peak")
    header = (f"{'variant':<22} {'file MB':>8} {'plain s':>8} {'ours s':>8} {'speedup':>8} "
              f"{'plain RSS':>10} {'ours RSS':>9} {'RSS/file':>9} {'identify s':>11}")
    print(header)
    print("-" * len(header))
    for variant in args.variants:
        path = _checkpoint_path(variant)
        size_mb = path.stat().st_size / 2**20
        plain, ours = [], []
        for _ in range(args.repeat):  # interleaved, so drifting machine load hits both alike
            plain.append(run_isolated(PLAIN.format(variant=variant, path=str(path)),
                                      threads=args.threads, setup=SETUP))
            ours.append(run_isolated(OURS.format(variant=variant, path=str(path)),
                                     threads=args.threads, setup=SETUP))
        t_plain = median([r["seconds"] for r in plain])
        t_ours = median([r["seconds"] for r in ours])
        rss_plain = median([r["peak_rss_mb"] for r in plain])
        rss_ours = median([r["peak_rss_mb"] for r in ours])
        ident = identify_wall(path, args.repeat)
        print(f"{variant:<22} {size_mb:>8.0f} {t_plain:>8.2f} {t_ours:>8.2f} "
              f"{t_plain / t_ours:>7.1f}x {rss_plain:>9.0f}M {rss_ours:>8.0f}M "
              f"{rss_ours / size_mb:>8.2f}x {ident:>11.3f}")


if __name__ == "__main__":
    main()
