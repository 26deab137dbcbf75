#!/usr/bin/env python3
"""Fuzz the checkpoint reader: any number of mutated checkpoints, each run in a worker process.

Seeds are small valid torch-zip, legacy torch and safetensors files; each case applies one to three
mutations (byte flips, truncation, inserted/overwritten/deleted bytes, extreme integers over size
fields), aimed at section boundaries half of the time (see ``tests/fuzz_util.py``). Workers read
the file in both modes, find its state dict and materialise every tensor. A worker that dies (a
segfault) or stops answering (a hang) is replaced and the case recorded. The slowest case is
replayed alone at the end, in a fresh worker, to tell a slow case from a busy machine.

    .venv/bin/python bench/fuzz.py --cases 10000 --format all --seed 0 [--workers 2]

Prints, per format: cases run, crashes (foreign exceptions, multi-line messages, dead workers),
hangs, cases over 2 s, the slowest case (time and description) and the workers' peak RSS. Exits 1
when anything but "read" or "refused with one line" happened; the failing cases are listed and
replay with the same --seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fuzz_util as fu  # noqa: E402


def _report(fmt: str, results: list[fu.Result], replay: fu.Result | None) -> bool:
    """Print one format's figures; True when it had no failure."""
    kinds = [r.outcome.kind for r in results]
    crashes = kinds.count("crash") + kinds.count("died")
    slowest = max(results, key=lambda r: r.outcome.seconds)
    print(f"{fmt}: {len(results)} cases run, {crashes} crashes, {kinds.count('hang')} hangs, "
          f"{kinds.count('slow')} over {fu.SLOW_SECONDS:.0f} s "
          f"({kinds.count('ok')} read, {kinds.count('refused')} refused)")
    print(f"  slowest: {slowest.outcome.seconds * 1000:.1f} ms ({slowest.outcome.kind}) "
          f"{slowest.description}")
    if replay is not None:
        print(f"  slowest replayed alone: {replay.outcome.seconds * 1000:.1f} ms")
    print(f"  worker peak RSS: {max(r.rss_mb for r in results):.0f} MB")
    failed = [r for r in results if r.outcome.failed]
    for r in failed[:20]:
        detail = r.outcome.detail.strip().splitlines()[-1:] or [""]
        print(f"  {r.outcome.kind.upper()} case {r.case.index}: {r.description}: {detail[0]}")
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more")
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="cases per format (default 1000)")
    parser.add_argument("--format", choices=(*fu.FORMATS, "all"), default="all")
    parser.add_argument("--seed", type=int, default=0, help="the case generator's seed")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--hang-seconds", type=float, default=20.0,
                        help="a case with no result after this long is a hang (default 20)")
    args = parser.parse_args(argv)
    formats = fu.FORMATS if args.format == "all" else (args.format,)

    ok = True
    with tempfile.TemporaryDirectory(prefix="midaskit-fuzz-seeds-") as folder:
        seeds_dir = Path(folder)
        fu.write_seeds(seeds_dir)
        for fmt in formats:
            start = time.perf_counter()
            cases = [fu.Case(fmt, i) for i in range(args.cases)]
            results = fu.run_protected(cases, seeds_dir, seed=args.seed, workers=args.workers,
                                       hang_seconds=args.hang_seconds)
            slowest = max(results, key=lambda r: r.outcome.seconds)
            replay = None
            if slowest.outcome.kind not in ("died", "hang"):
                replay = fu.run_protected([slowest.case], seeds_dir, seed=args.seed, workers=1,
                                          hang_seconds=args.hang_seconds)[0]
            ok &= _report(fmt, results, replay)
            print(f"  wall time: {time.perf_counter() - start:.1f} s with {args.workers} workers")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
