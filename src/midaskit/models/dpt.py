"""DPT depth model (MiDaS v3.0 and v3.1): a backbone with hooks, the reassemble convs, four (or,
for LeViT, three) fusion blocks and the depth head.

Layout of isl-org/MiDaS ``midas/dpt_depth.py``: ``pretrained`` is the backbone (with its
``model`` and, for ViT/BEiT, ``act_postprocess{1..4}``), ``scratch`` holds the decoder.
The backbone is any module whose ``forward(x)`` returns the hooked feature maps, finest first,
each ``(B, C_i, H_i, W_i)`` with ``C_i = in_widths[i]``.

On the fast path (:mod:`midaskit.models.fastpath`) the decoder picks each level's memory format by
measurement (2-core AVX-512 CPU, torch 2.13): levels 2-4 NCHW, where their 3x3 convs have wide
weights on small maps and channels-last input would make oneDNN reorder the weights on every call
(up to 1.5x slower), and ``refinenet1`` plus the head channels-last (1.1-1.5x faster).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..variants import VariantSpec
from . import fastpath
from .blocks import FeatureFusionBlockCustom, make_depth_head, make_scratch
from .kernels import channels_last

__all__ = ["DPTDepthModel"]


def _nchw(x: torch.Tensor, fast: bool) -> torch.Tensor:
    return x.contiguous() if fast else x


class DPTDepthModel(nn.Module):
    """Backbone + DPT decoder -> relative inverse depth ``(B, H, W)``.

    Args:
        backbone: becomes ``self.pretrained``; returns 3 or 4 feature maps.
        in_widths: channels of the backbone's feature maps.
        features: decoder width (256 in every official DPT).
        head_features_1: channels entering the head (LeViT: 64 after ``stem_transpose``).
        head_features_2: the head's hidden width (32; LeViT 8).
        stem_transpose: LeViT's up-sampling stem between the last fusion block and the head.
        refinenet3_size: fixed output size of ``refinenet3`` when there are only 3 levels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        in_widths: Sequence[int],
        *,
        features: int = 256,
        head_features_1: int | None = None,
        head_features_2: int = 32,
        stem_transpose: nn.Module | None = None,
        refinenet3_size: tuple[int, int] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(in_widths) not in (3, 4):
            raise ValueError(f"DPT takes 3 or 4 feature levels, got {len(in_widths)}")
        kw = {"device": device, "dtype": dtype}
        self.num_levels = len(in_widths)
        self.pretrained = backbone
        self.scratch = make_scratch(in_widths, features, **kw)
        # attribute order is the state-dict order of the official files
        if stem_transpose is not None:
            self.scratch.stem_transpose = stem_transpose
        self.scratch.refinenet1 = FeatureFusionBlockCustom(features, **kw)
        self.scratch.refinenet2 = FeatureFusionBlockCustom(features, **kw)
        self.scratch.refinenet3 = FeatureFusionBlockCustom(features, size=refinenet3_size, **kw)
        if self.num_levels == 4:
            self.scratch.refinenet4 = FeatureFusionBlockCustom(features, **kw)
        self.scratch.output_conv = make_depth_head(
            head_features_1 or features, head_features_2, align_corners=True, **kw
        )

    @classmethod
    def for_spec(
        cls, backbone: nn.Module, spec: VariantSpec, *, device=None, dtype=None, **kwargs
    ) -> DPTDepthModel:
        """The DPT of a registry variant: widths, decoder width and head sizes from ``spec``;
        ``kwargs`` adds the rest (LeViT's ``stem_transpose``)."""
        return cls(
            backbone,
            spec.in_widths,
            features=spec.features,
            head_features_1=spec.head_features[0],
            head_features_2=spec.head_features[1],
            device=device,
            dtype=dtype,
            **kwargs,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised image -> ``(B, H, W)`` relative inverse depth."""
        layers = self.pretrained(x)
        scratch = self.scratch
        fast = fastpath.enabled()
        # fast path memory formats, measured per level: the convs of levels 2-4 (wide weights,
        # small maps) run fastest NCHW, refinenet1 and the head (256-128-32 channels on maps of
        # H/4 and up) channels-last; no-ops when the maps are already so
        layer_1_rn = channels_last(scratch.layer1_rn(layers[0]))
        layer_2_rn = _nchw(scratch.layer2_rn(layers[1]), fast)
        layer_3_rn = scratch.layer3_rn(_nchw(layers[2], fast))
        if self.num_levels == 4:
            layer_4_rn = scratch.layer4_rn(_nchw(layers[3], fast))
            path_4 = scratch.refinenet4(layer_4_rn, size=layer_3_rn.shape[2:])
            path_3 = scratch.refinenet3(path_4, layer_3_rn, size=layer_2_rn.shape[2:])
        else:
            path_3 = scratch.refinenet3(layer_3_rn, size=layer_2_rn.shape[2:])
        path_2 = scratch.refinenet2(path_3, layer_2_rn, size=layer_1_rn.shape[2:])
        path_1 = scratch.refinenet1(channels_last(path_2), layer_1_rn)
        if getattr(scratch, "stem_transpose", None) is not None:
            path_1 = scratch.stem_transpose(path_1)
        return scratch.output_conv(path_1).squeeze(1)
