"""The decoder shared by every MiDaS variant: reassemble convs, fusion blocks and the depth head.

Module and attribute names are the official checkpoint keys (``scratch.layer1_rn``,
``scratch.refinenet4.resConfUnit1.conv1``, ``scratch.output_conv.0``); see isl-org/MiDaS
``midas/blocks.py``. Two fusion-block flavours exist in the files: the v2.1 MidasNet one without
``out_conv`` and the "custom" one (DPT, MidasNet_small) with it.

Fast path (:mod:`midaskit.models.fastpath`): a fusion block applies its 1x1 ``out_conv`` before
the bilinear resize instead of after it. Both orders are the same function (a 1x1 conv is linear
per pixel and bilinear weights sum to one, so bias included they commute), but the conv then runs
on a quarter of the pixels. The models also choose the memory format of the decoder's activations
(the weights and the state dict are untouched): the oneDNN convolutions of ``refinenet1`` and the
head (32-256 channels on maps of H/4 and larger) are 1.1-1.5x faster channels-last, see
:mod:`midaskit.models.dpt`. The plain path keeps the official order and memory format.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import fastpath, kernels
from .symbolic import size_value

__all__ = [
    "Conv3x3",
    "Interpolate",
    "ResidualConvUnit",
    "FeatureFusionBlock",
    "ResidualConvUnitCustom",
    "FeatureFusionBlockCustom",
    "make_scratch",
    "make_depth_head",
]


class Interpolate(nn.Module):
    """Bilinear up-sampling by a fixed factor (the head's ``output_conv.1``, no weights)."""

    def __init__(self, scale_factor: float, mode: str = "bilinear", align_corners: bool = False):
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            x, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners
        )


class Conv3x3(nn.Conv2d):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` (same parameters, same keys) that runs through
    :func:`midaskit.models.kernels.conv3x3` (Winograd on the fast path where it pays)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, bias: bool = True, device=None, dtype=None
    ):
        super().__init__(
            in_channels, out_channels, 3, padding=1, bias=bias, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.conv3x3(x, self.weight, self.bias)


class ResidualConvUnit(nn.Module):
    """v2.1 residual unit: ``conv2(relu(conv1(relu(x)))) + relu(x)``.

    The official unit applies an in-place ReLU to its input before the skip connection, so the
    skip adds ``relu(x)``, not ``x``; we reproduce that without mutating the caller's tensor.
    """

    def __init__(self, features: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv1 = Conv3x3(features, features, **kw)
        self.conv2 = Conv3x3(features, features, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        # the conv outputs are fresh tensors: the ReLU and the residual add run in place
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)


class FeatureFusionBlock(nn.Module):
    """v2.1 MidasNet fusion: add the refined skip, refine, up-sample x2 (align_corners=True)."""

    def __init__(self, features: int, *, device=None, dtype=None):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features, device=device, dtype=dtype)
        self.resConfUnit2 = ResidualConvUnit(features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            # the official block adds in place into x; its ReLU then also sees the sum
            x = self.resConfUnit1(skip).add_(x)  # a fresh tensor: add in place
        x = self.resConfUnit2(x)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ResidualConvUnitCustom(nn.Module):
    """DPT / MidasNet_small residual unit: ``conv2(act(conv1(act(x)))) + x`` (optional BN)."""

    def __init__(self, features: int, bn: bool = False, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.bn = bn
        self.conv1 = Conv3x3(features, features, **kw)
        self.conv2 = Conv3x3(features, features, **kw)
        if bn:
            self.bn1 = nn.BatchNorm2d(features, **kw)
            self.bn2 = nn.BatchNorm2d(features, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        if self.bn:
            out = self.bn1(out)
        out = self.conv2(F.relu(out, inplace=True))  # out is our own fresh tensor
        if self.bn:
            out = self.bn2(out)
        return out.add_(x)


class FeatureFusionBlockCustom(nn.Module):
    """DPT fusion block with ``out_conv``: fuse, refine, resize, project.

    Args:
        features: channels in.
        expand: halve the channels in ``out_conv`` (MidasNet_small's pyramid).
        size: fixed output size used when ``forward`` gets none (LeViT's ``refinenet3`` is 7x7).
        align_corners: of the bilinear resize (True in every official variant).
    """

    def __init__(
        self,
        features: int,
        *,
        expand: bool = False,
        bn: bool = False,
        align_corners: bool = True,
        size: tuple[int, int] | int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        out_features = features // 2 if expand else features
        self.align_corners = align_corners
        self.size = size
        # definition order fixes the state-dict order: out_conv comes first in the files
        self.out_conv = nn.Conv2d(features, out_features, 1, bias=True, **kw)
        self.resConfUnit1 = ResidualConvUnitCustom(features, bn, **kw)
        self.resConfUnit2 = ResidualConvUnitCustom(features, bn, **kw)

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None = None,
        *,
        size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        if skip is not None:
            x = self.resConfUnit1(skip).add_(x)  # a fresh tensor: add in place
        x = self.resConfUnit2(x)
        if fastpath.enabled():
            # the 1x1 out_conv commutes with the resize (see the module docstring): run it on the
            # smaller map
            return self._resize(self.out_conv(x), size)
        return self.out_conv(self._resize(x, size))

    def _resize(self, x: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
        """Bilinear resize to ``size``, else to the block's fixed ``size``, else by 2."""
        if size is not None:
            size = tuple(size_value(s) for s in size)  # symbolic while tracing for ONNX
        elif self.size is not None:
            size = self.size
        else:
            return F.interpolate(
                x, scale_factor=2, mode="bilinear", align_corners=self.align_corners
            )
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


def make_scratch(
    in_widths: Sequence[int], features: int, *, expand: bool = False, device=None, dtype=None
) -> nn.Module:
    """The ``scratch`` container with ``layer{i}_rn``: 3x3 convs (no bias) from each level's width.

    With ``expand`` (MidasNet_small) level i gets ``features * 2**i`` channels instead of
    ``features``. The caller attaches the fusion blocks and ``output_conv``.
    """
    scratch = nn.Module()
    for i, width in enumerate(in_widths):
        out = features * (2**i) if expand else features
        conv = Conv3x3(width, out, bias=False, device=device, dtype=dtype)
        setattr(scratch, f"layer{i + 1}_rn", conv)
    return scratch


def make_depth_head(
    features_in: int,
    features_mid: int,
    *,
    align_corners: bool,
    trailing_identity: bool = True,
    device=None,
    dtype=None,
) -> nn.Sequential:
    """``scratch.output_conv``: conv3x3 (C -> C/2), up x2, conv3x3 (-> mid), ReLU, conv1x1, ReLU.

    Keys ``.0``, ``.2`` and ``.4`` hold weights. ``non_negative`` is True for every official
    variant, hence the final ReLU. v2.1 MidasNet has no trailing Identity (no keys either way).
    """
    kw = {"device": device, "dtype": dtype}
    layers: list[nn.Module] = [
        nn.Conv2d(features_in, features_in // 2, 3, padding=1, **kw),
        Interpolate(scale_factor=2, mode="bilinear", align_corners=align_corners),
        nn.Conv2d(features_in // 2, features_mid, 3, padding=1, **kw),
        nn.ReLU(inplace=True),  # after a conv: its own fresh tensor (and no keys either way)
        nn.Conv2d(features_mid, 1, 1, **kw),
        nn.ReLU(inplace=True),
    ]
    if trailing_identity:
        layers.append(nn.Identity())
    return nn.Sequential(*layers)
