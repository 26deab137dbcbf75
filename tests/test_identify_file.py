"""identify on files: metadata only, and a warning for files that also hold Python objects."""

from __future__ import annotations

import subprocess
import sys

import torch

from midaskit import identify
from midaskit.cli.main import main


def test_identify_reads_no_torch_and_names_the_variant(reference_checkpoint):
    path = reference_checkpoint("dpt_levit_224")
    code = ("import sys, midaskit; r = midaskit.identify(sys.argv[1]); "
            "print(r.variant, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         check=True)
    assert run.stdout.split() == ["dpt_levit_224", "False"]


def test_identify_warns_about_python_objects_beside_midas_weights(tmp_path, reference_checkpoint,
                                                                  capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (print, (f"touch {marker}",))

    state = torch.load(reference_checkpoint("midas_v21_small_256"), weights_only=True)
    torch.save({"state_dict": state, "config": Payload()}, tmp_path / "mixed.pt")
    result = identify(tmp_path / "mixed.pt")
    assert result.variant == "midas_v21_small_256"
    assert result.unsafe_globals == ("builtins.print",)
    assert main(["identify", str(tmp_path / "mixed.pt")]) == 3
    out, err = capsys.readouterr()
    assert "midas_v21_small_256" in out
    assert "builtins.print" in err and "refuse" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()
