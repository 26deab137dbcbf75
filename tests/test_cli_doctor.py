"""``midaskit inspect``, ``doctor`` and ``demo``: exit codes, messages, files written (or not)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from midaskit.cli import demo_cmd
from midaskit.cli.main import main
from midaskit.doctor.demo_models import TinyNet
from midaskit.doctor.render import INSPECT_FIELDS
from midaskit.outputs import read_pfm
from test_doctor_render import validate_doctor_json

MODEL = "midaskit.doctor.demo_models:tiny_convnet"


def weights(**kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet(**kwargs).state_dict()


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def ddp(tmp_path) -> Path:
    return save({f"module.{k}": v for k, v in weights().items()}, tmp_path / "ddp.pt")


@pytest.fixture()
def hostile(tmp_path) -> Path:
    return save({"state_dict": weights(), "cfg": demo_cmd._Payload(tmp_path / "ran.txt")},
                tmp_path / "hostile.pt")


def test_inspect_shows_container_groups_and_totals(tmp_path, capsys):
    path = save({"model": weights(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 7},
                tmp_path / "train.pt")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(torch-zip," in out and "state dict   ['model']" in out
    assert "  extra       epoch: 7" in out and "  extra       optimizer: optimizer state" in out
    assert "tensors      16 (float32 x14, int64 x2), 1.7K params" in out
    assert "  head " in out and "2 tensors" in out


def test_inspect_json_and_keys(ddp, capsys):
    assert main(["inspect", str(ddp), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == set(INSPECT_FIELDS) and doc["schema"] == "midaskit.inspect/1"
    assert doc["entries"][0] == {"key": "module.conv1.weight", "shape": [8, 3, 3, 3],
                                 "dtype": "float32"}
    assert main(["inspect", str(ddp), "--keys"]) == 0
    out = capsys.readouterr().out
    assert "module.norm2.num_batches_tracked  () int64" in out


def test_inspect_lists_unsafe_globals_without_running_them(hostile, capsys):
    assert main(["inspect", str(hostile)]) == 3
    out = capsys.readouterr().out
    assert "[x] unsafe-global: the pickle references `io.open`" in out
    assert "tensors      16" in out and not (hostile.parent / "ran.txt").exists()


def test_inspect_an_html_page_is_unreadable(tmp_path, capsys):
    page = tmp_path / "model.pt"
    page.write_text("<!DOCTYPE html><html><body>404</body></html>")
    assert main(["inspect", str(page)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("midaskit: error: ") and len(err.strip().splitlines()) == 1


def test_doctor_clean_file_exits_0(tmp_path, capsys):
    path = save(weights(), tmp_path / "ok.pt")
    assert main(["doctor", str(path), "--model", MODEL]) == 0
    assert "verdict      loads as is" in capsys.readouterr().out


def test_doctor_prefix_diagnosis_then_fix(ddp, tmp_path, capsys):
    before = digest(ddp)
    out = tmp_path / "fixed.pt"
    assert main(["doctor", str(ddp), "--model", MODEL]) == 1
    text = capsys.readouterr().out
    assert "all 16 keys start with `module.`" in text and not out.exists()
    assert "next step    run again with --fix OUT" in text
    assert main(["doctor", str(ddp), "--model", MODEL, "--fix", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"next step    wrote {out}; it loads with strict=True" in captured.out
    assert "StripPrefix: stripped 'module.' from 16 keys" in captured.out
    assert "building" in captured.err  # progress goes to stderr
    model = TinyNet()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert torch.equal(model.conv1.weight, weights()["conv1.weight"])
    assert digest(ddp) == before  # the input is never touched


def test_doctor_refuses_to_replace_files(ddp, tmp_path, capsys):
    out = tmp_path / "fixed.pt"
    out.write_bytes(b"keep me")
    assert main(["doctor", str(ddp), "--model", MODEL, "--fix", str(out)]) == 4
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["doctor", str(ddp), "--model", MODEL, "--fix", str(out), "--overwrite"]) == 1
    assert out.read_bytes() != b"keep me"
    before = digest(ddp)
    assert main(["doctor", str(ddp), "--model", MODEL, "--fix", str(ddp), "--overwrite"]) == 4
    assert "refusing to replace it" in capsys.readouterr().err and digest(ddp) == before


def test_doctor_decision_needs_allow(tmp_path, capsys):
    path = save(weights(in_channels=4), tmp_path / "rgbd.pt")
    out = tmp_path / "rgb.pt"
    assert main(["doctor", str(path), "--model", MODEL, "--fix", str(out)]) == 2
    captured = capsys.readouterr()
    assert "the checkpoint's model took 4 input channels, yours takes 3" in captured.out
    assert "--allow adapt-input-channels" in captured.out
    assert f"not writing {out}: the checkpoint needs a decision" in captured.err
    assert not out.exists()
    assert main(["doctor", str(path), "--model", MODEL, "--fix", str(out),
                 "--allow", "adapt-input-channels", "--adapt-mode", "mean"]) == 1
    assert "(mean)" in capsys.readouterr().out
    TinyNet().load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_doctor_incompatible_exits_2(tmp_path, capsys):
    path = save(weights(norm="group"), tmp_path / "gn.pt")
    assert main(["doctor", str(path), "--model", MODEL, "--allow", "all"]) == 2
    assert "verdict      incompatible" in capsys.readouterr().out


def test_doctor_against_another_checkpoint_writes_safetensors(ddp, tmp_path, capsys):
    other = save(weights(), tmp_path / "reference.pt")
    out = tmp_path / "fixed.safetensors"
    assert main(["doctor", str(ddp), "--against", str(other), "--fix", str(out)]) == 1
    assert set(load_file(out)) == set(weights())
    assert f"target       {other}: 16 keys" in capsys.readouterr().out


def test_doctor_json_output(tmp_path, capsys):
    path = save({"model": {f"_orig_mod.{k}": v.half() if v.is_floating_point() else v
                           for k, v in weights().items()}, "optimizer": {}},
                tmp_path / "compiled.pt")
    out = tmp_path / "fixed.pt"
    assert main(["doctor", str(path), "--model", MODEL, "--json", "--fix", str(out)]) == 1
    doc = json.loads(capsys.readouterr().out)
    validate_doctor_json(doc)
    assert [f["fix"] for f in doc["fixes"]] == ["Unwrap", "StripPrefix", "CastDtype"]
    assert [r["fix"] for r in doc["applied"]] == ["Unwrap", "StripPrefix", "CastDtype"]
    assert doc["output"] == str(out) and doc["checkpoint"]["container"] == ["model"]


def test_doctor_refuses_a_hostile_pickle(hostile, capsys):
    assert main(["doctor", str(hostile), "--model", MODEL]) == 3
    captured = capsys.readouterr()
    assert "io.open" in captured.err and captured.out == ""
    assert not (hostile.parent / "ran.txt").exists()


@pytest.mark.parametrize(("argv", "words"), [
    (["doctor", "x.pt"], "one of the arguments --model --against"),
    (["doctor", "x.pt", "--model", MODEL, "--allow", "everything"], "unknown --allow name"),
])
def test_doctor_usage_errors_exit_64(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 64 and words in capsys.readouterr().err


def test_doctor_bad_model_spec_is_one_line(ddp, capsys):
    assert main(["doctor", str(ddp), "--model", "no_such_module_q:build"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("midaskit: error: cannot import 'no_such_module_q'")


@pytest.mark.parametrize("command", ["inspect", "doctor", "demo"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0 and "examples:\n  midaskit " in capsys.readouterr().out


def test_demo_runs_every_scenario(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert main(["demo", "--out", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n=== ") == len(demo_cmd.SCENARIOS) + 1 == 7  # + the MiDaS step
    assert out.count("load_state_dict(strict=True) into a fresh TinyNet: ok") == 5
    assert f"refused globals: io.open; {demo_cmd.MARKER} was not created" in out
    assert not (folder / demo_cmd.MARKER).exists()
    assert (folder / "dataparallel.fixed.pt").exists()
    # the MiDaS step: a synthetic official file identified, loaded and run on the shipped image
    assert "SYNTHETIC weights" in out and "midas_v21_small_256 (MiDaS 2.1)" in out
    assert read_pfm(folder / "depth" / "demo.pfm").shape == (240, 320)
    assert main(["demo", "--out", str(folder)]) == 4  # not empty
    assert "not empty" in capsys.readouterr().err


def test_demo_scenarios_are_an_extensible_list(tmp_path, capsys):
    def make(folder: Path) -> Path:
        return save(weights(), folder / "plain.pt")

    extra = demo_cmd.Scenario("plain", "a file that loads as is", make, MODEL, expect=0,
                              fix=False)
    assert demo_cmd.run_scenarios([extra], tmp_path) == []
    broken = demo_cmd.Scenario("plain", "expects the wrong status", make, MODEL, expect=2)
    assert demo_cmd.run_scenarios([broken], tmp_path, overwrite=True) == ["plain"]
    assert "(expected 2)" in capsys.readouterr().out


def test_console_script_in_a_subprocess(ddp):
    script = shutil.which("midaskit", path=str(Path(sys.executable).parent))
    assert script, "the midaskit console script is installed next to the interpreter"
    done = subprocess.run([script, "doctor", str(ddp), "--model", MODEL, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["verdict"] == "loads after safe fixes"


def test_doctor_against_a_variant(ddp, capsys):
    assert main(["doctor", str(ddp), "--variant", "MiDaS_small"]) == 2
    out = capsys.readouterr().out
    assert "target       midas_v21_small_256: " in out
    assert "likely cause the checkpoint is for another architecture" in out
    assert main(["doctor", str(ddp), "--variant", "dpt_nonexistent_999"]) == 4
    assert "unknown MiDaS variant" in capsys.readouterr().err
