"""Vision Transformer backbone of DPT (MiDaS v3.0): ``dpt_large_384`` (ViT-L/16 at 384).

Paper: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale" (ICLR 2021); Ranftl et al., "Vision Transformers for Dense Prediction" (ICCV 2021).
Official source: isl-org/MiDaS ``midas/backbones/vit.py`` and ``midas/backbones/utils.py`` on timm
0.6.12 ``timm/models/vision_transformer.py``.

Checkpoint layout reproduced: ``pretrained.model.{cls_token, pos_embed, patch_embed.proj,
blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head}`` followed by
``pretrained.act_postprocess{1..4}``. The final ``norm`` and the classifier ``head`` are kept so
the official files load, but never run: the hooks fire before them.

The transformer here is shared with the hybrid backbone (``hybrid.py``), which swaps the patch
embedding for a ResNet stem and takes its first two levels from the ResNet stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedInputSizeError
from .. import fastpath, kernels
from ..dpt import DPTDepthModel
from ..layers import Mlp
from ..reassemble import make_act_postprocess, reassemble
from ..symbolic import tracing

if TYPE_CHECKING:  # pragma: no cover
    from ...variants import VariantSpec

__all__ = [
    "ViTConfig",
    "resize_pos_embed",
    "Attention",
    "Block",
    "PatchEmbed",
    "VisionTransformer",
    "DPTViTBackbone",
    "build_dpt_large_384",
]


@dataclass(frozen=True)
class ViTConfig:
    """Size of a ViT as in timm's ``VisionTransformer``.

    Attributes:
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads.
        img_size: native (square) input side; the stored ``pos_embed`` covers its grid.
        patch_size: pixels per token side (the conv patch, or the hybrid stem's total stride).
        mlp_ratio: MLP hidden width over ``embed_dim``.
        num_classes: outputs of the unused classifier ``head``.
    """

    embed_dim: int
    depth: int
    num_heads: int
    img_size: int = 384
    patch_size: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000

    @property
    def grid(self) -> int:
        """Tokens per side at the native size."""
        return self.img_size // self.patch_size


VIT_LARGE_16_384 = ViTConfig(embed_dim=1024, depth=24, num_heads=16)

# the official ``timm.models.vision_transformer`` default: LayerNorm(eps=1e-6)
LAYER_NORM_EPS = 1e-6


# ---- helpers ----------------------------------------------------------------------------------

def resize_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resample a square position embedding to a ``(gh, gw)`` token grid.

    As the official ``_resize_pos_embed``: the prefix (class) tokens are kept, the grid part is
    resized bilinearly with ``align_corners=False``. At the stored grid this is the identity.

    Args:
        pos_embed: ``(1, num_prefix_tokens + g * g, C)``.
        grid: target ``(gh, gw)``.

    Returns:
        ``(1, num_prefix_tokens + gh * gw, C)``.
    """
    gh, gw = grid
    prefix, posemb_grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
    old = int(math.sqrt(posemb_grid.shape[0]))
    posemb_grid = posemb_grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)  # (1, C, g, g)
    posemb_grid = F.interpolate(posemb_grid, size=(gh, gw), mode="bilinear", align_corners=False)
    posemb_grid = posemb_grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)  # (1, gh*gw, C)
    return torch.cat((prefix, posemb_grid), dim=1)


# ---- layers -----------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True, **kw)
        self.proj = nn.Linear(dim, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = kernels.linear(x, self.qkv.weight, self.qkv.bias)  # (B, N, 3C), still fused
        qkv = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, C / heads)
        if fastpath.enabled():
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, heads, N, N)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return kernels.linear(x, self.proj.weight, self.proj.bias)


class Block(nn.Module):
    """Pre-norm transformer block (no layer scale, no drop path at inference)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, **kw)
        self.attn = Attention(dim, num_heads, **kw)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, **kw)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv: image -> token map.

    ``forward`` returns the token map ``(B, C, H // p, W // p)`` and no CNN stage outputs (the
    hybrid embedding returns its ResNet stages there). Like the official conv, pixels beyond the
    last whole patch are dropped.
    """

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3, *, device=None,
                 dtype=None):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, device=device,
                              dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        if h < self.patch_size or w < self.patch_size:
            raise UnsupportedInputSizeError(
                f"input {h}x{w} is smaller than one {self.patch_size}x{self.patch_size} patch; "
                f"ViT runs at any size of at least {self.patch_size} pixels a side (multiples of "
                "32 as the official preprocessing gives them)"
            )
        return self.proj(x), []


class VisionTransformer(nn.Module):
    """timm's ``VisionTransformer`` (class token, learned absolute position embedding).

    Args:
        cfg: sizes.
        patch_embed: the embedding module; a :class:`PatchEmbed` by default. It must return
            ``(token_map (B, C, gh, gw), stage_outputs)``.
    """

    def __init__(self, cfg: ViTConfig, patch_embed: nn.Module | None = None, *, device=None,
                 dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        dim = cfg.embed_dim
        self.embed_dim = dim
        self.num_prefix_tokens = 1
        self.native_grid = (cfg.grid, cfg.grid)
        # submodule before parameters as in timm; the state dict lists parameters first anyway
        if patch_embed is None:
            patch_embed = PatchEmbed(cfg.patch_size, dim, **kw)
        self.patch_embed = patch_embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim, **kw))
        # trunc_normal_ (not randn) so a meta build stays cheap: randn on meta imports dynamo
        self.pos_embed = nn.Parameter(torch.empty(1, cfg.grid**2 + 1, dim, **kw))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(
            *[Block(dim, cfg.num_heads, cfg.mlp_ratio, **kw) for _ in range(cfg.depth)]
        )
        # kept for the checkpoint layout; the depth output never depends on them
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, **kw)
        self.head = nn.Linear(dim, cfg.num_classes, **kw)

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding ``(1, 1 + gh * gw, C)`` for a token grid (resized when not native).

        Computed from the parameter on every call, so it is never stale after new weights load.
        """
        if not tracing() and tuple(grid) == self.native_grid:
            return self.pos_embed  # resize_pos_embed is the exact identity here
        return resize_pos_embed(self.pos_embed, grid, self.num_prefix_tokens)

    def tokens(self, token_map: torch.Tensor) -> torch.Tensor:
        """Token map ``(B, C, gh, gw)`` -> sequence ``(B, 1 + gh * gw, C)`` with class token and
        position embedding added (the official ``forward_flex`` before the blocks)."""
        B, _, gh, gw = token_map.shape
        x = token_map.flatten(2).transpose(1, 2)  # (B, gh*gw, C)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)  # (B, 1 + gh*gw, C)
        return x + self.pos_embed_for((gh, gw))

    def forward_blocks(self, x: torch.Tensor, hooks: Sequence[int]) -> list[torch.Tensor]:
        """Run the blocks up to the last hook; return the output of block ``hooks[i]`` for each i.

        Blocks after the last hook, ``norm`` and ``head`` cannot affect the hooked outputs and are
        skipped.
        """
        wanted = set(hooks)
        outputs: dict[int, torch.Tensor] = {}
        for index in range(max(hooks) + 1):
            x = self.blocks[index](x)
            if index in wanted:
                outputs[index] = x
        return [outputs[h] for h in hooks]


# ---- the DPT backbone -------------------------------------------------------------------------

class DPTViTBackbone(nn.Module):
    """``pretrained`` of a ViT-based DPT: the transformer and the reassemble ``act_postprocess``.

    Levels listed in ``token_levels`` come from transformer block ``hooks[level - 1]`` through
    ``act_postprocess{level}``; the other levels (the hybrid's 1 and 2) are the embedding's CNN
    stage ``level - 1`` output, unchanged, as in the official ``_make_vit_b_rn50_backbone``.

    Args:
        model: the transformer; becomes ``pretrained.model``.
        hooks: four indices, one per level.
        out_widths: channels of each level's output (``in_widths`` of the decoder).
        readout: how the class token is used (``"project"`` in every official DPT).
        token_levels: levels made from transformer tokens.
    """

    def __init__(
        self,
        model: VisionTransformer,
        hooks: Sequence[int],
        out_widths: Sequence[int],
        *,
        readout: str = "project",
        token_levels: Sequence[int] = (1, 2, 3, 4),
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(hooks) != 4 or len(out_widths) != 4:
            raise ValueError("a ViT DPT backbone has exactly 4 hooks and 4 output widths")
        self.model = model
        self.hooks = tuple(hooks)
        self.token_levels = tuple(token_levels)
        for level in self.token_levels:
            post = make_act_postprocess(
                level, model.embed_dim, out_widths[level - 1], readout=readout,
                start_index=model.num_prefix_tokens, device=device, dtype=dtype,
            )
            setattr(self, f"act_postprocess{level}", post)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> four feature maps, finest first (strides 4, 8, 16, 32)."""
        token_map, stages = self.model.patch_embed(x)  # (B, C, gh, gw), CNN stage outputs
        grid = (token_map.shape[2], token_map.shape[3])
        tokens = self.model.tokens(token_map)  # (B, 1 + gh*gw, C)
        hooked = self.model.forward_blocks(
            tokens, [self.hooks[level - 1] for level in self.token_levels]
        )
        by_level = dict(zip(self.token_levels, hooked, strict=True))
        features = []
        for level in range(1, 5):
            if level in by_level:
                post = getattr(self, f"act_postprocess{level}")
                features.append(reassemble(post, by_level[level], grid))
            else:
                features.append(stages[level - 1])
        return features


# ---- builders ---------------------------------------------------------------------------------

def build_dpt_large_384(spec: VariantSpec, *, device=None, dtype=None) -> nn.Module:
    """``dpt_large_384``: DPT on ViT-L/16 at 384 (hooks 5, 11, 17, 23, ``project`` readout)."""
    kw = {"device": device, "dtype": dtype}
    backbone = DPTViTBackbone(
        VisionTransformer(VIT_LARGE_16_384, **kw), spec.hooks, spec.in_widths, **kw
    )
    return DPTDepthModel.for_spec(backbone, spec, **kw)
