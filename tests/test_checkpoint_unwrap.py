"""Finding the state dict in every container shape training scripts write."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from midaskit.checkpoint import LazyTensor, find_state_dict, open_checkpoint
from midaskit.checkpoint.unwrap import describe, is_ema_path
from midaskit.errors import CheckpointFormatError


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def optimizer_state(model: torch.nn.Module) -> dict:
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(1, 3, 5, 5)).sum().backward()
    opt.step()
    return opt.state_dict()  # Adam: 2 tensors + step per parameter, more than the model has


def reopen(obj: object, tmp_path: Path):
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    return open_checkpoint(path).root


@pytest.fixture
def sd() -> OrderedDict:
    return tiny_model().state_dict()


def test_bare_state_dict(sd, tmp_path: Path) -> None:
    found = find_state_dict(reopen(sd, tmp_path))
    assert found.path == () and found.extras == {} and found.candidates == []
    assert list(found.tensors) == list(sd)
    assert all(isinstance(t, LazyTensor) for t in found.tensors.values())
    assert found.module_class is None


def test_model_and_optimizer(tmp_path: Path) -> None:
    model = tiny_model()
    obj = {"model": model.state_dict(), "optimizer": optimizer_state(model), "epoch": 17}
    found = find_state_dict(reopen(obj, tmp_path))
    assert found.path == ("model",)
    assert list(found.tensors) == list(model.state_dict())
    assert found.extras["epoch"] == "17"
    assert found.extras["optimizer"].startswith("optimizer state (")
    assert found.candidates == []  # optimizer moments are never candidates


def test_lightning_checkpoint(tmp_path: Path) -> None:
    model = tiny_model()
    prefixed = {f"model.{k}": v for k, v in model.state_dict().items()}
    obj = {
        "epoch": 4,
        "global_step": 1200,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": prefixed,
        "loops": {"fit_loop": {"epoch_progress": {"current": 4}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
        "optimizer_states": [optimizer_state(model)],
        "lr_schedulers": [{"last_epoch": 4, "base_lrs": [0.001]}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.001, "backbone": "beitl16_512"},
    }
    found = find_state_dict(reopen(obj, tmp_path))
    assert found.path == ("state_dict",)
    assert list(found.tensors) == list(prefixed)  # prefixes are the doctor's job
    assert found.extras["optimizer_states"].startswith("optimizer state: 1 optimizer(s) (")
    assert found.extras["hyper_parameters"] == "dict with 2 keys"
    assert found.extras["pytorch-lightning_version"] == "'2.1.0'"
    assert found.extras["global_step"] == "1200"
    assert found.extras["lr_schedulers"] == "list of 1 items"


@pytest.mark.parametrize("key", ["state_dict", "model", "net", "module"])
def test_single_wrapper_keys(key: str, sd, tmp_path: Path) -> None:
    found = find_state_dict(reopen({key: sd, "iteration": 5}, tmp_path))
    assert found.path == (key,) and found.extras == {"iteration": "5"}


@pytest.mark.parametrize(
    ("plain", "ema"),
    [("state_dict", "state_dict_ema"), ("model", "model_ema"), ("model", "ema")],
)
def test_plain_weights_before_their_ema_copy(plain: str, ema: str, sd, tmp_path: Path) -> None:
    ema_sd = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    root = reopen({ema: ema_sd, plain: sd}, tmp_path)  # EMA first in the file: order is no hint
    found = find_state_dict(root)
    assert found.path == (plain,)
    assert found.candidates == [((ema,), len(sd))]
    assert found.extras[ema] == f"state dict ({len(sd)} tensors)"
    chosen_ema = find_state_dict(root, prefer_ema=True)
    assert chosen_ema.path == (ema,)
    assert torch.equal(chosen_ema.tensors["0.weight"].materialize(), sd["0.weight"] + 1)
    assert find_state_dict(root, path=(ema,)).path == (ema,)


def test_ema_alone_is_chosen(sd, tmp_path: Path) -> None:
    found = find_state_dict(reopen({"model_ema": sd, "epoch": 1}, tmp_path))
    assert found.path == ("model_ema",)


def test_ema_much_smaller_than_model_does_not_win_with_prefer_ema(sd, tmp_path: Path) -> None:
    root = reopen({"model": sd, "ema": {"decay": torch.tensor(0.999)}}, tmp_path)
    assert find_state_dict(root, prefer_ema=True).path == ("model",)


def test_nested_any_depth(sd, tmp_path: Path) -> None:
    obj = {"meta": {"step": 3}, "checkpoint": {"model": {"state_dict": sd}, "note": "x"}}
    found = find_state_dict(reopen(obj, tmp_path))
    assert found.path == ("checkpoint", "model", "state_dict")
    assert found.extras == {"meta": "dict with 1 keys", "checkpoint/note": "'x'"}


def test_list_of_models(sd, tmp_path: Path) -> None:
    small = {"head.weight": torch.zeros(2)}
    found = find_state_dict(reopen({"models": [small, sd]}, tmp_path))
    assert found.path == ("models", "1")
    assert found.candidates == [(("models", "0"), 1)]


def test_most_tensors_then_dotted_keys(tmp_path: Path) -> None:
    flat = {f"w{i}": torch.zeros(1) for i in range(3)}
    dotted = {f"layer.{i}.weight": torch.zeros(1) for i in range(3)}
    root = reopen({"a": flat, "b": dotted, "c": {"x.y": torch.zeros(1)}}, tmp_path)
    found = find_state_dict(root)
    assert found.path == ("b",)
    assert found.candidates == [(("a",), 3), (("c",), 1)]


def test_optimizer_only_is_an_error(tmp_path: Path) -> None:
    root = reopen({"optimizer": optimizer_state(tiny_model())}, tmp_path)
    with pytest.raises(CheckpointFormatError, match="no tensors found.*optimizer"):
        find_state_dict(root, source="opt.pt")


def test_bare_optimizer_state_dict_is_never_chosen(tmp_path: Path) -> None:
    root = reopen(optimizer_state(tiny_model()), tmp_path)
    with pytest.raises(CheckpointFormatError, match="optimizer state"):
        find_state_dict(root)


def test_non_tensor_entries_inside_the_state_dict(sd, tmp_path: Path) -> None:
    mixed = dict(sd, epoch=3, note="best", extra=None)
    found = find_state_dict(reopen(mixed, tmp_path))
    assert found.path == ()
    assert found.non_tensor_entries == {"epoch": "3", "note": "'best'", "extra": "None"}
    assert list(found.tensors) == list(sd)


def test_missing_path_and_empty_file_are_errors(sd, tmp_path: Path) -> None:
    root = reopen({"model": sd}, tmp_path)
    with pytest.raises(CheckpointFormatError, match="no tensors at ema"):
        find_state_dict(root, path=("ema",))
    with pytest.raises(CheckpointFormatError, match="dict with 1 keys"):
        find_state_dict(reopen({"epoch": 3}, tmp_path))


def test_cycles_and_shared_containers_terminate(sd, tmp_path: Path) -> None:
    root = reopen({"model": sd}, tmp_path)
    loop: list = []
    loop.append(loop)
    root["loop"] = loop
    root["again"] = root["model"]  # the same dict twice is one candidate
    found = find_state_dict(root)
    assert found.path == ("model",) and found.candidates == []


def test_describe_is_short_and_bounded() -> None:
    assert describe("x" * 500).endswith("...'") and len(describe("x" * 500)) < 70
    assert describe(b"abc") == "3 bytes" and describe({1, 2}) == "set of 2 items"
    assert describe((1, 2)) == "tuple of 2 items" and describe(2.5) == "2.5"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("model_ema",), True),
        (("state_dict_ema",), True),
        (("ema",), True),
        (("checkpoint", "ema_model"), True),
        (("model",), False),
        (("schema",), False),  # "ema" inside a word is not EMA
        (("state_dict",), False),
    ],
)
def test_is_ema_path(path: tuple[str, ...], expected: bool) -> None:
    assert is_ema_path(path) is expected
