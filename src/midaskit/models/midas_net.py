"""MiDaS v2.1 ``MidasNet``: ResNeXt-101 32x8d encoder and RefineNet-style decoder
(``midas_v21_384``).

Paper: Ranftl et al., "Towards Robust Monocular Depth Estimation: Mixing Datasets for Zero-shot
Cross-dataset Transfer", TPAMI 2022 (https://arxiv.org/abs/1907.01341).

Official source: isl-org/MiDaS ``midas/midas_net.py`` and ``midas/blocks.py``
(``FeatureFusionBlock``, ``ResidualConvUnit`` with its in-place ReLU). Checkpoint layout
reproduced: ``pretrained.layer1..4`` (see :mod:`midaskit.models.backbones.resnext`), then
``scratch.layer{1..4}_rn``, ``scratch.refinenet4..1`` (in that order, without ``out_conv``) and
``scratch.output_conv.{0,2,4}`` (no trailing Identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UnsupportedInputSizeError
from .backbones.resnext import resnext101_32x8d_wsl
from .blocks import FeatureFusionBlock, make_depth_head, make_scratch
from .kernels import channels_last

if TYPE_CHECKING:  # pragma: no cover
    from ..variants import VariantSpec

__all__ = ["check_input_size", "MidasNetDecoder", "MidasNet", "build_midas_v21_384"]

# the encoders down-sample 5 times and the decoder up-samples by exactly 2 at each level
INPUT_MULTIPLE = 32


def check_input_size(x: torch.Tensor, name: str) -> None:
    """Raise :class:`UnsupportedInputSizeError` unless ``x`` is ``(B, 3, H, W)``, H, W % 32 == 0.

    The official v2.1 nets up-sample each decoder level by exactly 2 and add it to the next
    encoder level, so they only run where every level halves exactly.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise UnsupportedInputSizeError(
            f"{name} takes a (B, 3, H, W) image batch, got shape {tuple(x.shape)}"
        )
    h, w = x.shape[-2:]
    if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE or h == 0 or w == 0:
        raise UnsupportedInputSizeError(
            f"{name} runs on inputs whose height and width are multiples of {INPUT_MULTIPLE}, "
            f"got {h}x{w}; resize with ensure_multiple_of={INPUT_MULTIPLE} (the official "
            "preprocessing does)"
        )


class MidasNetDecoder(nn.Module):
    """The v2.1 forward shared by MidasNet and MidasNet_small: encoder levels through
    ``scratch.layer{i}_rn``, the fusion chain from the deepest level (each block up-samples x2),
    the head. Subclasses build ``pretrained`` and ``scratch``."""

    official_name = "MidasNet"

    @classmethod
    def for_spec(cls, backbone: nn.Module, spec: VariantSpec, *, device=None, dtype=None):
        """The net of a registry variant: decoder widths and head sizes from ``spec``, after
        checking the backbone's output widths against ``spec.in_widths``."""
        if tuple(backbone.out_widths) != tuple(spec.in_widths):
            raise ValueError(
                f"{spec.name}: backbone widths {backbone.out_widths} != {spec.in_widths}"
            )
        return cls(backbone, spec.in_widths, features=spec.features,
                   head_features=spec.head_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised image, H and W multiples of 32 -> ``(B, H, W)``."""
        check_input_size(x, self.official_name)
        # fast path: the whole net runs on channels-last activations (same values)
        layer_1, layer_2, layer_3, layer_4 = self.pretrained(channels_last(x))
        scratch = self.scratch
        layer_1_rn = scratch.layer1_rn(layer_1)
        layer_2_rn = scratch.layer2_rn(layer_2)
        layer_3_rn = scratch.layer3_rn(layer_3)
        layer_4_rn = scratch.layer4_rn(layer_4)
        path_4 = scratch.refinenet4(layer_4_rn)
        path_3 = scratch.refinenet3(path_4, layer_3_rn)
        path_2 = scratch.refinenet2(path_3, layer_2_rn)
        path_1 = scratch.refinenet1(path_2, layer_1_rn)
        return scratch.output_conv(path_1).squeeze(1)  # (B, 1, H, W) -> (B, H, W)


class MidasNet(MidasNetDecoder):
    """Encoder + v2.1 decoder -> relative inverse depth ``(B, H, W)``.

    Args:
        backbone: becomes ``self.pretrained``; returns 4 maps at strides 4, 8, 16, 32.
        in_widths: channels of the backbone's maps.
        features: decoder width (256).
        head_features: ``(channels entering the head, hidden width)``; the first must equal
            ``features``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_widths: Sequence[int],
        *,
        features: int = 256,
        head_features: tuple[int, int] = (256, 32),
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(in_widths) != 4:
            raise ValueError(f"MidasNet takes 4 feature levels, got {len(in_widths)}")
        if head_features[0] != features:
            raise ValueError(f"head input {head_features[0]} must equal features {features}")
        kw = {"device": device, "dtype": dtype}
        self.pretrained = backbone
        self.scratch = make_scratch(in_widths, features, **kw)
        # attribute order is the state-dict order of the official files: refinenet4 first
        self.scratch.refinenet4 = FeatureFusionBlock(features, **kw)
        self.scratch.refinenet3 = FeatureFusionBlock(features, **kw)
        self.scratch.refinenet2 = FeatureFusionBlock(features, **kw)
        self.scratch.refinenet1 = FeatureFusionBlock(features, **kw)
        self.scratch.output_conv = make_depth_head(
            head_features[0], head_features[1], align_corners=False, trailing_identity=False, **kw
        )


def build_midas_v21_384(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """``midas_v21_384``: MidasNet on ResNeXt-101 32x8d (WSL), 105 M parameters."""
    backbone = resnext101_32x8d_wsl(device=device, dtype=dtype)
    return MidasNet.for_spec(backbone, spec, device=device, dtype=dtype)
