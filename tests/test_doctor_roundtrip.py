"""diagnose -> plan -> apply -> ``load_state_dict(strict=True)``, for every fix kind, on torch
state dicts and on lazily read files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from midaskit.checkpoint import LazyTensor, find_state_dict, open_checkpoint
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
    Target,
    Unwrap,
    Verdict,
    apply_fixes,
    diagnose,
    materialize,
    plan_fixes,
    simulate,
)
from midaskit.doctor.demo_models import TinyNet


def trained(**kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return TinyNet(**kwargs).state_dict()


def roundtrip(state, model: nn.Module, allow=(), target=None, kind=None):
    """Diagnose, apply the allowed fixes, load strictly; returns (report, fixed state, records)."""
    report = diagnose(state, target if target is not None else model)
    plan = plan_fixes(report, allow)
    assert plan.can_apply, [f.message for f in report.findings]
    assert simulate(state, plan.fixes).keys() == model.state_dict().keys()
    fixed, records = apply_fixes(state, plan.fixes)
    model.load_state_dict(materialize(fixed), strict=True)
    if kind is not None:
        assert any(isinstance(f, kind) for f in plan.fixes), plan.fixes
    assert len(records) == len(plan.fixes)
    return report, fixed, records


def assert_same_weights(model: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key].to(value.dtype)), key


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "net.", "backbone.",
                                    "core.core.", "module._orig_mod.", "_orig_mod.module.",
                                    "wrapper.inner."])
def test_strip_prefix_round_trip(prefix):
    sd = trained()
    model = TinyNet()
    report, _, records = roundtrip({prefix + k: v for k, v in sd.items()}, model,
                                   kind=StripPrefix)
    assert report.verdict is Verdict.LOADS_AFTER_SAFE_FIXES
    assert "".join(f.prefix for f in report.fixes) == prefix
    assert_same_weights(model, sd)


def test_real_data_parallel_keys():
    sd = nn.DataParallel(TinyNet()).state_dict()
    assert next(iter(sd)).startswith("module.")
    roundtrip(sd, TinyNet(), kind=StripPrefix)


def test_add_prefix_round_trip():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = TinyNet()

    sd = trained()
    model = Wrapper()
    report, *_ = roundtrip(sd, model, kind=AddPrefix)
    assert report.fixes == (AddPrefix("model.", report.fixes[0].reason),)
    assert_same_weights(model.model, sd)


@pytest.mark.parametrize(("sep", "strip"), [("_", ""), ("", "model_ema.")])
def test_ema_underscore_keys_round_trip(sep, strip):
    sd = trained()
    ema = {strip + "module" + sep + k.replace(".", sep): v for k, v in sd.items()}
    ema[strip + "decay"] = torch.tensor(0.999)
    ema[strip + "num_updates"] = torch.tensor(100)
    model = TinyNet()
    report, *_ = roundtrip(ema, model, kind=Rename)
    assert {f.kind for f in report.findings} == {"ema-keys", "bookkeeping"}
    assert_same_weights(model, sd)


def test_certain_and_proposed_renames_round_trip():
    sd = trained()
    renamed = {k.replace("head.", "classifier."): v for k, v in sd.items()}
    roundtrip(renamed, TinyNet(), kind=Rename)
    flat = {k.replace("head.weight", "fc_w").replace("head.bias", "fc_b"): v
            for k, v in sd.items()}
    assert not plan_fixes(diagnose(flat, TinyNet())).can_apply
    roundtrip(flat, TinyNet(), allow=["rename"], kind=Rename)


def test_rename_regex_written_by_hand_then_loads_as_is():
    sd = {k.replace("conv", "layers.conv"): v for k, v in trained().items()}
    fixed, (record,) = apply_fixes(sd, [RenameRegex(r"^layers\.", "", "old code layout")])
    assert record.keys == ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")
    assert diagnose(fixed, TinyNet()).verdict is Verdict.LOADS_AS_IS


class DerivedAttention(nn.Module):
    """A layer with a computed index, persistent or not (timm < 0.9 or >= 0.9)."""

    def __init__(self, grid: int = 3, persistent: bool = True) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(4, 4)
        self.register_buffer("relative_position_index", self._index(), persistent=persistent)

    def _index(self) -> torch.Tensor:
        return torch.arange(self.grid * self.grid).view(self.grid, self.grid)

    def derived_buffers(self) -> dict[str, torch.Tensor]:
        return {"relative_position_index": self._index()}


def test_verify_and_drop_a_stored_non_persistent_index():
    sd = DerivedAttention(persistent=True).state_dict()
    model = DerivedAttention(persistent=False)
    report, _, records = roundtrip(sd, model, kind=DropKeys)
    assert report.findings[0].kind == "derived-extra"
    assert "checked 1 against the computed values" in records[0].summary
    wrong = {**sd, "relative_position_index": sd["relative_position_index"].flip(0)}
    plan = plan_fixes(diagnose(wrong, model))
    with pytest.raises(Exception, match="differs from the value your model computes"):
        apply_fixes(wrong, plan.fixes)


def test_fill_a_missing_persistent_index():
    sd = {k: v for k, v in DerivedAttention().state_dict().items() if "index" not in k}
    model = DerivedAttention()
    roundtrip(sd, model, kind=FillDerived)
    assert torch.equal(model.relative_position_index, model._index())


def test_recompute_an_index_made_for_another_size():
    sd = DerivedAttention(grid=2).state_dict()
    report, *_ = roundtrip(sd, DerivedAttention(grid=3), kind=FillDerived)
    assert report.findings[0].evidence["cause"] == "derived"


def test_fill_num_batches_tracked_of_a_very_old_file():
    sd = {k: v for k, v in trained().items() if "num_batches_tracked" not in k}
    roundtrip(sd, TinyNet(), kind=FillDerived)


def test_drop_running_stats_when_allowed():
    sd = trained(norm="batch")
    assert not plan_fixes(diagnose(sd, TinyNet(norm="group"))).can_apply
    model = TinyNet(norm="group")
    roundtrip(sd, model, allow=["drop-running-stats"], kind=DropKeys)
    assert torch.equal(model.norm1.weight, sd["norm1.weight"])


def test_drop_unexpected_when_allowed():
    sd = {**trained(), "aux.weight": torch.ones(3)}
    roundtrip(sd, TinyNet(), allow=["drop-unexpected"], kind=DropKeys)


def test_fill_unused_head():
    full = TinyNet()
    target = Target.from_module(full, unused=("head.weight", "head.bias"))
    sd = {k: v for k, v in trained().items() if not k.startswith("head.")}
    roundtrip(sd, full, target=target, kind=FillUnused)
    assert not full.head.weight.any()


def test_reshape_conv1x1_to_linear():
    conv = nn.Sequential(nn.Conv2d(8, 16, 1))
    lin = nn.Sequential(nn.Linear(8, 16))
    roundtrip(conv.state_dict(), lin, kind=Reshape)
    x = torch.randn(2, 8)
    assert torch.allclose(lin(x), conv(x[:, :, None, None]).flatten(1), atol=1e-6)


@pytest.mark.parametrize(("c_file", "mode"), [(4, "drop-extra"), (4, "mean"), (1, "mean"),
                                              (1, "zero-pad")])
def test_adapt_input_channels_round_trip(c_file, mode):
    sd = trained(in_channels=c_file)
    report = diagnose(sd, TinyNet())
    plan = plan_fixes(report, ["adapt-input-channels"], adapt_mode=mode)
    fixed, _ = apply_fixes(sd, plan.fixes)
    TinyNet().load_state_dict(fixed, strict=True)
    assert isinstance(plan.fixes[0], AdaptInputChannels) and plan.fixes[0].mode == mode


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cast_half_precision_round_trip(dtype):
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in trained().items()}
    model = TinyNet()
    _, fixed, _ = roundtrip(sd, model, kind=CastDtype)
    assert all(v.dtype == torch.float32 for k, v in fixed.items() if "num_batches" not in k)
    assert_same_weights(model, sd)


def test_unwrap_a_training_checkpoint_read_lazily(tmp_path):
    """The real reader: {'model', 'optimizer'} file, key-only fixes keep LazyTensors unread."""
    sd = trained()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}, "epoch": 2},
               path)
    with open_checkpoint(path) as ckpt:
        found = find_state_dict(ckpt.root)
        report = diagnose(found.tensors, TinyNet(), unwrapped=found)
        plan = plan_fixes(report)
        assert isinstance(plan.fixes[0], Unwrap) and isinstance(plan.fixes[1], StripPrefix)
        fixed, records = apply_fixes(ckpt.root, plan.fixes)
        assert all(isinstance(v, LazyTensor) for v in fixed.values())
        assert records[0].summary == "took 16 tensors from ['model']"
        model = TinyNet()
        model.load_state_dict(materialize(fixed), strict=True)
    assert_same_weights(model, sd)
