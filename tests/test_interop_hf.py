"""Official MiDaS layout <-> transformers DPTForDepthEstimation: the tables on every supported
variant's layout, lazy mapping, and transformers' own model on the converted reference weights.

Measured (torch 2.13 CPU, transformers 5.25): transformers' depth on the reference input equals
the official output within 1.6e-5 of its std for every variant, and midaskit's bit for bit for
ViT-L, hybrid and BEiT-B (the same float ops); the tests allow ``HF_TOLERANCE_OVER_STD``.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from conftest import REFERENCE
from midaskit.checkpoint import TensorMeta, find_state_dict, open_checkpoint
from midaskit.cli.main import main
from midaskit.errors import IncompatibleCheckpointError
from midaskit.interop import hf
from midaskit.interop.deps import MissingExtraError, require
from midaskit.interop.hf_tables import DROPPED_OFFICIAL_KEYS, HF_CONFIGS
from midaskit.interop.keymap import ComputedTensor, KeyMapError, KeyRule, apply_rules, meta_of
from midaskit.interop.source import open_source
from midaskit.layouts import load_layout
from midaskit.variants import get_variant

transformers = pytest.importorskip("transformers")

HF_TOLERANCE_OVER_STD = 1e-4
SMALL = ("dpt_swin2_tiny_256",)


def _hub_layout(variant: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of transformers' model for our config, in the hub (saved) layout."""
    config = transformers.DPTConfig.from_dict(hf.hf_config(variant))
    with torch.device("meta"):
        model = transformers.DPTForDepthEstimation(config)
    state = model.state_dict()
    try:  # transformers 5 renames on load and back on save; 4.x models already use hub names
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(model, state)
    except ImportError:
        pass
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("variant", hf.HF_VARIANTS)
def test_tables_give_transformers_exact_layout(variant):
    ours, dropped = hf.official_to_hf(load_layout(variant).metas, variant)
    assert {k: meta_of(v).shape for k, v in ours.items()} == _hub_layout(variant)
    assert all(any(d.matches(k) for d in DROPPED_OFFICIAL_KEYS) for k in dropped)


@pytest.mark.parametrize("variant", hf.HF_VARIANTS)
def test_tables_round_trip_on_the_layout(variant):
    layout = load_layout(variant)
    mapped, _ = hf.official_to_hf(layout.metas, variant)
    back_variant, back = hf.hf_to_official(mapped, hf.hf_config(variant))
    assert back_variant == variant
    # every official entry returns but the derived buffers, which the loader regenerates
    assert list(back) == [k for k in layout.metas if k not in layout.derived]
    assert {k: meta_of(v) for k, v in back.items()} == {k: layout.metas[k] for k in back}


@pytest.mark.parametrize("variant", hf.HF_VARIANTS)
def test_config_agrees_with_the_registry(variant):
    spec, config = get_variant(variant), HF_CONFIGS[variant]
    assert tuple(config["neck_hidden_sizes"]) == spec.in_widths
    image_size = config.get("backbone_config", config).get("image_size", config.get("image_size"))
    assert (image_size, image_size) == spec.net_size
    assert hf.preprocessor_config(variant)["size"] == {"height": spec.net_size[0],
                                                       "width": spec.net_size[1]}


class _Untouchable:
    """A lazy tensor whose bytes must not be read."""

    def __init__(self, meta: TensorMeta) -> None:
        self.meta, self.shape, self.dtype = meta, meta.shape, meta.dtype

    def materialize(self):
        raise AssertionError("a renamed key was read")


def test_hf_to_official_reads_no_bytes_for_renamed_keys():
    variant = "dpt_beit_base_384"
    mapped, _ = hf.official_to_hf(load_layout(variant).metas, variant)
    lazy = {k: _Untouchable(meta_of(v)) for k, v in mapped.items()}
    _, official = hf.hf_to_official(lazy, None)
    qkv = "pretrained.model.blocks.0.attn.qkv.weight"
    assert isinstance(official[qkv], ComputedTensor) and official[qkv].shape == (2304, 768)
    renamed = "pretrained.model.blocks.0.attn.q_bias"
    assert official[renamed] is lazy["backbone.encoder.layer.0.attention.attention.query.bias"]
    assert torch.equal(official["pretrained.model.head.weight"].materialize(),
                       torch.zeros(1000, 768))


def test_is_hf_layout():
    official = list(load_layout("dpt_large_384").metas)
    ours, _ = hf.official_to_hf(load_layout("dpt_large_384").metas, "dpt_large_384")
    assert hf.is_hf_layout(ours) and not hf.is_hf_layout(official)
    assert not hf.is_hf_layout(["neck.fusion_stage.layers.0.projection.weight"])
    assert hf.hf_family(ours) == "vit"


def test_templates_map_both_ways_with_index_arithmetic():
    rules = [KeyRule("scratch.refinenet{n}.out_conv.{p}",
                     "neck.fusion_stage.layers.{4-n}.projection.{p}"),
             KeyRule("scratch.layer{k}_rn.weight", "neck.convs.{k-1}.weight")]
    keys = {"scratch.refinenet4.out_conv.bias": 1, "scratch.layer1_rn.weight": 2}
    out, _ = apply_rules(keys, rules, [])
    assert out == {"neck.fusion_stage.layers.0.projection.bias": 1, "neck.convs.0.weight": 2}
    assert apply_rules(out, rules, [], reverse=True)[0] == keys
    with pytest.raises(KeyMapError, match="scratch.other"):
        apply_rules({"scratch.other": 0}, rules, [])


def test_unsupported_variant_and_incomplete_qkv_are_refused():
    with pytest.raises(IncompatibleCheckpointError, match="dpt_large_384"):
        hf.official_to_hf(load_layout("dpt_levit_224").metas, "dpt_levit_224")
    mapped, _ = hf.official_to_hf(load_layout("dpt_hybrid_384").metas, "dpt_hybrid_384")
    del mapped["dpt.encoder.layer.3.attention.attention.key.weight"]
    with pytest.raises(KeyMapError, match="needs 3 inputs"):
        hf.hf_to_official(mapped)


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'midaskit\[hf\]'"):
        require("transformers", "hf")


def test_existing_folder_is_not_replaced(tmp_path, reference_checkpoint):
    (tmp_path / "config.json").write_text("{}")
    path = reference_checkpoint("dpt_swin2_tiny_256")
    assert main(["convert", str(path), "--to", "hf", str(tmp_path), "--no-check"]) == 4
    assert (tmp_path / "config.json").read_text() == "{}"


@pytest.mark.slow
@pytest.mark.parametrize("variant", hf.HF_VARIANTS)
def test_transformers_model_gives_the_official_depth(variant, reference_checkpoint, tmp_path,
                                                     capsys):
    path = reference_checkpoint(variant)
    with open_source(path) as source:
        assert source.variant == variant
        folder, dropped = hf.write_hf_folder(source.tensors, variant, tmp_path / "hf")
    model, loading = hf.load_hf_model(folder)
    assert loading.loads_cleanly, loading
    x = torch.from_numpy(np.load(REFERENCE / "expected" / f"input_{variant}.npy"))
    expected = np.load(REFERENCE / "expected" / f"output_{variant}.npy")
    with torch.inference_mode():
        depth = model(pixel_values=x).predicted_depth.numpy()
    err = float(np.abs(depth - expected).max() / expected.std())
    with capsys.disabled():
        print(f"\n[hf] {variant}: transformers vs official max|err|/std = {err:.2e}")
    assert err < HF_TOLERANCE_OVER_STD

    # and back: every tensor transformers holds returns bit for bit, q/k/v re-fused
    with open_checkpoint(path) as original, open_source(folder) as back:
        tensors = find_state_dict(original.root).tensors
        assert back.variant == variant and back.hf
        for key, value in back.tensors.items():
            if key in dropped:
                continue
            assert torch.equal(value.materialize(), tensors[key].materialize()), key
        refilled = [k for k in back.tensors if k in dropped]
        assert all(k.startswith("pretrained.model.") for k in refilled)


@pytest.mark.slow
@pytest.mark.parametrize("variant", SMALL)
def test_cli_round_trip_with_checks(variant, reference_checkpoint, tmp_path, capsys):
    path = reference_checkpoint(variant)
    wrapped = tmp_path / "wrapped.pt"  # a container and a prefix: fixed on the way
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}, wrapped)
    assert main(["convert", str(wrapped), "--to", "hf", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "no missing or unexpected keys" in out and "module." in out
    back = tmp_path / "back.pt"
    assert main(["convert", str(tmp_path / "hf"), "--to", "midas", str(back)]) == 0
    original = torch.load(path, map_location="cpu", weights_only=True)
    restored = torch.load(back, map_location="cpu", weights_only=True)
    assert list(restored) == list(original)  # official order, derived buffers included
    dropped = {k for k in original if any(d.matches(k) for d in DROPPED_OFFICIAL_KEYS)}
    for key in original:
        if key not in dropped or key.endswith("attn_mask"):
            assert torch.equal(restored[key], original[key]), key


@pytest.mark.slow
def test_load_and_identify_accept_a_transformers_folder(reference_checkpoint, tmp_path):
    import midaskit

    variant = "dpt_swin2_tiny_256"
    path = reference_checkpoint(variant)
    assert main(["convert", str(path), "--to", "hf", str(tmp_path / "hf"), "--no-check"]) == 0
    for given in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):
        ident = midaskit.identify(given)
        assert ident.variant == variant and "transformers" in ident.wrapper
        loaded = midaskit.load(given)
        assert loaded.spec.name == variant
        assert "FromTransformers" in [s.fix for s in loaded.steps]
    x = torch.from_numpy(np.load(REFERENCE / "expected" / f"input_{variant}.npy"))
    official = midaskit.load(path).model
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), official(x))
