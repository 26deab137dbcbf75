"""Fast-path formulations shared by several models: the same math as the plain ops, routed to
the kernels that run it fastest on the CPU.

Each function takes the fast route only while :func:`midaskit.models.fastpath.enabled` is True
and otherwise is exactly the plain op, so the plain eager path stays the reference formulation.
The one cache, of weights packed for oneDNN (linears) or transformed for Winograd (3x3 convs), is
keyed by the weight tensor and its version counter: a weight replaced
(``load_state_dict(assign=True)``, ``.to()``) or changed in place (``copy_``, ``load_state_dict``,
an optimizer step) gets a new copy on its next use. Changes made through ``.data`` bypass the
version counter: call :func:`clear_caches` after them. The copies cost memory from the second
forward on: about the weights' size for the packed linears, four times the weights of the
Winograd convolutions (about 140 MB for a DPT decoder at 384x384).

Measured on a 2-core AVX-512 CPU, torch 2.13, 2 threads (``bench/bench_infer.py`` has the
whole-model figures):

- :func:`linear`: a float32 token Linear ``(…, K) -> (…, N)`` without autograd runs oneDNN's
  inner product on a copy of the weight packed in oneDNN's blocked layout
  (``mkldnn._linear_pointwise``), from the weight's second use on. Unpacked, oneDNN reorders
  the weight on every call, which at batch 1 costs up to a fifth of the GEMM (and a fresh mmap
  per call for weights over 32 MB). Packed, the ViT token linears run at 200-225 GFLOP/s vs
  167-200 for the MKL ``sgemm`` behind ``F.linear``, and small-row linears (Swin's last stages)
  1.5x faster; whole models 3-10% faster at batch 1. On a weight's first use (a single
  forward) it runs as a oneDNN 1x1 convolution over a channels-last view of the tokens where
  that beats ``F.linear`` (enough token rows). Only the summation order differs (~1e-6).
- :func:`conv3x3`: 3x3 convolutions of 256 channels and more (the decoder's ``layer*_rn`` and
  residual units) on maps of 32x32 and up by Winograd F(4x4, 3x3), 1.5-1.8x faster than
  oneDNN's direct convolution; the difference is about 3e-5 of the output's std.
- :func:`channels_last`: convolutions at 32-256 channels on large maps (the DPT decoder and head)
  run 1.1-1.9x faster on channels-last activations.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import fastpath, winograd
from .symbolic import tracing

__all__ = ["linear", "conv3x3", "channels_last", "clear_caches"]

_ONEDNN = torch.backends.mkldnn.is_available()
_LINEAR_POINTWISE = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if _ONEDNN else None
_REORDER_LINEAR_WEIGHT = (
    getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if _ONEDNN else None
)
# id(weight owner) -> (weakref to the owner,
#                     {(kind, data_ptr, shape, stride): (version, derived copy or None)})
_derived_weights: dict[int, tuple[weakref.ref, dict[tuple, tuple[int, torch.Tensor | None]]]] = {}


def clear_caches() -> None:
    """Drop every packed or transformed weight (they are rebuilt on next use); needed only
    after changing weights through ``.data``, which the version counter does not see."""
    _derived_weights.clear()


def _forget(owner_id: int, ref: weakref.ref) -> None:
    """Weakref callback: drop the derived copies of a weight that no longer exists."""
    entry = _derived_weights.get(owner_id)
    if entry is not None and entry[0] is ref:
        del _derived_weights[owner_id]


def _derived(
    weight: torch.Tensor, kind: str, make: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor | None:
    """``make(weight)`` (a packed or transformed copy), cached, from the weight's second use on;
    None on the first.

    Making it on the first use would make a single forward slower (the copies are fresh memory,
    about 0.4 s of page faults per GB); from the second forward on it pays for itself. A weight
    changed since its copy was made gets a new one.
    """
    owner = weight if weight._base is None else weight._base  # a view of a Parameter: its base
    entry = _derived_weights.get(id(owner))
    if entry is None or entry[0]() is not owner:
        entry = (weakref.ref(owner, functools.partial(_forget, id(owner))), {})
        _derived_weights[id(owner)] = entry
    key = (kind, weight.data_ptr(), tuple(weight.shape), tuple(weight.stride()))
    version = weight._version
    hit = entry[1].get(key)
    if hit is None or hit[0] != version:
        entry[1][key] = (version, None)  # seen once: make the copy if used again unchanged
        return None
    if hit[1] is None:
        # a normal tensor even when first made under inference_mode
        with torch.inference_mode(False), torch.no_grad():
            entry[1][key] = (version, make(weight))
    return entry[1][key][1]


def _pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    return _REORDER_LINEAR_WEIGHT(weight.contiguous(), None)


def _cacheable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a float32 CPU op may run on a cached copy of ``weight``: no autograd (the
    oneDNN ops have no backward), no autocast, and a weight with a version counter."""
    return (
        fastpath.enabled()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not weight.is_inference()  # no version counter to tell when it changes
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
    gelu: bool = False,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then the exact (erf) GELU when ``gelu``; on the CPU fast
    path, oneDNN's inner product with a packed weight (from the weight's second use on, with the
    GELU fused into it; a oneDNN 1x1 convolution before that).

    Args:
        x: ``(…, K)`` tokens.
        weight: ``(N, K)``.
        bias: ``(N,)`` or None.
        gelu: apply ``F.gelu`` (erf) to the result.

    Returns:
        ``(…, N)``, contiguous.
    """
    out, fused = _linear(x, weight, bias, gelu)
    return F.gelu(out) if gelu and not fused else out


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool
) -> tuple[torch.Tensor, bool]:
    """:func:`linear` and whether the GELU was fused into it."""
    if (
        not fastpath.enabled()
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or x.dim() < 2
        or torch.is_autocast_enabled("cpu")  # autocast casts F.linear to its own dtype
    ):
        return F.linear(x, weight, bias), False
    if _LINEAR_POINTWISE is not None and _REORDER_LINEAR_WEIGHT is not None and _cacheable(
        x, weight, bias
    ):
        packed = _derived(weight, "linear", _pack_linear_weight)
        if packed is not None:
            # oneDNN's "gelu" post-op with algorithm "none" is the erf GELU
            attr, algorithm = ("gelu", "none") if gelu else ("none", "")
            out = _LINEAR_POINTWISE(x.contiguous(), packed, bias, attr, [], algorithm)
            return out, gelu
    return _conv_linear(x, weight, bias), False


# measured: oneDNN reorders an unpacked weight on every call, which only pays off over enough
# token rows, and a weight over 32 MB makes that reorder buffer a fresh mmap each time
# (144x1536x4608: 0.9x; 576x6144x1536: 0.86x; 577x1024x4096: 1.08-1.2x; 9216x768x192: 1.23x)
_CONV_LINEAR_MIN_ROWS = 256
_CONV_LINEAR_MAX_WEIGHT = 1 << 22  # elements (16 MB in float32)
_MKLDNN_CONV = getattr(torch, "mkldnn_convolution", None)


def _conv_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The linear as a oneDNN 1x1 convolution over a channels-last view of the tokens where that
    beats ``F.linear`` with an unpacked weight (``F.conv2d`` would send a 1x1 conv to its slow
    im2col kernel when torch runs single-threaded); ``F.linear`` otherwise."""
    k, n = x.shape[-1], weight.shape[0]
    if (
        _MKLDNN_CONV is None
        or x.numel() < _CONV_LINEAR_MIN_ROWS * k
        or weight.numel() > _CONV_LINEAR_MAX_WEIGHT
    ):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    rows = x.reshape(1, -1, 1, k)  # (1, M, 1, K); a view when the tokens are contiguous
    # (1, K, M, 1) with channels-last strides: oneDNN reads the tokens in place
    out = _MKLDNN_CONV(
        rows.permute(0, 3, 1, 2), weight.view(n, k, 1, 1), bias, (0, 0), (1, 1), (1, 1), 1
    )  # (1, N, M, 1), channels-last
    return out.permute(0, 2, 3, 1).reshape(*lead, n)  # (…, N): a free view


def conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for ``(K, C, 3, 3)`` filters; on the CPU fast
    path, by Winograd F(4x4, 3x3) (:mod:`midaskit.models.winograd`) for wide convolutions on maps
    large enough to gain from it, from the weight's second use on."""
    if (
        x.dim() == 4
        and weight.shape[2:] == (3, 3)
        and winograd.worthwhile(x.shape, weight.shape)
        and _cacheable(x, weight, bias)
        and not tracing()
    ):
        u = _derived(weight, "winograd", winograd.transform_weight)
        if u is not None:
            return winograd.conv3x3(x, u, bias)
    return F.conv2d(x, weight, bias, padding=1)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory format on the fast path (same values), else ``x`` itself."""
    if fastpath.enabled() and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
