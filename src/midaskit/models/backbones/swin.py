"""Swin Transformer (v1) backbone of MiDaS v3.1 ``dpt_swin_large_384``.

Paper: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"
(ICCV 2021). Official source: isl-org/MiDaS ``midas/backbones/swin.py`` (timm
``swin_large_patch4_window12_384``) with ``swin_common.py``, on timm 0.6.12
``timm/models/swin_transformer.py``. Checkpoint layout reproduced: the timm 0.6.12 one, with
patch merging at the end of stages 0-2 (``layers.{0,1,2}.downsample``: ``norm`` then
``reduction``), ``relative_position_index`` persistent in every block, ``attn_mask`` persistent in
the shifted blocks only (odd block index, none in the last stage, first in the block's key
order), and the unused ``norm`` and plain-Linear ``head``.
"""

from __future__ import annotations

import torch
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

__all__ = ["SwinTransformer", "build_dpt_swin_large_384"]


# ---- layers -----------------------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative-position bias table."""

    def __init__(
        self, dim: int, num_heads: int, window: tuple[int, int], *, device=None, dtype=None
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        table_size = (2 * window[0] - 1) * (2 * window[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.empty(table_size, num_heads, **kw))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # timm's init
        index = relative_position_index(window).to(device, copy=True)
        self.register_buffer("relative_position_index", index, persistent=True)
        self.qkv = nn.Linear(dim, 3 * dim, **kw)
        self.proj = nn.Linear(dim, dim, **kw)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        return {"relative_position_index": relative_position_index(self.window)}

    def _bias(self) -> torch.Tensor:
        """``(nH, N, N)`` bias gathered from the table (the table, not the result, is learned)."""
        n = self.window[0] * self.window[1]
        table = self.relative_position_bias_table.t().contiguous()  # (nH, T)
        # index_select on the contiguous transposed table writes (nH, N*N) in one pass
        bias = torch.index_select(table, 1, self.relative_position_index.view(-1))
        return bias.view(self.num_heads, n, n)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B_, N, C)`` windows, optional ``(nW, N, N)`` mask -> ``(B_, N, C)``."""
        B_, N, C = x.shape
        qkv = kernels.linear(x, self.qkv.weight, self.qkv.bias)  # (B_, N, 3C), fused
        qkv = qkv.view(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B_, nH, N, hd)
        if fastpath.enabled():
            out = window_sdpa(q, k, v, self._bias().to(q.dtype), mask, self.scale)  # (B_, N, C)
        else:
            bias = window_attention_bias(self._bias().to(q.dtype), mask, B_)  # (1|B_, nH, N, N)
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias  # (B_, nH, N, N)
            out = attn.softmax(dim=-1) @ v
            out = out.transpose(1, 2).reshape(B_, N, C)  # (B_, nH, N, hd) -> (B_, N, C)
        return kernels.linear(out, self.proj.weight, self.proj.bias)


class SwinTransformerBlock(ShiftedWindowBlock):
    """Pre-norm block: ``x + W-MSA(norm1(x))``, then ``x + MLP(norm2(x))`` on ``(B, H, W, C)``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        resolution: tuple[int, int],
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__(
            resolution, window_size, shift_size, per_axis=False, device=device, dtype=dtype
        )
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=1e-5, **kw)
        self.attn = WindowAttention(dim, num_heads, self.window, **kw)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = windowed_attention(self.norm1(x), self.attn, self.window, self.shift, self.attn_mask)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> channels, then ``norm`` (4C) and ``reduction`` (4C -> 2C)."""

    def __init__(self, dim: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm = nn.LayerNorm(4 * dim, eps=1e-5, **kw)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H/2, W/2, 2C)``."""
        return kernels.linear(self.norm(merge_patches(x)), self.reduction.weight)


class SwinTransformer(SwinTransformerBase):
    """timm 0.6.12 ``SwinTransformer`` layout (see :class:`SwinTransformerBase`)."""

    def __init__(self, dims: SwinDims, num_classes: int = 1000, *, device=None, dtype=None):
        def make_block(stage: int, shift: int, **kw) -> SwinTransformerBlock:
            return SwinTransformerBlock(
                dims.dim(stage), dims.num_heads[stage], dims.resolution(stage),
                dims.window_size, shift, dims.mlp_ratio, **kw,
            )

        super().__init__(dims, make_block, PatchMerging, num_classes, device=device, dtype=dtype)


# ---- builders ---------------------------------------------------------------------------------

# timm swin_large_patch4_window12_384
_LARGE_384 = SwinDims(
    img_size=384, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12
)


def build_dpt_swin_large_384(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """DPT with a Swin-L/12 backbone at 384x384 (``dpt_swin_large_384.pt``)."""
    model = SwinTransformer(_LARGE_384, device=device, dtype=dtype)
    backbone = SwinDPTBackbone(model, spec.hooks, variant=spec.name)
    return DPTDepthModel.for_spec(backbone, spec, device=device, dtype=dtype)
