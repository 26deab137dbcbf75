"""The packaged layouts equal the reference manifests, and the registry is complete."""

from __future__ import annotations

import pytest

import refweights
from conftest import VARIANT_NAMES
from midaskit.errors import UnknownVariantError
from midaskit.layouts import load_layout
from midaskit.variants import REGISTRY, all_variants, get_variant


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_packaged_layout_equals_manifest(variant):
    manifest = refweights.load_manifest(variant)
    layout = load_layout(variant)
    assert [(k, list(m.shape), m.dtype) for k, m in layout.metas.items()] == [
        (e["key"], e["shape"], e["dtype"]) for e in manifest["entries"]
    ]
    assert layout.derived == {e["key"] for e in manifest["entries"] if e["derived"]}
    assert layout.num_params == manifest["num_params"] == get_variant(variant).num_params


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_registry_preprocessing_matches_manifest(variant):
    manifest = refweights.load_manifest(variant)
    pre = get_variant(variant).preprocess
    assert (pre.net_w, pre.net_h) == (manifest["net_w"], manifest["net_h"])
    assert pre.resize_mode == manifest["resize_mode"]
    assert pre.keep_aspect_ratio == manifest["keep_aspect_ratio"]
    assert pre.ensure_multiple_of == manifest["ensure_multiple_of"]
    assert list(pre.mean) == manifest["normalization"]["mean"]
    assert list(pre.std) == manifest["normalization"]["std"]


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_registry_widths_and_hooks_fit_the_layout(variant):
    spec = get_variant(variant)
    metas = load_layout(variant).metas
    for i, width in enumerate(spec.in_widths, start=1):
        assert metas[f"scratch.layer{i}_rn.weight"].shape[1] == width
    assert f"scratch.layer{len(spec.in_widths) + 1}_rn.weight" not in metas
    assert metas["scratch.output_conv.0.weight"].shape[1] == spec.head_features[0]
    assert metas["scratch.output_conv.2.weight"].shape[0] == spec.head_features[1]
    if spec.hooks:
        assert len(spec.hooks) == len(spec.in_widths)
        blocks = [k for k in metas if k.startswith("pretrained.model.blocks.")]
        if blocks:  # plain transformer stacks: hooks index existing blocks
            depth = 1 + max(int(k.split(".")[3]) for k in blocks)
            assert max(spec.hooks) < depth


def test_registry_names_are_unique_and_complete():
    names = [spec.name for spec in all_variants()]
    assert len(names) == len(set(names)) == 13
    hub = [spec.hub_name for spec in all_variants()]
    assert len(set(hub)) == 13
    files = [f for spec in all_variants() for f in spec.file_names]
    assert len(files) == len(set(files))


@pytest.mark.parametrize(
    "alias, name",
    [("DPT_SwinV2_T_256", "dpt_swin2_tiny_256"), ("dpt_swinv2_t_256", "dpt_swin2_tiny_256"),
     ("midas_v21-f6b98070.pt", "midas_v21_384"), ("MiDaS_small", "midas_v21_small_256"),
     ("dpt_hybrid-midas-501f0c75", "dpt_hybrid_384"), ("DPT_BEiT_L_512", "dpt_beit_large_512")],
)
def test_aliases_resolve(alias, name):
    assert get_variant(alias).name == name


def test_unknown_variant_suggests_close_names():
    with pytest.raises(UnknownVariantError, match="dpt_beit_large_512"):
        get_variant("dpt_beit_large_521")


def test_duplicate_names_raise():
    from midaskit.variants import _make_registry

    spec = REGISTRY["dpt_large_384"]
    with pytest.raises(ValueError, match="duplicate"):
        _make_registry((spec, spec))
