"""Optional dependencies of the interop commands, imported only when a command needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MidaskitError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(MidaskitError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"this needs {module.split('.')[0]} ({exc}); install it with: "
            f"pip install 'midaskit[{extra}]'"
        ) from exc
