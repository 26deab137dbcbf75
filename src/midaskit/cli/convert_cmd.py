"""``midaskit convert SRC --to {hf,midas,safetensors} OUT``: change a layout or a format."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ._common import emit, emit_json, new_parser, note

__all__ = ["add_parser", "run"]

EPILOG = """\
targets:
  hf           a transformers DPTForDepthEstimation folder (config.json, model.safetensors,
               preprocessor_config.json) for dpt_large_384, dpt_hybrid_384, the BEiT and the
               SwinV2 variants; needs pip install 'midaskit[hf]'
  midas        the official MiDaS layout (from a transformers folder or its model.safetensors,
               or a fixable MiDaS file); .safetensors suffix: safetensors, else torch.save
  safetensors  the same tensors as safetensors, container and prefixes removed, the fixes and
               the source's SHA-256 recorded in the header metadata

Each conversion ends with a check (skip it with --no-check): hf and midas load the result
strictly and compare its depth with the source model's on a seeded input; safetensors re-reads
every tensor. The input is never modified; outputs are replaced only with --overwrite.

examples:
  midaskit convert dpt_beit_large_512.pt --to hf dpt-beit-large-512/
  midaskit convert dpt-beit-large-512/ --to midas dpt_beit_large_512.pt
  midaskit convert lightning.ckpt --to safetensors model.safetensors --json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = new_parser(
        subparsers, "convert",
        help="convert a checkpoint to transformers, the official layout, or safetensors",
        description="Convert a MiDaS checkpoint to a transformers DPT folder and back, or any "
        "checkpoint to a clean safetensors file.",
        epilog=EPILOG,
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file, or a transformers folder")
    p.add_argument("--to", required=True, choices=("hf", "midas", "safetensors"),
                   help="target layout or format")
    p.add_argument("out", metavar="OUT", help="output folder (hf) or file")
    p.add_argument("--variant", help="variant name (default: identified from the file)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-check", action="store_true", help="skip the check after writing")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    check = not args.no_check
    if args.to == "safetensors":
        from ..interop.safetensors_convert import convert_to_safetensors

        st = convert_to_safetensors(args.src, args.out, variant=args.variant,
                                    overwrite=args.overwrite, verify=check)
        payload = {"output": str(st.output), "variant": st.variant, "tensors": st.tensors,
                   "fixes": st.fixes, "metadata": st.metadata, "verified": st.verified}
        lines = [f"{args.src} -> {st.output}: {st.tensors} tensors"
                 + (f" ({st.variant})" if st.variant else ""),
                 *(f"  fix: {fix}" for fix in st.fixes)]
        if st.verified:
            lines.append("  check: every tensor re-read equal to the source")
        _print(args, payload, lines)
        return 0

    from ..interop.convert import convert_to_hf, convert_to_official

    if check:
        note("converting, then checking the result (a forward pass of both models)")
    convert = convert_to_hf if args.to == "hf" else convert_to_official
    report = convert(args.src, args.out, variant=args.variant, overwrite=args.overwrite,
                     check=check)
    payload = {"output": str(report.output), "variant": report.variant, "fixes": report.fixes,
               "dropped": report.dropped,
               "check": asdict(report.check) if report.check else None}
    lines = [f"{args.src} -> {report.output} ({report.variant}, {args.to} layout)",
             *(f"  fix: {fix}" for fix in report.fixes)]
    if report.dropped:
        lines.append(f"  dropped {len(report.dropped)} keys the target has no place for "
                     "(classifier head, unused norms, derived buffers)")
    if report.check and report.check.max_abs_err_over_std is not None:
        lines.append(f"  check: loads with no missing or unexpected keys; depth max|err|/std = "
                     f"{report.check.max_abs_err_over_std:.2e} on a {report.check.input_shape} "
                     "input")
    elif check:
        lines.append("  check: loads strictly in midaskit")
    _print(args, payload, lines)
    return 0


def _print(args: argparse.Namespace, payload: dict, lines: list[str]) -> None:
    if args.json:
        emit_json(json.loads(json.dumps(payload, default=str)))
    else:
        emit("\n".join(lines))
    if not args.json and args.to == "hf":
        note(f"load it with DPTForDepthEstimation.from_pretrained({str(args.out)!r})")
