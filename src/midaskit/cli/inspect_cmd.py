"""``midaskit inspect FILE``: what a checkpoint holds, read without running any of its code."""

from __future__ import annotations

import argparse

from ..checkpoint import find_state_dict, open_checkpoint
from ..checkpoint.types import TensorMeta
from ..doctor.contents import summarize_contents
from ..doctor.keytree import format_shape
from ..doctor.render import contents_to_dict, render_contents
from ..errors import EXIT_OK, EXIT_UNREADABLE, CheckpointFormatError
from ._common import emit, emit_json, new_parser

__all__ = ["add_parser", "run"]

EPILOG = """\
Nothing in the file runs: unknown Python objects become inert placeholders and are listed as
unsafe globals (exit status 3 when there are any).

examples:
  midaskit inspect dpt_beit_large_512.pt
  midaskit inspect last.ckpt --keys            # every tensor with its shape and dtype
  midaskit inspect model.safetensors --json    # schema midaskit.inspect/1 (docs/doctor-json.md)
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = new_parser(
        subparsers, "inspect", help="show what a checkpoint holds, without running its code",
        description="Show a checkpoint's format, where its state dict sits, its tensors grouped "
        "by module, the parameter count, dtypes and size, and any unsafe globals.",
        epilog=EPILOG,
    )
    p.add_argument("file", metavar="FILE", help="a .pt/.pth/.ckpt/.bin or .safetensors file")
    p.add_argument("--keys", action="store_true", help="list every tensor, not only the groups")
    p.add_argument("--json", action="store_true", help="print JSON (schema midaskit.inspect/1)")
    return p


def _key_lines(metas: dict[str, TensorMeta]) -> str:
    width = max((len(k) for k in metas), default=0)
    return "\n".join(f"  {k:<{width}}  {format_shape(m.shape)} {m.dtype}" for k, m in metas.items())


def run(args: argparse.Namespace) -> int:
    with open_checkpoint(args.file, mode="inspect") as ckpt:
        try:
            found = find_state_dict(ckpt.root, source=str(ckpt.path))
        except CheckpointFormatError:
            if not ckpt.unsafe_globals:
                raise
            found = None  # a pickle that is only code: still show what it references
        contents = summarize_contents(ckpt, found)
    if args.json:
        emit_json(contents_to_dict(contents))
    else:
        text = render_contents(contents)
        if args.keys and contents.metas:
            text += "\n" + _key_lines(dict(contents.metas)) + "\n"
        emit(text)
    return EXIT_UNREADABLE if contents.findings else EXIT_OK
