"""Non-learned buffers that are computed, not loaded: relative-position indices, attention masks,
LeViT bias indices, BatchNorm's ``num_batches_tracked``.

A module that owns such buffers defines ``derived_buffers(self) -> dict[str, Tensor]`` returning
computed values (CPU; possibly shared caches, so never modified in place) for its own direct
buffers. The loader uses it to fill buffers a file lacks (files re-saved from newer timm), to
check that a file's stored copy is the true value, and to materialise non-persistent buffers of a
model built on ``meta``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["derived_buffer_keys", "iter_derived_buffers", "materialize_derived_buffers"]


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


def derived_buffer_keys(model: nn.Module) -> list[str]:
    """The keys of every derived buffer of ``model``."""
    return [key for key, *_ in iter_derived_buffers(model)]


def iter_derived_buffers(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """Yield ``(full_key, module, buffer_name, value)`` for every derived buffer of ``model``.

    BatchNorm's ``num_batches_tracked`` is included (value 0): it is never used in eval mode.
    """
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        compute = getattr(module, "derived_buffers", None)
        if callable(compute):
            for name, value in compute().items():
                yield f"{dot}{name}", module, name, value
        if _is_batchnorm(module):
            yield f"{dot}num_batches_tracked", module, "num_batches_tracked", torch.tensor(0)


def materialize_derived_buffers(model: nn.Module, device: torch.device | str = "cpu") -> list[str]:
    """Compute every derived buffer still on ``meta`` (absent from the loaded file); return keys.

    Only modules that still hold a ``meta`` buffer compute anything.

    Raises:
        RuntimeError: if some buffer is left on ``meta`` that no module knows how to compute.
    """
    filled = []
    for prefix, module in model.named_modules():
        pending = [n for n, b in module._buffers.items() if b is not None and b.is_meta]
        if not pending:
            continue
        dot = f"{prefix}." if prefix else ""
        compute = getattr(module, "derived_buffers", None)
        values = compute() if callable(compute) else {}
        if _is_batchnorm(module):
            values["num_batches_tracked"] = torch.tensor(0)
        for name in pending:
            if name in values:
                current = module._buffers[name]
                # a copy: computed values may be shared caches, a buffer must be its own
                module._buffers[name] = values[name].to(device=device, dtype=current.dtype,
                                                        copy=True)
                filled.append(f"{dot}{name}")
    left = [k for k, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"buffers left uninitialised after loading: {', '.join(left[:5])}")
    return filled
