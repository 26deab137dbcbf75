"""MiDaS v2.1 nets (MidasNet, MidasNet_small) beyond the reference test: non-square and
non-native sizes, the size check, TF "SAME" padding, no mutation of the input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from midaskit.errors import UnsupportedInputSizeError
from midaskit.models.backbones.efficientnet import Conv2dSame, same_padding
from midaskit.models.backbones.resnext import ResNeXtBackbone, ResNeXtDims
from midaskit.models.midas_net import MidasNet
from midaskit.variants import build_model

TINY_RESNEXT = ResNeXtDims(
    depths=(1, 1, 2, 1), planes=(8, 16, 32, 64), groups=4, width_per_group=16, stem_width=8
)


def _randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so a skipped or misplaced BN changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(1.0 + 0.25 * torch.rand(n, generator=g))
            m.weight.data.copy_(1.0 + 0.1 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.05 * torch.randn(n, generator=g))


@pytest.fixture(scope="module")
def tiny_midas_net() -> MidasNet:
    torch.manual_seed(0)
    backbone = ResNeXtBackbone(TINY_RESNEXT)
    model = MidasNet(backbone, TINY_RESNEXT.out_widths, features=16, head_features=(16, 8))
    _randomize_batchnorm(model)
    return model.eval()


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("midas_v21_small_256")
    _randomize_batchnorm(model)
    return model.eval()


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (256, 3, 2, (0, 1)),  # even sides: the extra row goes to the bottom/right
        (256, 5, 2, (1, 2)),
        (255, 3, 2, (1, 1)),
        (255, 5, 2, (2, 2)),
        (7, 3, 1, (1, 1)),
        (8, 5, 1, (2, 2)),
    ],
)
def test_tf_same_padding(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_conv2d_same_pads_from_each_input_size():
    torch.manual_seed(0)
    conv = Conv2dSame(4, 4, 5, stride=2, groups=4).eval()
    for h, w in [(8, 8), (7, 9), (8, 8), (10, 5)]:  # no padding cached from an earlier size
        x = torch.randn(1, 4, h, w)
        (t, b), (le, r) = same_padding(h, 5, 2), same_padding(w, 5, 2)
        expected = F.conv2d(F.pad(x, (le, r, t, b)), conv.weight, None, 2, 0, 1, 4)
        out = conv(x)
        assert out.shape[-2:] == (-(h // -2), -(w // -2))
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_small_model_layout_of_the_backbone_strides(small_model):
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        feats = small_model.pretrained(x)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (32, 16, 24),
        (48, 8, 12),
        (136, 4, 6),
        (384, 2, 3),
    ]


@pytest.mark.parametrize("model_name", ["tiny_midas_net", "small_model"])
def test_non_square_input_gives_full_size_depth(model_name, request):
    model = request.getfixturevalue(model_name)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)
    x_before = x.clone()
    with torch.inference_mode():
        out = model(x)
        single = model(x[1:])
    assert out.shape == (2, 64, 96)
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert out.std() > 0
    torch.testing.assert_close(out[1:], single, rtol=1e-4, atol=1e-5)  # batch items independent
    assert torch.equal(x, x_before)  # the in-place ReLUs never reach the caller's tensor


@pytest.mark.parametrize("model_name", ["tiny_midas_net", "small_model"])
@pytest.mark.parametrize("hw", [(64, 80), (48, 64), (100, 96)])
def test_sizes_not_multiple_of_32_are_refused(model_name, hw, request):
    model = request.getfixturevalue(model_name)
    with pytest.raises(UnsupportedInputSizeError, match="multiples of 32"):
        model(torch.zeros(1, 3, *hw))


def test_tiny_resnext_stage_shapes():
    backbone = ResNeXtBackbone(TINY_RESNEXT).eval()
    with torch.inference_mode():
        feats = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (32, 16, 24),
        (64, 8, 12),
        (128, 4, 6),
        (256, 2, 3),
    ]
    # grouped 3x3 with the stride on it, as in torchvision's Bottleneck
    conv2 = backbone.layer2[0].conv2
    assert (conv2.groups, conv2.stride, conv2.in_channels) == (4, (2, 2), 16)
