"""Fast-path formulations shared by several models: the same math as the plain ops, routed to
the kernels that run it fastest on the CPU.

Each function takes the fast route only while :func:`midaskit.models.fastpath.enabled` is True
and otherwise is exactly the plain op, so the plain eager path stays the reference formulation.
Nothing here caches a value derived from a parameter: weights loaded later take effect at once.

Measured on a 2-core AVX-512 CPU, torch 2.13, 2 threads (``bench/bench_infer.py`` has the
whole-model figures):

- :func:`linear`: a float32 token Linear ``(…, K) -> (…, N)`` as a oneDNN 1x1 convolution over a
  channels-last view of the tokens, 0-25% faster than the MKL ``sgemm`` behind ``F.linear`` at
  the transformer sizes here (577x1024x4096 with 2 threads: 200 vs 167 GFLOP/s; 1 thread: 100
  vs 92) when there are enough tokens to pay for oneDNN's per-call weight reorder (see the
  thresholds). It calls ``torch.mkldnn_convolution`` directly: ``F.conv2d`` sends 1x1 convs to
  its slow im2col kernel when torch runs single-threaded. The output is the same contiguous
  ``(…, N)`` tensor; only the summation order of the dot products differs (relative
  differences ~1e-6).
- :func:`channels_last`: convolutions at 32-256 channels on large maps (the DPT decoder and head)
  run 1.1-1.9x faster on channels-last activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fastpath

__all__ = ["linear", "channels_last"]

# measured: oneDNN reorders the weight on every call, which only pays off over enough token
# rows, and a weight over 32 MB makes that reorder buffer a fresh mmap (page faults) each time
# (144x1536x4608: 0.9x; 576x6144x1536: 0.86x; 577x1024x4096: 1.08-1.2x; 9216x768x192: 1.23x)
_CONV_LINEAR_MIN_ROWS = 256
_CONV_LINEAR_MAX_WEIGHT = 1 << 22  # elements (16 MB in float32)
_MKLDNN_CONV = getattr(torch, "mkldnn_convolution", None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on the CPU fast path computed as a oneDNN 1x1 convolution.

    Args:
        x: ``(…, K)`` tokens.
        weight: ``(N, K)``.
        bias: ``(N,)`` or None.

    Returns:
        ``(…, N)``, contiguous.
    """
    k = x.shape[-1]
    n = weight.shape[0]
    if (
        _MKLDNN_CONV is None
        or not fastpath.enabled()
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.dim() < 2
        or x.numel() < _CONV_LINEAR_MIN_ROWS * k
        or weight.numel() > _CONV_LINEAR_MAX_WEIGHT
        or torch.is_autocast_enabled("cpu")  # autocast casts F.linear to its own dtype
    ):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    rows = x.reshape(1, -1, 1, k)  # (1, M, 1, K); a view when the tokens are contiguous
    # (1, K, M, 1) with channels-last strides: oneDNN reads the tokens in place
    out = _MKLDNN_CONV(
        rows.permute(0, 3, 1, 2), weight.view(n, k, 1, 1), bias, (0, 0), (1, 1), (1, 1), 1
    )  # (1, N, M, 1), channels-last
    return out.permute(0, 2, 3, 1).reshape(*lead, n)  # (…, N): a free view


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory format on the fast path (same values), else ``x`` itself."""
    if fastpath.enabled() and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
