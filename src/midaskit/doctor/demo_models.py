"""Tiny convnets for ``midaskit demo`` and the doctor's tests (a few thousand parameters).

Use them as ``--model`` targets: ``midaskit doctor f.pt --model
midaskit.doctor.demo_models:tiny_convnet_gn``. Each builder takes ``device``/``dtype`` so it can
be built on ``meta``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyNet", "tiny_convnet", "tiny_convnet_gn", "tiny_convnet_rgbd"]


def _norm(kind: str, channels: int, **kw) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, **kw)
    if kind == "group":
        return nn.GroupNorm(4, channels, **kw)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True, **kw)
    raise ValueError(f"unknown norm {kind!r}; use batch, group or instance")


class TinyNet(nn.Module):
    """conv -> norm -> ReLU, twice, global pooling and a linear head.

    Args:
        in_channels: channels of the input image.
        norm: ``"batch"``, ``"group"`` or ``"instance"``.
        num_classes: outputs of the head.
    """

    def __init__(self, in_channels: int = 3, norm: str = "batch", num_classes: int = 10, *,
                 device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, **kw)
        self.norm1 = _norm(norm, 8, **kw)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, **kw)
        self.norm2 = _norm(norm, 16, **kw)
        self.head = nn.Linear(16, num_classes, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, num_classes)``."""
        x = torch.relu(self.norm1(self.conv1(x)))
        x = torch.relu(self.norm2(self.conv2(x)))  # (B, 16, H/2, W/2)
        return self.head(x.mean(dim=(2, 3)))  # (B, 16) -> (B, num_classes)


def tiny_convnet(*, device=None, dtype=None) -> TinyNet:
    """RGB input, BatchNorm."""
    return TinyNet(3, "batch", device=device, dtype=dtype)


def tiny_convnet_gn(*, device=None, dtype=None) -> TinyNet:
    """RGB input, GroupNorm."""
    return TinyNet(3, "group", device=device, dtype=dtype)


def tiny_convnet_rgbd(*, device=None, dtype=None) -> TinyNet:
    """RGB-D (4-channel) input, BatchNorm."""
    return TinyNet(4, "batch", device=device, dtype=dtype)
