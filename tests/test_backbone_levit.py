"""LeViT backbone (``dpt_levit_224``): tiny-config shapes, the fixed input size, the attention
paths, the bias indices and that weights loaded after a forward take effect (no stale bias cache,
unlike timm 0.6.12's eval-mode ``ab`` dict)."""

from __future__ import annotations

import pytest
import torch

from midaskit.errors import UnsupportedInputSizeError
from midaskit.models import fastpath
from midaskit.models.backbones.levit import (
    Attention,
    AttentionSubsample,
    LevitConfig,
    _attend,
    attention_bias_idxs,
    build_dpt_levit,
    stem_b4_transpose,
)
from midaskit.variants import build_model

# 64x64 input -> token grids 4, 2, 1; blocks: 0-1 stage 0, 2-3 down, 4-5 stage 1, 6-7 down, 8-9
TINY = LevitConfig(embed_dim=(16, 24, 32), key_dim=4, num_heads=(2, 3, 4), depth=(1, 1, 1))
TINY_HOOKS = (1, 5, 9)


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_dpt_levit(
        TINY, hooks=TINY_HOOKS, features=16, head_features=(8, 4), img_size=64
    ).eval()
    _randomize(model, seed)
    return model


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial values everywhere (attention biases are zero-initialised, BN is identity)."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=gen)
        if name.endswith("running_var"):
            t.copy_(1.0 + 0.25 * noise.abs())
        elif name.endswith("bn.weight"):
            t.copy_(1.0 + 0.1 * noise)
        else:
            t.copy_(0.3 * noise)


def test_tiny_model_shapes():
    model = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        feats = model.pretrained(x)
        out = model(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 4, 4), (2, 24, 2, 2), (2, 32, 1, 1)]
    assert out.shape == (2, 64, 64)
    assert torch.isfinite(out).all()
    # the three hooked maps are the token sequences of blocks 1, 5, 9, row-major
    with torch.inference_mode():
        tokens = model.pretrained.model.patch_embed(x).flatten(2).transpose(1, 2)  # (2, 16, 16)
        for block in model.pretrained.model.blocks[:2]:
            tokens = block(tokens)
    torch.testing.assert_close(feats[0], tokens.transpose(1, 2).reshape(2, 16, 4, 4))


def test_real_model_refuses_other_sizes_with_a_clear_message():
    model = build_model("dpt_levit_224", device="meta")
    for h, w in [(256, 256), (224, 320), (208, 224)]:
        with pytest.raises(UnsupportedInputSizeError, match=r"only at 224x224.*got"):
            model(torch.empty(1, 3, h, w, device="meta"))
    assert model(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 224, 224)


def test_tiny_model_refuses_other_sizes():
    with pytest.raises(UnsupportedInputSizeError, match="64x64"):
        _tiny()(torch.randn(1, 3, 80, 80))


def test_attention_bias_idxs_rule():
    idx = attention_bias_idxs(3, 2)  # queries (0,0),(0,2),(2,0),(2,2) over a 3x3 key grid
    assert idx.shape == (4, 9) and idx.dtype == torch.int64
    assert idx[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert idx[3].tolist() == [8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert idx[1].tolist() == [2, 1, 0, 5, 4, 3, 8, 7, 6]
    full = attention_bias_idxs(4)
    assert torch.equal(full, full.T) and full.diagonal().eq(0).all()


def test_derived_buffers_equal_the_registered_buffers():
    model = _tiny()
    modules = [m for m in model.modules() if isinstance(m, (Attention, AttentionSubsample))]
    assert len(modules) == 5
    for m in modules:
        assert torch.equal(m.derived_buffers()["attention_bias_idxs"], m.attention_bias_idxs)
    sd = model.state_dict()
    assert sd["pretrained.model.blocks.2.attention_bias_idxs"].shape == (4, 16)
    assert "pretrained.model.head_dist.l.weight" in sd and "pretrained.model.head.bn.weight" in sd


@pytest.mark.parametrize("shape", [(1, 6, 196, 196, 32, 64), (2, 16, 16, 49, 32, 128)])
def test_sdpa_equals_plain_attention(shape):
    B, H, Nq, Nk, Dk, Dv = shape
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, H, Nq, Dk, generator=gen), torch.randn(B, H, Nk, Dk, generator=gen)
    v, bias = torch.randn(B, H, Nk, Dv, generator=gen), torch.randn(H, Nq, Nk, generator=gen)
    fast = _attend(q, k, v, bias, Dk**-0.5, sdpa=True)
    plain = _attend(q, k, v, bias, Dk**-0.5, sdpa=False)
    assert fast.shape == (B, H, Nq, Dv)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_fast_and_plain_paths_agree():
    model, x = _tiny(), torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        fast = model(x)
        with fastpath.plain_eager():
            plain = model(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_weights_loaded_after_a_forward_take_effect():
    """timm caches the gathered biases on the first eval forward; ours must not go stale."""
    model, x = _tiny(seed=0), torch.randn(1, 3, 64, 64)
    other = _tiny(seed=1)
    with torch.inference_mode():
        before = model(x)
        model.load_state_dict(other.state_dict())
        after = model(x)
        reference = other(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, rtol=0, atol=0)


def test_only_attention_biases_loaded_after_a_forward_take_effect():
    model, x = _tiny(seed=0), torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = model.pretrained(x)[0]
        state = model.state_dict()
        state["pretrained.model.blocks.0.m.attention_biases"] = torch.randn(2, 16)
        model.load_state_dict(state)
        after = model.pretrained(x)[0]
        fresh = _tiny(seed=0)
        fresh.load_state_dict(state)
        reference = fresh.pretrained(x)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, rtol=0, atol=0)


def test_stem_b4_transpose_quadruples_the_size():
    stem = stem_b4_transpose(16, 8).eval()
    assert stem(torch.randn(1, 16, 7, 7)).shape == (1, 4, 28, 28)
    assert [k for k in stem.state_dict() if k.endswith("weight")] == [
        "0.c.weight", "0.bn.weight", "2.c.weight", "2.bn.weight"
    ]


def test_bad_hooks_and_widths_are_refused():
    with pytest.raises(ValueError, match="hooks"):
        build_dpt_levit(TINY, hooks=(1, 5, 10), features=16, head_features=(8, 4), img_size=64)
    with pytest.raises(ValueError, match="in_widths"):
        build_dpt_levit(
            TINY, hooks=TINY_HOOKS, features=16, head_features=(8, 4), img_size=64,
            in_widths=(16, 24, 24),
        )
