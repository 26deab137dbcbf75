"""Sizes that stay symbolic while a model is traced for ONNX export.

While ``torch.onnx.export`` traces a model, ``tensor.shape[i]`` is a 0-d tensor that the graph
computes from the input. Turning it into a Python int, comparing it with a constant to choose a
branch, or keying a cache with it fixes the exported graph to the traced input size. The
helpers here let a module keep its eager shortcuts (caches, identity branches) and still trace a
graph that is right at every size.
"""

from __future__ import annotations

import torch

__all__ = ["tracing", "size_value"]


def tracing() -> bool:
    """True while the model is being traced (ONNX export, ``torch.jit.trace``)."""
    return torch.jit.is_tracing()


def size_value(s: int | torch.Tensor) -> int | torch.Tensor:
    """A size as an int in eager mode; the traced 0-d tensor itself while tracing."""
    return s if isinstance(s, torch.Tensor) else int(s)
