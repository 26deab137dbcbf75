"""One crafted checkpoint per doctor rule: the finding's kind, severity, words, evidence and fix."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from midaskit.checkpoint import Unwrapped
from midaskit.checkpoint.types import TensorMeta as M
from midaskit.doctor import (
    AdaptInputChannels,
    CastDtype,
    DropKeys,
    FillDerived,
    FillUnused,
    Kind,
    Rename,
    Reshape,
    Severity,
    Target,
    Unwrap,
    Verdict,
    diagnose,
    report_to_dict,
    simulate,
)
from midaskit.doctor.demo_models import TinyNet


def one(report, kind):
    json.dumps(report_to_dict(report))  # every finding's evidence is JSON-ready
    found = report.by_kind(kind)
    assert len(found) == 1, [f.message for f in report.findings]
    return found[0]


def metas_of(model: nn.Module) -> dict[str, M]:
    return {k: M(tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()}


def vit(blocks: int = 24, dim: int = 32, tokens: int = 577) -> dict[str, M]:
    """A ViT-like layout with the official MiDaS key names."""
    out = {"pretrained.model.patch_embed.proj.weight": M((dim, 3, 16, 16)),
           "pretrained.model.patch_embed.proj.bias": M((dim,)),
           "pretrained.model.pos_embed": M((1, tokens, dim))}
    for i in range(blocks):
        p = f"pretrained.model.blocks.{i}."
        out |= {p + "norm1.weight": M((dim,)), p + "norm1.bias": M((dim,)),
                p + "attn.qkv.weight": M((3 * dim, dim)), p + "attn.qkv.bias": M((3 * dim,)),
                p + "mlp.fc1.weight": M((4 * dim, dim)), p + "mlp.fc2.weight": M((dim, 4 * dim))}
    out["scratch.output_conv.weight"] = M((1, dim, 3, 3))
    return out


def test_identical_layout_loads_as_is():
    report = diagnose(vit(2), vit(2))
    assert report.verdict is Verdict.LOADS_AS_IS and report.exit_code == 0
    assert report.findings == () and report.fixes == () and report.cause == ""
    assert report.matched == len(vit(2))


def test_missing_blocks_roll_up_to_one_range_with_share():
    target = vit(24)
    ckpt = {k: m for k, m in target.items()
            if not any(k.startswith(f"pretrained.model.blocks.{i}.") for i in range(12, 24))}
    report = diagnose(ckpt, target)
    f = one(report, Kind.MISSING)
    total = sum(m.numel for m in target.values())
    gone = sum(m.numel for k, m in target.items() if k not in ckpt)
    assert f.severity is Severity.ERROR and report.verdict is Verdict.INCOMPATIBLE
    assert "`pretrained.model.blocks.12-23` (12 blocks, " in f.message
    assert f"{gone / total:.0%} of the model) are missing from the checkpoint" in f.message
    (group,) = f.evidence["groups"]
    assert group["label"] == "pretrained.model.blocks.12-23" and group["keys"] == 72
    assert group["params"] == gone and report.exit_code == 2
    assert "smaller" in report.cause or "lacks part" in report.cause


def test_nothing_in_common_says_another_architecture():
    report = diagnose({"encoder.conv.weight": M((4, 3, 3, 3))}, vit(1))
    assert "another architecture" in report.cause
    assert report.by_kind(Kind.UNEXPECTED)[0].severity is Severity.DECISION


def test_unexpected_keys_are_a_decision_with_a_drop_fix():
    target = vit(1)
    ckpt = {**target, "aux_head.weight": M((10, 32)), "aux_head.bias": M((10,))}
    report = diagnose(ckpt, target)
    f = one(report, Kind.UNEXPECTED)
    assert "`aux_head` (2 keys, 330 params, 1% of the checkpoint)" in f.message
    assert f.message.endswith("are in the checkpoint but not in the other checkpoint")
    (fix,) = f.fixes
    assert isinstance(fix, DropKeys) and not fix.safe and fix.allow_name == "drop-unexpected"
    assert report.verdict is Verdict.NEEDS_DECISION and report.exit_code == 2


def test_first_conv_input_channels_is_a_decision_with_adapt_fix():
    report = diagnose(metas_of(TinyNet(4)), TinyNet(3))
    f = one(report, Kind.SHAPE)
    assert f.evidence["cause"] == "input-channels" and f.severity is Severity.DECISION
    assert "`conv1.weight`: checkpoint (8, 4, 3, 3)" in f.message
    assert "the checkpoint's model took 4 input channels, yours takes 3" in f.message
    (fix,) = f.fixes
    assert fix == AdaptInputChannels("conv1.weight", 3, "drop-extra", reason=fix.reason)
    assert fix.allow_name == "adapt-input-channels"
    assert report.verdict is Verdict.NEEDS_DECISION


def test_more_input_channels_proposes_mean_mode():
    (fix,) = diagnose(metas_of(TinyNet(1)), TinyNet(3)).fixes
    assert isinstance(fix, AdaptInputChannels) and fix.mode == "mean" and fix.in_channels == 3


def test_inner_conv_channel_change_is_not_adapted():
    target = metas_of(TinyNet())
    ckpt = {**target, "conv2.weight": M((16, 4, 3, 3))}
    report = diagnose(ckpt, target)
    f = one(report, Kind.SHAPE)
    assert f.evidence["cause"] == "width" and f.severity is Severity.ERROR and not f.fixes


def test_classifier_size_names_the_class_counts():
    report = diagnose(metas_of(TinyNet(num_classes=1000)), TinyNet())
    f = one(report, Kind.SHAPE)
    assert f.evidence["cause"] == "classes"
    assert "predicts 1000 classes, yours 10" in f.message
    assert set(f.keys) == {"head.weight", "head.bias"}
    assert report.cause == "the checkpoint's head was trained for another number of classes"


def test_position_embedding_length_gives_the_resolutions():
    report = diagnose(vit(1, tokens=577), vit(1, tokens=1025))
    f = one(report, Kind.SHAPE)
    assert f.evidence["cause"] == "pos-embed"
    assert "a 24x24 position grid + 1 class token in the checkpoint, 32x32" in f.message
    assert "trained at 384 px" in f.message and "512 px (patch 16)" in f.message


@pytest.mark.parametrize(("rows", "rows_target", "words"), [
    (2212, 3972, "a 24x24 grid in the checkpoint, 32x32"),  # BEiT: (2g-1)^2 + 3
    (529, 2209, "a 12x12 window in the checkpoint, 24x24"),  # Swin: (2w-1)^2
])
def test_relative_position_table_gives_grid_or_window(rows, rows_target, words):
    key = "pretrained.model.blocks.0.attn.relative_position_bias_table"
    f = one(diagnose({key: M((rows, 16))}, {key: M((rows_target, 16))}), Kind.SHAPE)
    assert f.evidence["cause"] == "rel-pos-table" and words in f.message


def test_kernel_size_change():
    target = metas_of(TinyNet())
    f = one(diagnose({**target, "conv2.weight": M((16, 8, 5, 5))}, target), Kind.SHAPE)
    assert f.evidence["cause"] == "kernel-size"
    assert "a 5x5 kernel in the checkpoint, 3x3 in" in f.message


def test_rank_change_of_a_parameter():
    f = one(diagnose({"blocks.0.gamma": M((1, 8, 1, 1))}, {"blocks.0.gamma": M((8,))}),
            Kind.SHAPE)
    assert f.evidence["cause"] == "rank"
    assert "a 4-d tensor in the checkpoint, a 1-d one" in f.message


def test_many_width_changes_are_one_finding():
    report = diagnose(vit(4, dim=48), vit(4, dim=32))
    width = [f for f in report.by_kind(Kind.SHAPE) if f.evidence["cause"] == "width"]
    assert len(width) == 1 and "the same in" in width[0].message
    assert "another size" in report.cause or "resolution" in report.cause


def test_batchnorm_file_for_groupnorm_model_is_a_decision():
    report = diagnose(metas_of(TinyNet(norm="batch")), TinyNet(norm="group"))
    f = one(report, Kind.LAYER_TYPE)
    assert f.severity is Severity.DECISION
    assert ("2 layers (`norm1`, `norm2`) are a BatchNorm in the checkpoint and a GroupNorm in "
            "your model") in f.message
    (fix,) = f.fixes
    assert isinstance(fix, DropKeys) and fix.allow_name == "drop-running-stats"
    assert set(fix.keys) == {f"norm{i}.{s}" for i in (1, 2)
                             for s in ("running_mean", "running_var", "num_batches_tracked")}
    assert report.by_kind(Kind.UNEXPECTED) == [] and report.by_kind(Kind.NUM_BATCHES_TRACKED) == []


def test_groupnorm_file_for_batchnorm_model_is_incompatible():
    report = diagnose(metas_of(TinyNet(norm="group")), TinyNet(norm="batch"))
    f = one(report, Kind.LAYER_TYPE)
    assert f.severity is Severity.ERROR and not f.fixes
    assert "GroupNorm-like layer" in f.message
    assert "BatchNorm2d with running statistics" in f.message


def test_instance_norm_with_and_without_running_stats():
    ckpt = nn.Sequential(nn.Conv2d(3, 4, 1), nn.InstanceNorm2d(4, affine=True,
                                                              track_running_stats=True))
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.InstanceNorm2d(4, affine=True))
    f = one(diagnose(metas_of(ckpt), model), Kind.LAYER_TYPE)
    assert ("`1` is an InstanceNorm with running statistics in the checkpoint and an "
            "InstanceNorm2d without running statistics") in f.message


def test_manifest_target_without_module_types_uses_the_signature():
    ckpt = {"norm.weight": M((8,)), "norm.bias": M((8,)), "norm.running_mean": M((8,)),
            "norm.running_var": M((8,)), "norm.num_batches_tracked": M((), "int64")}
    f = one(diagnose(ckpt, {"norm.weight": M((8,)), "norm.bias": M((8,))}), Kind.LAYER_TYPE)
    assert "`norm` is a BatchNorm in the checkpoint and a GroupNorm-like layer" in f.message


def test_conv1x1_file_for_linear_model_reshapes_safely():
    report = diagnose({"proj.weight": M((16, 8, 1, 1)), "proj.bias": M((16,))}, nn.Sequential())
    assert report.verdict is Verdict.NEEDS_DECISION  # an empty model: keys are unexpected
    target = Target({"proj.weight": M((16, 8)), "proj.bias": M((16,))})
    report = diagnose({"proj.weight": M((16, 8, 1, 1)), "proj.bias": M((16,))}, target)
    f = one(report, Kind.LAYER_TYPE)
    assert f.severity is Severity.FIX
    assert "a Conv2d (1x1) in the checkpoint and a Linear" in f.message
    assert f.fixes == (Reshape((("proj.weight", (16, 8)),), f.fixes[0].reason),)
    assert report.verdict is Verdict.LOADS_AFTER_SAFE_FIXES


def test_conv3x3_for_linear_is_incompatible():
    target = Target({"proj.weight": M((16, 72)), "proj.bias": M((16,))})
    f = one(diagnose({"proj.weight": M((16, 8, 3, 3)), "proj.bias": M((16,))}, target),
            Kind.LAYER_TYPE)
    assert f.severity is Severity.ERROR


def test_renamed_module_is_a_certain_rename():
    target = metas_of(TinyNet())
    ckpt = {k.replace("head.", "classifier."): m for k, m in target.items()}
    report = diagnose(ckpt, target)
    f = one(report, Kind.RENAME)
    assert f.severity is Severity.FIX and "`classifier` in the checkpoint is `head`" in f.message
    assert f.fixes == (Rename((("classifier.weight", "head.weight"),
                               ("classifier.bias", "head.bias")), f.fixes[0].reason),)
    assert report.verdict is Verdict.LOADS_AFTER_SAFE_FIXES


def test_same_shapes_in_same_order_is_a_proposed_rename():
    target = {"proj.weight": M((8, 4)), "proj.bias": M((8,))}
    ckpt = {"proj_w": M((8, 4)), "proj_b": M((8,))}
    f = one(diagnose(ckpt, target), Kind.RENAME)
    assert f.severity is Severity.DECISION and f.fixes[0].allow_name == "rename"
    assert f.evidence["mapping"] == {"proj_w": "proj.weight", "proj_b": "proj.bias"}


def test_ambiguous_renames_are_reported_not_guessed():
    target = {"a.weight": M((8,)), "b.weight": M((8,))}
    ckpt = {"x.weight": M((8,)), "y.weight": M((8,)), "z.weight": M((8,))}
    report = diagnose(ckpt, target)
    assert report.by_kind(Kind.RENAME) == []
    amb = one(report, Kind.RENAME_AMBIGUOUS)
    assert amb.severity is Severity.INFO and "not guessed" in amb.message
    assert one(report, Kind.MISSING).severity is Severity.ERROR


RPI = "pretrained.model.blocks.0.attn.relative_position_index"


def _timm09_target(derive=None) -> Target:
    """A newer-timm layout: the index is a non-persistent buffer the model computes."""
    return Target({"pretrained.model.blocks.0.attn.qkv.weight": M((96, 32))},
                  derived={RPI}, non_persistent={RPI: M((577, 577), "int64")}, derive=derive)


def test_stored_non_persistent_derived_buffer_is_verified_and_dropped():
    ckpt = {"pretrained.model.blocks.0.attn.qkv.weight": M((96, 32)), RPI: M((577, 577), "int64")}
    report = diagnose(ckpt, _timm09_target(derive=lambda key: torch.zeros(577, 577)))
    f = one(report, Kind.DERIVED_EXTRA)
    assert f.severity is Severity.FIX and "timm >= 0.9" in f.message
    assert "checked against the computed values" in f.remedy
    (fix,) = f.fixes
    assert isinstance(fix, DropKeys) and fix.keys == (RPI,) and fix.expected is not None
    assert report.verdict is Verdict.LOADS_AFTER_SAFE_FIXES


def test_stored_derived_buffer_of_another_size_is_incompatible():
    ckpt = {"pretrained.model.blocks.0.attn.qkv.weight": M((96, 32)),
            RPI: M((1025, 1025), "int64")}
    f = one(diagnose(ckpt, _timm09_target()), Kind.DERIVED_EXTRA)
    assert f.severity is Severity.ERROR and "(1025, 1025) vs (577, 577)" in f.message


def test_known_derived_leaf_against_a_checkpoint_is_dropped():
    ckpt = {"pretrained.model.blocks.0.attn.qkv.weight": M((96, 32)), RPI: M((577, 577), "int64")}
    other = {"pretrained.model.blocks.0.attn.qkv.weight": M((96, 32))}
    f = one(diagnose(ckpt, other), Kind.DERIVED_EXTRA)
    assert f.severity is Severity.FIX and f.fixes[0].expected is None


def test_missing_derived_buffer_is_filled_when_computable():
    target = Target({"attn.qkv.weight": M((96, 32)), "attn.relative_position_index":
                     M((577, 577), "int64")}, derived={"attn.relative_position_index"},
                    derive=lambda key: torch.zeros(577, 577, dtype=torch.int64))
    report = diagnose({"attn.qkv.weight": M((96, 32))}, target)
    f = one(report, Kind.DERIVED_MISSING)
    assert f.severity is Severity.FIX and isinstance(f.fixes[0], FillDerived)
    no_derive = Target(target.metas, derived=target.derived)
    assert one(diagnose({"attn.qkv.weight": M((96, 32))}, no_derive),
               Kind.DERIVED_MISSING).severity is Severity.ERROR


def test_missing_num_batches_tracked_is_filled_with_zero():
    target = metas_of(TinyNet())
    ckpt = {k: m for k, m in target.items() if not k.endswith("num_batches_tracked")}
    report = diagnose(ckpt, TinyNet())
    f = one(report, Kind.NUM_BATCHES_TRACKED)
    assert f.severity is Severity.FIX
    assert "2 BatchNorm layers lack `num_batches_tracked`" in f.message
    assert isinstance(f.fixes[0], FillDerived) and report.verdict is Verdict.LOADS_AFTER_SAFE_FIXES


def test_extra_num_batches_tracked_is_dropped():
    full = metas_of(TinyNet())
    target = Target({k: m for k, m in full.items() if not k.endswith("num_batches_tracked")})
    f = one(diagnose(full, target), Kind.NUM_BATCHES_TRACKED)
    assert f.severity is Severity.FIX and f.fixes[0].keys == ("norm1.num_batches_tracked",
                                                              "norm2.num_batches_tracked")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_file_gets_a_safe_cast(dtype):
    target = metas_of(TinyNet())
    ckpt = {k: M(m.shape, dtype if m.is_floating else m.dtype) for k, m in target.items()}
    report = diagnose(ckpt, target)
    f = one(report, Kind.DTYPE)
    assert f.severity is Severity.FIX and f.fixes == (CastDtype("float32", (), f.fixes[0].reason),)
    assert f"all 14 floating-point tensors are {dtype} in the file and float32" in f.message
    assert report.cause == f"the checkpoint was saved in {dtype}"


def test_narrowing_dtype_is_only_noted():
    target = {k: M(m.shape, "float16" if m.is_floating else m.dtype)
              for k, m in metas_of(TinyNet()).items()}
    report = diagnose(metas_of(TinyNet()), target)
    assert one(report, Kind.DTYPE).severity is Severity.INFO
    assert report.verdict is Verdict.LOADS_AS_IS


def test_unused_keys_missing_are_filled_and_present_are_noted():
    full = metas_of(TinyNet())
    target = Target(full, unused={"head.weight", "head.bias"})
    ckpt = {k: m for k, m in full.items() if not k.startswith("head.")}
    f = one(diagnose(ckpt, target), Kind.UNUSED)
    assert f.severity is Severity.FIX and isinstance(f.fixes[0], FillUnused)
    assert "never uses in forward" in f.message
    note = one(diagnose(full, target), Kind.UNUSED)
    assert note.severity is Severity.INFO and "never used in forward" in note.message


def test_container_finding_names_the_path_and_the_extras():
    target = metas_of(TinyNet())
    found = Unwrapped(tensors={}, path=("model",), candidates=[(("model_ema",), 16)],
                      extras={"optimizer": "optimizer state (10 tensors)", "epoch": "3"})
    report = diagnose(target, target, unwrapped=found)
    f = one(report, Kind.CONTAINER)
    assert f.fixes == (Unwrap(("model",), f.fixes[0].reason),) and f.severity is Severity.FIX
    assert "['model']" in f.message and "optimizer state (10 tensors)" in f.message
    assert "['model_ema'] (16 tensors)" in f.message
    assert report.checkpoint["container"] == ["model"]


def test_findings_are_sorted_worst_first_and_plan_reaches_the_target():
    target = metas_of(TinyNet())
    ckpt = {"module." + k: M(m.shape, "float16" if m.is_floating else m.dtype)
            for k, m in metas_of(TinyNet(num_classes=1000)).items()}
    report = diagnose(ckpt, target)
    ranks = [f.severity.rank for f in report.findings]
    assert ranks == sorted(ranks, reverse=True) and report.findings[0].kind == Kind.SHAPE
    fixable = {"module." + k: m for k, m in target.items()}
    fixed = simulate(fixable, diagnose(fixable, target).fixes)
    assert fixed == target
