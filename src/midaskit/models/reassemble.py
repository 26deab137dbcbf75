"""DPT's reassemble stage for token backbones (ViT, hybrid, BEiT): readout handling, tokens to a
feature map, 1x1 projection and resampling to the level's scale.

State-dict layout of the official ``pretrained.act_postprocess{1..4}``: index ``0`` the readout
(``.0.project.0`` is the Linear 2C -> C of the ``project`` readout), ``1`` a transpose and ``2``
an unflatten (no weights), ``3`` the 1x1 conv, ``4`` the resampler: ConvTranspose 4x4/s4 (level
1), 2x2/s2 (level 2), none (level 3), or a 3x3/s2 conv (level 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fastpath, kernels

__all__ = ["ProjectReadout", "AddReadout", "SliceReadout", "make_act_postprocess", "reassemble"]


class SliceReadout(nn.Module):
    """``ignore`` readout: drop the class token(s)."""

    def __init__(self, start_index: int = 1):
        super().__init__()
        self.start_index = start_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start_index :]


class AddReadout(nn.Module):
    """``add`` readout: add the class token (or mean of class and distillation) to each patch."""

    def __init__(self, start_index: int = 1):
        super().__init__()
        self.start_index = start_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        readout = (x[:, 0] + x[:, 1]) / 2 if self.start_index == 2 else x[:, 0]
        return x[:, self.start_index :] + readout.unsqueeze(1)


class ProjectReadout(nn.Module):
    """``project`` readout (every official DPT): class token joined to each patch, Linear+GELU."""

    def __init__(self, in_features: int, start_index: int = 1, *, device=None, dtype=None):
        super().__init__()
        self.start_index = start_index
        self.project = nn.Sequential(
            nn.Linear(2 * in_features, in_features, device=device, dtype=dtype), nn.GELU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[:, self.start_index :]  # (B, N, C)
        if fastpath.enabled():
            # [patch, cls] @ W^T = patch @ W_p^T + cls @ W_c^T: the class token's half of the
            # Linear runs once per image instead of once per patch, and no (B, N, 2C) concat
            linear = self.project[0]
            c = patches.shape[-1]
            out = kernels.linear(patches, linear.weight[:, :c])  # (B, N, C)
            out += F.linear(x[:, :1], linear.weight[:, c:], linear.bias)  # (B, 1, C) broadcast
            return self.project[1](out)
        readout = x[:, :1].expand_as(patches)
        return self.project(torch.cat((patches, readout), -1))


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def _make_readout(readout: str, vit_features: int, start_index: int, device, dtype) -> nn.Module:
    if readout == "project":
        return ProjectReadout(vit_features, start_index, device=device, dtype=dtype)
    if readout == "add":
        return AddReadout(start_index)
    if readout == "ignore":
        return SliceReadout(start_index)
    raise ValueError(f"readout must be 'ignore', 'add' or 'project', not {readout!r}")


def make_act_postprocess(
    level: int,
    vit_features: int,
    out_features: int,
    *,
    readout: str = "project",
    start_index: int = 1,
    device=None,
    dtype=None,
) -> nn.Sequential:
    """``act_postprocess{level}`` (level 1..4) for a patch-16 token backbone."""
    kw = {"device": device, "dtype": dtype}
    layers: list[nn.Module] = [
        _make_readout(readout, vit_features, start_index, device, dtype),
        _Transpose(),
        nn.Identity(),  # the official nn.Unflatten sits here; reassemble() reshapes instead
        nn.Conv2d(vit_features, out_features, 1, **kw),
    ]
    if level == 1:
        layers.append(nn.ConvTranspose2d(out_features, out_features, 4, stride=4, **kw))
    elif level == 2:
        layers.append(nn.ConvTranspose2d(out_features, out_features, 2, stride=2, **kw))
    elif level == 4:
        layers.append(nn.Conv2d(out_features, out_features, 3, stride=2, padding=1, **kw))
    return nn.Sequential(*layers)


def reassemble(post: nn.Sequential, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens ``(B, N + start, C)`` -> feature map ``(B, C_out, H', W')`` through ``post``.

    ``grid`` is the patch grid ``(h // 16, w // 16)`` of the current input.
    """
    x = post[0](tokens)  # (B, N, C)
    layers = post[3:]
    conv = layers[0]
    if fastpath.enabled() and conv.kernel_size == (1, 1):
        # the 1x1 conv is a Linear on the tokens; its (B, N, C') output viewed as a map is
        # already channels-last, which the resampling conv that follows prefers
        x = kernels.linear(x, conv.weight.flatten(1), conv.bias)  # (B, N, C')
        x = x.view(x.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2)  # (B, C', gh, gw)
        layers = layers[1:]
        if not (layers and isinstance(layers[0], nn.ConvTranspose2d)):
            # measured: the transposed convs are faster channels-last, but the 3x3/s2 conv of
            # level 4 (and layer3_rn after level 3) with their wide weights on a small map are
            # faster NCHW: channels-last input makes them reorder the weights on every call
            x = x.contiguous()
    else:
        x = post[1](x)  # (B, C, N)
        x = x.reshape(x.shape[0], x.shape[1], grid[0], grid[1])  # (B, C, gh, gw)
    for layer in layers:
        x = layer(x)
    return x
