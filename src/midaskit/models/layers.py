"""Small layers shared by several backbones (state-dict names as in timm)."""

from __future__ import annotations

import torch
from torch import nn

from . import kernels

__all__ = ["Mlp", "FourLayerBackbone"]


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with exact (erf) GELU, as timm's ``Mlp`` (ViT, BEiT, Swin)."""

    def __init__(self, dim: int, hidden: int, *, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the GELU is fused into fc1 where the fast-path kernel can
        x = kernels.linear(x, self.fc1.weight, self.fc1.bias, gelu=True)
        return kernels.linear(x, self.fc2.weight, self.fc2.bias)


class FourLayerBackbone(nn.Module):
    """A CNN backbone of MidasNet / MidasNet_small: ``layer1`` .. ``layer4`` (set by the
    subclass) run in sequence, and all four outputs feed the decoder."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> four maps ``(B, C_i, H / s_i, W / s_i)``, finest first."""
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features
