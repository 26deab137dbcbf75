"""``midaskit demo``: write classic broken checkpoints into a fresh folder and let the doctor
diagnose and fix each one, showing the real commands.

Scenarios are data (:data:`SCENARIOS`); append a :class:`Scenario` to add a step. Each writes its
checkpoint, runs ``midaskit doctor`` in-process and checks the exit status it expects; a fixed
file is then loaded with plain ``torch.load(weights_only=True)`` and ``strict=True``.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import EXIT_ERROR, EXIT_FIXED, EXIT_OK, EXIT_UNREADABLE, OutputExistsError
from ._common import emit, new_parser

__all__ = ["Scenario", "SCENARIOS", "add_parser", "run", "run_scenarios"]

DEMO_MODELS = "midaskit.doctor.demo_models"

EPILOG = """\
examples:
  midaskit demo                       # in a new temporary folder
  midaskit demo --out demo-files      # keep the files (the folder must be new or empty)
  midaskit demo --out demo-files --overwrite
"""


@dataclass(frozen=True)
class Scenario:
    """One demo step.

    Attributes:
        name: file stem of the checkpoint it writes.
        title: one line shown above the step.
        make: ``make(folder) -> path`` writes the checkpoint and returns its path.
        model: the ``--model`` target (``pkg.module:factory``).
        allow: ``--allow`` names the step passes.
        expect: the doctor's expected exit status.
        check: ``check(folder) -> message`` run after the doctor (raises ``AssertionError``
            when the step went wrong), or ``None``.
        fix: whether the step asks for ``--fix``.
    """

    name: str
    title: str
    make: Callable[[Path], Path]
    model: str
    allow: tuple[str, ...] = ()
    expect: int = EXIT_FIXED
    check: Callable[[Path], str] | None = None
    fix: bool = True


def _save(obj, path: Path) -> Path:
    import torch

    torch.save(obj, path)
    return path


def _state(**kwargs) -> dict:
    import torch

    from ..doctor.demo_models import TinyNet

    torch.manual_seed(0)
    return TinyNet(**kwargs).state_dict()


def _make_rgbd(folder: Path) -> Path:
    return _save(_state(in_channels=4), folder / "rgbd_first_conv.pt")


def _make_ddp(folder: Path) -> Path:
    from torch import nn

    from ..doctor.demo_models import TinyNet

    return _save(nn.DataParallel(TinyNet()).state_dict(), folder / "dataparallel.pt")


def _make_batchnorm(folder: Path) -> Path:
    return _save(_state(norm="batch"), folder / "batchnorm_for_groupnorm.pt")


def _make_wrapped(folder: Path) -> Path:
    import torch

    from ..doctor.demo_models import TinyNet

    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(1, 3, 8, 8)).sum().backward()
    opt.step()
    return _save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3},
                 folder / "model_and_optimizer.pt")


def _make_compiled(folder: Path) -> Path:
    # what torch.compile(model).state_dict() saves (without paying for a compile here)
    return _save({f"_orig_mod.{k}": v for k, v in _state().items()}, folder / "compiled.pt")


MARKER = "hostile-payload-ran.txt"


class _Payload:
    """Pickles as a call to ``open(marker, "w")``: loading the file unsafely creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _make_hostile(folder: Path) -> Path:
    return _save({"state_dict": _state(), "config": _Payload(folder / MARKER)},
                 folder / "hostile.pt")


def _check_hostile(folder: Path) -> str:
    from ..checkpoint import open_checkpoint

    assert not (folder / MARKER).exists(), "the hostile payload ran"
    with open_checkpoint(folder / "hostile.pt", mode="inspect") as ckpt:
        refused = ", ".join(ckpt.unsafe_globals)
    return f"refused globals: {refused}; {MARKER} was not created: the payload never ran"


SCENARIOS: list[Scenario] = [
    Scenario("rgbd_first_conv", "a first conv trained on 4 channels (RGB-D), a 3-channel model",
             _make_rgbd, f"{DEMO_MODELS}:tiny_convnet", ("adapt-input-channels",)),
    Scenario("dataparallel", "a DataParallel file: every key starts with module.", _make_ddp,
             f"{DEMO_MODELS}:tiny_convnet"),
    Scenario("batchnorm_for_groupnorm", "a BatchNorm file for a GroupNorm model",
             _make_batchnorm, f"{DEMO_MODELS}:tiny_convnet_gn", ("drop-running-stats",)),
    Scenario("model_and_optimizer", "a training checkpoint {'model', 'optimizer', 'epoch'}",
             _make_wrapped, f"{DEMO_MODELS}:tiny_convnet"),
    Scenario("compiled", "a torch.compile file: every key starts with _orig_mod.",
             _make_compiled, f"{DEMO_MODELS}:tiny_convnet"),
    Scenario("hostile", "a hostile pickle whose payload would create a file", _make_hostile,
             f"{DEMO_MODELS}:tiny_convnet", expect=EXIT_UNREADABLE, check=_check_hostile,
             fix=False),
]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = new_parser(
        subparsers, "demo", help="see the doctor diagnose and fix six classic failures",
        description="Write six broken checkpoints into a fresh folder and run the doctor on "
        "each: diagnosis, fix, and a strict load of the fixed file.",
        epilog=EPILOG,
    )
    p.add_argument("--out", metavar="DIR", help="folder for the files (must not exist or be "
                   "empty; default: a new temporary folder)")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out folder")
    return p


def _folder(out: str | None, overwrite: bool) -> Path:
    if out is None:
        return Path(tempfile.mkdtemp(prefix="midaskit-demo-"))
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputExistsError(f"{folder} is not empty; pass --overwrite to write into it")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _strict_load(path: Path, model_spec: str) -> str:
    import torch

    from ..doctor.targets import load_factory

    model = load_factory(model_spec)()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return f"torch.load(weights_only=True) + load_state_dict(strict=True) into a fresh " \
           f"{type(model).__name__}: ok"


def run_scenarios(scenarios: list[Scenario], folder: Path, *, overwrite: bool = False
                  ) -> list[str]:
    """Run each scenario; returns the names of those that did not behave as expected."""
    from .main import main

    failed = []
    for i, sc in enumerate(scenarios, 1):
        emit(f"\n=== {i}/{len(scenarios)} {sc.title} ===")
        path = sc.make(folder)
        argv = ["doctor", str(path), "--model", sc.model]
        fixed = folder / f"{sc.name}.fixed.pt"
        if sc.fix:
            argv += ["--fix", str(fixed)] + (["--overwrite"] if overwrite else [])
        argv += [a for name in sc.allow for a in ("--allow", name)]
        emit("$ midaskit " + " ".join(argv))
        code = main(argv)
        ok = code == sc.expect
        notes = [f"exit status {code}" + ("" if ok else f" (expected {sc.expect})")]
        try:
            if code in (EXIT_OK, EXIT_FIXED) and sc.expect in (EXIT_OK, EXIT_FIXED):
                notes.append(_strict_load(fixed if code == EXIT_FIXED and sc.fix else path,
                                          sc.model))
            if sc.check is not None:
                notes.append(sc.check(folder))
        except (AssertionError, RuntimeError) as exc:
            ok = False
            notes.append(f"check failed: {exc}")
        emit("\n".join(f"-> {n}" for n in notes))
        if not ok:
            failed.append(sc.name)
    return failed


def run(args: argparse.Namespace) -> int:
    folder = _folder(args.out, args.overwrite)
    emit(f"midaskit demo: writing the scenarios into {folder}")
    failed = run_scenarios(SCENARIOS, folder, overwrite=args.overwrite)
    from .demo_midas import run_midas_demo

    if not run_midas_demo(folder, overwrite=args.overwrite):
        failed.append("midas")
    if failed:
        emit(f"\n{len(failed)} scenario(s) did not behave as expected: {', '.join(failed)}")
        return EXIT_ERROR
    emit(f"\nall {len(SCENARIOS) + 1} scenarios behaved as expected; the files are in {folder}")
    return EXIT_OK
