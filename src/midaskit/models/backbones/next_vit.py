"""Next-ViT backbone for DPT (MiDaS v3.1 ``dpt_next_vit_large_384``).

Paper: Li et al., "Next-ViT: Next Generation Vision Transformer for Efficient Deployment in
Realistic Industrial Scenarios" (2022). Official sources: isl-org/Next-ViT
``classification/nextvit.py`` (commit 45dbdf7) and isl-org/MiDaS ``midas/backbones/next_vit.py``.

Checkpoint layout reproduced: ``pretrained.model.stem.{0..3}.{conv,norm}`` (ConvBNReLU x4),
``pretrained.model.features.{0..39}`` (NCB and NTB blocks in one flat list), then the unused
classifier ``pretrained.model.norm`` (BatchNorm2d) and ``pretrained.model.proj_head.0`` (Linear),
which load but never run. MiDaS hooks the outputs of ``features[i]`` (NCHW maps) for i in
``hooks``; no ``act_postprocess`` follows. Every norm is a BatchNorm (eps 1e-5) used with its
running statistics in eval mode; the official ``merge_bn`` is never applied to the checkpoints.
Stochastic depth and dropout (``path_dropout``, ``drop``) are identities at inference and have no
weights, so they are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedInputSizeError
from ...variants import VariantSpec
from .. import fastpath, kernels
from ..dpt import DPTDepthModel

__all__ = [
    "NextViTConfig",
    "NCB",
    "NTB",
    "E_MHSA",
    "NextViT",
    "NextViTBackbone",
    "NEXT_VIT_LARGE",
    "build_dpt_next_vit_large_384",
]

NORM_EPS = 1e-5


# --------------------------------------------------------------------------------------- helpers


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor``, never more than 10% below ``v`` (official rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class NextViTConfig:
    """Size-specific dims of a Next-ViT.

    Attributes:
        stem_chs: widths of the stem convs (the 4th conv repeats the 3rd width).
        depths: blocks per stage.
        widths: per stage ``(inner, last)`` widths: stage 0 is all ``inner``; stages 1 and 3 are
            ``inner`` NCBs closed by one ``last``-wide NTB; stage 2 repeats
            ``[NCB x4 (inner), NTB (last)]`` (the official "Next Hybrid Strategy").
        sr_ratios: spatial reduction of the NTB attention per stage.
        head_dim: channels per attention head (and per group of the MHCA 3x3 conv).
        mix_block_ratio: share of an NTB's output channels produced by its self-attention.
        strides: stride of the first block of each stage.
    """

    stem_chs: tuple[int, int, int]
    depths: tuple[int, int, int, int]
    widths: tuple[tuple[int, int], ...]
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    head_dim: int = 32
    mix_block_ratio: float = 0.75
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)

    def plan(self) -> list[tuple[str, int, int, int]]:
        """``(kind, out channels, stride, sr_ratio)`` of every block, in ``features`` order."""
        blocks = []
        for stage, depth in enumerate(self.depths):
            inner, last = self.widths[stage]
            if stage == 0:
                kinds = [("NCB", inner)] * depth
            elif stage == 2:
                kinds = [("NCB", inner)] * 4 + [("NTB", last)]
                kinds = kinds * (depth // 5)
            else:
                kinds = [("NCB", inner)] * (depth - 1) + [("NTB", last)]
            for i, (kind, width) in enumerate(kinds):
                stride = self.strides[stage] if i == 0 else 1
                blocks.append((kind, width, stride, self.sr_ratios[stage]))
        return blocks


NEXT_VIT_LARGE = NextViTConfig(
    stem_chs=(64, 32, 64),
    depths=(3, 4, 30, 3),
    widths=((96, 96), (192, 256), (384, 512), (768, 1024)),
)


# ---------------------------------------------------------------------------------------- layers


class ConvBNReLU(nn.Module):
    """3x3 conv (no bias, padding 1) + BatchNorm + ReLU: one stem layer."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False, **kw)
        self.norm = nn.BatchNorm2d(out_ch, eps=NORM_EPS, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)), inplace=True)


class PatchEmbed(nn.Module):
    """Down-sampling / width change: AvgPool 2x2 (stride 2) then 1x1 conv + BatchNorm.

    Without stride and width change it is the identity and owns no weights.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.pool = stride == 2
        if stride == 2 or in_ch != out_ch:
            self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False, **kw)
            self.norm = nn.BatchNorm2d(out_ch, eps=NORM_EPS, **kw)
        else:
            self.conv = None
            self.norm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            # official: AvgPool2d((2, 2), 2, ceil_mode=True, count_include_pad=False)
            x = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
        if self.conv is None:
            return x
        return self.norm(self.conv(x))


class MHCA(nn.Module):
    """Multi-head convolutional attention: grouped 3x3 conv (one group per head) + BN + ReLU +
    1x1 projection."""

    def __init__(self, channels: int, head_dim: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.group_conv3x3 = nn.Conv2d(
            channels, channels, 3, padding=1, groups=channels // head_dim, bias=False, **kw
        )
        self.norm = nn.BatchNorm2d(channels, eps=NORM_EPS, **kw)
        self.projection = nn.Conv2d(channels, channels, 1, bias=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(F.relu(self.norm(self.group_conv3x3(x)), inplace=True))


class Mlp(nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv, hidden width ``make_divisible(C * ratio, 32)``."""

    def __init__(self, channels: int, mlp_ratio: float, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        hidden = _make_divisible(channels * mlp_ratio, 32)
        self.conv1 = nn.Conv2d(channels, hidden, 1, **kw)
        self.conv2 = nn.Conv2d(hidden, channels, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x), inplace=True))


class NCB(nn.Module):
    """Next Convolution Block: ``x = embed(x); x += MHCA(x); x += Mlp(BN(x))``."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, head_dim: int = 32,
        mlp_ratio: float = 3, *, device=None, dtype=None,
    ):
        super().__init__()
        if out_ch % head_dim:
            raise ValueError(f"NCB width {out_ch} is not a multiple of head_dim {head_dim}")
        kw = {"device": device, "dtype": dtype}
        self.patch_embed = PatchEmbed(in_ch, out_ch, stride, **kw)
        self.mhca = MHCA(out_ch, head_dim, **kw)
        self.norm = nn.BatchNorm2d(out_ch, eps=NORM_EPS, **kw)
        self.mlp = Mlp(out_ch, mlp_ratio, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + self.mhca(x)
        return x + self.mlp(self.norm(x))


class E_MHSA(nn.Module):  # noqa: N801 (official checkpoint name)
    """Efficient multi-head self-attention: keys and values come from the token sequence
    average-pooled by ``sr_ratio**2`` along the flattened (row-major) token axis, then
    BatchNorm1d; queries from every token. Separate q/k/v Linears, as in the checkpoint."""

    def __init__(self, dim: int, head_dim: int = 32, sr_ratio: int = 1, *, device=None,
                 dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads = dim // head_dim
        self.scale = head_dim**-0.5
        self.q = nn.Linear(dim, dim, **kw)
        self.k = nn.Linear(dim, dim, **kw)
        self.v = nn.Linear(dim, dim, **kw)
        self.proj = nn.Linear(dim, dim, **kw)
        self.n_ratio = sr_ratio**2
        self.norm = nn.BatchNorm1d(dim, eps=NORM_EPS, **kw) if sr_ratio > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` tokens -> ``(B, N, C)``."""
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).view(B, N, h, C // h).transpose(1, 2)  # (B, h, N, d)
        if self.norm is not None:
            if N < self.n_ratio:
                raise UnsupportedInputSizeError(
                    f"Next-ViT attention needs at least {self.n_ratio} tokens, got {N}; "
                    "use inputs of at least 32x32 pixels"
                )
            # (B, N, C) -> (B, C, N) -> pooled (B, C, M) -> (B, M, C); AvgPool1d drops a remainder
            kv = F.avg_pool1d(x.transpose(1, 2), self.n_ratio, self.n_ratio)
            kv = self.norm(kv).transpose(1, 2)
        else:
            kv = x
        M = kv.shape[1]
        k = self.k(kv).view(B, M, h, C // h).transpose(1, 2)  # (B, h, M, d)
        v = self.v(kv).view(B, M, h, C // h).transpose(1, 2)  # (B, h, M, d)
        if fastpath.enabled():
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, N, M)
            out = attn.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, h, N, d) -> (B, N, C)
        return self.proj(out)


class NTB(nn.Module):
    """Next Transformer Block: E-MHSA on BN(x) (residual), then an MHCA branch on a 1x1
    projection of x concatenated to x, then ``x += Mlp(BN(x))``."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, sr_ratio: int = 1, head_dim: int = 32,
        mix_block_ratio: float = 0.75, mlp_ratio: float = 2, *, device=None, dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        mhsa_ch = _make_divisible(int(out_ch * mix_block_ratio), 32)
        mhca_ch = out_ch - mhsa_ch
        if mhca_ch <= 0 or mhca_ch % head_dim or mhsa_ch % head_dim:
            raise ValueError(f"NTB width {out_ch} does not split into heads of {head_dim}")
        self.patch_embed = PatchEmbed(in_ch, mhsa_ch, stride, **kw)
        self.norm1 = nn.BatchNorm2d(mhsa_ch, eps=NORM_EPS, **kw)
        self.e_mhsa = E_MHSA(mhsa_ch, head_dim=head_dim, sr_ratio=sr_ratio, **kw)
        self.projection = PatchEmbed(mhsa_ch, mhca_ch, stride=1, **kw)
        self.mhca = MHCA(mhca_ch, head_dim, **kw)
        self.norm2 = nn.BatchNorm2d(out_ch, eps=NORM_EPS, **kw)
        self.mlp = Mlp(out_ch, mlp_ratio, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        B, C, H, W = x.shape
        tokens = self.norm1(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)
        attn = self.e_mhsa(tokens).transpose(1, 2).reshape(B, C, H, W)  # (B, HW, C) -> NCHW
        x = x + attn
        out = self.projection(x)
        out = out + self.mhca(out)
        x = torch.cat([x, out], dim=1)
        return x + self.mlp(self.norm2(x))


class NextViT(nn.Module):
    """The Next-ViT classifier with the checkpoint's attribute names; ``forward_features`` runs
    the stem and the blocks up to the last requested one and returns the requested outputs."""

    def __init__(self, cfg: NextViTConfig, num_classes: int = 1000, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        s0, s1, s2 = cfg.stem_chs
        self.stem = nn.Sequential(
            ConvBNReLU(3, s0, 2, **kw),
            ConvBNReLU(s0, s1, 1, **kw),
            ConvBNReLU(s1, s2, 1, **kw),
            ConvBNReLU(s2, s2, 2, **kw),
        )
        blocks: list[nn.Module] = []
        in_ch = s2
        self.widths: list[int] = []
        for kind, out_ch, stride, sr in cfg.plan():
            if kind == "NCB":
                blocks.append(NCB(in_ch, out_ch, stride, head_dim=cfg.head_dim, **kw))
            else:
                blocks.append(NTB(in_ch, out_ch, stride, sr_ratio=sr, head_dim=cfg.head_dim,
                                  mix_block_ratio=cfg.mix_block_ratio, **kw))
            self.widths.append(out_ch)
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        # classifier: in the checkpoint, never used by the depth model
        self.norm = nn.BatchNorm2d(in_ch, eps=NORM_EPS, **kw)
        self.proj_head = nn.Sequential(nn.Linear(in_ch, num_classes, **kw))

    def forward_features(self, x: torch.Tensor, out_indices: Sequence[int]) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> outputs of ``features[i]`` for i in ``out_indices`` (NCHW)."""
        wanted = set(out_indices)
        found: dict[int, torch.Tensor] = {}
        x = self.stem(x)
        for i, block in enumerate(self.features[: max(out_indices) + 1]):
            x = block(x)
            if i in wanted:
                found[i] = x
        return [found[i] for i in out_indices]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(B, num_classes)``; the depth model never calls this."""
        x = self.forward_features(x, [len(self.features) - 1])[0]
        return self.proj_head(self.norm(x).mean((2, 3)))


class NextViTBackbone(nn.Module):
    """``pretrained`` of the DPT: holds ``model`` (the Next-ViT) and returns the hooked maps.

    Blocks after the last hook and the classifier (``norm``, ``proj_head``) are skipped.
    """

    def __init__(self, cfg: NextViTConfig, hooks: Sequence[int], *, device=None, dtype=None):
        super().__init__()
        self.model = NextViT(cfg, device=device, dtype=dtype)
        n = len(self.model.features)
        if not hooks or any(not 0 <= h < n for h in hooks):
            raise ValueError(f"Next-ViT hooks {tuple(hooks)} must index features[0..{n - 1}]")
        self.hooks = tuple(hooks)
        self.widths = tuple(self.model.widths[h] for h in self.hooks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> hooked ``(B, C_i, H_i, W_i)``, strides 4, 8, 16, 32 for the
        official hooks. On the fast path the net runs on channels-last activations (same
        values), which also makes the NTBs' map <-> token reshapes free views."""
        return self.model.forward_features(kernels.channels_last(x), self.hooks)


# -------------------------------------------------------------------------------------- builders


def _build_dpt_next_vit(
    spec: VariantSpec, cfg: NextViTConfig, *, device=None, dtype=None
) -> DPTDepthModel:
    backbone = NextViTBackbone(cfg, spec.hooks, device=device, dtype=dtype)
    if backbone.widths != tuple(spec.in_widths):
        raise ValueError(
            f"{spec.name}: hooked widths {backbone.widths} != in_widths {tuple(spec.in_widths)}"
        )
    return DPTDepthModel.for_spec(backbone, spec, device=device, dtype=dtype)


def build_dpt_next_vit_large_384(
    spec: VariantSpec, *, device=None, dtype=None
) -> DPTDepthModel:
    """DPT with Next-ViT-L (ImageNet-1K-6M), hooks ``spec.hooks`` = features [2, 6, 36, 39]."""
    return _build_dpt_next_vit(spec, NEXT_VIT_LARGE, device=device, dtype=dtype)
