"""Swin Transformer V2 backbones of MiDaS v3.1 ``dpt_swin2_large_384``, ``dpt_swin2_base_384``
and ``dpt_swin2_tiny_256``.

Paper: Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution" (CVPR 2022).
Official source: isl-org/MiDaS ``midas/backbones/swin2.py`` (timm
``swinv2_{large,base}_window12to24_192to384_22kft1k`` and ``swinv2_tiny_window16_256``) with
``swin_common.py``, on timm 0.6.12 ``timm/models/swin_transformer_v2.py``. Checkpoint layout
reproduced: the timm 0.6.12 one, with patch merging at the end of stages 0-2
(``layers.{0,1,2}.downsample``: ``reduction`` then ``norm``), post-norm blocks, cosine attention
with a learned ``logit_scale`` and the continuous position bias ``cpb_mlp``. Only the shifted
blocks of stages 0 and 1 keep an ``attn_mask`` in the files (from stage 2 on the window covers
the whole grid, so nothing is shifted); ``relative_coords_table``, ``relative_position_index`` and
``k_bias`` are not saved and are derived here. The unused ``norm`` and plain-Linear ``head`` load.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...variants import VariantSpec
from .. import fastpath, kernels
from ..dpt import DPTDepthModel
from ..layers import Mlp
from .swin_common import (
    ShiftedWindowBlock,
    SwinDims,
    SwinDPTBackbone,
    SwinTransformerBase,
    merge_patches,
    relative_position_index,
    window_attention_bias,
    window_sdpa,
    windowed_attention,
)

__all__ = [
    "SwinTransformerV2",
    "build_dpt_swin2_large_384",
    "build_dpt_swin2_base_384",
    "build_dpt_swin2_tiny_256",
]

_LOGIT_SCALE_MAX = math.log(1.0 / 0.01)  # cosine-attention temperature is capped at 100


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
def relative_coords_table(window: tuple[int, int], pretrained_window: int) -> torch.Tensor:
    """``(1, 2*wh-1, 2*ww-1, 2)`` float32 log-spaced relative coordinates fed to ``cpb_mlp``.

    Offsets are normalised by the pre-training window (or the window itself when 0) to [-8, 8],
    then mapped by ``sign(t) * log2(|t| + 1) / log2(8)``, in timm's float32 operation order.
    Cached and shared: read-only.
    """
    wh, ww = window
    dy = torch.arange(-(wh - 1), wh, dtype=torch.float32)
    dx = torch.arange(-(ww - 1), ww, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1)  # (2wh-1, 2ww-1, 2)
    norm_h, norm_w = (pretrained_window, pretrained_window) if pretrained_window > 0 else window
    table[..., 0] /= norm_h - 1
    table[..., 1] /= norm_w - 1
    table *= 8
    table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
    return table.unsqueeze(0)


# ---- layers -----------------------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Window cosine attention with a continuous (MLP-generated) relative-position bias.

    ``softmax(cos(q, k) * min(exp(logit_scale), 100) + 16 * sigmoid(cpb_mlp(coords))[index])``.
    The bias depends on parameters, so it is recomputed every forward, never cached.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: tuple[int, int],
        pretrained_window: int,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.window = window
        self.pretrained_window = pretrained_window
        self.logit_scale = nn.Parameter(torch.empty(num_heads, 1, 1, **kw))
        self.q_bias = nn.Parameter(torch.empty(dim, **kw))
        self.v_bias = nn.Parameter(torch.empty(dim, **kw))
        # timm's init (no-ops on meta): temperature 10, zero q/v biases
        nn.init.constant_(self.logit_scale, math.log(10.0))
        nn.init.zeros_(self.q_bias)
        nn.init.zeros_(self.v_bias)
        # not in the official files (non-persistent there too): derived, see derived_buffers()
        for name, value in self.derived_buffers().items():
            if value.is_floating_point() and dtype is not None:
                value = value.to(dtype)
            self.register_buffer(name, value.to(device, copy=True), persistent=False)
        self.cpb_mlp = nn.Sequential(
            nn.Linear(2, 512, **kw), nn.ReLU(), nn.Linear(512, num_heads, bias=False, **kw)
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=False, **kw)
        self.proj = nn.Linear(dim, dim, **kw)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        return {
            "relative_coords_table": relative_coords_table(self.window, self.pretrained_window),
            "relative_position_index": relative_position_index(self.window),
        }

    def _bias(self) -> torch.Tensor:
        """``(nH, N, N)`` position bias ``16 * sigmoid(cpb_mlp(coords))`` gathered by index.

        The sigmoid is applied to the small ``(T, nH)`` table before the gather: same values.
        """
        n = self.window[0] * self.window[1]
        coords = self.relative_coords_table.to(self.cpb_mlp[0].weight.dtype)
        table = self.cpb_mlp(coords).view(-1, self.num_heads)  # (T, nH)
        table = (16 * torch.sigmoid(table)).t().contiguous()  # (nH, T)
        # index_select on the contiguous transposed table writes (nH, N*N) in one pass
        bias = torch.index_select(table, 1, self.relative_position_index.view(-1))
        return bias.view(self.num_heads, n, n)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B_, N, C)`` windows, optional ``(nW, N, N)`` mask -> ``(B_, N, C)``."""
        B_, N, C = x.shape
        # the key bias is fixed at zero (timm's non-persistent k_bias buffer)
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = kernels.linear(x, self.qkv.weight, qkv_bias)  # (B_, N, 3C), fused
        qkv = qkv.view(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B_, nH, N, hd)
        scale = torch.clamp(self.logit_scale, max=_LOGIT_SCALE_MAX).exp()  # (nH, 1, 1)
        if fastpath.enabled():
            # cosine attention: q scaled by temperature / |q| and k by 1 / |k| (one multiply
            # each, as F.normalize does with eps 1e-12), so the fused kernel runs with scale 1
            q_norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
            k_norm = torch.linalg.vector_norm(k, dim=-1, keepdim=True).clamp_min(1e-12)
            q, k = q * (scale / q_norm), k * k_norm.reciprocal()
            out = window_sdpa(q, k, v, self._bias().to(q.dtype), mask, 1.0)  # (B_, N, C)
        else:
            bias = window_attention_bias(self._bias().to(q.dtype), mask, B_)  # (1|B_, nH, N, N)
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            attn = (q @ k.transpose(-2, -1)) * scale + bias  # (B_, nH, N, N)
            out = attn.softmax(dim=-1) @ v
            out = out.transpose(1, 2).reshape(B_, N, C)  # (B_, nH, N, hd) -> (B_, N, C)
        return kernels.linear(out, self.proj.weight, self.proj.bias)


class SwinTransformerBlock(ShiftedWindowBlock):
    """Post-norm block: ``x + norm1(W-MSA(x))``, then ``x + norm2(MLP(x))`` on ``(B, H, W, C)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        resolution: tuple[int, int],
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        pretrained_window: int,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__(
            resolution, window_size, shift_size, per_axis=True, device=device, dtype=dtype
        )
        kw = {"device": device, "dtype": dtype}
        self.attn = WindowAttention(dim, num_heads, self.window, pretrained_window, **kw)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = windowed_attention(x, self.attn, self.window, self.shift, self.attn_mask)
        x = x + self.norm1(y)
        return x + self.norm2(self.mlp(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> channels, then ``reduction`` (4C -> 2C) and ``norm`` (2C)."""

    def __init__(self, dim: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False, **kw)
        self.norm = nn.LayerNorm(2 * dim, eps=1e-5, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H/2, W/2, 2C)``."""
        return self.norm(kernels.linear(merge_patches(x), self.reduction.weight))


class SwinTransformerV2(SwinTransformerBase):
    """timm 0.6.12 ``SwinTransformerV2`` layout (see :class:`SwinTransformerBase`)."""

    def __init__(self, dims: SwinDims, num_classes: int = 1000, *, device=None, dtype=None):
        def make_block(stage: int, shift: int, **kw) -> SwinTransformerBlock:
            return SwinTransformerBlock(
                dims.dim(stage), dims.num_heads[stage], dims.resolution(stage),
                dims.window_size, shift, dims.mlp_ratio, dims.pretrained_window_sizes[stage],
                **kw,
            )

        super().__init__(dims, make_block, PatchMerging, num_classes, device=device, dtype=dtype)


# ---- builders ---------------------------------------------------------------------------------

# timm swinv2_large_window12to24_192to384_22kft1k
_LARGE_384 = SwinDims(
    img_size=384, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
    window_size=24, pretrained_window_sizes=(12, 12, 12, 6),
)
# timm swinv2_base_window12to24_192to384_22kft1k
_BASE_384 = SwinDims(
    img_size=384, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
    window_size=24, pretrained_window_sizes=(12, 12, 12, 6),
)
# timm swinv2_tiny_window16_256
_TINY_256 = SwinDims(
    img_size=256, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=16
)


def _build(spec: VariantSpec, dims: SwinDims, device, dtype) -> nn.Module:
    model = SwinTransformerV2(dims, device=device, dtype=dtype)
    backbone = SwinDPTBackbone(model, spec.hooks, variant=spec.name)
    return DPTDepthModel.for_spec(backbone, spec, device=device, dtype=dtype)


def build_dpt_swin2_large_384(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """DPT with a SwinV2-L/24 backbone at 384x384 (``dpt_swin2_large_384.pt``)."""
    return _build(spec, _LARGE_384, device, dtype)


def build_dpt_swin2_base_384(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """DPT with a SwinV2-B/24 backbone at 384x384 (``dpt_swin2_base_384.pt``)."""
    return _build(spec, _BASE_384, device, dtype)


def build_dpt_swin2_tiny_256(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """DPT with a SwinV2-T/16 backbone at 256x256 (``dpt_swin2_tiny_256.pt``)."""
    return _build(spec, _TINY_256, device, dtype)
