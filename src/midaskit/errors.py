"""midaskit's exception types: each carries a message a user can act on and a CLI exit code.

The CLI prints ``str(error)`` as one line on stderr and exits with ``error.exit_code``; a traceback
is shown only with ``--debug``. Exit codes are documented in the README and in ``midaskit --help``.
"""

from __future__ import annotations

__all__ = [
    "EXIT_OK",
    "EXIT_FIXED",
    "EXIT_INCOMPATIBLE",
    "EXIT_UNREADABLE",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "MidaskitError",
    "CheckpointFormatError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointError",
    "UnknownVariantError",
    "OutputExistsError",
    "ImageReadError",
    "UnsupportedInputSizeError",
]

EXIT_OK = 0
EXIT_FIXED = 1  # doctor: loads after safe fixes; predict: some inputs were skipped
EXIT_INCOMPATIBLE = 2  # the checkpoint does not fit the target, even after safe fixes
EXIT_UNREADABLE = 3  # the file is not a readable checkpoint, or it is refused as unsafe
EXIT_ERROR = 4  # any other midaskit error (existing output, bad image, unknown variant, ...)
EXIT_USAGE = 64  # bad command line (EX_USAGE)


class MidaskitError(Exception):
    """Base class of every error midaskit raises on purpose."""

    exit_code: int = EXIT_ERROR


class CheckpointFormatError(MidaskitError):
    """The file is not a checkpoint we can read: empty, truncated, an LFS pointer, HTML, ..."""

    exit_code = EXIT_UNREADABLE


class UnsafeCheckpointError(MidaskitError):
    """The checkpoint's pickle references globals that are not plain tensor data.

    Attributes:
        globals: the offending ``module.name`` references, sorted.
    """

    exit_code = EXIT_UNREADABLE

    def __init__(self, message: str, globals: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.globals = tuple(sorted(set(globals)))


class IncompatibleCheckpointError(MidaskitError):
    """The checkpoint does not fit the target model; ``report`` holds the doctor's diagnosis."""

    exit_code = EXIT_INCOMPATIBLE

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class UnknownVariantError(MidaskitError):
    """A variant name that is not in the registry (the message lists close matches)."""


class OutputExistsError(MidaskitError):
    """An output file exists and ``--overwrite`` was not given."""


class ImageReadError(MidaskitError):
    """An input image could not be read or decoded."""


class UnsupportedInputSizeError(MidaskitError):
    """The model cannot run at the requested input size (for example Swin at a non-native size)."""
