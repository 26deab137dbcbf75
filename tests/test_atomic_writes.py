"""Every file midaskit writes appears whole or not at all, and never replaces an input.

Failures are made midway (a writer that stops after half the bytes, a rename onto a folder, a
missing folder, a failing fsync); each must leave the old file (if any) as it was, no temporary
file, and one line of ``MidaskitError``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import cv2
import pytest
import torch

from midaskit.checkpoint import load_tensors, write_checkpoint
from midaskit.checkpoint.write import atomic_write
from midaskit.cli.main import main as cli
from midaskit.errors import EXIT_ERROR, MidaskitError, OutputExistsError
from midaskit.outputs import atomic_write_bytes, read_pfm
from midaskit.prediction import predict
from test_image_inputs import GRADIENT, StandIn


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


def _half_then_fail(fh) -> None:
    fh.write(b"x" * 1000)
    raise OSError(errno.ENOSPC, "No space left on device")


# -- the shared writer ----------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [None, b"old contents"])
def test_a_writer_failing_midway_leaves_nothing(tmp_path: Path, existing: bytes | None) -> None:
    path = tmp_path / "out.bin"
    if existing is not None:
        path.write_bytes(existing)
    with pytest.raises(MidaskitError, match="out.bin: cannot write it .No space left") as err:
        atomic_write(path, _half_then_fail)
    assert "\n" not in str(err.value)
    assert (path.read_bytes() if path.exists() else None) == existing
    assert _leftovers(tmp_path) == []


def test_a_failing_fsync_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(MidaskitError, match="No space left"):
        atomic_write_bytes(tmp_path / "depth.pfm", b"data")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_midway_leaves_nothing(tmp_path: Path) -> None:
    def interrupted(fh) -> None:
        fh.write(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    """mkstemp makes 0600 files; depth maps and checkpoints are meant to be shared (0644)."""
    atomic_write_bytes(tmp_path / "depth.png", b"png")
    write_checkpoint({"w": torch.zeros(2)}, tmp_path / "w.pt")
    for name in ("depth.png", "w.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_unwritable_places_are_one_line_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(MidaskitError, match="cannot create the folder"):
        atomic_write_bytes(blocker / "sub" / "depth.pfm", b"x")  # a file where a folder should be
    with pytest.raises(MidaskitError, match="cannot write it"):
        write_checkpoint({"w": torch.zeros(2)}, tmp_path / "missing" / "w.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# -- write_checkpoint ----------------------------------------------------------------------------


def test_checkpoint_writer_failing_midway(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "fixed.pt"
    write_checkpoint({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    def half_save(obj: object, fh) -> None:
        fh.write(b"PK\x03\x04" + bytes(500))
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(MidaskitError, match="Input/output error"):
        write_checkpoint({"w": torch.zeros(3)}, path, overwrite=True)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["same path", "symlink", "second source"])
def test_checkpoint_never_replaces_a_source(tmp_path: Path, how: str) -> None:
    source, other = tmp_path / "model.pt", tmp_path / "reference.pt"
    write_checkpoint({"w": torch.ones(3)}, source)
    write_checkpoint({"w": torch.ones(3)}, other)
    target = {"same path": source, "symlink": tmp_path / "link.pt", "second source": other}[how]
    if how == "symlink":
        target.symlink_to(source)
    before = {p: p.read_bytes() for p in (source, other)}
    with pytest.raises(OutputExistsError, match="being read"):
        write_checkpoint({"w": torch.zeros(3)}, target, overwrite=True, source=[source, other])
    assert {p: p.read_bytes() for p in (source, other)} == before


# -- predict -------------------------------------------------------------------------------------


def _photo(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "photo.png"), GRADIENT)
    return folder / "photo.png"


def test_predict_never_writes_over_its_input(tmp_path: Path) -> None:
    """Outputs in the input folder: photo.png (16-bit depth) would replace the photo."""
    photo = _photo(tmp_path)
    before = photo.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="over one of the inputs"):
            predict([photo], tmp_path, loaded=StandIn(), formats=("png16",), overwrite=overwrite)
    assert photo.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["photo.png"]


def test_predict_failing_midway_keeps_what_is_whole(tmp_path: Path) -> None:
    """The second output cannot be written (a folder holds its name): the first is complete,
    the second absent, no temporary file, and the run stops with one line."""
    photo = _photo(tmp_path / "in")
    out = tmp_path / "out"
    (out / "photo.png").mkdir(parents=True)
    with pytest.raises(MidaskitError, match="photo.png: cannot write it") as err:
        predict([photo], out, loaded=StandIn(), formats=("pfm", "png16"), overwrite=True)
    assert "\n" not in str(err.value)
    assert read_pfm(out / "photo.pfm").shape == GRADIENT.shape[:2]
    assert (out / "photo.png").is_dir() and _leftovers(out) == []


# -- doctor --fix ----------------------------------------------------------------------------------


@pytest.fixture
def ddp(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint with a ``module.`` prefix and the reference it should match."""
    checkpoint, reference = tmp_path / "ddp.pt", tmp_path / "reference.pt"
    torch.save({"module.w": torch.arange(3.0)}, checkpoint)
    torch.save({"w": torch.zeros(3)}, reference)
    return checkpoint, reference


def _doctor(checkpoint: Path, reference: Path, *extra: str) -> list[str]:
    return ["doctor", str(checkpoint), "--against", str(reference), *extra]


def test_doctor_fix_writes_a_whole_file(ddp, capsys) -> None:
    checkpoint, reference = ddp
    fixed = checkpoint.with_name("fixed.pt")
    assert cli(_doctor(checkpoint, reference, "--fix", str(fixed))) == 1
    assert list(load_tensors(fixed)) == ["w"] and _leftovers(fixed.parent) == []


@pytest.mark.parametrize("target", ["input", "missing folder", "failing disk"])
def test_doctor_fix_failures_are_one_line(ddp, target: str, capsys, monkeypatch) -> None:
    checkpoint, reference = ddp
    before = checkpoint.read_bytes()
    out = {"input": checkpoint, "missing folder": checkpoint.parent / "no" / "fixed.pt",
           "failing disk": checkpoint.with_name("fixed.pt")}[target]
    if target == "failing disk":
        monkeypatch.setattr(torch, "save", lambda obj, fh: _half_then_fail(fh))
    assert cli(_doctor(checkpoint, reference, "--fix", str(out), "--overwrite")) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("midaskit: error: ") and str(out) in err[0]
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["ddp.pt", "reference.pt"]


def test_doctor_fix_never_replaces_the_reference(ddp, capsys) -> None:
    checkpoint, reference = ddp
    before = reference.read_bytes()
    assert cli(_doctor(checkpoint, reference, "--fix", str(reference), "--overwrite")) == EXIT_ERROR
    assert reference.read_bytes() == before
    assert "reference.pt" in capsys.readouterr().err
