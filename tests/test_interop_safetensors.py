"""``convert --to safetensors``: containers and prefixes undone and recorded, shared tensors
written once each, the input never touched, no output replaced unasked."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from midaskit.cli.main import main
from midaskit.errors import OutputExistsError
from midaskit.interop.safetensors_convert import convert_to_safetensors, same_bytes

VARIANT = "midas_v21_small_256"


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def official(reference_checkpoint) -> dict[str, torch.Tensor]:
    return torch.load(reference_checkpoint(VARIANT), map_location="cpu", weights_only=True,
                      mmap=True)


def test_container_and_prefix_are_undone_and_recorded(official, tmp_path):
    src = tmp_path / "lightning.ckpt"
    wrapped = {f"module.{k}": v for k, v in official.items()}
    torch.save({"state_dict": wrapped, "epoch": 3, "optimizer_states": []}, src)
    before = _sha256(src)
    out = tmp_path / "clean.safetensors"

    report = convert_to_safetensors(src, out)

    assert report.variant == VARIANT and report.verified
    assert _sha256(src) == before  # the input is never modified
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
        assert set(fh.keys()) == set(official)
        for key in ("scratch.output_conv.4.weight", "pretrained.layer1.0.weight"):
            assert same_bytes(fh.get_tensor(key), official[key])
    assert meta["midaskit_variant"] == VARIANT
    assert meta["source_file"] == "lightning.ckpt" and meta["source_sha256"] == before
    fixes = json.loads(meta["fixes"])
    assert any("state_dict" in f for f in fixes) and any("module." in f for f in fixes)


def test_shared_tensors_are_written_once_each(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    src = tmp_path / "tied.pt"
    torch.save({"embed.weight": base, "head.weight": base, "head.rows": base[1:3],
                "half": torch.tensor([1.5, float("nan")], dtype=torch.float16)}, src)
    out = tmp_path / "tied.safetensors"
    report = convert_to_safetensors(src, out)
    assert report.variant is None and report.verified and report.fixes == []
    with safe_open(str(out), "pt") as fh:
        assert torch.equal(fh.get_tensor("head.weight"), base)
        assert torch.equal(fh.get_tensor("head.rows"), base[1:3])
        assert same_bytes(fh.get_tensor("half"), torch.tensor([1.5, float("nan")],
                                                              dtype=torch.float16))


def test_outputs_are_replaced_only_when_asked(official, tmp_path, capsys):
    src = tmp_path / "w.pt"
    torch.save({"model": dict(official)}, src)
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"keep me")
    assert main(["convert", str(src), "--to", "safetensors", str(out)]) == 4
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["convert", str(src), "--to", "safetensors", str(out), "--overwrite",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["variant"] == VARIANT and payload["verified"]
    assert payload["metadata"]["source_sha256"] == _sha256(src)
    with pytest.raises(OutputExistsError):  # never onto its own input, even with overwrite
        convert_to_safetensors(out, out, overwrite=True)
