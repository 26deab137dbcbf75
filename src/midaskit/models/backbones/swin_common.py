"""Pieces shared by the Swin (v1) and SwinV2 DPT backbones: window partition/reverse, the
relative-position index and shifted-window mask rules, patch embedding, the block and model
skeletons both versions fill in, one stage, and the DPT wrapper that turns hooked block outputs
into feature maps.

Official source: isl-org/MiDaS ``midas/backbones/swin_common.py`` (``_make_swin_backbone``,
``forward_swin``) on timm 0.6.12 ``swin_transformer.py`` / ``swin_transformer_v2.py``. The wrapper
reproduces the official checkpoint layout ``pretrained.model.*``: the official
``act_postprocess{1..4}`` (transpose + unflatten) have no weights, so they are plain reshapes here.
Tokens travel between blocks as ``(B, H, W, C)`` maps, the official ``(B, H*W, C)`` viewed 2-D.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UnsupportedInputSizeError

__all__ = [
    "SwinDims",
    "window_partition",
    "window_reverse",
    "window_and_shift",
    "relative_position_index",
    "shifted_window_mask",
    "window_attention_bias",
    "window_sdpa",
    "windowed_attention",
    "merge_patches",
    "PatchEmbed",
    "ShiftedWindowBlock",
    "SwinStage",
    "SwinTransformerBase",
    "SwinDPTBackbone",
]


@dataclass(frozen=True)
class SwinDims:
    """Size-specific dimensions of one Swin / SwinV2 backbone (timm's model kwargs).

    Attributes:
        img_size: the native square input size; the patch grid is ``img_size // patch_size``.
        embed_dim: channels of stage 0; stage ``i`` has ``embed_dim * 2**i``.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: the target window side (clipped to the grid in small stages).
        pretrained_window_sizes: SwinV2 only, the window each stage was pre-trained with; 0 means
            "the window itself" (scales the continuous position-bias coordinates).
    """

    img_size: int
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    patch_size: int = 4
    mlp_ratio: float = 4.0
    pretrained_window_sizes: tuple[int, ...] = (0, 0, 0, 0)

    def resolution(self, stage: int) -> tuple[int, int]:
        """Token grid ``(H, W)`` of ``stage`` at the native input size."""
        side = self.img_size // self.patch_size // 2**stage
        return (side, side)

    def dim(self, stage: int) -> int:
        """Channels of ``stage`` (doubled by each patch merging)."""
        return self.embed_dim * 2**stage


# ---- helpers ----------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, wh * ww, C)``, windows in row-major order per image."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C)  # (B, nh, wh, nw, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)  # (B*nh*nw, wh*ww, C)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], H: int, W: int) -> torch.Tensor:
    """``(B * nW, wh * ww, C)`` -> ``(B, H, W, C)``: the inverse of :func:`window_partition`."""
    wh, ww = window
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)  # (B, nh, nw, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)  # (B, H, W, C)


def window_and_shift(
    resolution: tuple[int, int], window: int, shift: int, *, per_axis: bool
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The window and shift a block really uses on a ``resolution`` grid (timm's clipping rule).

    A grid no larger than the window is one window, unshifted. Swin v1 decides on
    ``min(resolution)`` for both axes, SwinV2 per axis (``per_axis=True``); on the square
    grids the official models run on, both rules agree.
    """
    if not per_axis:
        side = min(resolution)
        if side <= window:
            return (side, side), (0, 0)
        return (window, window), (shift, shift)
    win = tuple(r if r <= window else window for r in resolution)
    sft = tuple(0 if r <= w else shift for r, w in zip(resolution, win, strict=True))
    return win, sft  # type: ignore[return-value]


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)  # a normal tensor even when first asked for under inference_mode
def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """``(N, N)`` int64 index into a ``(2*wh-1) * (2*ww-1)`` bias table, ``N = wh * ww``.

    Cached and shared by every caller: read-only (register a copy as a buffer).
    """
    wh, ww = window
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # (N,)
    dy = ys[:, None] - ys[None, :] + (wh - 1)  # (N, N) in [0, 2*wh-2]
    dx = xs[:, None] - xs[None, :] + (ww - 1)
    return dy * (2 * ww - 1) + dx


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)
def shifted_window_mask(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """``(nW, N, N)`` float32 mask (0 / -100) of a shifted block: after the cyclic shift, tokens
    from different image regions share a window and must not attend to each other.
    Cached and shared: read-only."""
    (H, W), (wh, ww), (sh, sw) = resolution, window, shift

    def region(n: int, win: int, sft: int) -> torch.Tensor:
        # the official slices (0, -win), (-win, -shift), (-shift, None) label 0, 1, 2
        pos = torch.arange(n)
        return (pos >= n - win).long() + (pos >= n - sft).long()

    label = region(H, wh, sh)[:, None] * 3 + region(W, ww, sw)[None, :]  # (H, W)
    windows = window_partition(label[None, :, :, None], window).squeeze(-1)  # (nW, N)
    differ = windows[:, None, :] != windows[:, :, None]  # (nW, N, N)
    return torch.where(differ, -100.0, 0.0).to(torch.float32)


def window_attention_bias(
    bias: torch.Tensor, mask: torch.Tensor | None, num_windows: int
) -> torch.Tensor:
    """Combine the per-head bias ``(nH, N, N)`` with a shifted-window mask ``(nW, N, N)`` into an
    additive attention mask for ``num_windows = B * nW`` windows (broadcast where possible)."""
    if mask is None:
        return bias.unsqueeze(0)  # (1, nH, N, N)
    nw = mask.shape[0]
    full = mask.to(bias.dtype).unsqueeze(1) + bias.unsqueeze(0)  # (nW, nH, N, N)
    if num_windows != nw:
        # windows are image-major (B, nW): tile the per-window masks over the batch
        full = full.repeat(num_windows // nw, 1, 1, 1)  # (B*nW, nH, N, N)
    return full


def window_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """Fast-path window attention: ``softmax(q k^T * scale + bias + mask) v`` through
    ``F.scaled_dot_product_attention``, returned as ``(B*nW, N, nH*hd)`` tokens.

    The same math as :func:`window_attention_bias` plus the explicit product, without tiling the
    ``(nW, nH, N, N)`` bias-plus-mask over the batch: the windows of each image attend with one
    shared mask (at batch 4 the tiled mask of SwinV2-L's first stage alone is 510 MB).

    Args:
        q, k, v: ``(B*nW, nH, N, hd)``, windows image-major.
        bias: ``(nH, N, N)`` relative-position bias.
        mask: ``(nW, N, N)`` shifted-window mask, or None.
        scale: the softmax scale (None: ``hd ** -0.5``).
    """
    num_windows, heads, n, hd = q.shape
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), scale=scale)
        return out.transpose(1, 2).reshape(num_windows, n, heads * hd)
    nw = mask.shape[0]
    full = mask.to(bias.dtype).unsqueeze(1) + bias.unsqueeze(0)  # (nW, nH, N, N)
    if num_windows == nw:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=scale)
        return out.transpose(1, 2).reshape(num_windows, n, heads * hd)
    out = q.new_empty(num_windows, n, heads, hd)
    for i in range(0, num_windows, nw):  # one image at a time
        part = F.scaled_dot_product_attention(
            q[i : i + nw], k[i : i + nw], v[i : i + nw], attn_mask=full, scale=scale
        )  # (nW, nH, N, hd)
        out[i : i + nw] = part.transpose(1, 2)
    return out.view(num_windows, n, heads * hd)


def windowed_attention(
    x: torch.Tensor,
    attn: nn.Module,
    window: tuple[int, int],
    shift: tuple[int, int],
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """(Shifted-)window self-attention of a ``(B, H, W, C)`` map; returns ``(B, H, W, C)``."""
    _, H, W, _ = x.shape
    shifted = any(shift)
    if shifted:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = window_partition(x, window)  # (B*nW, N, C)
    windows = attn(windows, mask)  # (B*nW, N, C)
    x = window_reverse(windows, window, H, W)  # (B, H, W, C)
    if shifted:
        x = torch.roll(x, shifts=shift, dims=(1, 2))
    return x


# ---- layers -----------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv embedding + LayerNorm -> ``(B, H/p, W/p, C)``."""

    def __init__(self, patch_size: int, embed_dim: int, *, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size, **kw)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)  # (B, C, h, w) -> (B, h, w, C)
        return self.norm(x)


class ShiftedWindowBlock(nn.Module):
    """What the Swin and SwinV2 blocks share: the window and shift of a block at its stage's
    resolution, and the shifted-window ``attn_mask`` buffer when it shifts.

    Subclasses add their layers after calling this ``__init__``: the official files list a
    block's ``attn_mask`` before its children.
    """

    def __init__(
        self,
        resolution: tuple[int, int],
        window_size: int,
        shift_size: int,
        *,
        per_axis: bool,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.resolution = resolution
        self.window, self.shift = window_and_shift(
            resolution, window_size, shift_size, per_axis=per_axis
        )
        if any(self.shift):
            mask = shifted_window_mask(resolution, self.window, self.shift)
            self.register_buffer("attn_mask", mask.to(device=device, dtype=dtype, copy=True))
        else:
            self.attn_mask = None

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        if self.attn_mask is None:
            return {}
        return {"attn_mask": shifted_window_mask(self.resolution, self.window, self.shift)}


class SwinStage(nn.Module):
    """One stage (timm's ``BasicLayer``): ``blocks``, then ``downsample`` (patch merging) at the
    END of the stage in the 0.6.12 layout; the last stage has none."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class SwinTransformerBase(nn.Module):
    """The timm 0.6.12 layout both versions share: ``patch_embed``, ``layers`` (stages of blocks
    that alternate unshifted and half-window-shifted, each stage but the last ending in a patch
    merging), ``norm``, ``head``.

    ``norm`` and ``head`` (the ImageNet classifier) are never run by the DPT; they are here so the
    official files load strictly.

    Args:
        dims: the sizes.
        make_block: ``(stage, shift_size, device=, dtype=)`` -> that version's block.
        make_merging: ``(dim, device=, dtype=)`` -> that version's patch merging.
        num_classes: outputs of ``head``.
    """

    def __init__(
        self,
        dims: SwinDims,
        make_block: Callable[..., nn.Module],
        make_merging: Callable[..., nn.Module],
        num_classes: int = 1000,
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.img_size = dims.img_size
        self.patch_embed = PatchEmbed(dims.patch_size, dims.embed_dim, **kw)
        stages = []
        for i, depth in enumerate(dims.depths):
            shifts = [0 if j % 2 == 0 else dims.window_size // 2 for j in range(depth)]
            last = i == len(dims.depths) - 1
            stages.append(SwinStage(
                [make_block(i, shift, **kw) for shift in shifts],
                None if last else make_merging(dims.dim(i), **kw),
            ))
        self.layers = nn.ModuleList(stages)
        num_features = dims.dim(len(dims.depths) - 1)
        self.norm = nn.LayerNorm(num_features, eps=1e-5, **kw)
        self.head = nn.Linear(num_features, num_classes, **kw)


def merge_patches(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, H/2, W/2, 4C)``, channel groups in timm's order
    ``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]``."""
    B, H, W, C = x.shape
    x = x.view(B, H // 2, 2, W // 2, 2, C)  # (B, h, row parity, w, col parity, C)
    return x.permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)


# ---- backbone ---------------------------------------------------------------------------------


class SwinDPTBackbone(nn.Module):
    """``pretrained`` of the Swin/SwinV2 DPTs: runs ``model`` and returns the hooked block outputs
    as ``(B, C_i, H/4/2**i, W/4/2**i)`` maps, finest first.

    Hook ``i`` takes the output of ``model.layers[i].blocks[hooks[i]]``, before the stage's patch
    merging (the official forward hooks on those blocks). Blocks after the last hook and the final
    ``norm``/``head`` cannot change the depth output and are skipped; their weights still load.
    """

    def __init__(self, model: nn.Module, hooks: Sequence[int], *, variant: str):
        super().__init__()
        if len(hooks) != len(model.layers):
            raise ValueError(f"need one hook per stage ({len(model.layers)}), got {list(hooks)}")
        for i, (hook, stage) in enumerate(zip(hooks, model.layers, strict=True)):
            if not 0 <= hook < len(stage.blocks):
                raise ValueError(f"hook {hook} of stage {i} is outside [0, {len(stage.blocks)})")
        self.model = model
        self.hooks = tuple(hooks)
        self.variant = variant

    def _check_size(self, x: torch.Tensor) -> None:
        size = self.model.img_size
        if x.ndim != 4 or tuple(x.shape[-2:]) != (size, size):
            raise UnsupportedInputSizeError(
                f"{self.variant} runs only at its native {size}x{size} input (its shifted-window "
                f"masks and window layout are fixed to that size, as in the official model); "
                f"got input of shape {tuple(x.shape)}. Resize the image to {size}x{size} "
                "(keep_aspect_ratio=False), as the official transform does."
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, S, S)`` at the native size ``S`` -> four ``(B, C_i, H_i, W_i)`` maps."""
        self._check_size(x)
        x = self.model.patch_embed(x)  # (B, S/4, S/4, C)
        features = []
        last = len(self.model.layers) - 1
        for i, stage in enumerate(self.model.layers):
            hook = self.hooks[i]
            for block in stage.blocks[: hook + 1]:
                x = block(x)
            # the official hook output (B, H*W, C) -> transpose(1, 2) -> unflatten(H, W)
            features.append(x.permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)
            if i == last:
                break
            for block in stage.blocks[hook + 1 :]:
                x = block(x)
            x = stage.downsample(x)  # (B, H/2, W/2, 2C)
        return features

