"""Winograd F(4x4, 3x3) equals the direct 3x3 convolution, and the decoder's convolutions take
it on the fast path only where it is meant to (wide, large enough, weights seen before).

Speed is measured by ``bench/bench_infer.py``, never here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from midaskit.models import fastpath, kernels, winograd
from midaskit.models.blocks import Conv3x3

# the transforms' rounding: about 3e-5 of the output's std at 256 channels (direct: 1e-5)
TOLERANCE = 2e-4


def _err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).abs().max() / ref.std())


@pytest.mark.parametrize(
    ("batch", "channels", "size", "channels_last", "bias"),
    [
        (1, (16, 8), (12, 12), False, True),  # whole tiles
        (2, (16, 8), (13, 10), True, True),  # partial tiles at the bottom and right, a batch
        (1, (8, 24), (5, 22), False, False),  # no bias, more outputs than inputs
        (3, (32, 16), (40, 9), True, False),  # several row bands (band size shrunk below)
    ],
)
def test_winograd_equals_direct_convolution(monkeypatch, batch, channels, size, channels_last,
                                            bias):
    monkeypatch.setattr(winograd, "_BAND_ELEMENTS", 36 * 3 * 32 * 4)  # bands of a few tile rows
    gen = torch.Generator().manual_seed(0)
    c_in, c_out = channels
    x = torch.randn(batch, c_in, *size, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen) / (9 * c_in) ** 0.5
    b = torch.randn(c_out, generator=gen) if bias else None
    ref = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    out = winograd.conv3x3(x, winograd.transform_weight(weight), b)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert _err(out, ref) < TOLERANCE
    direct = F.conv2d(x, weight, b, padding=1)
    assert _err(direct, ref) < TOLERANCE / 4  # the direct float32 conv as a yardstick


def test_worthwhile_only_for_wide_convolutions_on_large_maps():
    assert winograd.worthwhile(torch.Size((1, 256, 96, 96)), torch.Size((256, 256, 3, 3)))
    assert winograd.worthwhile(torch.Size((1, 1024, 24, 24)), torch.Size((256, 1024, 3, 3)))
    assert not winograd.worthwhile(torch.Size((1, 256, 24, 24)), torch.Size((256, 256, 3, 3)))
    assert not winograd.worthwhile(torch.Size((1, 128, 96, 96)), torch.Size((128, 128, 3, 3)))
    assert not winograd.worthwhile(torch.Size((1, 256, 96, 96)), torch.Size((128, 256, 3, 3)))


def _decoder_conv() -> tuple[Conv3x3, torch.Tensor]:
    torch.manual_seed(0)
    conv = Conv3x3(256, 256).eval()
    x = torch.randn(1, 256, 32, 32)
    assert winograd.worthwhile(x.shape, conv.weight.shape)
    return conv, x


def test_conv3x3_takes_winograd_from_the_second_use_and_follows_weight_changes(monkeypatch):
    conv, x = _decoder_conv()
    real = winograd.conv3x3
    calls = []

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(winograd, "conv3x3", counted)
    with torch.inference_mode():
        first = conv(x)
        assert calls == []  # first use: the direct convolution, nothing cached yet
        second = conv(x)
        assert calls == [1]
        ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert torch.equal(first, ref)
    assert _err(second, ref.double()) < TOLERANCE
    with torch.no_grad():
        conv.weight.mul_(-1)  # in place: the version counter moves, the transform is redone
    with torch.inference_mode():
        conv(x)
        changed = conv(x)
        ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert len(calls) == 2  # a changed weight counts as new: direct once, then transformed anew
    assert _err(changed, ref.double()) < TOLERANCE


def test_conv3x3_is_the_plain_conv_off_the_fast_path_or_with_autograd():
    conv, x = _decoder_conv()
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    with torch.inference_mode(), fastpath.plain_eager():
        conv(x)
        plain = conv(x)
    assert torch.equal(plain, ref)  # bit-identical: F.conv2d itself
    conv(x)
    with_grad = conv(x)  # grad enabled: the differentiable direct convolution
    assert with_grad.requires_grad and torch.equal(with_grad.detach(), ref)


def test_transformed_weights_go_with_their_conv():
    kernels.clear_caches()
    conv, x = _decoder_conv()
    with torch.inference_mode():
        conv(x)
        conv(x)
    assert len(kernels._derived_weights) == 1
    del conv
    assert not kernels._derived_weights
