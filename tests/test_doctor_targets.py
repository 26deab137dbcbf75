"""Targets from models (on meta), checkpoints and manifests; key trees and prefix search."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from midaskit.checkpoint.types import TensorMeta as M
from midaskit.doctor import (
    Kind,
    Target,
    Verdict,
    as_target,
    diagnose,
    diagnose_against_variant,
    simulate,
    variant_target,
)
from midaskit.doctor.keytree import fold_names, format_count, group_by_depth, roll_up
from midaskit.doctor.prefixes import common_prefix_chain, find_prefix_change, split_known
from midaskit.doctor.targets import build_model_from_spec, load_factory
from midaskit.errors import MidaskitError, UnknownVariantError

MANIFESTS = __import__("pathlib").Path(__file__).parent / "data" / "reference" / "manifests"


class WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.register_buffer("index", torch.arange(5))

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        return {"index": torch.arange(5)}


def test_target_from_a_meta_module():
    with torch.device("meta"):
        model = WithBuffers()
    t = Target.from_module(model)
    assert list(t.metas) == ["index", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                             "bn.num_batches_tracked"]
    assert t.metas["bn.num_batches_tracked"] == M((), "int64")
    assert t.module_types == {"": "WithBuffers", "bn": "BatchNorm2d"}
    assert t.non_persistent == {"scratch": M((3,))}
    assert t.derived == {"index", "bn.num_batches_tracked"}
    assert torch.equal(t.derive("index"), torch.arange(5))  # computed on CPU, not meta
    assert t.derive("bn.num_batches_tracked").item() == 0
    with pytest.raises(MidaskitError):
        t.derive("bn.weight")
    assert "WithBuffers" in t.name and t.num_params == 16


def test_target_from_dict_adds_every_num_batches_tracked_to_derived():
    t = Target({"a.num_batches_tracked": torch.tensor(0), "a.weight": M((2,))},
               module_types={"a": "BatchNorm1d"}, derived={"x"}, unused={"a.weight"})
    assert t.derived == frozenset({"x", "a.num_batches_tracked"})
    assert t.metas["a.num_batches_tracked"] == M((), "int64")
    assert isinstance(t.unused, frozenset) and as_target(t) is t


def test_target_from_a_reference_manifest_with_real_keys():
    manifest = json.loads((MANIFESTS / "dpt_beit_large_512.json").read_text())
    t = Target.from_manifest(manifest)
    rpi = [k for k in t.derived if k.endswith("relative_position_index")]
    assert len(rpi) == 24 and t.name == "dpt_beit_large_512"
    assert t.module_types["pretrained.model.blocks.0.attn"] == "Attention"
    assert t.num_params == manifest["num_params"]
    assert "pretrained.model.blocks.0.attn.k_bias" in t.non_persistent


def test_official_beit_file_against_a_newer_timm_layout():
    """Field notes 1: the official file keeps relative_position_index, timm >= 0.9 does not."""
    manifest = json.loads((MANIFESTS / "dpt_beit_base_384.json").read_text())
    official = Target.from_manifest(manifest).metas
    index = {k: m for k, m in official.items() if k.endswith("relative_position_index")}
    newer = Target({k: m for k, m in official.items() if k not in index},
                   derived=set(index), non_persistent=index)
    report = diagnose(official, newer)
    assert report.verdict is Verdict.LOADS_AFTER_SAFE_FIXES
    (f,) = report.findings
    assert f.kind == Kind.DERIVED_EXTRA
    assert "`pretrained.model.blocks.{0-11}.attn.relative_position_index` (12 keys)" in f.message
    # and the reverse: a file re-saved from newer timm lacks the index
    back = diagnose(newer.metas, Target(official, derived=set(index),
                                        derive=lambda k: torch.zeros(577, 577)))
    assert back.verdict is Verdict.LOADS_AFTER_SAFE_FIXES


def test_zoedepth_prefix_on_real_keys():
    official = Target.from_manifest(json.loads((MANIFESTS / "dpt_hybrid_384.json").read_text()))
    report = diagnose({"core.core." + k: m for k, m in official.metas.items()}, official)
    (f,) = report.findings
    assert f.kind == Kind.PREFIX and "ZoeDepth" in report.cause


def test_as_target_accepts_modules_and_mappings():
    assert list(as_target(nn.Linear(2, 3)).metas) == ["weight", "bias"]
    assert as_target({"w": M((1,))}).name == "the other checkpoint"
    with pytest.raises(TypeError):
        as_target(42)


def test_load_factory_and_build_on_meta():
    model = build_model_from_spec("midaskit.doctor.demo_models:tiny_convnet_gn")
    assert model.conv1.weight.is_meta and type(model.norm1).__name__ == "GroupNorm"
    assert load_factory("midaskit.doctor.demo_models:TinyNet")(in_channels=4).conv1.in_channels == 4
    for bad, words in [("nocolon", "pkg.module:factory"), ("no_such_pkg_x:f", "cannot import"),
                       ("midaskit.doctor.demo_models:nope", "has no"),
                       ("midaskit.doctor.demo_models:__doc__", "not callable")]:
        with pytest.raises(MidaskitError, match=words):
            load_factory(bad)


def test_roll_up_folds_numbered_siblings_and_keeps_singletons():
    universe = {f"b.{i}.{leaf}": M((4,)) for i in range(6) for leaf in ("w", "v")}
    universe["head.w"] = M((2,))
    groups = roll_up([f"b.{i}.{leaf}" for i in (3, 4, 5) for leaf in ("w", "v")] + ["b.0.w"],
                     universe)
    labels = {g.label: g.units for g in groups}
    assert labels == {"b.3-5": "3 modules", "b.0.w": ""}
    blocks = {f"blocks.{i}.w": M((1,)) for i in range(4)}
    assert roll_up(["blocks.2.w", "blocks.3.w"], {**blocks, "x": M((1,))})[0].units == "2 blocks"
    assert roll_up(["head.w"], universe)[0].params == 2
    assert fold_names(["l.0.bn", "l.1.bn", "l.5.bn", "fc"]) == ["l.{0-1,5}.bn", "fc"]


def test_group_by_depth_and_counts():
    metas = {f"pretrained.model.blocks.{i}.attn.w": M((10,)) for i in range(24)}
    metas["scratch.out.w"] = M((1,))
    labels = [g.label for g in group_by_depth(metas, max_groups=4)]
    assert labels == ["pretrained.model.blocks.0-23", "scratch.out"]
    assert format_count(151_234_567) == "151M" and format_count(1234) == "1.2K"
    assert format_count(12) == "12"


def test_prefix_search_pieces():
    ckpt = {f"module._orig_mod.{k}": M((1,)) for k in ("a.w", "b.w")}
    assert common_prefix_chain(ckpt) == ["module.", "module._orig_mod."]
    assert split_known("module._orig_mod.") == ["module.", "_orig_mod."]
    assert split_known("x.y.module.") == ["x.y.", "module."]
    change = find_prefix_change(ckpt, {"a.w": M((1,)), "b.w": M((1,))})
    assert (change.strip, change.add, change.matched, change.baseline) == (
        "module._orig_mod.", "", 2, 0)
    # a model with a real top-level module called "module" is left alone
    same = {"module.a.w": M((1,))}
    assert not find_prefix_change(same, same).is_change
    # a single key that matches by name only (another shape) is not a prefix change
    assert not find_prefix_change({"enc.conv.weight": M((4, 3))},
                                  {"out.conv.weight": M((1, 3))}).is_change


def _new_timm_swin(official: dict[str, M]) -> dict[str, M]:
    """What timm >= 0.9 saves for an official Swin layout (FIELD-NOTES section 2)."""
    out = {}
    for key, meta in official.items():
        if key.endswith("attn_mask"):
            continue  # no longer saved
        key = re.sub(r"layers\.(\d)\.downsample\.",
                     lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        out[key.replace("pretrained.model.head.", "pretrained.model.head.fc.")] = meta
    return out


def test_new_timm_swin_file_against_the_official_variant():
    target = variant_target("dpt_swin2_tiny_256")
    assert target.derive is not None and "pretrained.model.head.weight" in target.unused
    new = {"module." + k: m for k, m in _new_timm_swin(dict(target.metas)).items()}
    report = diagnose(new, target)
    assert [f.kind for f in report.findings] == [Kind.PREFIX, Kind.DRIFT, Kind.DERIVED_MISSING,
                                                 Kind.UNUSED]
    assert report.verdict is Verdict.LOADS_AFTER_SAFE_FIXES
    assert "patch merging moved" in report.by_kind(Kind.DRIFT)[0].message
    assert simulate(new, report.fixes) == dict(target.metas)


def test_diagnose_against_variant_and_summary():
    official = dict(variant_target("midas_v21_small_256", build=False).metas)
    del official["scratch.output_conv.4.weight"]
    report = diagnose_against_variant(official, "MiDaS_small", build=False)
    assert report.target["name"] == "midas_v21_small_256"
    summary = report.summary()
    assert summary.startswith("incompatible: `scratch.output_conv.4.weight` (1 key")
    assert summary.endswith("Likely cause: the checkpoint lacks part of your model (saved from a "
                            "smaller or older model)")
    with pytest.raises(UnknownVariantError):
        variant_target("dpt_nonexistent_999")
