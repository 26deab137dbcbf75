"""Each fix on its own: what it changes, its record, its safety, and that key-only fixes copy
no tensor bytes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from midaskit.checkpoint.types import TensorMeta as M
from midaskit.doctor import (
    AdaptInputChannels,
    AddPrefix,
    CastDtype,
    DropKeys,
    FillDerived,
    FillUnused,
    Rename,
    RenameRegex,
    Reshape,
    StripPrefix,
    Unwrap,
)
from midaskit.errors import IncompatibleCheckpointError


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"module.conv.weight": torch.randn(4, 3, 3, 3, generator=g),
            "module.conv.bias": torch.randn(4, generator=g),
            "other": torch.tensor(7)}


def test_strip_prefix_renames_only_keys_that_have_it_and_keeps_the_objects():
    s = state()
    out, rec = StripPrefix("module.", "DataParallel").apply(s)
    assert list(out) == ["conv.weight", "conv.bias", "other"]
    assert out["conv.weight"] is s["module.conv.weight"]  # no copy of the bytes
    assert rec.fix == "StripPrefix" and rec.safe and rec.reason == "DataParallel"
    assert rec.summary == "stripped 'module.' from 2 keys"
    assert rec.keys == ("conv.weight", "conv.bias")


def test_add_prefix_and_regex_rename():
    out, rec = AddPrefix("net.").apply({"a.w": M((1,)), "b": M((2,))})
    assert list(out) == ["net.a.w", "net.b"] and rec.summary == "added 'net.' to 2 keys"
    out, rec = RenameRegex(r"^layers\.(\d+)\.downsample\.", r"downsample.\1.").apply(
        {"layers.0.downsample.w": M((1,)), "layers.0.blocks.w": M((1,))})
    assert list(out) == ["downsample.0.w", "layers.0.blocks.w"] and rec.keys == ("downsample.0.w",)


def test_rename_takes_a_dict_refuses_unknown_keys_and_collisions():
    fix = Rename({"a": "b"})
    assert fix.mapping == (("a", "b"),) and hash(fix) == hash(Rename((("a", "b"),)))
    out, rec = fix.apply({"a": M((1,)), "c": M((2,))})
    assert list(out) == ["b", "c"] and rec.keys == ("b",)
    with pytest.raises(IncompatibleCheckpointError, match="no such key"):
        fix.apply({"x": M((1,))})
    with pytest.raises(IncompatibleCheckpointError, match="collides"):
        fix.apply({"a": M((1,)), "b": M((1,))})


def test_fixes_are_frozen_data_with_json_params():
    fix = StripPrefix("module.")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fix.prefix = "x"  # type: ignore[misc]
    for f in (fix, Rename({"a": "b"}), DropKeys(("k",), "why"), CastDtype("float32"),
              Reshape({"w": (2, 3)}), AdaptInputChannels("w", 3),
              FillDerived(("n.num_batches_tracked",)), FillUnused({"h": M((2,))})):
        d = json.loads(json.dumps(f.to_dict()))
        assert d["fix"] == type(f).__name__ and d["safe"] == f.safe
        assert (d["allow"] is None) == f.safe
    assert Rename({"a": "b"}).to_dict()["params"] == {"mapping": {"a": "b"}}


def test_drop_keys_checks_derived_values_before_dropping():
    s = {"idx": torch.arange(4), "w": torch.ones(2)}
    out, rec = DropKeys(("idx",), "derived", expected=lambda k: torch.arange(4)).apply(s)
    assert list(out) == ["w"] and "checked 1 against the computed values" in rec.summary
    with pytest.raises(IncompatibleCheckpointError, match="differs from the value your model"):
        DropKeys(("idx",), "derived", expected=lambda k: torch.arange(4).flip(0)).apply(s)


def test_fill_derived_uses_zero_for_num_batches_tracked_and_derive_otherwise():
    out, rec = FillDerived(("bn.num_batches_tracked",)).apply({"bn.weight": torch.ones(2)})
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == 0 and rec.keys == ("bn.num_batches_tracked",)
    fix = FillDerived(("idx",), {"idx": M((3,), "int32")}, derive=lambda k: torch.arange(3))
    assert fix.apply({"w": torch.ones(1)})[0]["idx"].dtype == torch.int32
    assert fix.apply({"w": M((1,))})[0]["idx"] == M((3,), "int32")  # plans on metas
    with pytest.raises(IncompatibleCheckpointError, match="cannot compute idx"):
        FillDerived(("idx",), {"idx": M((3,))}).apply({"w": torch.ones(1)})


def test_fill_unused_adds_zeros_of_the_target_shape():
    out, rec = FillUnused({"head.weight": M((2, 3), "float16")}).apply({"w": torch.ones(1)})
    assert out["head.weight"].dtype == torch.float16 and not out["head.weight"].any()
    assert rec.safe


def test_reshape_is_a_view_and_refuses_other_element_counts():
    w = torch.randn(16, 8, 1, 1)
    out, _ = Reshape({"w": (16, 8)}).apply({"w": w})
    assert out["w"].shape == (16, 8) and out["w"].data_ptr() == w.data_ptr()
    with pytest.raises(IncompatibleCheckpointError):
        Reshape({"w": (16, 7)}).apply({"w": w})


def test_adapt_drop_extra_keeps_the_rgb_response():
    w = torch.randn(8, 4, 3, 3)
    out, rec = AdaptInputChannels("w", 3, "drop-extra").apply({"w": w})
    assert torch.equal(out["w"], w[:, :3]) and not rec.safe
    assert rec.summary == "adapted w from 4 to 3 input channels (drop-extra)"
    with pytest.raises(IncompatibleCheckpointError):
        AdaptInputChannels("w", 5, "drop-extra").apply({"w": w})


@pytest.mark.parametrize(("c_file", "c"), [(3, 1), (3, 6), (4, 3), (1, 3)])
def test_adapt_mean_keeps_activations_for_a_repeated_input(c_file, c):
    """A grey image fed as every channel gives the same conv output before and after."""
    g = torch.Generator().manual_seed(c_file * 10 + c)
    w = torch.randn(8, c_file, 3, 3, dtype=torch.float64, generator=g)
    adapted = AdaptInputChannels("w", c, "mean").apply({"w": w})[0]["w"]
    grey = torch.rand(1, 1, 5, 5, dtype=torch.float64, generator=g)
    before = torch.nn.functional.conv2d(grey.expand(1, c_file, 5, 5), w)
    after = torch.nn.functional.conv2d(grey.expand(1, c, 5, 5), adapted)
    assert adapted.shape == (8, c, 3, 3) and torch.allclose(before, after)


def test_adapt_zero_pad_keeps_the_original_channels_exactly():
    w = torch.randn(8, 3, 3, 3)
    out = AdaptInputChannels("w", 4, "zero-pad").apply({"w": w})[0]["w"]
    assert torch.equal(out[:, :3], w) and not out[:, 3].any()
    with pytest.raises(ValueError, match="unknown mode"):
        AdaptInputChannels("w", 4, "sideways")


def test_cast_dtype_casts_floating_tensors_and_knows_when_it_is_lossless():
    s = {"w": torch.ones(2, dtype=torch.float16), "n": torch.tensor(3)}
    out, rec = CastDtype("float32").apply(s)
    assert out["w"].dtype == torch.float32 and out["n"] is s["n"] and rec.keys == ("w",)
    assert CastDtype.is_widening("bfloat16", "float32") and CastDtype.is_widening("int32", "int64")
    assert not CastDtype.is_widening("float32", "float16")


def test_unwrap_takes_the_tensors_and_reports_what_it_left():
    root = {"model": {"w": torch.ones(1), "step": 3}, "optimizer": {}}
    out, rec = Unwrap(("model",)).apply(root)
    assert list(out) == ["w"] and rec.summary == (
        "took 1 tensors from ['model'], left out 1 non-tensor entries (step)")
