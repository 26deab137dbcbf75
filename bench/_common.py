"""Shared benchmark helpers: run a snippet in a fresh interpreter and read its time and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_WRAPPER = """
import json, resource, sys, time
sys.path.insert(0, {tests!r})
{setup}
t0 = time.perf_counter()
{body}
elapsed = time.perf_counter() - t0
print("@@RESULT@@" + json.dumps({{
    "seconds": elapsed,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}}))
"""


def run_isolated(body: str, *, threads: int = 2, setup: str = "") -> dict:
    """Run ``setup`` then ``body`` in a new Python process; returns the ``seconds`` of ``body``
    and the process's ``peak_rss_mb``."""
    code = _WRAPPER.format(tests=str(ROOT / "tests"), body=body, setup=setup)
    env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env={**os.environ, **env_threads}, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-2000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("@@RESULT@@"))
    return json.loads(line.removeprefix("@@RESULT@@"))


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
