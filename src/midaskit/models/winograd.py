"""A 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering F(4x4, 3x3).

Each 4x4 output tile comes from a 6x6 input tile: ``Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` (Lavin and
Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016), with the interpolation
points 0, ±1, ±2 and ∞. Summed over input channels, the element-wise product becomes 36
independent GEMMs of (tiles x C) by (C x K): 36 multiplications per tile and channel pair where a
direct convolution needs 144. The transforms are small GEMMs over the tiles, run on row bands of
tiles so that their working set stays in cache.

Measured on a 2-core AVX-512 CPU, torch 2.13, 2 threads, against oneDNN's direct convolution:
256 -> 256 channels 1.6-1.8x faster on 32x32 to 96x96 maps, 1.5x at 128x128, 1.7-1.8x for
512/1024 -> 256 at 24x24 to 48x48; 1.1x or slower with 128 channels or fewer, or on maps of
24x24 and smaller with 256 channels (see :func:`worthwhile`). The result differs from the direct
convolution by about 3e-5 of the output's std (direct float32: about 1e-5), the price of the
transforms' larger intermediate values.
"""

from __future__ import annotations

import torch

__all__ = ["worthwhile", "transform_weight", "conv3x3"]

# F(4x4, 3x3) at the points 0, 1, -1, 2, -2, ∞ (input transform Bᵀ, filter G, output Aᵀ)
_BT = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float32,
)
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_AT = torch.tensor(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=torch.float32,
)

# measured (module docstring): wide convolutions with enough tiles times input channels
_MIN_CHANNELS = 256
_MIN_TILE_CHANNELS = 64 * 256  # a 32x32 map at 256 channels
# elements of one band's (36, tiles, channels) intermediate: 8 MB, which stays in cache
_BAND_ELEMENTS = 1 << 21


def worthwhile(x_shape: torch.Size, weight_shape: torch.Size) -> bool:
    """Whether F(4x4, 3x3) beats the direct convolution for these shapes (measured)."""
    out_channels, in_channels = weight_shape[0], weight_shape[1]
    tiles = x_shape[0] * ((x_shape[2] + 3) // 4) * ((x_shape[3] + 3) // 4)
    return (
        in_channels >= _MIN_CHANNELS
        and out_channels >= _MIN_CHANNELS
        and tiles * in_channels >= _MIN_TILE_CHANNELS
    )


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(K, C, 3, 3)`` filters -> ``(36, C, K)`` transformed filters ``G g Gᵀ`` (computed in
    float64, stored in the weight's dtype)."""
    out_channels, in_channels = weight.shape[:2]
    g = _G.to(weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.double(), g)
    return u.reshape(36, in_channels, out_channels).to(weight.dtype).contiguous()


def conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` from ``u = transform_weight(weight)``.

    Args:
        x: ``(B, C, H, W)``, any memory format.
        u: ``(36, C, K)``.
        bias: ``(K,)`` or None.

    Returns:
        ``(B, K, H, W)`` in ``x``'s memory format (channels-last or contiguous).
    """
    B, C, H, W = x.shape
    K = u.shape[2]
    bt, at = _BT.to(x.device), _AT.to(x.device)
    nh, nw = (H + 3) // 4, (W + 3) // 4
    # zero padding: 1 on the top/left, up to whole tiles (plus the 1) on the bottom/right
    padded = torch.nn.functional.pad(
        x.permute(0, 2, 3, 1), (0, 0, 1, 4 * nw + 1 - W, 1, 4 * nh + 1 - H)
    )  # (B, 4nh + 2, 4nw + 2, C)
    tiles = padded.unfold(1, 6, 4).unfold(2, 6, 4)  # (B, nh, nw, C, 6, 6), a view
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if channels_last:
        out = x.new_empty(B, 4 * nh, 4 * nw, K)
        bands = out.view(B, nh, 4, nw, 4, K)
        bias_b = bias
    else:
        out = x.new_empty(B, K, 4 * nh, 4 * nw)
        bands = out.view(B, K, nh, 4, nw, 4)
        bias_b = None if bias is None else bias.view(K, 1, 1, 1, 1)
    rows = max(1, _BAND_ELEMENTS // (36 * B * nw * max(C, K)))
    rows = -(-nh // -(-nh // rows))  # the same number of bands, of even heights
    for r0 in range(0, nh, rows):
        r1 = min(nh, r0 + rows)
        p = B * (r1 - r0) * nw
        d = tiles[:, r0:r1].permute(4, 5, 0, 1, 2, 3).reshape(6, 6 * p * C)  # (i, j, P, C)
        v = torch.matmul(bt, (bt @ d).view(6, 6, p * C)).view(36, p, C)  # Bᵀ d B
        m = torch.bmm(v, u)  # (36, P, K): the 36 GEMMs
        y = torch.matmul(at, (at @ m.view(6, 6 * p * K)).view(4, 6, p * K))  # Aᵀ m A
        y = y.view(4, 4, B, r1 - r0, nw, K)  # (r, s, B, band rows, nw, K)
        if channels_last:
            dst, src = bands[:, r0:r1], y.permute(2, 3, 0, 4, 1, 5)
        else:
            dst, src = bands[:, :, r0:r1], y.permute(2, 5, 3, 0, 4, 1)
        if bias_b is None:
            dst.copy_(src)
        else:
            torch.add(src, bias_b, out=dst)
    if channels_last:
        out = out.permute(0, 3, 1, 2)  # (B, K, 4nh, 4nw), channels-last strides
    if out.shape[2] != H or out.shape[3] != W:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        out = out[:, :, :H, :W].contiguous(memory_format=memory_format)
    return out
