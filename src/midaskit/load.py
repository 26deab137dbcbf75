"""From a checkpoint file to a ready MiDaS model: identify, fix safely, build on ``meta``, load.

The file is read by the safe reader (no pickle code runs) and memory-mapped; the model is built
on ``meta`` and the file's tensors are assigned to it (``load_state_dict(strict=True,
assign=True)``), so no random initialisation is thrown away and no second copy of the weights is
made. Before loading, the safe fixes apply and are logged: containers, prefixes, the known timm
drifts, derived buffers a file lacks (regenerated) or holds (checked, then used), fp16/bf16 files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint.types import TensorMeta
from .drift import detect_drifts, undo_drift_key
from .errors import IncompatibleCheckpointError
from .identify import Identification, identify_metas, normalize_keys
from .layouts import load_layout
from .preprocess import Transform
from .variants import VariantSpec, build_model, get_variant

__all__ = ["LoadStep", "LoadedModel", "load", "plan_state_dict"]


@dataclass(frozen=True)
class LoadStep:
    """One change made on the way from the file to the model, for the log.

    Attributes:
        action: short name (``unwrap``, ``strip-prefix``, ``undo-drift``, ``regenerate``,
            ``verify-derived``, ``cast``).
        detail: what changed and why, in plain words.
        keys: how many state-dict entries it touched.
    """

    action: str
    detail: str
    keys: int = 0

    def __str__(self) -> str:
        count = f" ({self.keys} keys)" if self.keys else ""
        return f"{self.action}: {self.detail}{count}"


@dataclass
class LoadedModel:
    """A loaded model with everything needed to use it; unpacks as ``model, transform``.

    Attributes:
        model: the depth model in eval mode, ``(B, 3, H, W) -> (B, H, W)``.
        transform: the variant's official input transform.
        spec: the variant.
        steps: every fix applied while loading, in order.
        identification: how the file was recognised.
    """

    model: Any
    transform: Transform
    spec: VariantSpec
    steps: list[LoadStep] = field(default_factory=list)
    identification: Identification | None = None

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.transform


def _explain_mismatch(
    metas: Mapping[str, TensorMeta], spec: VariantSpec, ident: Identification
) -> str:
    """One paragraph for an error: which variant the file really is, or what does not fit."""
    if ident.relative:
        return f"the file is {ident.relative}; midaskit loads official MiDaS layouts"
    if ident.variant and ident.variant != spec.name:
        evidence = "; ".join(ident.evidence[:3])
        return (
            f"these are {ident.variant} weights, not {spec.name} ({evidence}); "
            f"load it with variant={ident.variant!r} or leave the variant out"
        )
    from .doctor import diagnose_against_variant

    report = diagnose_against_variant(metas, spec.name)
    return report.summary()


def plan_state_dict(
    tensors: Mapping[str, Any], spec: VariantSpec
) -> tuple[dict[str, Any], list[str], list[LoadStep]]:
    """Map a file's entries onto ``spec``'s official keys, without reading tensor data.

    Returns:
        ``(entries by official key, derived keys to regenerate, steps)``.

    Raises:
        IncompatibleCheckpointError: keys or shapes that no safe fix explains.
    """
    steps: list[LoadStep] = []
    metas = {k: v.meta if hasattr(v, "meta") else _meta_of(v) for k, v in tensors.items()}
    _, prefix, _ = normalize_keys(metas)
    entries = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if prefix:
        steps.append(LoadStep("strip-prefix", f"removed the key prefix {prefix!r}", len(entries)))
    for drift in detect_drifts(entries):
        renamed = {undo_drift_key(k, drift): v for k, v in entries.items()}
        moved = sum(1 for a, b in zip(entries, renamed, strict=True) if a != b)
        entries = renamed
        steps.append(LoadStep("undo-drift", drift.description, moved))

    layout = load_layout(spec.name)
    missing = [k for k in layout.metas if k not in entries]
    unexpected = [k for k in entries if k not in layout.metas]
    wrong_shape = [k for k, v in entries.items()
                   if k in layout.metas and _meta_of(v).shape != layout.metas[k].shape]
    regenerate = [k for k in missing if k in layout.derived]
    if [k for k in missing if k not in layout.derived] or unexpected or wrong_shape:
        raise IncompatibleCheckpointError(
            f"{spec.name}: {_explain_mismatch(metas, spec, identify_metas(metas))}"
        )
    if regenerate:
        steps.append(LoadStep(
            "regenerate",
            "the file lacks derived buffers (relative-position indices, attention masks, "
            "counters, as files saved by newer timm do); computed them from the architecture",
            len(regenerate),
        ))
    return entries, regenerate, steps


def _meta_of(value: Any) -> TensorMeta:
    if hasattr(value, "meta"):
        return value.meta
    return TensorMeta(tuple(value.shape), str(value.dtype).removeprefix("torch."))


def load(
    path: str | Path,
    variant: str | None = None,
    *,
    device: Any = "cpu",
    dtype: Any = None,
) -> LoadedModel:
    """Load a MiDaS checkpoint file into a ready model and its transform.

    Args:
        path: the checkpoint (torch zip, legacy torch, or safetensors).
        variant: the variant name; identified from the file when None. A file that contradicts
            the named variant raises with the doctor's explanation.
        device: where the model lives.
        dtype: the model's floating dtype (default float32; fp16/bf16 files are cast).

    Raises:
        CheckpointFormatError, UnsafeCheckpointError: the file cannot be read safely.
        IncompatibleCheckpointError: the file is not (a safely fixable form of) the variant.
    """
    import torch

    from .checkpoint import find_state_dict, open_checkpoint
    from .models.derived import iter_derived_buffers, materialize_derived_buffers

    target_dtype = dtype if dtype is not None else torch.float32
    with open_checkpoint(path, mode="strict") as ckpt:
        found = find_state_dict(ckpt.root)
        steps: list[LoadStep] = []
        if found.path:
            steps.append(LoadStep("unwrap", f"took the state dict at {'/'.join(found.path)}"))
        metas = {k: t.meta for k, t in found.tensors.items()}
        ident = identify_metas(metas)
        if variant is not None:
            spec = get_variant(variant)
            if ident.variant is not None and ident.variant != spec.name:
                raise IncompatibleCheckpointError(
                    f"{Path(path).name}: {_explain_mismatch(metas, spec, ident)}"
                )
        elif ident.variant is not None:
            spec = get_variant(ident.variant)
        else:
            best = ident.best.variant if ident.best else "dpt_large_384"
            raise IncompatibleCheckpointError(
                f"{Path(path).name}: {ident.summary()}: "
                f"{_explain_mismatch(metas, get_variant(best), ident)}"
            )
        entries, regenerate, plan_steps = plan_state_dict(found.tensors, spec)
        steps += plan_steps

        model = build_model(spec, device="meta")
        derived = {key: value for key, _, _, value in iter_derived_buffers(model)}
        state: dict[str, torch.Tensor] = {}
        cast = 0
        for key, lazy in entries.items():
            tensor = lazy.materialize()
            if key in derived:
                # a stored index or mask must be the true one; then the regenerated copy is used
                if not torch.equal(tensor.to(derived[key].dtype), derived[key]):
                    raise IncompatibleCheckpointError(
                        f"{Path(path).name}: {key} differs from the value the architecture "
                        "defines; the file is corrupt or comes from another architecture"
                    )
                continue
            if tensor.is_floating_point() and tensor.dtype != target_dtype:
                tensor = tensor.to(target_dtype)
                cast += 1
            state[key] = tensor.to(device)
        present_derived = [k for k in entries if k in derived]
        if present_derived:
            steps.append(LoadStep(
                "verify-derived",
                "checked that the file's derived buffers equal the regenerated values",
                len(present_derived),
            ))
        if cast:
            steps.append(LoadStep("cast", f"cast floating tensors to {target_dtype}", cast))
        for key in [*present_derived, *regenerate]:
            state[key] = derived[key].to(device)
        model.load_state_dict(state, strict=True, assign=True)
        materialize_derived_buffers(model, device)
        if target_dtype != torch.float32:
            model.to(target_dtype)  # float buffers (masks, coordinate tables) follow the weights
    return LoadedModel(
        model=model.eval(),
        transform=Transform(spec.preprocess),
        spec=spec,
        steps=steps,
        identification=ident,
    )
