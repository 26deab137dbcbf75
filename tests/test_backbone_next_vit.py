"""Next-ViT backbone: block plan of the official large model, tiny-config shapes on non-square
and non-multiple-of-32 inputs, the E-MHSA fast path against the official formulation, and the
small-input error."""

from __future__ import annotations

import pytest
import torch

from midaskit.errors import UnsupportedInputSizeError
from midaskit.models import fastpath
from midaskit.models.backbones.next_vit import (
    E_MHSA,
    NEXT_VIT_LARGE,
    NTB,
    NextViTBackbone,
    NextViTConfig,
)
from midaskit.models.dpt import DPTDepthModel
from midaskit.variants import get_variant

TINY = NextViTConfig(
    stem_chs=(8, 8, 16),
    depths=(1, 2, 5, 2),
    widths=((32, 32), (32, 128), (64, 128), (64, 128)),
    head_dim=16,
)
TINY_HOOKS = (0, 2, 7, 9)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so that every norm does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            u = torch.rand(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + u)
            elif name.endswith("weight") and t.dim() == 1:
                t.copy_(0.8 + 0.4 * u)
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_((2 * u - 1) / fan_in**0.5)
    return model.eval()


def _tiny_dpt() -> DPTDepthModel:
    backbone = NextViTBackbone(TINY, TINY_HOOKS)
    return _randomize(DPTDepthModel(backbone, backbone.widths, features=32, head_features_2=8))


def test_large_plan_matches_the_official_hybrid_strategy():
    plan = NEXT_VIT_LARGE.plan()
    assert len(plan) == 40
    ntb = [i for i, (kind, *_) in enumerate(plan) if kind == "NTB"]
    assert ntb == [6, 11, 16, 21, 26, 31, 36, 39]
    assert [i for i, (_, _, stride, _) in enumerate(plan) if stride == 2] == [3, 7, 37]
    spec = get_variant("dpt_next_vit_large_384")
    assert tuple(plan[h][1] for h in spec.hooks) == spec.in_widths == (96, 256, 512, 1024)


def test_large_meta_build_keeps_unused_classifier_keys():
    model = NextViTBackbone(NEXT_VIT_LARGE, (2, 6, 36, 39), device="meta")
    keys = list(model.state_dict())
    assert keys[-7:] == [
        "model.norm.weight", "model.norm.bias", "model.norm.running_mean",
        "model.norm.running_var", "model.norm.num_batches_tracked",
        "model.proj_head.0.weight", "model.proj_head.0.bias",
    ]
    # NTB with an unchanged width has an identity patch_embed: no keys
    assert not any(k.startswith("model.features.6.patch_embed.") for k in keys)
    assert "model.features.39.e_mhsa.norm.weight" not in keys  # sr_ratio 1 in the last stage
    assert "model.features.36.e_mhsa.norm.running_var" in keys


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (100, 68)])
def test_tiny_dpt_shapes_on_non_square_inputs(size):
    torch.manual_seed(0)
    model = _tiny_dpt()
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        feats = model.pretrained(x)
        out = model(x)
    h, w = size
    sides = [(h, w)]
    for _ in range(4):  # stem stride 4, then ceil-mode 2x2 pooling
        sides.append((-(-sides[-1][0] // 2), -(-sides[-1][1] // 2)))
    expected = [(2, 32, *sides[2]), (2, 128, *sides[3]), (2, 128, *sides[4])]
    h5, w5 = sides[4]
    expected.append((2, 128, -(-h5 // 2), -(-w5 // 2)))
    assert [tuple(f.shape) for f in feats] == expected
    assert out.shape == (2, h, w)
    assert torch.isfinite(out).all()


def test_tiny_fast_path_equals_plain_path():
    torch.manual_seed(1)
    model = _tiny_dpt()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        fast = model(x)
        with fastpath.plain_eager():
            plain = model(x)
    assert not torch.equal(fast, torch.zeros_like(fast))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))


def _official_e_mhsa(m: E_MHSA, x: torch.Tensor) -> torch.Tensor:
    """The official formulation: k permuted to (B, h, d, M), explicit softmax."""
    B, N, C = x.shape
    h = m.num_heads
    q = m.q(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
    if m.norm is not None:
        x_ = torch.nn.AvgPool1d(m.n_ratio, m.n_ratio)(x.transpose(1, 2))
        x_ = m.norm(x_).transpose(1, 2)
    else:
        x_ = x
    k = m.k(x_).reshape(B, -1, h, C // h).permute(0, 2, 3, 1)
    v = m.v(x_).reshape(B, -1, h, C // h).permute(0, 2, 1, 3)
    attn = ((q @ k) * m.scale).softmax(dim=-1)
    return m.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("sr_ratio, tokens", [(1, 12), (2, 36), (2, 30), (4, 70)])
def test_e_mhsa_matches_the_official_formulation(sr_ratio, tokens):
    torch.manual_seed(2)
    m = _randomize(E_MHSA(64, head_dim=16, sr_ratio=sr_ratio), seed=3)
    x = torch.randn(2, tokens, 64)
    with torch.inference_mode():
        ref = _official_e_mhsa(m, x)
        fast = m(x)
        with fastpath.plain_eager():
            plain = m(x)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain, ref, rtol=1e-4, atol=1e-5)


def test_ntb_splits_channels_like_the_official_block():
    block = NTB(768, 1024, sr_ratio=1, device="meta")
    assert block.e_mhsa.q.in_features == 768  # make_divisible(0.75 * 1024, 32)
    assert block.mhca.projection.out_channels == 256
    assert block.mlp.conv1.out_channels == 2048


def test_too_small_input_raises_a_clear_error():
    model = _tiny_dpt()
    with pytest.raises(UnsupportedInputSizeError, match="32x32"):
        with torch.inference_mode():
            model(torch.randn(1, 3, 16, 16))


def test_blocks_after_the_last_hook_do_not_run():
    backbone = _randomize(NextViTBackbone(TINY, (0, 2)))
    calls = []
    backbone.model.features[3].register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert len(feats) == 2 and not calls


def test_bad_hooks_are_refused():
    with pytest.raises(ValueError, match="hooks"):
        NextViTBackbone(TINY, (0, 2, 7, 10), device="meta")
