"""The fast-path formulations equal the plain ones: oneDNN linear, the commuted fusion-block
``out_conv``, batch-shared window masks, and the hybrid's float32 ResNet under bf16 autocast.

Tiny shapes only; speed is measured by ``bench/bench_infer.py``, never here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from midaskit.models import fastpath, kernels
from midaskit.models.backbones.swin_common import window_attention_bias, window_sdpa
from midaskit.models.blocks import FeatureFusionBlockCustom


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    return float((a - b).abs().max()) <= rtol * float(b.abs().max())


@pytest.mark.parametrize("lead", [(1, 300), (2, 150), (600,)])
def test_linear_equals_f_linear(lead):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 48, generator=gen)
    weight = torch.randn(40, 96, generator=gen)[:, :48]  # a non-contiguous slice, as the readout
    bias = torch.randn(40, generator=gen)
    with torch.inference_mode():
        out = kernels.linear(x, weight, bias)
        ref = F.linear(x, weight, bias)
        with fastpath.plain_eager():
            plain = kernels.linear(x, weight, bias)
    assert out.shape == ref.shape and out.is_contiguous()
    assert _close(out, ref)
    assert torch.equal(plain, ref)  # the plain path is F.linear itself


def _packed_linear_is_used() -> bool:
    return kernels._LINEAR_POINTWISE is not None and kernels._REORDER_LINEAR_WEIGHT is not None


@pytest.mark.skipif(not _packed_linear_is_used(), reason="torch without oneDNN")
def test_packed_weight_follows_in_place_changes_and_replacements():
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16).eval()
    x = torch.randn(5, 32)

    def fast() -> torch.Tensor:
        """The second call: the first use of a weight runs unpacked, the second packs it."""
        with torch.inference_mode():
            first = kernels.linear(x, layer.weight, layer.bias)
            second = kernels.linear(x, layer.weight, layer.bias)
        assert _close(first, second)
        owner = kernels._derived_weights[id(layer.weight)]
        assert all(packed is not None for _, packed in owner[1].values())
        return second

    def ref() -> torch.Tensor:
        with torch.no_grad():
            return F.linear(x, layer.weight, layer.bias)

    assert _close(fast(), ref())
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place: the version counter moves
    assert _close(fast(), ref())
    layer.load_state_dict({"weight": torch.randn(16, 32), "bias": layer.bias.detach()})
    assert _close(fast(), ref())
    layer.load_state_dict({"weight": torch.randn(16, 32), "bias": layer.bias.detach()},
                          assign=True)  # a new tensor object
    assert _close(fast(), ref())
    layer.weight.data.mul_(3.0)  # .data bypasses the version counter ...
    kernels.clear_caches()  # ... so the documented remedy is needed
    assert _close(fast(), ref())


@pytest.mark.skipif(not _packed_linear_is_used(), reason="torch without oneDNN")
def test_derived_weights_go_with_their_weight():
    kernels.clear_caches()
    weight = torch.nn.Parameter(torch.randn(8, 4))
    with torch.inference_mode():
        for _ in range(2):  # packed on the second use
            kernels.linear(torch.randn(3, 4), weight)
            kernels.linear(torch.randn(3, 4), weight.t().t())  # a view: packed under its base
    assert len(kernels._derived_weights) == 1
    del weight
    assert not kernels._derived_weights  # nothing kept alive after the model is gone


@pytest.mark.parametrize("rows", [5, 300])
def test_linear_with_gelu_equals_f_gelu_of_f_linear(rows):
    gen = torch.Generator().manual_seed(0)
    shapes = [(rows, 32), (24, 32), (24,)]
    x, weight, bias = (torch.randn(*shape, generator=gen) for shape in shapes)
    ref = F.gelu(F.linear(x, weight, bias))
    with torch.inference_mode():
        uses = [kernels.linear(x, weight, bias, gelu=True) for _ in range(2)]  # unpacked, packed
        with fastpath.plain_eager():
            plain = kernels.linear(x, weight, bias, gelu=True)
    assert all(_close(out, ref) for out in uses)
    assert torch.equal(plain, ref)


def test_linear_with_autograd_is_f_linear():
    x = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 3)
    out = kernels.linear(x, layer.weight, layer.bias)
    out.sum().backward()  # gradients flow: the packed op is never used with autograd
    assert layer.weight.grad is not None


def test_linear_under_autocast_is_f_linear():
    x, weight = torch.randn(300, 32), torch.randn(16, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.linear(x, weight)
    assert out.dtype == torch.bfloat16


def test_channels_last_only_on_the_fast_path():
    x = torch.randn(1, 4, 5, 6)
    assert kernels.channels_last(x).is_contiguous(memory_format=torch.channels_last)
    with fastpath.plain_eager():
        assert kernels.channels_last(x) is x


@pytest.mark.parametrize("size", [None, (9, 11)])
@pytest.mark.parametrize("expand", [False, True])
def test_fusion_block_out_conv_commutes_with_resize(size, expand):
    torch.manual_seed(0)
    block = FeatureFusionBlockCustom(8, expand=expand).eval()
    x, skip = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6)
    with torch.inference_mode():
        fast = block(x, skip, size=size)
        with fastpath.plain_eager():
            plain = block(x, skip, size=size)
    assert fast.shape == plain.shape
    assert _close(fast, plain)


@pytest.mark.parametrize("masked", [False, True])
def test_window_sdpa_shares_the_mask_across_the_batch(masked):
    gen = torch.Generator().manual_seed(0)
    batch, nw, heads, n, hd = 3, 4, 2, 9, 8
    q, k, v = (torch.randn(batch * nw, heads, n, hd, generator=gen) for _ in range(3))
    bias = torch.randn(heads, n, n, generator=gen)
    mask = torch.where(torch.rand(nw, n, n, generator=gen) > 0.7, -100.0, 0.0) if masked else None
    with torch.inference_mode():
        out = window_sdpa(q, k, v, bias, mask, 0.3)
        full = window_attention_bias(bias, mask, batch * nw)
        ref = ((q * 0.3) @ k.transpose(-2, -1) + full).softmax(-1) @ v
    assert _close(out, ref.transpose(1, 2).reshape(batch * nw, n, heads * hd))


def test_hybrid_resnet_stays_float32_under_bf16_autocast():
    from midaskit.models.backbones.hybrid import HybridEmbed, ResNetConfig, ResNetV2

    torch.manual_seed(0)
    embed = HybridEmbed(ResNetV2(ResNetConfig(layers=(1, 1), channels=(128, 256))), 16).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, stages = embed(x)
    assert all(s.dtype == torch.float32 for s in stages)
    assert tokens.dtype == torch.bfloat16  # the projection and everything after use bf16
