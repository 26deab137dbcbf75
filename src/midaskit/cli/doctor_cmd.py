"""``midaskit doctor FILE``: explain why a checkpoint does not fit a model, and fix it.

The checkpoint is read safely (strict mode: a pickle naming code is refused, exit 3) and lazily;
the diagnosis compares shapes only. ``--fix OUT`` applies the safe fixes (and the decisions named
by ``--allow``), checks the result loads with ``strict=True`` and writes it atomically, never over
the input.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..checkpoint import find_state_dict, open_checkpoint, write_checkpoint
from ..doctor.apply import ALLOW_NAMES, apply_fixes, materialize, plan_fixes
from ..doctor.diagnose import diagnose
from ..doctor.fixes import ADAPT_MODES, Unwrap, meta_of
from ..doctor.render import render_report, report_to_dict
from ..doctor.targets import Target, build_model_from_spec, variant_target
from ..errors import EXIT_FIXED, IncompatibleCheckpointError
from ._common import emit, emit_json, new_parser, note

__all__ = ["add_parser", "run"]

EPILOG = """\
exit status: 0 loads as is, 1 loads after fixes, 2 incompatible or needs a decision,
3 unreadable or unsafe file, 4 other errors (e.g. OUT exists without --overwrite).

--allow names: adapt-input-channels, drop-running-stats, drop-unexpected, rename, drop-keys,
cast, all (comma-separated or repeated).

examples:
  midaskit doctor ddp.pt --model mypkg.nets:build_net
  midaskit doctor rgbd.pt --model mypkg.nets:build_net --fix rgb.pt --allow adapt-input-channels
  midaskit doctor old.pt --against reference.safetensors --fix fixed.safetensors
  midaskit doctor zoedepth.pt --variant dpt_beit_large_384 --fix dpt_beit_large_384.pt
  midaskit doctor last.ckpt --model midaskit.doctor.demo_models:tiny_convnet --json
"""


def _allow_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ALLOW_NAMES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown --allow name {bad[0]!r}; choose from {', '.join(ALLOW_NAMES)}")
    return names


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = new_parser(
        subparsers, "doctor", help="explain why a checkpoint does not fit a model, and fix it",
        description="Compare a checkpoint with a model (or another checkpoint), explain every "
        "difference in plain words, and write a fixed copy with --fix.",
        epilog=EPILOG,
    )
    p.add_argument("file", metavar="FILE", help="the checkpoint to examine")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", metavar="PKG.MODULE:FACTORY",
                        help="a callable returning the nn.Module (built on meta when possible)")
    target.add_argument("--against", metavar="OTHER", help="another checkpoint with the layout "
                        "the file should have")
    target.add_argument("--variant", metavar="NAME", help="the official layout of a MiDaS "
                        "variant (midaskit variants lists them)")
    p.add_argument("--fix", metavar="OUT", help="write the fixed state dict to OUT (.safetensors "
                   "or torch)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow", type=_allow_list, action="append", default=[], metavar="NAME",
                   help="also apply fixes of this kind that change or guess something")
    p.add_argument("--adapt-mode", choices=ADAPT_MODES, help="how adapt-input-channels adapts "
                   "the first conv (default: drop-extra for fewer channels, mean for more)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights when the file has both")
    p.add_argument("--format", choices=("torch", "safetensors"), dest="fmt",
                   help="format of OUT (default: from its suffix)")
    p.add_argument("--json", action="store_true", help="print JSON (schema midaskit.doctor/1)")
    return p


def _target(args: argparse.Namespace) -> tuple[Target, Any]:
    """The target, and the model when there is one (to verify the fixed file loads)."""
    if args.model:
        note(f"building {args.model} on the meta device")
        model = build_model_from_spec(args.model)
        return Target.from_module(model), model
    if getattr(args, "variant", None):
        note(f"building {args.variant} on the meta device")
        target = variant_target(args.variant)
        return target, None
    return Target.from_checkpoint(args.against), None


def _verify(tensors: dict[str, Any], target: Target, model: Any) -> None:
    """The fixed state dict must load with strict=True (or match the other checkpoint exactly)."""
    if model is not None:
        try:
            model.load_state_dict(tensors, strict=True, assign=True)
        except RuntimeError as exc:
            raise IncompatibleCheckpointError(
                f"the fixed state dict still does not load: {str(exc).splitlines()[0]}") from exc
        return
    wrong = [k for k in set(tensors) ^ set(target.metas)] + [
        k for k, v in tensors.items()
        if k in target.metas and meta_of(v).shape != target.metas[k].shape]
    if wrong:
        raise IncompatibleCheckpointError(f"the fixed state dict still differs at {wrong[0]}")


def run(args: argparse.Namespace) -> int:
    allow = [n for names in args.allow for n in names]
    with open_checkpoint(args.file, mode="strict") as ckpt:
        found = find_state_dict(ckpt.root, prefer_ema=args.ema, source=str(ckpt.path))
        target, model = _target(args)
        report = diagnose(found.tensors, target, unwrapped=found, name=str(args.file))
        plan = plan_fixes(report, allow, adapt_mode=args.adapt_mode)
        records, output, loaded = [], None, False
        if args.fix and not plan.can_apply:
            note(f"not writing {args.fix}: the checkpoint {plan.verdict.value}")
        elif args.fix and not plan.fixes:
            note(f"not writing {args.fix}: nothing to fix, the file loads as is")
        elif args.fix:
            start = ckpt.root if any(isinstance(f, Unwrap) for f in plan.fixes) else found.tensors
            state, records = apply_fixes(start, plan.fixes)
            tensors = materialize(state)
            _verify(tensors, target, model)
            loaded = model is not None
            output = str(write_checkpoint(tensors, args.fix, fmt=args.fmt,
                                          overwrite=args.overwrite,
                                          source=[p for p in (args.file, args.against) if p]))
    _show(args, report, plan, records, output, loaded)
    return EXIT_FIXED if output else plan.exit_code


def _show(args: argparse.Namespace, report, plan, records, output, loaded: bool) -> None:
    if args.json:
        emit_json(report_to_dict(report, plan, records, output))
    else:
        emit(render_report(report, plan, records, output, loaded))
