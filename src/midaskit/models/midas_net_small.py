"""MiDaS v2.1 small ``MidasNet_small``: EfficientNet-Lite3 encoder and an expanding decoder
(``midas_v21_small_256``).

Paper: Ranftl et al., "Towards Robust Monocular Depth Estimation: Mixing Datasets for Zero-shot
Cross-dataset Transfer", TPAMI 2022 (https://arxiv.org/abs/1907.01341).

Official source: isl-org/MiDaS ``midas/midas_net_custom.py`` with ``features=64``,
``backbone="efficientnet_lite3"``, ``exportable=True``, ``blocks={"expand": True}``,
``align_corners=True`` (fusion blocks), ``groups=1``, ``channels_last=False``; decoder blocks from
``midas/blocks.py`` (``FeatureFusionBlock_custom`` with a non-in-place ReLU). Checkpoint layout
reproduced: ``pretrained.layer1..4`` (see :mod:`midaskit.models.backbones.efficientnet`),
``scratch.layer{1..4}_rn`` with 64/128/256/512 channels, ``scratch.refinenet4..1`` (in that
order; ``out_conv`` halves the channels in 4..2 and keeps 64 in 1), ``scratch.output_conv.{0,2,4}``
(with the trailing Identity, which has no keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from .backbones.efficientnet import efficientnet_lite3
from .blocks import FeatureFusionBlockCustom, make_depth_head, make_scratch
from .midas_net import MidasNetDecoder

if TYPE_CHECKING:  # pragma: no cover
    from ..variants import VariantSpec

__all__ = ["MidasNetSmall", "build_midas_v21_small_256"]


class MidasNetSmall(MidasNetDecoder):
    """Encoder + expanding "custom" decoder -> relative inverse depth ``(B, H, W)``.

    Args:
        backbone: becomes ``self.pretrained``; returns 4 maps at strides 4, 8, 16, 32.
        in_widths: channels of the backbone's maps.
        features: decoder width at level 1; level i has ``features * 2**(i-1)`` channels.
        head_features: ``(channels entering the head, hidden width)``; the first must equal
            ``features``.
    """

    official_name = "MidasNet_small"

    def __init__(
        self,
        backbone: nn.Module,
        in_widths: Sequence[int],
        *,
        features: int = 64,
        head_features: tuple[int, int] = (64, 32),
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(in_widths) != 4:
            raise ValueError(f"MidasNet_small takes 4 feature levels, got {len(in_widths)}")
        if head_features[0] != features:
            raise ValueError(f"head input {head_features[0]} must equal features {features}")
        kw = {"device": device, "dtype": dtype}
        self.pretrained = backbone
        self.scratch = make_scratch(in_widths, features, expand=True, **kw)
        # state-dict order of the official files: refinenet4 first; 4..2 halve their channels
        self.scratch.refinenet4 = FeatureFusionBlockCustom(features * 8, expand=True, **kw)
        self.scratch.refinenet3 = FeatureFusionBlockCustom(features * 4, expand=True, **kw)
        self.scratch.refinenet2 = FeatureFusionBlockCustom(features * 2, expand=True, **kw)
        self.scratch.refinenet1 = FeatureFusionBlockCustom(features, **kw)
        self.scratch.output_conv = make_depth_head(
            head_features[0], head_features[1], align_corners=False, trailing_identity=True, **kw
        )


def build_midas_v21_small_256(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """``midas_v21_small_256``: MidasNet_small on EfficientNet-Lite3, 21 M parameters."""
    backbone = efficientnet_lite3(device=device, dtype=dtype)
    return MidasNetSmall.for_spec(backbone, spec, device=device, dtype=dtype)
