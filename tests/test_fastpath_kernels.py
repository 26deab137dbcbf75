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
