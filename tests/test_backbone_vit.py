"""Tiny-config checks of the ViT and hybrid DPT backbones: non-native and non-square sizes, the
position-embedding resize, "SAME" padding, the attention fast path, no stale state after loading.

The full-size layout and the equivalence with the official output are in ``test_zoo.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from midaskit.errors import UnsupportedInputSizeError
from midaskit.models import fastpath
from midaskit.models.backbones.hybrid import (
    HybridEmbed,
    ResNetConfig,
    ResNetV2,
    StdConv2dSame,
    same_padding,
)
from midaskit.models.backbones.vit import (
    DPTViTBackbone,
    VisionTransformer,
    ViTConfig,
    resize_pos_embed,
)
from midaskit.models.dpt import DPTDepthModel

# a 2-block, width-64 ViT whose stored position embedding covers a 4x4 grid (64 px)
TINY_VIT = ViTConfig(embed_dim=64, depth=2, num_heads=2, img_size=64, num_classes=10)
# a 3-stage ResNetV2 (total stride 16) narrow enough for 8-group GroupNorm
TINY_RESNET = ResNetConfig(layers=(1, 1, 1), channels=(32, 64, 128), stem_chs=16, num_groups=8)
VIT_WIDTHS = (16, 32, 64, 64)
HYBRID_WIDTHS = (32, 64, 64, 64)
SIZES = [(384, 512), (256, 320)]
STRIDES = (4, 8, 16, 32)


def _depth_model(backbone, widths) -> DPTDepthModel:
    return DPTDepthModel(backbone, widths, features=32, head_features_1=32, head_features_2=8)


def tiny_vit_dpt(seed: int = 0) -> DPTDepthModel:
    torch.manual_seed(seed)
    backbone = DPTViTBackbone(VisionTransformer(TINY_VIT), (0, 0, 1, 1), VIT_WIDTHS)
    return _depth_model(backbone, VIT_WIDTHS).eval()


def tiny_hybrid_dpt(seed: int = 0) -> DPTDepthModel:
    torch.manual_seed(seed)
    embed = HybridEmbed(ResNetV2(TINY_RESNET), TINY_VIT.embed_dim)
    model = VisionTransformer(TINY_VIT, embed)
    backbone = DPTViTBackbone(model, (0, 1, 0, 1), HYBRID_WIDTHS, token_levels=(3, 4))
    return _depth_model(backbone, HYBRID_WIDTHS).eval()


# ---- position embedding -----------------------------------------------------------------------

def test_pos_embed_resize_is_the_identity_at_the_native_grid():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 24 * 24, 8)
    assert torch.equal(resize_pos_embed(pos, (24, 24)), pos)


def test_pos_embed_resize_to_a_non_square_grid():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4 * 4, 8)
    out = resize_pos_embed(pos, (6, 8))
    assert out.shape == (1, 1 + 6 * 8, 8)
    assert torch.equal(out[:, 0], pos[:, 0])  # the class token's embedding is kept as is
    grid = pos[0, 1:].reshape(4, 4, 8).permute(2, 0, 1)[None]  # (1, C, 4, 4)
    want = F.interpolate(grid, size=(6, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out[0, 1:], want[0].permute(1, 2, 0).reshape(48, 8))


def test_model_uses_the_resized_pos_embed_off_the_native_grid():
    vit = VisionTransformer(TINY_VIT)
    assert vit.pos_embed_for((4, 4)) is vit.pos_embed
    assert torch.equal(vit.pos_embed_for((3, 5)), resize_pos_embed(vit.pos_embed, (3, 5)))


# ---- shapes at other sizes --------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_vit_dpt_runs_at_non_native_sizes(size):
    model = tiny_vit_dpt()
    h, w = size
    x = torch.randn(2, 3, h, w)
    with torch.inference_mode():
        features = model.pretrained(x)
        out = model(x)
    shapes = [tuple(f.shape) for f in features]
    assert shapes == [(2, c, h // s, w // s) for c, s in zip(VIT_WIDTHS, STRIDES, strict=True)]
    assert out.shape == (2, h, w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", SIZES)
def test_hybrid_dpt_runs_at_non_native_sizes(size):
    model = tiny_hybrid_dpt()
    h, w = size
    x = torch.randn(1, 3, h, w)
    with torch.inference_mode():
        features = model.pretrained(x)
        stages = model.pretrained.model.patch_embed.backbone.forward_stages(x)
        out = model(x)
    shapes = [tuple(f.shape) for f in features]
    assert shapes == [(1, c, h // s, w // s) for c, s in zip(HYBRID_WIDTHS, STRIDES, strict=True)]
    # levels 1 and 2 are the ResNet stage outputs, unchanged
    assert torch.equal(features[0], stages[0]) and torch.equal(features[1], stages[1])
    assert out.shape == (1, h, w)


def test_hybrid_layout_has_only_act_postprocess_3_and_4():
    keys = tiny_hybrid_dpt().pretrained.state_dict().keys()
    posts = {k.split(".")[0] for k in keys if k.startswith("act_postprocess")}
    assert posts == {"act_postprocess3", "act_postprocess4"}


def test_vit_floors_sizes_that_are_not_multiples_of_16_like_the_official_conv():
    with torch.inference_mode():
        out = tiny_vit_dpt()(torch.randn(1, 3, 200, 264))
    assert out.shape == (1, 192, 256)


def test_too_small_or_misaligned_inputs_raise_our_error():
    with pytest.raises(UnsupportedInputSizeError, match="at least 16"):
        tiny_vit_dpt()(torch.randn(1, 3, 8, 64))
    with pytest.raises(UnsupportedInputSizeError, match="multiples of 16"):
        tiny_hybrid_dpt()(torch.randn(1, 3, 264, 320))


# ---- ResNet "SAME" padding and weight standardisation -----------------------------------------

def test_same_padding_puts_the_odd_pixel_after():
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(9, 3, 2) == (1, 1)
    assert same_padding(384, 7, 2) == (2, 3)
    assert same_padding(96, 3, 2) == (0, 1)
    assert same_padding(7, 1, 2) == (0, 0)


def test_std_conv_same_matches_explicit_padding_and_standardisation():
    torch.manual_seed(0)
    conv = StdConv2dSame(4, 6, 3, stride=2)
    x = torch.randn(1, 4, 8, 9)
    w = conv.weight.reshape(6, -1)
    var = w.var(1, unbiased=False, keepdim=True)
    w_std = (w - w.mean(1, keepdim=True)) / torch.sqrt(var + 1e-8)
    want = F.conv2d(F.pad(x, (1, 1, 0, 1)), w_std.reshape_as(conv.weight), stride=2)
    got = conv(x)
    assert got.shape == (1, 6, 4, 5)
    assert torch.allclose(got, want, atol=1e-5)


def test_resnet_stage_sizes_are_ceil_of_the_stride():
    resnet = ResNetV2(TINY_RESNET)
    with torch.inference_mode():
        stages = resnet.forward_stages(torch.randn(1, 3, 50, 70))
    assert [tuple(s.shape[2:]) for s in stages] == [(13, 18), (7, 9), (4, 5)]


# ---- fast path, reloading ---------------------------------------------------------------------

@pytest.mark.parametrize("build", [tiny_vit_dpt, tiny_hybrid_dpt])
def test_attention_fast_path_equals_plain_path(build):
    backbone = build().pretrained
    x = torch.randn(1, 3, 128, 160)
    with torch.inference_mode():
        fast = backbone(x)
        with fastpath.plain_eager():
            plain = backbone(x)
    for f, p in zip(fast[2:], plain[2:], strict=True):  # the token levels
        assert not torch.equal(f, torch.zeros_like(f))
        assert torch.allclose(f, p, rtol=1e-4, atol=1e-5 * float(p.abs().max()))


def test_no_stale_state_after_loading_new_weights():
    model, other = tiny_hybrid_dpt(seed=0).pretrained, tiny_hybrid_dpt(seed=1).pretrained
    x = torch.randn(1, 3, 128, 160)  # off the native grid: the resized pos_embed is used
    with torch.inference_mode():
        before = model(x)
        model.load_state_dict(other.state_dict())
        after, want = model(x), other(x)
    for b, a, w in zip(before, after, want, strict=True):
        assert not torch.allclose(b, a)
        assert torch.equal(a, w)


def test_tiny_model_builds_on_meta_and_loads_with_assign():
    ref = tiny_vit_dpt()
    backbone = DPTViTBackbone(
        VisionTransformer(TINY_VIT, device="meta"), (0, 0, 1, 1), VIT_WIDTHS, device="meta"
    )
    meta = DPTDepthModel(backbone, VIT_WIDTHS, features=32, head_features_1=32,
                         head_features_2=8, device="meta").eval()
    meta.load_state_dict(ref.state_dict(), assign=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(meta(x), ref(x))
