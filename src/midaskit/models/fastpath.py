"""One switch between midaskit's optimised kernels and the plain eager formulation.

Models consult :func:`enabled` where they have two paths with the same math (fused
``scaled_dot_product_attention`` vs explicit softmax attention, cached bias tables vs recomputed).
The plain path exists to measure the optimisations against (``bench/bench_infer.py``) and to
rule them out when debugging; outputs agree within float32 rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["enabled", "set_enabled", "plain_eager"]

_enabled = True


def enabled() -> bool:
    """True when the optimised path is on (the default)."""
    return _enabled


def set_enabled(flag: bool) -> None:
    """Turn the optimised path on or off for the whole process."""
    global _enabled
    _enabled = bool(flag)


@contextmanager
def plain_eager() -> Iterator[None]:
    """Run the enclosed code on the plain eager path, restoring the previous setting after."""
    previous = _enabled
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)
