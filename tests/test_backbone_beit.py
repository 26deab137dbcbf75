"""BEiT backbone on a tiny config: any-size relative-position bias, fast vs plain attention,
layout details of the official files, no stale parameter-derived caches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from midaskit.errors import UnsupportedInputSizeError
from midaskit.models import fastpath
from midaskit.models.backbones.beit import (
    BeitBackbone,
    BeitDims,
    relative_position_index,
    resample_relative_position_bias_table,
)
from midaskit.models.dpt import DPTDepthModel

TINY = BeitDims(embed_dim=64, depth=3, num_heads=4, img_size=64)  # native grid 4x4
WIDTHS = (8, 16, 32, 32)


def _tiny_model(hooks=(0, 1, 1, 2), seed: int = 0) -> DPTDepthModel:
    torch.manual_seed(seed)
    model = DPTDepthModel(
        BeitBackbone(TINY, hooks, WIDTHS), WIDTHS, features=16, head_features_1=16,
        head_features_2=8,
    ).eval()
    with torch.no_grad():  # non-trivial layer scale, q/v biases and bias tables
        for name, p in model.named_parameters():
            if name.endswith(("gamma_1", "gamma_2", "q_bias", "v_bias", "bias_table")):
                p.uniform_(-0.5, 0.5)
    return model


def _official_resample(table: torch.Tensor, native, window) -> torch.Tensor:
    """The official ``_get_rel_pos_bias`` table step, written out as literally as possible."""
    old_height, old_width = 2 * native[0] - 1, 2 * native[1] - 1
    new_height, new_width = 2 * window[0] - 1, 2 * window[1] - 1
    old_num = old_height * old_width + 3
    new_num = new_height * new_width + 3
    old_sub = table[: old_num - 3].reshape(1, old_width, old_height, -1).permute(0, 3, 1, 2)
    new_sub = F.interpolate(old_sub, size=(new_height, new_width), mode="bilinear")
    new_sub = new_sub.permute(0, 2, 3, 1).reshape(new_num - 3, -1)
    return torch.cat([new_sub, table[old_num - 3 :]])


def _loop_index(h: int, w: int) -> torch.Tensor:
    """Relative-position index by explicit loops (independent of the vectorised one)."""
    n = (2 * h - 1) * (2 * w - 1)
    coords = [(y, x) for y in range(h) for x in range(w)]
    out = torch.empty((h * w + 1, h * w + 1), dtype=torch.int64)
    out[0, :], out[:, 0], out[0, 0] = n, n + 1, n + 2
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            out[i + 1, j + 1] = (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)
    return out


@pytest.mark.parametrize("window", [(4, 4), (2, 3), (3, 5), (1, 1)])
def test_relative_position_index_matches_loops(window):
    assert torch.equal(relative_position_index(window), _loop_index(*window))


def test_resampling_is_identity_at_native_size():
    table = torch.randn((2 * 4 - 1) ** 2 + 3, 4)
    assert torch.equal(resample_relative_position_bias_table(table, (4, 4), (4, 4)), table)
    # and the official procedure (which always interpolates) agrees bit for bit there
    assert torch.equal(_official_resample(table, (4, 4), (4, 4)), table)


@pytest.mark.parametrize("window", [(4, 6), (6, 4), (3, 3), (8, 8), (1, 2)])
def test_resampling_matches_the_official_procedure(window):
    table = torch.randn((2 * 4 - 1) ** 2 + 3, 4)
    ours = resample_relative_position_bias_table(table, (4, 4), window)
    assert ours.shape == ((2 * window[0] - 1) * (2 * window[1] - 1) + 3, 4)
    torch.testing.assert_close(ours, _official_resample(table, (4, 4), window), rtol=0, atol=0)
    assert torch.equal(ours[-3:], table[-3:])  # class-token rows re-appended unchanged


def test_native_bias_uses_the_table_directly():
    attn = _tiny_model().pretrained.model.blocks[0].attn
    index = relative_position_index((4, 4))
    bias = attn.relative_position_bias((4, 4), index)
    table = attn.relative_position_bias_table
    expected = table[attn.relative_position_index.view(-1)].view(17, 17, -1).permute(2, 0, 1)
    assert torch.equal(bias[0], expected)


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (64, 64), (128, 96)])
def test_any_multiple_of_32_runs(size):
    model = _tiny_model()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = model.pretrained(x)
        out = model(x)
    h, w = size
    assert [tuple(f.shape) for f in feats] == [
        (2, 8, h // 4, w // 4), (2, 16, h // 8, w // 8), (2, 32, h // 16, w // 16),
        (2, 32, h // 32, w // 32),
    ]
    assert out.shape == (2, h, w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(64, 96), (64, 64)])
def test_fast_path_equals_plain_path(size):
    model = _tiny_model()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        fast = model.pretrained(x)
        with fastpath.plain_eager():
            plain = model.pretrained(x)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_non_native_bias_differs_from_native():
    """A grid other than the native one really resamples (the test above is not vacuous)."""
    attn = _tiny_model().pretrained.model.blocks[0].attn
    table = attn.relative_position_bias_table.detach()
    resampled = resample_relative_position_bias_table(table, (4, 4), (4, 6))
    assert resampled.shape[0] != table.shape[0]
    squashed = resample_relative_position_bias_table(table, (4, 4), (3, 3))
    assert not torch.allclose(squashed[:25], table[:25])


def test_batch_items_are_independent():
    model = _tiny_model()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        both = model(x)
        first = model(x[:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)


def test_state_dict_layout_details():
    sd = _tiny_model().state_dict()
    prefix = "pretrained.model.blocks.0."
    assert not any(k.endswith("k_bias") for k in sd)
    assert not any(k.endswith("pos_embed") for k in sd)
    assert "pretrained.model.norm.weight" not in sd
    for key in ("pretrained.model.fc_norm.weight", "pretrained.model.head.bias"):
        assert key in sd
    index = sd[prefix + "attn.relative_position_index"]
    assert index.dtype == torch.int64 and index.shape == (17, 17)
    assert prefix + "attn.qkv.bias" not in sd
    block_keys = [k[len(prefix) :] for k in sd if k.startswith(prefix)]
    assert block_keys[:6] == [
        "gamma_1", "gamma_2", "norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias",
    ]


def test_no_stale_bias_after_loading_new_weights():
    model, other = _tiny_model(seed=0), _tiny_model(seed=1)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        model(x)  # warm any cache at a non-native size
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)


def test_blocks_after_the_last_hook_do_not_run():
    model = _tiny_model(hooks=(0, 0, 1, 1))
    with torch.no_grad():
        for p in model.pretrained.model.blocks[2].parameters():
            p.fill_(float("nan"))
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out).all()


def test_too_small_input_raises():
    with pytest.raises(UnsupportedInputSizeError, match="at least 16x16"):
        _tiny_model()(torch.randn(1, 3, 8, 64))


def test_builds_on_meta_and_index_is_derivable():
    model = DPTDepthModel(BeitBackbone(TINY, (0, 1, 1, 2), WIDTHS, device="meta"), WIDTHS,
                          features=16, head_features_1=16, head_features_2=8, device="meta")
    attn = model.pretrained.model.blocks[1].attn
    assert attn.relative_position_index.is_meta
    derived = attn.derived_buffers()["relative_position_index"]
    assert torch.equal(derived, _loop_index(4, 4))
