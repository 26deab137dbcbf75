"""What a checkpoint holds, as data for ``midaskit inspect``: format, container, tensor groups,
parameter count, dtypes, size, and unsafe globals as findings. Pure: takes the reader's objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint.types import TensorMeta
from .findings import Finding, Kind, Severity
from .fixes import meta_of
from .keytree import Subtree, count_params, group_by_depth

__all__ = ["Contents", "summarize_contents", "unsafe_global_finding"]


@dataclass(frozen=True)
class Contents:
    """A checkpoint's contents without its tensor bytes.

    Attributes:
        path, format, file_size: the file.
        container: keys taken to reach the state dict (``()`` for a bare state dict).
        candidates: other state-dict candidates ``(path, tensor count)``.
        extras: what else the file holds, described (``{"optimizer": "optimizer state ..."}``).
        non_tensor_entries: entries inside the state dict that are not tensors, described.
        metas: the state dict's entries.
        groups: the entries summarised as module subtrees.
        metadata: safetensors ``__metadata__``.
        findings: unsafe globals and other problems.
    """

    path: str
    format: str
    file_size: int
    container: tuple[str, ...] = ()
    candidates: tuple[tuple[tuple[str, ...], int], ...] = ()
    extras: Mapping[str, str] = field(default_factory=dict)
    non_tensor_entries: Mapping[str, str] = field(default_factory=dict)
    metas: Mapping[str, TensorMeta] = field(default_factory=dict)
    groups: tuple[Subtree, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()

    @property
    def params(self) -> int:
        return count_params(self.metas)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.metas.values())

    @property
    def dtypes(self) -> dict[str, int]:
        return dict(Counter(m.dtype for m in self.metas.values()).most_common())


def unsafe_global_finding(globals_: tuple[str, ...] | list[str]) -> Finding:
    """The finding for a pickle that references code (``os.system``, a pickled class)."""
    names = ", ".join(f"`{g}`" for g in globals_)
    return Finding(
        Kind.UNSAFE_GLOBAL, Severity.ERROR,
        f"the pickle references {names}: torch.load(weights_only=False) would import and call "
        "them; midaskit refuses to",
        "do not load this file with weights_only=False unless you trust its source; if it is "
        "yours, re-save only the weights (torch.save(model.state_dict(), path))",
        {"globals": list(globals_)}, (), (),
        "the file holds pickled Python objects, not only tensors")


def summarize_contents(checkpoint: Any, unwrapped: Any | None, max_groups: int = 24) -> Contents:
    """Summarise a reader ``Checkpoint`` and its ``Unwrapped`` state dict (``None``: no tensors)."""
    findings = []
    unsafe = tuple(getattr(checkpoint, "unsafe_globals", ()) or ())
    if unsafe:
        findings.append(unsafe_global_finding(unsafe))
    common = {
        "path": str(checkpoint.path), "format": checkpoint.format,
        "file_size": int(checkpoint.file_size),
        "metadata": dict(getattr(checkpoint, "metadata", {}) or {}),
        "findings": tuple(findings),
    }
    if unwrapped is None:
        return Contents(**common)
    metas = {k: meta_of(v) for k, v in unwrapped.tensors.items()}
    return Contents(
        container=tuple(unwrapped.path),
        candidates=tuple((tuple(p), n) for p, n in unwrapped.candidates if tuple(p) !=
                         tuple(unwrapped.path)),
        extras=dict(unwrapped.extras),
        non_tensor_entries=dict(getattr(unwrapped, "non_tensor_entries", {}) or {}),
        metas=metas,
        groups=tuple(group_by_depth(metas, max_groups)),
        **common,
    )
