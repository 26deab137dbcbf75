"""ResNeXt-101 32x8d (WSL) backbone of MiDaS v2.1: ``midas_v21_384``.

Paper: Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017
(https://arxiv.org/abs/1611.05431); weights: Mahajan et al., "Exploring the Limits of Weakly
Supervised Pretraining", ECCV 2018 (facebookresearch/WSL-Images); MiDaS: Ranftl et al.,
"Towards Robust Monocular Depth Estimation", TPAMI 2022.

Official source: isl-org/MiDaS ``midas/blocks.py`` (``_make_pretrained_resnext101_wsl``,
``_make_resnet_backbone``), which loads ``resnext101_32x8d_wsl`` from torch.hub
(facebookresearch/WSL-Images), i.e. torchvision's ResNet with ``Bottleneck`` blocks, ``groups=32``,
``width_per_group=8``, the stride on the 3x3 conv, BatchNorm eps 1e-5, and regroups it.

Checkpoint layout reproduced: ``pretrained.layer1`` is ``Sequential(conv1, bn1, relu, maxpool,
layer1)`` (keys ``layer1.0``, ``layer1.1`` and ``layer1.4.{0..2}``), ``pretrained.layer2..4`` are
the other ResNet stages (``layer2.{0..3}``, ``layer3.{0..22}``, ``layer4.{0..2}``, the first block
of each with ``downsample.0/1``). The classifier ``fc`` is not part of the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import FourLayerBackbone

__all__ = [
    "ResNeXtDims",
    "RESNEXT101_32X8D",
    "Bottleneck",
    "ResNeXtBackbone",
    "resnext101_32x8d_wsl",
]

_BN_EPS = 1e-5  # torchvision's BatchNorm2d default


@dataclass(frozen=True)
class ResNeXtDims:
    """Sizes of a torchvision-style ResNeXt.

    Attributes:
        depths: bottleneck blocks per stage.
        planes: bottleneck "planes" per stage; a stage outputs ``planes * expansion`` channels.
        groups: groups of the 3x3 convs (cardinality).
        width_per_group: channels per group at ``planes == 64`` (torchvision's ``base_width``).
        stem_width: channels of the 7x7 stem conv.
        expansion: output / planes ratio of a bottleneck.
    """

    depths: tuple[int, int, int, int] = (3, 4, 23, 3)
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    groups: int = 32
    width_per_group: int = 8
    stem_width: int = 64
    expansion: int = 4

    @property
    def out_widths(self) -> tuple[int, ...]:
        """Channels of the four stage outputs (the decoder's ``in_widths``)."""
        return tuple(p * self.expansion for p in self.planes)


RESNEXT101_32X8D = ResNeXtDims()


def _bn(channels: int, **kw) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, **kw)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck``: 1x1 -> grouped 3x3 (stride here) -> 1x1, plus the shortcut."""

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        groups: int = 1,
        width_per_group: int = 64,
        expansion: int = 4,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        width = int(planes * (width_per_group / 64.0)) * groups
        out_chs = planes * expansion
        # definition order is the state-dict order: conv1, bn1, conv2, bn2, conv3, bn3, downsample
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False, **kw)
        self.bn1 = _bn(width, **kw)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride, padding=1, groups=groups, bias=False, **kw
        )
        self.bn2 = _bn(width, **kw)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False, **kw)
        self.bn3 = _bn(out_chs, **kw)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **kw), _bn(out_chs, **kw)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        # out is our own fresh tensor: adding in place never touches the caller's x
        return F.relu(out.add_(shortcut), inplace=True)


def _make_stage(
    in_chs: int, planes: int, depth: int, stride: int, dims: ResNeXtDims, **kw
) -> nn.Sequential:
    blocks = []
    for i in range(depth):
        blocks.append(
            Bottleneck(
                in_chs if i == 0 else planes * dims.expansion,
                planes,
                stride=stride if i == 0 else 1,
                groups=dims.groups,
                width_per_group=dims.width_per_group,
                expansion=dims.expansion,
                **kw,
            )
        )
    return nn.Sequential(*blocks)


class ResNeXtBackbone(FourLayerBackbone):
    """The four ResNeXt stages as MiDaS v2.1 regroups them (``pretrained`` of ``MidasNet``).

    ``forward`` returns the stage outputs at strides 4, 8, 16 and 32, finest first.
    """

    def __init__(self, dims: ResNeXtDims = RESNEXT101_32X8D, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.dims = dims
        self.out_widths = dims.out_widths
        stages = []
        in_chs = dims.stem_width
        for i, (planes, depth) in enumerate(zip(dims.planes, dims.depths, strict=True)):
            stages.append(_make_stage(in_chs, planes, depth, 1 if i == 0 else 2, dims, **kw))
            in_chs = planes * dims.expansion
        self.layer1 = nn.Sequential(
            nn.Conv2d(3, dims.stem_width, 7, stride=2, padding=3, bias=False, **kw),
            _bn(dims.stem_width, **kw),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            stages[0],
        )
        self.layer2 = stages[1]
        self.layer3 = stages[2]
        self.layer4 = stages[3]



def resnext101_32x8d_wsl(*, device=None, dtype=None) -> ResNeXtBackbone:
    """ResNeXt-101 32x8d: depths (3, 4, 23, 3), outputs 256/512/1024/2048 channels."""
    return ResNeXtBackbone(RESNEXT101_32X8D, device=device, dtype=dtype)
