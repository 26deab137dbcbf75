"""``midaskit`` entry point: the parser from the subcommand modules, errors mapped to exit codes.

Each subcommand module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``. Results go to stdout, progress and warnings to stderr; a
:class:`~midaskit.errors.MidaskitError` becomes one line on stderr and its exit code (a traceback
only with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import EXIT_ERROR, EXIT_USAGE, MidaskitError

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

# subcommand name -> module under midaskit.cli; the order is the order shown in --help
SUBCOMMANDS: dict[str, str] = {
    "inspect": "inspect_cmd",
    "doctor": "doctor_cmd",
    "identify": "identify_cmd",
    "variants": "variants_cmd",
    "predict": "predict_cmd",
    "convert": "convert_cmd",
    "export": "export_cmd",
    "demo": "demo_cmd",
}

EPILOG = """\
exit codes:
  0   success (doctor: the checkpoint loads as is)
  1   doctor: loads after safe fixes; predict: some inputs were skipped
  2   the checkpoint does not fit the target (incompatible)
  3   the file is unreadable, not a checkpoint, or refused as unsafe
  4   any other error (existing output without --overwrite, unknown variant, ...)
  64  bad command line

examples:
  midaskit demo                              # see the doctor fix six classic failures
  midaskit inspect weights/model.pt          # what is inside, without running pickle code
  midaskit identify dpt_beit_large_512.pt    # which MiDaS variant is this file?
  midaskit doctor model.pt --against other.pt --fix fixed.pt
  midaskit predict images/ -o out/ --weights dpt_hybrid_384.pt
"""


class _Parser(argparse.ArgumentParser):
    """argparse with EX_USAGE (64) for usage errors, so they never look like a doctor verdict."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _available_subcommands(only: str | None = None) -> dict[str, object]:
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            modules[name] = importlib.import_module(f"{__package__}.{module_name}")
        except ModuleNotFoundError as exc:  # a subcommand still being written is simply absent
            if exc.name != f"{__package__}.{module_name}":
                raise
    return modules


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``midaskit`` parser; with ``only``, just that subcommand (its module alone is
    imported, which keeps ``midaskit identify`` free of the doctor's and torch's import time)."""
    parser = _Parser(
        prog="midaskit",
        description="Load any MiDaS checkpoint safely, explain why a checkpoint does not fit a "
        "model, fix what can be fixed, and predict depth.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"midaskit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _available_subcommands(only).values():
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def _requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, if it is the first non-option word."""
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words and words[0] in SUBCOMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args._run(args))
    except MidaskitError as exc:
        if args.debug:
            raise
        print(f"midaskit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("midaskit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
