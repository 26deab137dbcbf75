"""Hybrid ViT backbone of DPT (MiDaS v3.0): ``dpt_hybrid_384``, ViT-B/16 on a ResNet-50 stem.

Paper: Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), R50+ViT-B/16 hybrid;
Ranftl et al., "Vision Transformers for Dense Prediction" (ICCV 2021), DPT-Hybrid.
Official source: isl-org/MiDaS ``midas/backbones/vit.py`` (``_make_vit_b_rn50_backbone`` with
``use_vit_only=False``) on timm 0.6.12 ``vit_base_resnet50_384`` (= ``vit_base_r50_s16_384``:
``vision_transformer_hybrid.py``, ``resnetv2.py``, ``layers/std_conv.py``, ``layers/padding.py``).

Checkpoint layout reproduced: ``pretrained.model.{cls_token, pos_embed}``, then
``pretrained.model.patch_embed.backbone.stem.{conv, norm}`` and
``...backbone.stages.{0..2}.blocks.N.{downsample.{conv, norm}, conv1, norm1, conv2, norm2, conv3,
norm3}`` (a 3-stage ResNetV2 with 3, 4, 9 blocks), ``patch_embed.proj`` (1x1 conv 1024 -> 768),
the 12 ViT-B blocks, the unused ``norm`` and ``head``, and only ``act_postprocess3/4``: levels 1
and 2 are the outputs of ResNet stages 0 and 1, passed on unchanged (the official
``act_postprocess1/2`` are parameter-free identities).

The ResNet is timm's non-pre-activation ``Bottleneck`` ResNetV2 as used by the JAX ViT hybrids:
weight-standardised convs (eps 1e-8) with TensorFlow "SAME" padding computed from the input size,
GroupNorm with 32 groups (eps 1e-5) followed by ReLU, and a "SAME" 3x3/s2 max pool.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedInputSizeError
from ..dpt import DPTDepthModel
from .vit import DPTViTBackbone, VisionTransformer, ViTConfig

if TYPE_CHECKING:  # pragma: no cover
    from ...variants import VariantSpec

__all__ = [
    "ResNetConfig",
    "same_padding",
    "StdConv2dSame",
    "GroupNormAct",
    "MaxPool2dSame",
    "Bottleneck",
    "DownsampleConv",
    "ResNetStage",
    "ResNetV2",
    "HybridEmbed",
    "build_dpt_hybrid_384",
]


@dataclass(frozen=True)
class ResNetConfig:
    """A ResNetV2 stem as in timm's ``_resnetv2``: blocks and output channels per stage."""

    layers: tuple[int, ...] = (3, 4, 9)
    channels: tuple[int, ...] = (256, 512, 1024)
    stem_chs: int = 64
    num_groups: int = 32


RESNET50_3STAGE = ResNetConfig()
VIT_BASE_16_384 = ViTConfig(embed_dim=768, depth=12, num_heads=12)

STD_CONV_EPS = 1e-8  # timm 0.6.12 ``_resnetv2``: partial(StdConv2dSame, eps=1e-8)
GROUP_NORM_EPS = 1e-5


# ---- helpers ----------------------------------------------------------------------------------

def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding ``(before, after)`` of one side: output ``ceil(size / stride)``,
    the odd pixel of padding goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_same(
    x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
    value: float = 0.0,
) -> torch.Tensor:
    # int() of a traced size fixes the padding to the traced input's; it is the same at every
    # size that is a multiple of the stride, which the hybrid requires of its input anyway
    top, bottom = same_padding(int(x.shape[-2]), kernel[0], stride[0], dilation[0])
    left, right = same_padding(int(x.shape[-1]), kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def _is_static_same(kernel: int, stride: int, dilation: int = 1) -> bool:
    """SAME padding is a fixed symmetric padding when the stride is 1 and the span is odd."""
    return stride == 1 and (dilation * (kernel - 1)) % 2 == 0


# ---- layers -----------------------------------------------------------------------------------

class StdConv2dSame(nn.Conv2d):
    """Weight-standardised conv (no bias) with TensorFlow "SAME" padding.

    The weight is standardised per output channel (biased variance, ``eps`` inside the root) on
    every call, so new weights take effect at once.
    """

    def __init__(
        self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, *,
        eps: float = STD_CONV_EPS, device=None, dtype=None,
    ):
        static = _is_static_same(kernel_size, stride)
        super().__init__(
            in_chs, out_chs, kernel_size, stride=stride,
            padding=(kernel_size - 1) // 2 if static else 0, bias=False, device=device, dtype=dtype,
        )
        self.same_pad = not static
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight.reshape(1, self.out_channels, -1)  # (1, O, I*kh*kw)
        w = F.batch_norm(w, None, None, training=True, momentum=0.0, eps=self.eps)
        return w.reshape_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:
            x = _pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.standardized_weight(), None, self.stride, self.padding,
                        self.dilation, self.groups)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm followed by ReLU (or nothing with ``apply_act=False``), timm ``GroupNormAct``."""

    def __init__(
        self, num_channels: int, num_groups: int = 32, *, apply_act: bool = True,
        eps: float = GROUP_NORM_EPS, device=None, dtype=None,
    ):
        super().__init__(num_groups, num_channels, eps=eps, device=device, dtype=dtype)
        self.apply_act = apply_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x, inplace=True) if self.apply_act else x


class MaxPool2dSame(nn.Module):
    """Max pool with TensorFlow "SAME" padding (padded with -inf)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel_size, self.stride, (1, 1), value=-float("inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class DownsampleConv(nn.Module):
    """Projection shortcut: 1x1 std-conv (strided) + GroupNorm without activation."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, num_groups: int, *, device=None,
                 dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv = StdConv2dSame(in_chs, out_chs, 1, stride=stride, **kw)
        self.norm = GroupNormAct(out_chs, num_groups, apply_act=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Non-pre-activation bottleneck (timm ``resnetv2.Bottleneck``, the ViT-hybrid block):
    1x1 -> 3x3 (strided) -> 1x1, each std-conv + GroupNorm, ReLU after the residual sum."""

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, num_groups: int, *, downsample: bool,
        device=None, dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        mid = _make_div(out_chs * 0.25)
        self.downsample = (
            DownsampleConv(in_chs, out_chs, stride, num_groups, **kw) if downsample else None
        )
        self.conv1 = StdConv2dSame(in_chs, mid, 1, **kw)
        self.norm1 = GroupNormAct(mid, num_groups, **kw)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=stride, **kw)
        self.norm2 = GroupNormAct(mid, num_groups, **kw)
        self.conv3 = StdConv2dSame(mid, out_chs, 1, **kw)
        self.norm3 = GroupNormAct(out_chs, num_groups, apply_act=False, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut, inplace=True)


def _make_div(v: float, divisor: int = 8) -> int:
    """timm ``make_div``: round to a multiple of ``divisor``, never more than 10% down."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ResNetStage(nn.Module):
    """``depth`` bottlenecks; the first one strides and has the projection shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, depth: int, num_groups: int, *,
                 device=None, dtype=None):
        super().__init__()
        self.blocks = nn.Sequential(*[
            Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1,
                       num_groups, downsample=i == 0, device=device, dtype=dtype)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """timm ``ResNetV2(preact=False, stem_type="same")`` without its (parameter-free) head.

    Stem: 7x7/s2 std-conv, GroupNorm + ReLU, 3x3/s2 max pool; then the stages (strides 1, 2, 2,
    ...). Total stride ``4 * 2 ** (len(layers) - 1)``: 16 for the 3-stage hybrid.
    """

    def __init__(self, cfg: ResNetConfig = RESNET50_3STAGE, in_chans: int = 3, *, device=None,
                 dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.stem = nn.Sequential(OrderedDict([
            ("conv", StdConv2dSame(in_chans, cfg.stem_chs, 7, stride=2, **kw)),
            ("norm", GroupNormAct(cfg.stem_chs, cfg.num_groups, **kw)),
            ("pool", MaxPool2dSame(3, 2)),
        ]))
        self.stages = nn.Sequential()
        prev = cfg.stem_chs
        for index, (depth, chs) in enumerate(zip(cfg.layers, cfg.channels, strict=True)):
            stride = 1 if index == 0 else 2
            self.stages.add_module(
                str(index), ResNetStage(prev, chs, stride, depth, cfg.num_groups, **kw)
            )
            prev = chs
        self.num_features = prev
        self.reduction = 4 * 2 ** (len(cfg.layers) - 1)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> every stage's output, ``(B, C_s, ceil(H / r_s), ceil(W / r_s))``."""
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class HybridEmbed(nn.Module):
    """ResNet feature map -> 1x1 conv -> token map (timm ``HybridEmbed`` with patch size 1).

    ``forward`` returns the token map ``(B, C, H / 16, W / 16)`` and the ResNet stage outputs
    (the hybrid DPT's levels 1 and 2 are stages 0 and 1).
    """

    def __init__(self, backbone: ResNetV2, embed_dim: int, *, device=None, dtype=None):
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Conv2d(backbone.num_features, embed_dim, 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        r = self.backbone.reduction
        if h % r or w % r:
            # the official forward sizes the position embedding for (H // 16, W // 16) tokens,
            # while the "SAME"-padded ResNet gives ceil(H / 16): it fails unless they agree
            raise UnsupportedInputSizeError(
                f"input {h}x{w}: the hybrid ViT runs only at sides that are multiples of {r} "
                "(multiples of 32, as the official preprocessing gives them, always work)"
            )
        if torch.is_autocast_enabled(x.device.type):
            # measured with bf16 autocast: the ResNet's convs in bf16 put the depth off by up to
            # 1x its std, in float32 by 0.1x (as the other variants); it is ~10% of the work
            with torch.autocast(x.device.type, enabled=False):
                stages = self.backbone.forward_stages(x.to(self.proj.weight.dtype))
        else:
            stages = self.backbone.forward_stages(x)
        return self.proj(stages[-1]), stages


# ---- builders ---------------------------------------------------------------------------------

def build_dpt_hybrid_384(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """``dpt_hybrid_384``: DPT on R50+ViT-B/16 at 384.

    Hooks 8 and 11 are transformer blocks (levels 3 and 4); ``spec.hooks[0:2]`` name ResNet
    stages 0 and 1, which the official code hooks by position.
    """
    kw = {"device": device, "dtype": dtype}
    embed = HybridEmbed(ResNetV2(RESNET50_3STAGE, **kw), VIT_BASE_16_384.embed_dim, **kw)
    model = VisionTransformer(VIT_BASE_16_384, embed, **kw)
    backbone = DPTViTBackbone(model, spec.hooks, spec.in_widths, token_levels=(3, 4), **kw)
    return DPTDepthModel.for_spec(backbone, spec, **kw)
