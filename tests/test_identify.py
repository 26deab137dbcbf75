"""Identification from metadata: every variant, near twins, prefixes, drifts, relatives."""

from __future__ import annotations

import json

import pytest

import refweights
from conftest import REFERENCE, VARIANT_NAMES
from drift_util import to_new_timm_layout
from midaskit.checkpoint.types import TensorMeta
from midaskit.identification import identify_metas
from midaskit.variants import get_variant


def _metas(variant: str) -> dict[str, TensorMeta]:
    return {e["key"]: TensorMeta(tuple(e["shape"]), e["dtype"])
            for e in refweights.load_manifest(variant)["entries"]}


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_every_variant_identifies_as_itself(variant):
    result = identify_metas(_metas(variant))
    assert result.variant == variant
    assert result.candidates[0].score == 1.0
    assert result.candidates[1].score < 1.0
    assert result.evidence


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "model.",
                                    "net.", "core.core."])
@pytest.mark.parametrize("variant", ["dpt_beit_large_384", "midas_v21_small_256"])
def test_prefixes_are_seen_through(variant, prefix):
    result = identify_metas({prefix + k: m for k, m in _metas(variant).items()})
    assert result.variant == variant
    assert result.prefix == prefix
    assert (result.wrapper == "ZoeDepth") == (prefix == "core.core.")


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_half_precision_files_identify(variant):
    metas = {k: TensorMeta(m.shape, "float16" if m.is_floating else m.dtype)
             for k, m in _metas(variant).items()}
    assert identify_metas(metas).variant == variant


@pytest.mark.parametrize("variant", [v for v in VARIANT_NAMES
                                     if get_variant(v).family in ("beit", "swin", "swin2")])
def test_files_resaved_by_new_timm_identify(variant):
    spec = get_variant(variant)
    new = to_new_timm_layout(_metas(variant), spec.family)
    result = identify_metas(new)
    assert result.variant == variant
    if spec.family != "beit":
        assert result.drifts == ["swin-timm09-layout"]


@pytest.mark.parametrize("variant", [v for v in VARIANT_NAMES
                                     if get_variant(v).family in ("beit", "swin", "swin2")])
def test_new_timm_layout_helper_matches_the_reference_drift_report(variant):
    """Our model of the timm 1.0 layout is the one the reference recorded."""
    report = json.loads((REFERENCE / "timm_drift" / f"timm1_{variant}.json").read_text())
    old = _metas(variant)
    new = to_new_timm_layout(old, get_variant(variant).family)
    assert sorted(old.keys() - new.keys()) == sorted(report["ckpt_keys_not_in_new_model"])
    assert sorted(new.keys() - old.keys()) == sorted(report["new_model_keys_not_in_ckpt"])
    assert len(new) == report["num_entries_new"]
    # shape changes of keys that exist in both layouts (the moved patch-merging layers)
    changed = {k: list(new[k].shape) for k in new.keys() & old.keys()
               if new[k].shape != old[k].shape}
    assert changed == {m["key"]: m["new"] for m in report["shape_mismatches"]}


def test_beit_near_twins_are_told_apart_by_the_table():
    r512 = identify_metas(_metas("dpt_beit_large_512"))
    r384 = identify_metas(_metas("dpt_beit_large_384"))
    assert (r512.variant, r384.variant) == ("dpt_beit_large_512", "dpt_beit_large_384")
    assert any("window 32x32 (512 px input)" in e for e in r512.evidence)
    assert any("window 24x24 (384 px input)" in e for e in r384.evidence)


@pytest.mark.parametrize("variant", ["dpt_swin2_large_384", "dpt_swin2_base_384",
                                     "dpt_swin2_tiny_256"])
def test_swinv2_sizes_are_told_apart(variant):
    result = identify_metas(_metas(variant))
    assert result.variant == variant
    others = [c for c in result.candidates if c.variant.startswith("dpt_swin2")][1:]
    assert all(c.score < 0.5 for c in others)


def test_depth_anything_is_named():
    metas = {"pretrained.blocks.0.ls1.gamma": TensorMeta((384,)),
             "pretrained.blocks.0.attn.qkv.weight": TensorMeta((1152, 384)),
             "depth_head.projects.0.weight": TensorMeta((48, 384, 1, 1))}
    result = identify_metas(metas)
    assert result.variant is None and "Depth-Anything" in result.relative
    assert "Depth-Anything" in result.summary()


def test_transformers_layout_is_named():
    metas = {"dpt.embeddings.cls_token": TensorMeta((1, 1, 1024)),
             "neck.reassemble_stage.layers.0.projection.weight": TensorMeta((256, 1024, 1, 1)),
             "head.head.0.weight": TensorMeta((128, 256, 3, 3))}
    result = identify_metas(metas)
    assert result.variant is None and "transformers" in result.relative


def test_unrelated_checkpoint_is_not_midas_and_names_the_closest():
    metas = {f"layer{i}.conv.weight": TensorMeta((16, 16, 3, 3)) for i in range(10)}
    result = identify_metas(metas)
    assert result.variant is None and result.relative is None
    assert result.summary().startswith("not a MiDaS checkpoint; the closest is")


def test_truncated_midas_file_is_not_confidently_identified():
    metas = _metas("dpt_large_384")
    half = dict(list(metas.items())[: len(metas) // 2])
    result = identify_metas(half)
    assert result.variant is None
    assert result.best.variant == "dpt_large_384"
