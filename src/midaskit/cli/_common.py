"""Helpers shared by the subcommands: parser setup, stdout/stderr, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["new_parser", "emit", "emit_json", "note"]


def new_parser(subparsers: Any, name: str, *, help: str, description: str, epilog: str
               ) -> argparse.ArgumentParser:
    """A subcommand parser whose help keeps the epilog's examples as written."""
    return subparsers.add_parser(
        name, help=help, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def emit(text: str) -> None:
    """A result, on stdout."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def emit_json(obj: Any) -> None:
    """A JSON result on stdout (one object, indented, UTF-8 as is)."""
    emit(json.dumps(obj, indent=2, ensure_ascii=False))


def note(message: str) -> None:
    """Progress or a warning, on stderr."""
    print(f"midaskit: {message}", file=sys.stderr, flush=True)
