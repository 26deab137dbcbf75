"""Swin (v1) and SwinV2 backbones on tiny configs: shapes, which tensors the hooks take, the
fast path against the plain path, batching of shifted-window masks, meta build + load, no stale
position-bias cache, the native-size-only error, and the window/mask/coordinate helpers against
direct transcriptions of the official construction."""

from __future__ import annotations

import math

import pytest
import torch

from midaskit.errors import UnsupportedInputSizeError
from midaskit.models import fastpath
from midaskit.models.backbones import swin, swin2
from midaskit.models.backbones.swin_common import (
    SwinDims,
    SwinDPTBackbone,
    merge_patches,
    relative_position_index,
    shifted_window_mask,
    window_and_shift,
    window_partition,
    window_reverse,
)
from midaskit.models.derived import materialize_derived_buffers
from midaskit.models.dpt import DPTDepthModel
from midaskit.variants import build_model

# grid 16 -> 8 -> 4 -> 2: stages 0-1 shifted, stage 2 one unshifted window, stage 3 clipped to 2
TINY = SwinDims(img_size=64, embed_dim=8, depths=(2, 2, 3, 2), num_heads=(1, 2, 2, 4),
                window_size=4)
TINY_V2 = SwinDims(img_size=64, embed_dim=8, depths=(2, 2, 3, 2), num_heads=(1, 2, 2, 4),
                   window_size=4, pretrained_window_sizes=(3, 3, 3, 2))
HOOKS = (1, 0, 2, 1)
FAMILIES = {"swin": (swin.SwinTransformer, TINY), "swin2": (swin2.SwinTransformerV2, TINY_V2)}


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("logit_scale"):
                # spans the clamp at log(100)
                p.copy_(torch.linspace(math.log(2.0), math.log(400.0), p.numel()).view(p.shape))
            elif ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.3 * noise)
    return model


def _backbone(family: str, seed: int = 0) -> SwinDPTBackbone:
    cls, dims = FAMILIES[family]
    return SwinDPTBackbone(_randomize(cls(dims), seed), HOOKS, variant=f"tiny_{family}").eval()


def _image(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_shapes(family):
    feats = _backbone(family)(_image())
    assert [tuple(f.shape) for f in feats] == [
        (2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)
    ]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_take_the_block_outputs_before_patch_merging(family):
    backbone = _backbone(family)
    taken = {}
    for i, hook in enumerate(HOOKS):
        block = backbone.model.layers[i].blocks[hook]
        block.register_forward_hook(lambda m, a, out, i=i: taken.setdefault(i, out))
    feats = backbone(_image())
    for i, feat in enumerate(feats):
        # official: (B, H*W, C) -> transpose(1, 2) -> unflatten(2, (H, W)); ours is (B, H, W, C)
        assert torch.equal(feat, taken[i].permute(0, 3, 1, 2))
    # the hooked block of stage 1 is not its last one: the remaining block still ran before
    # patch merging, so stage 2's input differs from merging the hooked output directly
    merged = backbone.model.layers[1].downsample(taken[1])
    assert not torch.allclose(backbone.model.layers[2].blocks[0](merged).permute(0, 3, 1, 2),
                              feats[2], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_equals_plain_path(family):
    backbone, x = _backbone(family), _image()
    with torch.inference_mode():
        fast = backbone(x)
        with fastpath.plain_eager():
            plain = backbone(x)
    for f, p in zip(fast, plain, strict=True):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-4 * p.abs().max().item())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fast", [True, False])
def test_batch_equals_single_images(family, fast):
    # shifted-window masks are tiled over the batch: each image must see its own windows only
    backbone, x = _backbone(family), _image(batch=3)
    fastpath.set_enabled(fast)
    try:
        with torch.inference_mode():
            batched = backbone(x)
            single = [backbone(x[i : i + 1]) for i in range(3)]
    finally:
        fastpath.set_enabled(True)
    for level, feat in enumerate(batched):
        for i in range(3):
            torch.testing.assert_close(feat[i : i + 1], single[i][level], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_dpt_depth_shape(family):
    cls, dims = FAMILIES[family]
    backbone = SwinDPTBackbone(cls(dims), HOOKS, variant="tiny")
    model = DPTDepthModel(backbone, [8, 16, 32, 64], features=16, head_features_1=16,
                          head_features_2=8).eval()
    with torch.inference_mode():
        assert model(_image()).shape == (2, 64, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_build_then_load_equals_the_eager_model(family):
    cls, dims = FAMILIES[family]
    eager = _backbone(family)
    state = eager.state_dict()
    lazy = SwinDPTBackbone(cls(dims, device="meta"), HOOKS, variant="tiny").eval()
    lazy.load_state_dict(state, strict=True, assign=True)
    filled = materialize_derived_buffers(lazy)
    if family == "swin2":  # non-persistent in the official files: only derivable
        assert "model.layers.0.blocks.0.attn.relative_coords_table" in filled
        assert "model.layers.3.blocks.1.attn.relative_position_index" in filled
    else:
        assert filled == []
    x = _image()
    with torch.inference_mode():
        for a, b in zip(eager(x), lazy(x), strict=True):
            assert torch.equal(a, b)


def test_swin2_position_bias_follows_newly_loaded_weights():
    x = _image()
    backbone = _backbone("swin2", seed=0)
    with torch.inference_mode():
        backbone(x)  # a first forward must leave no bias cache behind
    other = _backbone("swin2", seed=0)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if "cpb_mlp" in name or "logit_scale" in name:
                p.mul_(1.5)
    backbone.load_state_dict(other.state_dict())
    with torch.inference_mode():
        for a, b in zip(backbone(x), other(x), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [32, 96])
def test_non_native_size_is_refused(family, size):
    with pytest.raises(UnsupportedInputSizeError, match="only at its native 64x64"):
        _backbone(family)(_image(batch=1, size=size))


@pytest.mark.parametrize("variant", ["dpt_swin2_tiny_256", "dpt_swin_large_384"])
def test_real_variant_refuses_other_sizes_before_computing(variant):
    model = build_model(variant, device="meta")
    native = model.pretrained.model.img_size
    with pytest.raises(UnsupportedInputSizeError, match=f"{variant} runs only at its native"):
        model(torch.empty(1, 3, native, native + 32, device="meta"))


def test_hooks_outside_a_stage_are_rejected():
    with pytest.raises(ValueError, match="hook 2 of stage 0"):
        SwinDPTBackbone(swin.SwinTransformer(TINY, device="meta"), (2, 1, 2, 1), variant="t")


# ---- helpers against direct transcriptions of the official code --------------------------------


def test_window_partition_round_trip_and_order():
    x = torch.arange(2 * 8 * 12 * 3, dtype=torch.float32).view(2, 8, 12, 3)
    windows = window_partition(x, (4, 6))
    assert windows.shape == (2 * 2 * 2, 24, 3)
    # window 1 of image 0 is rows 0-3, columns 6-11, row-major inside the window
    torch.testing.assert_close(windows[1], x[0, 0:4, 6:12].reshape(24, 3))
    torch.testing.assert_close(window_reverse(windows, (4, 6), 8, 12), x)


def test_merge_patches_matches_the_official_slicing_order():
    x = torch.randn(2, 6, 4, 5)
    official = torch.cat(
        [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
    )
    torch.testing.assert_close(merge_patches(x), official)


def _official_mask(res: int, win: int, shift: int) -> torch.Tensor:
    img = torch.zeros(1, res, res, 1)
    cnt = 0
    spans = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
    for h in spans:
        for w in spans:
            img[:, h, w, :] = cnt
            cnt += 1
    windows = window_partition(img, (win, win)).squeeze(-1)  # (nW, N)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


@pytest.mark.parametrize("res,win,shift", [(16, 4, 2), (96, 24, 12), (24, 12, 6), (12, 6, 3)])
def test_shifted_window_mask_matches_the_official_construction(res, win, shift):
    ours = shifted_window_mask((res, res), (win, win), (shift, shift))
    assert ours.dtype == torch.float32
    assert torch.equal(ours, _official_mask(res, win, shift))


def test_relative_position_index_matches_the_official_construction():
    wh, ww = 3, 5
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    assert torch.equal(relative_position_index((wh, ww)), rel.sum(-1))


def test_window_clipping_rules():
    # a grid no larger than the window is one unshifted window (v1 and v2 agree on squares)
    assert window_and_shift((24, 24), 24, 12, per_axis=True) == ((24, 24), (0, 0))
    assert window_and_shift((12, 12), 24, 12, per_axis=True) == ((12, 12), (0, 0))
    assert window_and_shift((48, 48), 24, 12, per_axis=True) == ((24, 24), (12, 12))
    assert window_and_shift((12, 12), 12, 6, per_axis=False) == ((12, 12), (0, 0))
    assert window_and_shift((24, 24), 12, 6, per_axis=False) == ((12, 12), (6, 6))
    # non-square: v1 decides on the shorter side for both axes, v2 per axis
    assert window_and_shift((8, 32), 16, 8, per_axis=False) == ((8, 8), (0, 0))
    assert window_and_shift((8, 32), 16, 8, per_axis=True) == ((8, 16), (0, 8))


@pytest.mark.parametrize("window,pretrained", [((16, 16), 0), ((24, 24), 12), ((12, 12), 6)])
def test_relative_coords_table_values(window, pretrained):
    table = swin2.relative_coords_table(window, pretrained)
    assert table.shape == (1, 2 * window[0] - 1, 2 * window[1] - 1, 2)
    norm = (pretrained if pretrained else window[0]) - 1
    t = torch.arange(-(window[0] - 1), window[0], dtype=torch.float64) / norm * 8
    expect = torch.sign(t) * torch.log2(t.abs() + 1) / 3
    torch.testing.assert_close(table[0, :, 0, 0].double(), expect, rtol=0, atol=1e-6)
    torch.testing.assert_close(table[0, 0, :, 1].double(), expect, rtol=0, atol=1e-6)


def test_swin2_attention_against_the_official_formula():
    torch.manual_seed(0)
    attn = _randomize(swin2.WindowAttention(16, 2, (4, 4), 3), seed=3).eval()
    x = torch.randn(4, 16, 16)
    mask = shifted_window_mask((4, 8), (4, 4), (2, 2))  # 2 windows per image, 2 images
    B_, N, C = x.shape
    # timm 0.6.12 WindowAttention.forward, transcribed step by step
    qkv_bias = torch.cat((attn.q_bias, torch.zeros(C), attn.v_bias))
    qkv = torch.nn.functional.linear(x, attn.qkv.weight, qkv_bias)
    q, k, v = qkv.reshape(B_, N, 3, 2, -1).permute(2, 0, 3, 1, 4).unbind(0)
    a = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).mT
    a = a * torch.clamp(attn.logit_scale, max=math.log(100.0)).exp()
    table = attn.cpb_mlp(attn.relative_coords_table).view(-1, 2)
    bias = table[attn.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)
    a = a + 16 * torch.sigmoid(bias).unsqueeze(0)
    a = (a.view(2, 2, 2, N, N) + mask.unsqueeze(1).unsqueeze(0)).view(-1, 2, N, N)
    expected = attn.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C))
    with torch.no_grad():
        for fast in (True, False):
            fastpath.set_enabled(fast)
            try:
                torch.testing.assert_close(attn(x, mask), expected, rtol=1e-5, atol=1e-5)
            finally:
                fastpath.set_enabled(True)


@pytest.mark.parametrize("family", FAMILIES)
def test_dtype_reaches_every_float_buffer_and_both_paths_agree_in_float64(family):
    cls, dims = FAMILIES[family]
    backbone = SwinDPTBackbone(_randomize(cls(dims, dtype=torch.float64)), HOOKS, variant="t")
    floats = [b for _, b in backbone.named_buffers() if b.is_floating_point()]
    assert floats and all(b.dtype == torch.float64 for b in floats)
    x = _image().double()
    with torch.inference_mode():
        fast = backbone(x)
        with fastpath.plain_eager():
            plain = backbone(x)
    for f, p in zip(fast, plain, strict=True):
        assert f.dtype == torch.float64
        torch.testing.assert_close(f, p, rtol=1e-9, atol=1e-9 * p.abs().max().item())
