"""midaskit.load: from a file alone to a ready model, through containers, prefixes, fp16, drifts;
and the errors that name the cause when a file does not fit."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from conftest import REFERENCE
from drift_util import to_new_timm_layout
from midaskit import load
from midaskit.errors import IncompatibleCheckpointError, UnsafeCheckpointError

SMALL = "midas_v21_small_256"
LEVIT = "dpt_levit_224"


def _reference(variant: str) -> tuple[torch.Tensor, np.ndarray]:
    x = torch.from_numpy(np.load(REFERENCE / "expected" / f"input_{variant}.npy"))
    return x, np.load(REFERENCE / "expected" / f"output_{variant}.npy")


def _error_over_std(model, variant: str) -> float:
    x, expected = _reference(variant)
    with torch.inference_mode():
        out = model(x.to(next(model.parameters()).dtype)).float().numpy()
    return float(np.abs(out - expected).max() / expected.std())


@pytest.fixture(scope="module")
def small_state(reference_checkpoint) -> OrderedDict:
    return torch.load(reference_checkpoint(SMALL), weights_only=True)


@pytest.fixture(scope="module")
def levit_state(reference_checkpoint) -> OrderedDict:
    return torch.load(reference_checkpoint(LEVIT), weights_only=True)


def test_official_file_loads_and_computes_the_reference(reference_checkpoint):
    loaded = load(reference_checkpoint(SMALL))
    assert loaded.spec.name == SMALL
    assert loaded.steps == []  # the official layout loads as is
    assert _error_over_std(loaded.model, SMALL) < 1e-5
    model, transform = loaded  # unpacks like the official loader's pair
    assert transform.preprocess.net_w == 256 and not model.training


def test_wrapped_prefixed_file_loads_with_a_log(tmp_path, small_state):
    path = tmp_path / "trained.ckpt"
    wrapped = {f"module._orig_mod.{k}": v for k, v in small_state.items()}
    torch.save({"model": wrapped, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
               path)
    loaded = load(path)
    fixes = [s.fix for s in loaded.steps]
    assert fixes[:3] == ["Unwrap", "StripPrefix", "StripPrefix"]  # one record per prefix
    assert "'module.'" in loaded.steps[1].summary and "DataParallel" in loaded.steps[1].reason
    assert "'_orig_mod.'" in loaded.steps[2].summary
    assert _error_over_std(loaded.model, SMALL) < 1e-5


def test_half_precision_file_is_cast(tmp_path, small_state):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in small_state.items()},
               path)
    loaded = load(path)
    assert "CastDtype" in [s.fix for s in loaded.steps]
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert _error_over_std(loaded.model, SMALL) < 5e-2  # the weights themselves lost precision


def test_old_file_without_num_batches_tracked_loads(tmp_path, small_state):
    path = tmp_path / "old.pt"
    torch.save({k: v for k, v in small_state.items() if "num_batches_tracked" not in k}, path)
    loaded = load(path)
    filled = [s for s in loaded.steps if s.fix == "FillDerived"]
    assert filled and len(filled[0].keys) == sum("num_batches_tracked" in k for k in small_state)
    assert _error_over_std(loaded.model, SMALL) < 1e-5


def test_load_in_bfloat16(reference_checkpoint):
    loaded = load(reference_checkpoint(LEVIT), dtype=torch.bfloat16)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert _error_over_std(loaded.model, LEVIT) < 0.1


def test_named_variant_that_the_file_contradicts(reference_checkpoint):
    with pytest.raises(IncompatibleCheckpointError) as info:
        load(reference_checkpoint(SMALL), variant="dpt_levit_224")
    message = str(info.value)
    assert f"these are {SMALL} weights, not dpt_levit_224" in message


def test_named_variant_that_matches(reference_checkpoint):
    assert load(reference_checkpoint(LEVIT), variant="DPT_LeViT_224").spec.name == LEVIT


def test_wrong_derived_buffer_is_refused(tmp_path, levit_state):
    state = OrderedDict(levit_state)
    key = next(k for k in state if k.endswith("attention_bias_idxs"))
    state[key] = state[key].flip(0)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(IncompatibleCheckpointError, match="differs from the value"):
        load(tmp_path / "bad.pt")


def test_missing_learned_layers_are_explained(tmp_path, levit_state):
    state = OrderedDict((k, v) for k, v in levit_state.items()
                        if not k.startswith("scratch.refinenet2."))
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(IncompatibleCheckpointError) as info:
        load(tmp_path / "partial.pt", variant=LEVIT)
    assert "scratch.refinenet2" in str(info.value)


def test_unsafe_file_is_refused_and_never_runs(tmp_path, small_state):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": dict(small_state), "hook": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError) as info:
        load(tmp_path / "evil.pt")
    assert "system" in str(info.value)
    assert not marker.exists()


@pytest.mark.slow
def test_beit_file_from_new_timm_loads_exactly(tmp_path, reference_checkpoint):
    variant = "dpt_beit_base_384"
    state = torch.load(reference_checkpoint(variant), weights_only=True)
    torch.save(to_new_timm_layout(state, "beit"), tmp_path / "new.pt")
    loaded = load(tmp_path / "new.pt")
    filled = [s for s in loaded.steps if s.fix == "FillDerived"]
    assert filled and len(filled[0].keys) == 12  # one relative_position_index per block
    assert _error_over_std(loaded.model, variant) < 1e-3


@pytest.mark.slow
def test_swin2_file_from_new_timm_loads_exactly(tmp_path, reference_checkpoint):
    variant = "dpt_swin2_tiny_256"
    state = torch.load(reference_checkpoint(variant), weights_only=True)
    torch.save(to_new_timm_layout(state, "swin2"), tmp_path / "new.pt")
    loaded = load(tmp_path / "new.pt")
    assert [s.fix for s in loaded.steps][:1] == ["UndoDrift"]
    official = load(reference_checkpoint(variant)).model.state_dict()
    ours = loaded.model.state_dict()
    assert list(ours) == list(official)
    assert all(torch.equal(ours[k], official[k]) for k in ours)
    assert _error_over_std(loaded.model, variant) < 1e-3
