"""``midaskit export FILE --onnx OUT.onnx``: the model of a checkpoint as an ONNX graph."""

from __future__ import annotations

import argparse

from ._common import emit, emit_json, new_parser, note

__all__ = ["add_parser", "run"]

EPILOG = """\
The graph maps image (B, 3, H, W), normalised as the variant's official transform does, to
depth (B, H, W). --dynamic leaves the batch symbolic, and height and width too except for the
variants that run only at their native size (Swin, SwinV2, LeViT). The export is checked with
onnxruntime against PyTorch (skip with --no-check). Needs pip install 'midaskit[onnx]'.

examples:
  midaskit export dpt_hybrid_384.pt --onnx dpt_hybrid_384.onnx
  midaskit export dpt_beit_base_384.pt --onnx beit.onnx --height 384 --width 512 --dynamic
  midaskit export dpt_swin2_tiny_256.pt --onnx swin2t.onnx --dynamic --json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = new_parser(
        subparsers, "export",
        help="export a checkpoint's model to ONNX",
        description="Export the model of a MiDaS checkpoint to ONNX and check it with "
        "onnxruntime.",
        epilog=EPILOG,
    )
    p.add_argument("file", metavar="FILE", help="MiDaS checkpoint")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--variant", help="variant name (default: identified from the file)")
    p.add_argument("--height", type=int, help="example input height (default: native size)")
    p.add_argument("--width", type=int, help="example input width (default: native size)")
    p.add_argument("--dynamic", action="store_true",
                   help="symbolic batch, height and width where the architecture allows")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from ..interop.onnx_export import export_onnx

    note("exporting" + ("" if args.no_check else ", then checking with onnxruntime"))
    report = export_onnx(args.file, args.onnx, variant=args.variant, height=args.height,
                         width=args.width, dynamic=args.dynamic, overwrite=args.overwrite,
                         check=not args.no_check)
    for line in report.notes:
        note(line)
    if args.json:
        emit_json({"output": str(report.output), "variant": report.variant,
                   "input_shape": list(report.input_shape), "dynamic": list(report.dynamic),
                   "errors": report.errors, "notes": report.notes})
        return 0
    dynamic = ", ".join(report.dynamic) or "none (static shapes)"
    lines = [f"{args.file} -> {report.output} ({report.variant}, example input "
             f"{'x'.join(map(str, report.input_shape))}, dynamic axes: {dynamic})"]
    lines += [f"  check {size}: onnxruntime vs PyTorch max|err|/std = {err:.2e}"
              for size, err in report.errors.items()]
    emit("\n".join(lines))
    return 0
