#!/usr/bin/env python3
"""CPU inference speed, side by side: midaskit's fast path, its plain eager path, transformers'
``DPTForDepthEstimation`` and bf16 autocast, for each variant at its native size.

For each variant (all 13 by default) the official-layout file with seeded synthetic weights
(``tests/refweights.py``, generated once into .cache/test-weights) is loaded with
``midaskit.load``, so the outputs are meaningful. Modes, all under ``torch.inference_mode``:

  fast   midaskit as shipped (``fastpath.enabled()``: SDPA, packed oneDNN linears, Winograd
         3x3 convolutions and channels-last maps in the decoder)
  plain  the same model inside ``fastpath.plain_eager()``: the reference formulation
  hf     transformers' DPTForDepthEstimation of the same architecture (dpt_large_384,
         dpt_hybrid_384, the three BEiT and the three SwinV2 variants), built offline from the
         config in ``midaskit.interop.hf_tables`` and given the same weights converted by
         ``midaskit.interop.hf`` (random weights if the conversion fails; the table says which)
  bf16   the fast path under ``torch.autocast("cpu", torch.bfloat16)``

The modes are interleaved run by run (after ``--warmup`` untimed runs each), so drifting machine
load hits them alike; the median of ``--runs`` runs is shown as images per second. The accuracy
columns compare batch-1 outputs with midaskit's fp32 fast path: ``max|out - fp32| / std(fp32)``.
This is a benchmark, never a test: nothing here asserts a time.

    .venv/bin/python bench/bench_infer.py                      # all 13, batch 1 and 4, 2 threads
    .venv/bin/python bench/bench_infer.py --variants dpt_beit_base_384 dpt_large_384 --batches 1
    .venv/bin/python bench/bench_infer.py --threads 4 --runs 5 --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import ROOT, median

sys.path.insert(0, str(ROOT / "tests"))  # refweights: the seeded official-layout files

MODES = ("fast", "plain", "hf", "bf16")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _build_hf(variant: str, model) -> tuple[object | None, str]:
    """transformers' model of ``variant`` with ``model``'s weights, and how its weights came.

    Returns ``(None, reason)`` when transformers has no such architecture or is missing.
    """
    try:
        from midaskit.interop.hf import HF_VARIANTS, hf_config, load_hf_model, write_hf_folder
    except Exception as exc:  # the interop module is optional and may be absent
        return None, f"no interop ({type(exc).__name__})"
    if variant not in HF_VARIANTS:
        return None, "-"
    try:
        with tempfile.TemporaryDirectory(prefix="midaskit-bench-") as folder:
            write_hf_folder(model.state_dict(), variant, folder)
            hf, check = load_hf_model(folder)
        if check.loads_cleanly:
            return hf, "converted"
        note = "converted, load report not clean"
        return hf, note
    except Exception as exc:  # fall back to random weights: the speed is what is measured here
        reason = f"{type(exc).__name__}: {exc}"[:80]
    try:
        import transformers

        config = transformers.DPTConfig.from_dict(hf_config(variant))
        return transformers.DPTForDepthEstimation(config).eval(), f"random ({reason})"
    except Exception as exc:
        return None, f"unavailable ({type(exc).__name__}: {exc})"[:100]


def _runners(model, hf) -> dict[str, Callable]:
    import torch

    from midaskit.models import fastpath

    def fast(x):
        return model(x)

    def plain(x):
        with fastpath.plain_eager():
            return model(x)

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()

    runners = {"fast": fast, "plain": plain, "bf16": bf16}
    if hf is not None:
        runners["hf"] = lambda x: hf(pixel_values=x).predicted_depth
    return runners


def _time_interleaved(
    runners: dict[str, Callable], x, *, warmup: int, runs: int
) -> dict[str, list[float]]:
    import torch

    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runners.values():
                run(x)
        for _ in range(runs):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - t0)
    return times


def _errors(runners: dict[str, Callable], x) -> dict[str, float]:
    """``max|out - fp32 fast| / std(fp32 fast)`` of every other mode on ``x``."""
    import torch

    with torch.inference_mode():
        ref = runners["fast"](x).float()
        scale = float(ref.std())
        return {
            name: float((run(x).float() - ref).abs().max()) / scale
            for name, run in runners.items()
            if name != "fast"
        }


def bench_variant(variant: str, args) -> list[dict]:
    import torch

    import midaskit
    from refweights import reference_checkpoint

    loaded = midaskit.load(reference_checkpoint(variant))
    model = loaded.model
    hf, hf_weights = (None, "skipped") if args.no_hf else _build_hf(variant, model)
    runners = _runners(model, hf)
    if args.no_bf16:
        runners.pop("bf16")
    h, w = loaded.spec.net_size
    gen = torch.Generator().manual_seed(0)
    rows = []
    errors = _errors(runners, torch.randn(1, 3, h, w, generator=gen))
    for batch in args.batches:
        x = torch.randn(batch, 3, h, w, generator=gen)
        times = _time_interleaved(runners, x, warmup=args.warmup, runs=args.runs)
        row = {"variant": variant, "size": f"{h}x{w}", "batch": batch, "hf_weights": hf_weights}
        for name, ts in times.items():
            row[f"{name}_s"] = median(ts)
            row[f"{name}_ips"] = batch / median(ts)
        for name, err in errors.items():
            row[f"{name}_err"] = err
        rows.append(row)
        _print_row(row)
    del model, loaded, hf, runners
    gc.collect()
    return rows


_HEADER = (
    f"{'variant':<23} {'size':>7} {'B':>2} {'fast':>7} {'plain':>7} {'hf':>7} {'bf16':>7} "
    f"{'fast/plain':>10} {'ours/hf':>8} {'bf16 err':>9} {'fp32 err':>9}  hf weights"
)


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{value:{spec}}".rjust(width) if value is not None else "-".rjust(width)


def _print_row(row: dict) -> None:
    fast, plain = row.get("fast_ips"), row.get("plain_ips")
    hf, bf16 = row.get("hf_ips"), row.get("bf16_ips")
    fp32_err = max((row[k] for k in ("plain_err", "hf_err") if k in row), default=None)
    print(
        f"{row['variant']:<23} {row['size']:>7} {row['batch']:>2} "
        f"{_fmt(fast, '.3f', 7)} {_fmt(plain, '.3f', 7)} {_fmt(hf, '.3f', 7)} "
        f"{_fmt(bf16, '.3f', 7)} "
        f"{_fmt(fast / plain if plain else None, '.2f', 9)}x "
        f"{_fmt(fast / hf if hf else None, '.2f', 7)}x "
        f"{_fmt(row.get('bf16_err'), '.1e', 9)} {_fmt(fp32_err, '.1e', 9)}  {row['hf_weights']}",
        flush=True,
    )


def main() -> int:
    from midaskit.variants import all_variants

    names = [spec.name for spec in all_variants()]
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[-3:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--variants", nargs="+", default=names, choices=names, metavar="VARIANT",
                    help="variants to run (default: all 13)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4], help="batch sizes")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per mode; median shown")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per mode first")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--no-bf16", action="store_true", help="skip bf16 autocast")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {_cpu_name()}, {os.cpu_count()} CPUs visible; "
          f"torch.set_num_threads({args.threads}) -> {torch.get_num_threads()} threads; "
          f"warm-up {args.warmup}, median of {args.runs} interleaved runs; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print("columns fast..bf16: images/s; ratios are of images/s (>1: fast path faster); "
          "errors: max|out - fp32 fast| / std, batch 1 (fp32 err: the worst of plain and hf)")
    print(_HEADER)
    print("-" * len(_HEADER))
    rows = []
    for variant in args.variants:
        rows += bench_variant(variant, args)
    print(f"load average at end {os.getloadavg()[0]:.1f} (above {args.threads}: other work "
          "shared the CPUs; compare the ratios, not the absolute numbers)")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
