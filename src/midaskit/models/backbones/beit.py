"""BEiT backbones of MiDaS v3.1: ``dpt_beit_large_512``, ``dpt_beit_large_384``,
``dpt_beit_base_384``.

Paper: Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022
(https://arxiv.org/abs/2106.08254); DPT: Ranftl et al., "Vision Transformers for Dense
Prediction", ICCV 2021.

Official source: isl-org/MiDaS ``midas/backbones/beit.py`` and ``midas/backbones/utils.py``, which
take timm 0.6.12's ``Beit`` (``timm/models/beit.py``) and monkey-patch it to run at any input
size. We reproduce the patched behaviour as plain modules:

- the patch embedding has no image-size assertion;
- each attention layer regenerates the relative-position index for the current patch grid
  ``(H // 16, W // 16)`` and, when that grid differs from the native one, bilinearly resamples its
  ``relative_position_bias_table`` (without the 3 class-token entries, ``align_corners=False``) to
  the new ``(2h - 1, 2w - 1)`` grid, then re-appends the 3 class-token entries. At the native size
  the resampling is the identity, so the table is used directly. The stored
  ``relative_position_index`` is part of the checkpoint layout but, as in the official forward, not
  read.

Checkpoint layout reproduced (timm 0.6.12): ``pretrained.model.cls_token``, ``patch_embed.proj``,
``blocks.N.{gamma_1, gamma_2, norm1, attn.{q_bias, v_bias, relative_position_bias_table,
relative_position_index, qkv, proj}, norm2, mlp.fc1, mlp.fc2}``, the unused classifier
``fc_norm`` and ``head``, then ``pretrained.act_postprocess{1..4}``. No absolute ``pos_embed``, no
final ``norm``; ``k_bias`` (zeros, non-persistent in timm) is not a buffer here at all.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedInputSizeError
from .. import fastpath, kernels
from ..dpt import DPTDepthModel
from ..layers import Mlp
from ..reassemble import make_act_postprocess, reassemble
from ..symbolic import tracing

if TYPE_CHECKING:  # pragma: no cover
    from ...variants import VariantSpec

__all__ = [
    "BeitDims",
    "relative_position_index",
    "resample_relative_position_bias_table",
    "BeitAttention",
    "BeitBlock",
    "Beit",
    "BeitBackbone",
    "build_dpt_beit",
    "build_dpt_beit_large_512",
    "build_dpt_beit_large_384",
    "build_dpt_beit_base_384",
]

PATCH_SIZE = 16
LAYER_NORM_EPS = 1e-6  # timm Beit's norm_layer (manifest module_attrs eps)
NUM_CLASSES = 1000  # the unused ImageNet head kept in the files


@dataclass(frozen=True)
class BeitDims:
    """Size-specific dimensions of a BEiT encoder.

    Attributes:
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads (head width ``embed_dim // num_heads``).
        img_size: native square input side; fixes the bias table and the stored index.
        mlp_ratio: hidden width of the MLP over ``embed_dim``.
        init_values: layer-scale init (only used for fresh weights).
    """

    embed_dim: int
    depth: int
    num_heads: int
    img_size: int
    mlp_ratio: float = 4.0
    init_values: float = 0.1

    @property
    def window(self) -> tuple[int, int]:
        """The native patch grid ``(h, w)``."""
        return (self.img_size // PATCH_SIZE, self.img_size // PATCH_SIZE)


# ---- helpers ----------------------------------------------------------------------------------


def _relative_position_index(h: int | torch.Tensor, w: int | torch.Tensor) -> torch.Tensor:
    """The index of :func:`relative_position_index` from tensor operations only, so that a traced
    graph computes it from the input's size (``h`` and ``w`` are 0-d tensors while tracing)."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ).flatten(1)  # (2, h*w)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, h*w, h*w)
    num_distances = (2 * h - 1) * (2 * w - 1)
    patches = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)  # (h*w, h*w)
    zeros_row = torch.zeros_like(patches[:1])  # (1, h*w)
    top = torch.cat((zeros_row[:, :1] + num_distances + 2,  # class token -> class token
                     zeros_row + num_distances), dim=1)  # class token (query) -> patches
    left = zeros_row.t() + num_distances + 1  # patches -> class token (key)
    return torch.cat((top, torch.cat((left, patches), dim=1)))  # (h*w + 1, h*w + 1)


@functools.lru_cache(maxsize=8)
@torch.inference_mode(False)  # a normal tensor even when first asked for under inference_mode
def _relative_position_index_cpu(h: int, w: int) -> torch.Tensor:
    return _relative_position_index(h, w)


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """BEiT's relative-position index for a patch grid ``(h, w)``: int64 ``(h*w + 1, h*w + 1)``.

    Entry ``[i, j]`` is the row of the bias table used by query token ``i`` and key token ``j``
    (token 0 is the class token): ``(dy + h - 1) * (2w - 1) + (dx + w - 1)`` between patches, and
    the last 3 rows of the table for class-to-patch, patch-to-class and class-to-class.
    Returns the cached CPU tensor, shared by every caller: treat it as read-only (copying a
    1025x1025 int64 table per block per call made loading BEiT-L 1.5 s slower).
    """
    return _relative_position_index_cpu(int(window[0]), int(window[1]))


def resample_relative_position_bias_table(
    table: torch.Tensor, native: Sequence[int], window: Sequence[int]
) -> torch.Tensor:
    """Resample a bias table ``((2H-1)(2W-1) + 3, nH)`` of grid ``native`` to grid ``window``.

    The official ``_get_rel_pos_bias``: the patch part is viewed as an image ``(nH, 2H-1, 2W-1)``,
    resized bilinearly (``align_corners=False``) to ``(2h-1, 2w-1)``, flattened back row-major and
    followed by the 3 unchanged class-token rows. Identity when ``window == native``.
    """
    nh = table.shape[1]
    old_h, old_w = 2 * native[0] - 1, 2 * native[1] - 1
    new_h, new_w = 2 * window[0] - 1, 2 * window[1] - 1
    sub = table[: old_h * old_w]  # ((2H-1)(2W-1), nH)
    # the official reshape reads (width, height); identical here since native grids are square
    sub = sub.reshape(1, old_h, old_w, nh).permute(0, 3, 1, 2)  # (1, nH, 2H-1, 2W-1)
    sub = F.interpolate(sub, size=(new_h, new_w), mode="bilinear", align_corners=False)
    sub = sub.permute(0, 2, 3, 1).reshape(new_h * new_w, nh)  # ((2h-1)(2w-1), nH)
    return torch.cat((sub, table[old_h * old_w :]))


# ---- layers -----------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """16x16 stride-16 conv, flattened to tokens; any input size (no size assertion)."""

    def __init__(self, embed_dim: int, in_chans: int = 3, *, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, PATCH_SIZE, stride=PATCH_SIZE, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, (H//16) * (W//16), C)``."""
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)


class BeitAttention(nn.Module):
    """Multi-head self-attention with BEiT's per-layer relative-position bias.

    Parameters in file order: ``q_bias``, ``v_bias`` (the key bias is zero), the bias table
    ``((2H-1)(2W-1) + 3, nH)`` of the native grid, then the persistent ``relative_position_index``
    buffer, the fused ``qkv`` Linear (no bias) and ``proj``.
    """

    def __init__(
        self, dim: int, num_heads: int, window: Sequence[int], *, device=None, dtype=None
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window = (int(window[0]), int(window[1]))
        kw = {"device": device, "dtype": dtype}
        self.q_bias = nn.Parameter(torch.zeros(dim, **kw))
        self.v_bias = nn.Parameter(torch.zeros(dim, **kw))
        num_distances = (2 * self.window[0] - 1) * (2 * self.window[1] - 1) + 3
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(num_distances, num_heads, **kw)
        )
        self.register_buffer(
            "relative_position_index",
            relative_position_index(self.window).to(device=device, copy=True),
            persistent=True,
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=False, **kw)
        self.proj = nn.Linear(dim, dim, **kw)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        """The stored index of the native grid (the official file keeps it)."""
        return {"relative_position_index": relative_position_index(self.window)}

    def relative_position_bias(
        self, window: Sequence[int], index: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bias ``(1, nH, N, N)`` for a patch grid ``window`` (``N = h*w + 1``).

        ``index`` is :func:`relative_position_index` of ``window`` on the table's device. Computed
        from the parameters on every call, so it can never be stale after new weights load.
        ``out``, a ``(nH, N*N)`` buffer of the table's dtype, receives the bias when given: the
        fast path reuses one buffer for every block of a forward, since at 512x512 a fresh
        67 MB bias per block costs more in page faults than its gather.
        """
        table = self.relative_position_bias_table
        if tracing() or tuple(window) != self.window:  # traced: any size, so always resample
            table = resample_relative_position_bias_table(table, self.window, window)
        n = index.shape[0]
        # index_select along the rows of the (nH, R) table is much faster than gathering rows
        bias = torch.index_select(
            table.t().contiguous(), 1, index.view(-1), out=out
        )  # (nH, N*N)
        return bias.view(1, self.num_heads, n, n)  # (1, nH, N, N)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` tokens and a ``(1, nH, N, N)`` bias -> ``(B, N, C)``."""
        b, n, c = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = kernels.linear(x, self.qkv.weight, qkv_bias)  # (B, N, 3C)
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, nH, N, hd)
        if fastpath.enabled():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, nH, N, N)
            attn = (attn + bias).softmax(dim=-1)
            out = attn @ v  # (B, nH, N, hd)
        out = out.transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return kernels.linear(out, self.proj.weight, self.proj.bias)


class BeitBlock(nn.Module):
    """Pre-norm transformer block with layer scale ``gamma_1``/``gamma_2``."""

    def __init__(self, dims: BeitDims, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        dim = dims.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, **kw)
        self.attn = BeitAttention(dim, dims.num_heads, dims.window, **kw)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, **kw)
        self.mlp = Mlp(dim, int(dim * dims.mlp_ratio), **kw)
        self.gamma_1 = nn.Parameter(torch.full((dim,), dims.init_values, **kw))
        self.gamma_2 = nn.Parameter(torch.full((dim,), dims.init_values, **kw))

    def forward(
        self, x: torch.Tensor, window: tuple[int, int], index: torch.Tensor,
        bias_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, N, C)`` -> ``(B, N, C)`` on patch grid ``window``; ``bias_out``: see
        :meth:`BeitAttention.relative_position_bias`."""
        bias = self.attn.relative_position_bias(window, index, bias_out)
        x = x + self.gamma_1 * self.attn(self.norm1(x), bias)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class Beit(nn.Module):
    """timm's ``Beit`` with relative-position bias per block, mean-pool classifier unused.

    ``fc_norm`` and ``head`` only exist so the official files load; the depth model never runs them.
    """

    def __init__(self, dims: BeitDims, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.dims = dims
        self.patch_embed = PatchEmbed(dims.embed_dim, **kw)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims.embed_dim, **kw))
        self.blocks = nn.ModuleList(BeitBlock(dims, **kw) for _ in range(dims.depth))
        self.fc_norm = nn.LayerNorm(dims.embed_dim, eps=LAYER_NORM_EPS, **kw)
        self.head = nn.Linear(dims.embed_dim, NUM_CLASSES, **kw)
        # index tables depend only on the grid size and device, never on the weights
        self._index_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def _index(self, window: tuple[int, int], device: torch.device) -> torch.Tensor:
        if tracing():  # computed in the graph from the input's size, never a constant
            return _relative_position_index(*window).to(device)
        key = (window[0], window[1], device)
        index = self._index_cache.get(key)
        if index is None:
            with torch.inference_mode(False):
                index = _relative_position_index_cpu(*window).to(device)
            self._index_cache[key] = index
        return index

    def forward_hooks(self, x: torch.Tensor, hooks: Sequence[int]) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> outputs ``(B, N, C)`` of the blocks in ``hooks``, in order.

        Blocks after the last hook do not run (their output cannot reach the depth map).
        """
        h, w = x.shape[-2:]
        if h < PATCH_SIZE or w < PATCH_SIZE:
            raise UnsupportedInputSizeError(
                f"BEiT needs an input of at least {PATCH_SIZE}x{PATCH_SIZE} pixels, got {h}x{w}; "
                "sides that are multiples of 32 are what the official preprocessing produces"
            )
        window = (h // PATCH_SIZE, w // PATCH_SIZE)
        tokens = self.patch_embed(x)  # (B, h*w, C)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, C)
        tokens = torch.cat((cls, tokens), dim=1)  # (B, N, C)
        index = self._index(window, tokens.device)
        bias_out = None
        if fastpath.enabled() and not torch.is_grad_enabled():
            # one bias buffer for all blocks (out= cannot take part in autograd)
            table = self.blocks[0].attn.relative_position_bias_table
            bias_out = table.new_empty((table.shape[1], index.numel()))  # (nH, N*N)
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(hooks) + 1]):
            tokens = block(tokens, window, index, bias_out)
            if i in hooks:
                outputs[i] = tokens
        return [outputs[hook] for hook in hooks]


class BeitBackbone(nn.Module):
    """DPT's ``pretrained`` for BEiT: ``model`` plus ``act_postprocess{1..4}``.

    ``forward`` returns the four reassembled maps, finest first:
    ``(B, C_i, H/4, W/4)``, ``(B, C_i, H/8, W/8)``, ``(B, C_i, H/16, W/16)`` and
    ``(B, C_i, H/32, W/32)`` (for sides that are multiples of 32).
    """

    def __init__(
        self,
        dims: BeitDims,
        hooks: Sequence[int],
        in_widths: Sequence[int],
        *,
        readout: str = "project",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(hooks) != 4 or len(in_widths) != 4:
            raise ValueError("BEiT DPT takes 4 hooks and 4 widths")
        if max(hooks) >= dims.depth:
            raise ValueError(f"hook {max(hooks)} beyond the {dims.depth} blocks")
        self.hooks = tuple(hooks)
        self.model = Beit(dims, device=device, dtype=dtype)
        for level, width in enumerate(in_widths, start=1):
            post = make_act_postprocess(
                level, dims.embed_dim, width, readout=readout, device=device, dtype=dtype
            )
            setattr(self, f"act_postprocess{level}", post)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> the four hooked feature maps, finest first."""
        grid = (x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE)
        tokens = self.model.forward_hooks(x, self.hooks)
        posts = (self.act_postprocess1, self.act_postprocess2, self.act_postprocess3,
                 self.act_postprocess4)
        return [reassemble(post, t, grid) for post, t in zip(posts, tokens, strict=True)]


# ---- builders ---------------------------------------------------------------------------------

_DIMS: dict[str, BeitDims] = {
    "dpt_beit_large_512": BeitDims(embed_dim=1024, depth=24, num_heads=16, img_size=512),
    "dpt_beit_large_384": BeitDims(embed_dim=1024, depth=24, num_heads=16, img_size=384),
    "dpt_beit_base_384": BeitDims(embed_dim=768, depth=12, num_heads=12, img_size=384),
}


def build_dpt_beit(
    spec: VariantSpec, dims: BeitDims, *, device=None, dtype=None
) -> DPTDepthModel:
    """A DPT depth model on a BEiT encoder of size ``dims`` with hooks and widths from ``spec``."""
    backbone = BeitBackbone(dims, spec.hooks, spec.in_widths, device=device, dtype=dtype)
    return DPTDepthModel.for_spec(backbone, spec, device=device, dtype=dtype)


def build_dpt_beit_large_512(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """MiDaS v3.1 ``dpt_beit_large_512`` (BEiT-L/16, 512x512 native)."""
    return build_dpt_beit(spec, _DIMS["dpt_beit_large_512"], device=device, dtype=dtype)


def build_dpt_beit_large_384(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """MiDaS v3.1 ``dpt_beit_large_384`` (BEiT-L/16, 384x384 native)."""
    return build_dpt_beit(spec, _DIMS["dpt_beit_large_384"], device=device, dtype=dtype)


def build_dpt_beit_base_384(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """MiDaS v3.1 ``dpt_beit_base_384`` (BEiT-B/16, 384x384 native)."""
    return build_dpt_beit(spec, _DIMS["dpt_beit_base_384"], device=device, dtype=dtype)
