"""Writing state dicts: both formats round-trip, atomically, never over another file unasked."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from midaskit.checkpoint import load_tensors, open_checkpoint, write_checkpoint
from midaskit.errors import MidaskitError, OutputExistsError


@pytest.fixture
def tensors() -> OrderedDict:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 3, generator=g)
    return OrderedDict(
        [
            ("encoder.weight", base),
            ("decoder.weight", base),  # tied: one storage
            ("encoder.weight_t", base.t()),  # non-contiguous view
            ("norm.bias", torch.randn(3, generator=g).bfloat16()),
            ("norm.num_batches_tracked", torch.tensor(7)),
        ]
    )


def _equal(loaded: dict, expected: dict, *, ordered: bool = True) -> None:
    assert list(loaded) == list(expected) if ordered else sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_torch_format_round_trips(tensors, tmp_path: Path) -> None:
    path = write_checkpoint(tensors, tmp_path / "out.pt", fmt="torch")
    _equal(torch.load(path, weights_only=True), tensors)
    _equal(load_tensors(path), tensors)
    reloaded = load_tensors(path)
    tied = reloaded["encoder.weight"].untyped_storage().data_ptr()
    assert reloaded["decoder.weight"].untyped_storage().data_ptr() == tied
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    _no_temporaries(tmp_path)


def test_safetensors_round_trips_with_metadata(tensors, tmp_path: Path) -> None:
    meta = {"variant": "dpt_large_384", "fixed_by": "midaskit doctor"}
    path = write_checkpoint(tensors, tmp_path / "out.safetensors", metadata=meta)  # by suffix
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == meta
        _equal({k: fh.get_tensor(k) for k in tensors}, tensors)
        assert fh.get_tensor("encoder.weight_t").is_contiguous()
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "safetensors" and ckpt.metadata == meta
    # safetensors orders tensors itself; tied and non-contiguous tensors were copied
    _equal(load_tensors(path), tensors, ordered=False)
    _no_temporaries(tmp_path)


def test_refuses_to_overwrite_without_flag(tensors, tmp_path: Path) -> None:
    path = tmp_path / "out.pt"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_checkpoint(tensors, path, fmt="torch")
    assert path.read_bytes() == b"keep me"
    write_checkpoint(tensors, path, fmt="torch", overwrite=True)
    _equal(load_tensors(path), tensors)
    _no_temporaries(tmp_path)


@pytest.mark.parametrize("link", ["same path", "hard link"])
def test_never_replaces_the_source(tensors, tmp_path: Path, link: str) -> None:
    source = tmp_path / "in.pt"
    torch.save({"w": torch.zeros(2)}, source)
    target = source
    if link == "hard link":
        target = tmp_path / "alias.pt"
        os.link(source, target)
    before = source.read_bytes()
    with pytest.raises(OutputExistsError, match="being read"):
        write_checkpoint(tensors, target, fmt="torch", overwrite=True, source=source)
    assert source.read_bytes() == before


def test_failed_write_leaves_the_target_and_no_temporary(tensors, tmp_path, monkeypatch) -> None:
    path = tmp_path / "out.pt"
    path.write_bytes(b"old")

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(MidaskitError, match="disk full"):
        write_checkpoint(tensors, path, fmt="torch", overwrite=True)
    assert path.read_bytes() == b"old"
    _no_temporaries(tmp_path)


def test_bad_inputs(tensors, tmp_path: Path) -> None:
    with pytest.raises(OutputExistsError, match="directory"):
        write_checkpoint(tensors, tmp_path, fmt="torch")
    with pytest.raises(MidaskitError, match="not str -> tensor"):
        write_checkpoint({"w": [1, 2]}, tmp_path / "x.pt")  # type: ignore[dict-item]
    with pytest.raises(MidaskitError, match="unknown checkpoint format"):
        write_checkpoint(tensors, tmp_path / "x.pt", fmt="onnx")  # type: ignore[arg-type]
    assert not (tmp_path / "x.pt").exists()
