"""Seeded synthetic weights in a variant's official layout, for demos and benchmarks.

These are NOT the trained MiDaS weights (which cannot be shipped or downloaded here): values are
drawn so that activations stay of order one through the network (LeCun-uniform weights, unit
norms, a non-negative last conv so the ReLU'd depth is not all zero). Derived buffers are the true
computed ones, so the file loads exactly as an official one would.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from .models.derived import iter_derived_buffers
from .variants import VariantSpec, build_model, get_variant

__all__ = ["synthetic_state_dict"]


def _init_(module: nn.Module, name: str, param: torch.Tensor, gen: torch.Generator) -> None:
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        param.fill_(1.0 if name == "weight" else 0.0)
        return
    if name == "bias" or param.dim() < 2:
        param.uniform_(-0.05, 0.05, generator=gen)
        return
    if isinstance(module, nn.ConvTranspose2d):
        fan_in = param.shape[0] * math.prod(module.kernel_size) / math.prod(module.stride)
    else:
        fan_in = math.prod(param.shape[1:])
    bound = math.sqrt(3.0 / max(fan_in, 1.0))
    param.uniform_(-bound, bound, generator=gen)
    if isinstance(module, nn.Conv2d) and param.shape[0] == 1:
        param.abs_()  # the depth head's last conv: keep the ReLU'd output informative


def synthetic_state_dict(variant: str | VariantSpec, seed: int = 0) -> OrderedDict:
    """An official-layout state dict of ``variant`` with seeded synthetic values (CPU, float32)."""
    spec = get_variant(variant) if isinstance(variant, str) else variant
    model = build_model(spec, device="meta")
    derived = {key: value for key, _, _, value in iter_derived_buffers(model)}
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    modules = dict(model.named_modules())
    for key, meta in model.state_dict().items():
        if key in derived:
            state[key] = derived[key].to(meta.dtype)
            continue
        owner, _, name = key.rpartition(".")
        value = torch.empty(meta.shape, dtype=meta.dtype)
        if name == "running_var":
            value.fill_(1.0)
        elif name == "running_mean":
            value.zero_()
        else:
            _init_(modules[owner], name, value, gen)
        state[key] = value
    return state
