"""LeViT backbone of ``dpt_levit_224`` (MiDaS v3.1).

Paper: Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference",
ICCV 2021 (https://arxiv.org/abs/2104.01136).

Official source: isl-org/MiDaS ``midas/backbones/levit.py`` (hooks on ``blocks[3, 11, 21]``,
tokens unflattened to 14x14, 7x7 and 4x4 maps, and the ``stem_b4_transpose`` up-sampling stem
of the decoder) over timm 0.6.12 ``timm/models/levit.py`` (``levit_384``, linear mode:
``LinearNorm`` layers, BatchNorm everywhere, hard-swish).

Checkpoint layout reproduced: ``pretrained.model.{patch_embed,blocks,head,head_dist}.*`` with the
persistent int64 ``attention_bias_idxs`` buffers and every BatchNorm's ``num_batches_tracked``;
``scratch.stem_transpose.{0,2}.{c,bn}.*``. The classifier heads ``head`` and ``head_dist``
(BatchNorm1d + Linear each) and ``blocks.22..27`` are loaded but never run: nothing after the
last hook reaches the depth output.

Differences from timm, on purpose: the gathered attention biases are recomputed on every
forward (a cheap gather) instead of being cached on the first eval forward, so weights loaded
after a forward always take effect; off the CPU, attention runs through
``scaled_dot_product_attention`` with the bias as additive mask unless
:func:`midaskit.models.fastpath.enabled` is False (see :func:`_use_sdpa`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedInputSizeError
from ...variants import VariantSpec
from .. import fastpath
from ..dpt import DPTDepthModel

__all__ = [
    "LevitConfig",
    "LEVIT_384",
    "LinearNorm",
    "ConvNorm",
    "ConvTransposeNorm",
    "Attention",
    "AttentionSubsample",
    "Levit",
    "LevitBackbone",
    "stem_b4_transpose",
    "build_dpt_levit",
    "build_dpt_levit_224",
]

_BN_EPS = 1e-5  # every BatchNorm of the official file (manifest module_attrs)
_PATCH = 16  # the stem's four stride-2 convs


# ---- helpers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevitConfig:
    """Backbone dimensions (timm ``model_cfgs`` plus the fixed ``Levit`` defaults).

    Attributes:
        embed_dim: token width per stage.
        key_dim: query/key width per head (all stages and both subsampling blocks).
        num_heads: heads per stage.
        depth: attention + MLP pairs per stage.
        attn_ratio: value width / key width in the stage attentions.
        mlp_ratio: hidden width / token width of the residual MLPs.
        down_attn_ratio: value width / key width in the subsampling attentions.
        down_mlp_ratio: MLP ratio of the residual MLP after each subsampling attention.
        down_stride: token-grid stride of the subsampling attentions.
    """

    embed_dim: tuple[int, ...]
    key_dim: int
    num_heads: tuple[int, ...]
    depth: tuple[int, ...]
    attn_ratio: int = 2
    mlp_ratio: int = 2
    down_attn_ratio: int = 4
    down_mlp_ratio: int = 2
    down_stride: int = 2


LEVIT_384 = LevitConfig(
    embed_dim=(384, 512, 768), key_dim=32, num_heads=(6, 9, 12), depth=(4, 4, 4)
)


def attention_bias_idxs(resolution: int, stride: int = 1) -> torch.Tensor:
    """``(Nq, Nk)`` int64 index into a per-head bias table of ``resolution**2`` entries.

    Entry ``[q, k]`` is ``|dy| * resolution + |dx|`` between query ``q`` (on the grid subsampled
    by ``stride``) and key ``k`` (on the full ``resolution x resolution`` grid), row-major.
    """
    full = torch.arange(resolution)
    sub = torch.arange(0, resolution, stride)
    ky, kx = (t.reshape(-1) for t in torch.meshgrid(full, full, indexing="ij"))  # (Nk,)
    qy, qx = (t.reshape(-1) for t in torch.meshgrid(sub, sub, indexing="ij"))  # (Nq,)
    return (qy[:, None] - ky[None, :]).abs() * resolution + (qx[:, None] - kx[None, :]).abs()


def _use_sdpa(x: torch.Tensor) -> bool:
    """Whether attention on ``x``'s device goes through ``scaled_dot_product_attention``.

    Only off the CPU: LeViT's values are 2-4x wider than its keys, for which torch's CPU SDPA
    falls back to its math kernel plus mask checks, measured ~2x slower than the plain formula
    at these sizes (torch 2.13). CUDA's memory-efficient kernel takes a float mask and Dv != Dk.
    """
    return fastpath.enabled() and x.device.type != "cpu"


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
    sdpa: bool,
) -> torch.Tensor:
    """Softmax attention with an additive per-head bias (same math on both paths).

    Args:
        q: ``(B, H, Nq, Dk)``; k: ``(B, H, Nk, Dk)``; v: ``(B, H, Nk, Dv)``.
        bias: ``(H, Nq, Nk)``, broadcast over the batch.
        scale: multiplies ``q @ k^T`` before the bias is added.
        sdpa: use ``F.scaled_dot_product_attention`` (bias as additive ``attn_mask``).

    Returns:
        ``(B, H, Nq, Dv)``.
    """
    if sdpa:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale + bias  # (B, H, Nq, Nk)
    return attn.softmax(dim=-1) @ v


# ---- layers ------------------------------------------------------------------------------------


class LinearNorm(nn.Module):
    """Bias-free Linear then BatchNorm1d over the channels of ``(B, N, C)`` tokens (keys c, bn)."""

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.c = nn.Linear(in_features, out_features, bias=False, **kw)
        self.bn = nn.BatchNorm1d(out_features, eps=_BN_EPS, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(x)  # (B, N, C_out)
        return self.bn(x.flatten(0, 1)).reshape_as(x)  # BN over (B*N, C_out)


class ConvNorm(nn.Module):
    """Bias-free Conv2d then BatchNorm2d (the patch-embedding stem; keys c, bn)."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 2, padding: int = 1,
        *, device=None, dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.c = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, bias=False, **kw)
        self.bn = nn.BatchNorm2d(out_chs, eps=_BN_EPS, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class ConvTransposeNorm(nn.Module):
    """Bias-free ConvTranspose2d 3x3/s2 then BatchNorm2d: doubles the spatial size exactly.

    The official ``ConvTransposeNorm`` passes ``(…, stride, pad, dilation, groups)``
    positionally to ``nn.ConvTranspose2d``, whose 6th positional argument is
    ``output_padding``: its ``dilation=1`` becomes ``output_padding=1``, hence ``2H`` out.
    """

    def __init__(self, in_chs: int, out_chs: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.c = nn.ConvTranspose2d(
            in_chs, out_chs, 3, stride=2, padding=1, output_padding=1, bias=False, **kw
        )
        self.bn = nn.BatchNorm2d(out_chs, eps=_BN_EPS, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class NormLinear(nn.Module):
    """BatchNorm1d then Linear: the unused classifier ``head`` / ``head_dist`` (keys bn, l)."""

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.bn = nn.BatchNorm1d(in_features, eps=_BN_EPS, **kw)
        self.l = nn.Linear(in_features, out_features, **kw)  # noqa: E741 (checkpoint key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(self.bn(x))


class Residual(nn.Module):
    """``x + m(x)`` (key ``m``; drop-path is training-only and absent here)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class Subsample(nn.Module):
    """Keep every ``stride``-th token of the ``resolution x resolution`` grid in both axes."""

    def __init__(self, stride: int, resolution: int):
        super().__init__()
        self.stride = stride
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        r, s = self.resolution, self.stride
        x = x.view(B, r, r, C)[:, ::s, ::s]  # (B, ceil(r/s), ceil(r/s), C)
        return x.reshape(B, -1, C)  # (B, Nq, C)


def _mlp(dim: int, hidden: int, **kw) -> nn.Sequential:
    """Residual MLP body: LinearNorm, hard-swish, LinearNorm (keys 0 and 2)."""
    return nn.Sequential(
        LinearNorm(dim, hidden, **kw), nn.Hardswish(), LinearNorm(hidden, dim, **kw)
    )


class Attention(nn.Module):
    """Multi-head self-attention with a learned per-head bias over |dy|, |dx| offsets.

    The fused ``qkv`` projection is laid out head-major, ``[q (Dk), k (Dk), v (Dv)]`` per head.
    """

    def __init__(
        self, dim: int, key_dim: int, num_heads: int, attn_ratio: int, resolution: int,
        *, device=None, dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        self.resolution = resolution
        val_attn_dim = self.val_dim * num_heads
        # definition order is the state-dict order: own parameter, own buffer, then children
        self.attention_biases = nn.Parameter(torch.empty(num_heads, resolution**2, **kw))
        self.register_buffer(
            "attention_bias_idxs", attention_bias_idxs(resolution).to(device), persistent=True
        )
        self.qkv = LinearNorm(dim, val_attn_dim + 2 * key_dim * num_heads, **kw)
        self.proj = nn.Sequential(nn.Hardswish(), LinearNorm(val_attn_dim, dim, **kw))
        if not self.attention_biases.is_meta:
            nn.init.zeros_(self.attention_biases)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        return {"attention_bias_idxs": attention_bias_idxs(self.resolution)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, self.num_heads, -1)  # (B, N, H, 2*Dk + Dv)
        q, k, v = qkv.permute(0, 2, 1, 3).split([self.key_dim, self.key_dim, self.val_dim], -1)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (H, N, N), never cached
        x = _attend(q, k, v, bias, self.scale, _use_sdpa(x))  # (B, H, N, Dv)
        x = x.transpose(1, 2).reshape(B, N, -1)  # (B, N, H*Dv)
        return self.proj(x)


class AttentionSubsample(nn.Module):
    """Attention whose queries come from a stride-subsampled grid: halves the token grid and
    changes the width (no residual)."""

    def __init__(
        self, in_dim: int, out_dim: int, key_dim: int, num_heads: int, attn_ratio: int,
        stride: int, resolution: int, *, device=None, dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim**-0.5
        self.stride = stride
        self.resolution = resolution
        self.resolution_out = (resolution - 1) // stride + 1
        val_attn_dim = self.val_dim * num_heads
        self.attention_biases = nn.Parameter(torch.empty(num_heads, resolution**2, **kw))
        self.register_buffer(
            "attention_bias_idxs",
            attention_bias_idxs(resolution, stride).to(device),
            persistent=True,
        )
        self.kv = LinearNorm(in_dim, val_attn_dim + key_dim * num_heads, **kw)
        self.q = nn.Sequential(
            Subsample(stride, resolution), LinearNorm(in_dim, key_dim * num_heads, **kw)
        )
        self.proj = nn.Sequential(nn.Hardswish(), LinearNorm(val_attn_dim, out_dim, **kw))
        if not self.attention_biases.is_meta:
            nn.init.zeros_(self.attention_biases)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        return {"attention_bias_idxs": attention_bias_idxs(self.resolution, self.stride)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        kv = self.kv(x).view(B, N, self.num_heads, -1)  # (B, N, H, Dk + Dv)
        k, v = kv.permute(0, 2, 1, 3).split([self.key_dim, self.val_dim], -1)  # (B, H, N, D*)
        q = self.q(x)  # (B, Nq, H*Dk)
        Nq = q.shape[1]
        q = q.view(B, Nq, self.num_heads, self.key_dim).transpose(1, 2)  # (B, H, Nq, Dk)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (H, Nq, N), never cached
        x = _attend(q, k, v, bias, self.scale, _use_sdpa(x))  # (B, H, Nq, Dv)
        x = x.transpose(1, 2).reshape(B, Nq, -1)  # (B, Nq, H*Dv)
        return self.proj(x)


# ---- backbone ----------------------------------------------------------------------------------


class Levit(nn.Module):
    """timm 0.6.12 ``LevitDistilled`` (linear mode): ``patch_embed``, ``blocks``, ``head``,
    ``head_dist``. Not called directly: :class:`LevitBackbone` runs the blocks it needs.

    Attributes:
        resolutions: token-grid side after each block of ``blocks``.
        widths: token width after each block.
    """

    def __init__(
        self, cfg: LevitConfig, img_size: int = 224, num_classes: int = 1000,
        *, device=None, dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        e0 = cfg.embed_dim[0]
        self.patch_embed = nn.Sequential(
            ConvNorm(3, e0 // 8, **kw), nn.Hardswish(),
            ConvNorm(e0 // 8, e0 // 4, **kw), nn.Hardswish(),
            ConvNorm(e0 // 4, e0 // 2, **kw), nn.Hardswish(),
            ConvNorm(e0 // 2, e0, **kw),
        )
        blocks: list[nn.Module] = []
        self.resolutions: list[int] = []
        self.widths: list[int] = []
        res = img_size // _PATCH
        num_stages = len(cfg.embed_dim)
        for i, (dim, heads, depth) in enumerate(
            zip(cfg.embed_dim, cfg.num_heads, cfg.depth, strict=True)
        ):
            for _ in range(depth):
                attn = Attention(dim, cfg.key_dim, heads, cfg.attn_ratio, res, **kw)
                blocks.append(Residual(attn))
                blocks.append(Residual(_mlp(dim, int(dim * cfg.mlp_ratio), **kw)))
                self.resolutions += [res, res]
                self.widths += [dim, dim]
            if i < num_stages - 1:
                out_dim = cfg.embed_dim[i + 1]
                blocks.append(AttentionSubsample(
                    dim, out_dim, cfg.key_dim, dim // cfg.key_dim, cfg.down_attn_ratio,
                    cfg.down_stride, res, **kw,
                ))
                res = (res - 1) // cfg.down_stride + 1
                blocks.append(Residual(_mlp(out_dim, int(out_dim * cfg.down_mlp_ratio), **kw)))
                self.resolutions += [res, res]
                self.widths += [out_dim, out_dim]
        self.blocks = nn.Sequential(*blocks)
        self.head = NormLinear(cfg.embed_dim[-1], num_classes, **kw)
        self.head_dist = NormLinear(cfg.embed_dim[-1], num_classes, **kw)


class LevitBackbone(nn.Module):
    """``pretrained`` of ``dpt_levit_224``: runs LeViT up to the last hook and returns the hooked
    token maps as ``(B, C_i, R_i, R_i)``, finest first (14x14, 7x7, 4x4 at 224).

    Args:
        cfg: backbone dimensions.
        hooks: indices into ``model.blocks`` whose outputs are returned.
        img_size: the only input side the model accepts (the bias tables and the subsampling
            are built for its token grid).
    """

    def __init__(
        self, cfg: LevitConfig, hooks: Sequence[int], img_size: int = 224,
        *, device=None, dtype=None,
    ):
        super().__init__()
        if img_size % _PATCH:
            raise ValueError(f"LeViT img_size must be a multiple of {_PATCH}, got {img_size}")
        self.model = Levit(cfg, img_size, device=device, dtype=dtype)
        n = len(self.model.blocks)
        if any(not 0 <= h < n for h in hooks) or list(hooks) != sorted(set(hooks)):
            raise ValueError(
                f"LeViT hooks must be increasing block indices in [0, {n}), got {tuple(hooks)}"
            )
        self.hooks = tuple(hooks)
        self.img_size = img_size
        self.out_widths = tuple(self.model.widths[h] for h in self.hooks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, S, S)`` with ``S = img_size`` -> hooked maps ``[(B, C_i, R_i, R_i), ...]``."""
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise UnsupportedInputSizeError(
                f"LeViT (dpt_levit_{self.img_size}) runs only at {self.img_size}x{self.img_size} "
                f"input, got {x.shape[-2]}x{x.shape[-1]}: its attention-bias tables and token "
                f"subsampling are fixed to that grid; resize the image to "
                f"{self.img_size}x{self.img_size} (no aspect-ratio preservation, as the official "
                f"transform does)"
            )
        model = self.model
        x = model.patch_embed(x)  # (B, C0, S/16, S/16)
        x = x.flatten(2).transpose(1, 2)  # (B, N0, C0)
        out = []
        for i, block in enumerate(model.blocks[: self.hooks[-1] + 1]):
            x = block(x)
            if i in self.hooks:
                r = model.resolutions[i]
                out.append(x.transpose(1, 2).unflatten(2, (r, r)))  # (B, C_i, R_i, R_i)
        return out


def stem_b4_transpose(
    in_chs: int, out_chs: int, *, device=None, dtype=None
) -> nn.Sequential:
    """``scratch.stem_transpose``: two ConvTransposeNorm + hard-swish, ``in -> out -> out/2``
    channels and x4 spatial size (keys ``0`` and ``2``)."""
    kw = {"device": device, "dtype": dtype}
    return nn.Sequential(
        ConvTransposeNorm(in_chs, out_chs, **kw), nn.Hardswish(),
        ConvTransposeNorm(out_chs, out_chs // 2, **kw), nn.Hardswish(),
    )


# ---- builders ----------------------------------------------------------------------------------


def build_dpt_levit(
    cfg: LevitConfig,
    *,
    hooks: Sequence[int],
    features: int,
    head_features: tuple[int, int],
    img_size: int,
    in_widths: Sequence[int] | None = None,
    device=None,
    dtype=None,
) -> DPTDepthModel:
    """DPT over a LeViT backbone: 3 levels, ``refinenet3`` sized to the middle grid, and
    ``stem_transpose`` (``features -> 2*head_features[0] -> head_features[0]``) before the head.
    """
    kw = {"device": device, "dtype": dtype}
    backbone = LevitBackbone(cfg, hooks, img_size, **kw)
    widths = tuple(in_widths) if in_widths is not None else backbone.out_widths
    if widths != backbone.out_widths:
        raise ValueError(f"in_widths {widths} differ from the hooked widths {backbone.out_widths}")
    mid = backbone.model.resolutions[hooks[1]]
    return DPTDepthModel(
        backbone,
        widths,
        features=features,
        head_features_1=head_features[0],
        head_features_2=head_features[1],
        stem_transpose=stem_b4_transpose(features, 2 * head_features[0], **kw),
        refinenet3_size=(mid, mid),
        **kw,
    )


def build_dpt_levit_224(spec: VariantSpec, *, device=None, dtype=None) -> DPTDepthModel:
    """``dpt_levit_224``: LeViT-384 at 224x224, hooks ``spec.hooks`` (3, 11, 21)."""
    return build_dpt_levit(
        LEVIT_384,
        hooks=spec.hooks,
        features=spec.features,
        head_features=spec.head_features,
        img_size=spec.preprocess.net_w,
        in_widths=spec.in_widths,
        device=device,
        dtype=dtype,
    )
