"""EfficientNet-Lite3 backbone of MiDaS v2.1 small: ``midas_v21_small_256``.

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019 (https://arxiv.org/abs/1905.11946); the Lite variants are from tensorflow/tpu
``models/official/efficientnet/lite``. MiDaS: Ranftl et al., TPAMI 2022.

Official source: isl-org/MiDaS ``midas/blocks.py`` (``_make_pretrained_efficientnet_lite3``,
``_make_efficientnet_backbone``) loads ``tf_efficientnet_lite3(exportable=True)`` from torch.hub
rwightman/gen-efficientnet-pytorch (``geffnet/gen_efficientnet.py``, ``efficientnet_builder.py``,
``conv2d_layers.py``). Lite means ReLU6, no squeeze-excite, stem and head not scaled, first and
last stage repeats not scaled; the TF port means BatchNorm eps 1e-3 and TF "SAME" padding.

Padding, exactly as the official model computes it: a stride-1 conv with an odd kernel gets the
static symmetric padding ``k // 2`` (a plain ``nn.Conv2d``). A stride-2 conv is geffnet's
``Conv2dSameExport``: TF "SAME" padding ``max((ceil(i / s) - 1) * s + k - i, 0)`` split
``(total // 2, total - total // 2)`` (the extra row/column at the bottom/right). geffnet computes it
from the size of the *first* input it sees and then keeps it for every later call; we compute it
from the current input instead. The two agree whenever each stride-2 conv sees an even size, which
holds for every input whose sides are multiples of 32 (the only sizes MidasNet_small accepts), so
the numerics are the official ones without a size-dependent cache.

Checkpoint layout reproduced: ``pretrained.layer1 = Sequential(conv_stem, bn1, act1, blocks[0],
blocks[1])`` (keys ``layer1.0``, ``layer1.1``, ``layer1.3.0.{conv_dw, bn1, conv_pw, bn2}``,
``layer1.4.N.{conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3}``), ``layer2 = Sequential(blocks[2])``,
``layer3 = Sequential(blocks[3], blocks[4])``, ``layer4 = Sequential(blocks[5], blocks[6])``.
``conv_head``, ``bn2`` and ``classifier`` of the ImageNet model are not part of the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import FourLayerBackbone

__all__ = [
    "StageDims",
    "EfficientNetLiteDims",
    "EFFICIENTNET_LITE3",
    "same_padding",
    "Conv2dSame",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "EfficientNetLiteBackbone",
    "efficientnet_lite3",
]

_BN_EPS = 1e-3  # TensorFlow's BatchNorm default, kept by the TF-ported weights


@dataclass(frozen=True)
class StageDims:
    """One stage of the (already scaled) architecture.

    Attributes:
        block: ``"ds"`` (depthwise-separable) or ``"ir"`` (inverted residual).
        repeats: blocks in the stage.
        kernel: depthwise kernel size.
        stride: stride of the stage's first block.
        expand: expansion ratio of the inverted residuals (1 for ``"ds"``).
        out_chs: output channels.
    """

    block: str
    repeats: int
    kernel: int
    stride: int
    expand: int
    out_chs: int


@dataclass(frozen=True)
class EfficientNetLiteDims:
    """A Lite network: stem width, its stages, and which stages make up ``layer1..4``.

    Attributes:
        stem_chs: channels of the 3x3 stride-2 stem.
        stages: the stages in order (geffnet's ``blocks[i]``).
        layer_stages: ``(start, stop)`` stage ranges of MiDaS's ``layer1..4`` (the stem goes
            in front of ``layer1``).
    """

    stem_chs: int
    stages: tuple[StageDims, ...]
    layer_stages: tuple[tuple[int, int], ...] = ((0, 2), (2, 3), (3, 5), (5, 7))

    @property
    def out_widths(self) -> tuple[int, ...]:
        """Channels of the four layer outputs (the decoder's ``in_widths``)."""
        return tuple(self.stages[stop - 1].out_chs for _, stop in self.layer_stages)


# tf_efficientnet_lite3: channel multiplier 1.2 (rounded to multiples of 8), depth multiplier 1.4
# (ceil; not applied to the first and last stage), stem fixed at 32
EFFICIENTNET_LITE3 = EfficientNetLiteDims(
    stem_chs=32,
    stages=(
        StageDims("ds", 1, 3, 1, 1, 24),
        StageDims("ir", 3, 3, 2, 6, 32),
        StageDims("ir", 3, 5, 2, 6, 48),
        StageDims("ir", 5, 3, 2, 6, 96),
        StageDims("ir", 5, 5, 1, 6, 136),
        StageDims("ir", 6, 5, 2, 6, 232),
        StageDims("ir", 1, 3, 1, 6, 384),
    ),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` of one spatial side of length ``size``."""
    total = max((-(size // -stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF "SAME" padding computed from the input size (stride-2 convs).

    Same parameters as ``nn.Conv2d`` (``weight``, optional ``bias``); ``padding`` is always 0 and
    the input is zero-padded per call, asymmetrically when the total is odd.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, **kw):
    """geffnet's ``create_conv2d(padding="same")``: static padding where it can be static."""
    if stride == 1 and kernel % 2 == 1:
        return nn.Conv2d(
            in_chs, out_chs, kernel, padding=kernel // 2, groups=groups, bias=False, **kw
        )
    return Conv2dSame(in_chs, out_chs, kernel, stride=stride, groups=groups, **kw)


def _bn(channels: int, **kw) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, **kw)


class DepthwiseSeparableConv(nn.Module):
    """dw conv -> BN -> ReLU6 -> pw conv -> BN (no activation), residual when shapes allow."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel: int, stride: int, *, device=None, dtype=None
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.has_residual = stride == 1 and in_chs == out_chs
        self.conv_dw = _conv(in_chs, in_chs, kernel, stride, groups=in_chs, **kw)
        self.bn1 = _bn(in_chs, **kw)
        self.conv_pw = _conv(in_chs, out_chs, 1, **kw)
        self.bn2 = _bn(out_chs, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv_dw(x)), inplace=True)
        out = self.bn2(self.conv_pw(out))
        # out is our own fresh tensor: adding in place never touches the caller's x
        return out.add_(x) if self.has_residual else out


class InvertedResidual(nn.Module):
    """pw expand -> BN -> ReLU6 -> dw conv -> BN -> ReLU6 -> pw linear -> BN, plus residual."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int,
        stride: int,
        expand: int,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        mid_chs = in_chs * expand
        self.has_residual = stride == 1 and in_chs == out_chs
        self.conv_pw = _conv(in_chs, mid_chs, 1, **kw)
        self.bn1 = _bn(mid_chs, **kw)
        self.conv_dw = _conv(mid_chs, mid_chs, kernel, stride, groups=mid_chs, **kw)
        self.bn2 = _bn(mid_chs, **kw)
        self.conv_pwl = _conv(mid_chs, out_chs, 1, **kw)
        self.bn3 = _bn(out_chs, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv_pw(x)), inplace=True)
        out = F.relu6(self.bn2(self.conv_dw(out)), inplace=True)
        out = self.bn3(self.conv_pwl(out))
        return out.add_(x) if self.has_residual else out


def _make_stage(in_chs: int, stage: StageDims, **kw) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for i in range(stage.repeats):
        stride = stage.stride if i == 0 else 1
        if stage.block == "ds":
            blocks.append(DepthwiseSeparableConv(in_chs, stage.out_chs, stage.kernel, stride, **kw))
        elif stage.block == "ir":
            blocks.append(
                InvertedResidual(in_chs, stage.out_chs, stage.kernel, stride, stage.expand, **kw)
            )
        else:
            raise ValueError(f"unknown block type {stage.block!r}")
        in_chs = stage.out_chs
    return nn.Sequential(*blocks)


class EfficientNetLiteBackbone(FourLayerBackbone):
    """EfficientNet-Lite stem and stages regrouped as MiDaS's ``layer1..4`` (``pretrained``).

    ``forward`` returns the four layer outputs, at strides 4, 8, 16 and 32 for Lite3.
    """

    def __init__(self, dims: EfficientNetLiteDims = EFFICIENTNET_LITE3, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.dims = dims
        self.out_widths = dims.out_widths
        stages = []
        in_chs = dims.stem_chs
        for stage in dims.stages:
            stages.append(_make_stage(in_chs, stage, **kw))
            in_chs = stage.out_chs
        stem_conv = _conv(3, dims.stem_chs, 3, stride=2, **kw)
        stem = [stem_conv, _bn(dims.stem_chs, **kw), nn.ReLU6(inplace=True)]
        for i, (start, stop) in enumerate(dims.layer_stages):
            layer = nn.Sequential(*(stem if i == 0 else []), *stages[start:stop])
            setattr(self, f"layer{i + 1}", layer)



def efficientnet_lite3(*, device=None, dtype=None) -> EfficientNetLiteBackbone:
    """EfficientNet-Lite3 (``tf_efficientnet_lite3``, exportable): outputs 32/48/136/384."""
    return EfficientNetLiteBackbone(EFFICIENTNET_LITE3, device=device, dtype=dtype)
