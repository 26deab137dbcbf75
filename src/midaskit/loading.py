"""From a checkpoint file to a ready MiDaS model: identify, diagnose, fix safely, build on
``meta``, load.

The file is read by the safe reader (no pickle code runs) and memory-mapped; the model is built
on ``meta`` and the file's tensors are assigned to it (``load_state_dict(strict=True,
assign=True)``), so no random initialisation is thrown away and no second copy of the weights is
made. The doctor compares the file with the variant's model; its safe fixes apply and are logged
(containers, prefixes, the known timm drifts, derived buffers a file lacks, fp16/bf16 files);
derived buffers a file does hold are checked against the values the architecture defines.
Anything else raises with the doctor's report.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint.types import TensorMeta
from .doctor import FixRecord, Report, Target, Verdict, apply_fixes, diagnose
from .errors import IncompatibleCheckpointError
from .identification import Identification, identify_metas
from .layouts import load_layout
from .preprocess import Transform
from .variants import VariantSpec, build_model, get_variant

__all__ = ["LoadedModel", "load", "choose_variant"]

_LOADABLE = (Verdict.LOADS_AS_IS, Verdict.LOADS_AFTER_SAFE_FIXES)


@dataclass
class LoadedModel:
    """A loaded model with everything needed to use it; unpacks as ``model, transform``.

    Attributes:
        model: the depth model in eval mode, ``(B, 3, H, W) -> (B, H, W)``.
        transform: the variant's official input transform.
        spec: the variant.
        steps: every change made on the way from the file to the model, in order.
        report: the doctor's diagnosis of the file against the variant.
        identification: how the file was recognised.
    """

    model: Any
    transform: Transform
    spec: VariantSpec
    steps: list[FixRecord] = field(default_factory=list)
    report: Report | None = None
    identification: Identification | None = None

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.transform


def choose_variant(
    metas: Mapping[str, TensorMeta], variant: str | None, source: str
) -> tuple[VariantSpec, Identification]:
    """The variant to load ``metas`` as: the named one, checked against identification, or the
    identified one.

    Raises:
        IncompatibleCheckpointError: the file is another variant than the one named, a known
            non-MiDaS layout, or no variant fits (with the doctor's findings for the closest).
    """
    ident = identify_metas(metas)
    if ident.relative:
        raise IncompatibleCheckpointError(
            f"{source}: this is {ident.relative}; midaskit loads the official MiDaS layouts"
        )
    if variant is not None:
        spec = get_variant(variant)
        if ident.variant is not None and ident.variant != spec.name:
            evidence = "; ".join(ident.evidence[:3])
            raise IncompatibleCheckpointError(
                f"{source}: these are {ident.variant} weights, not {spec.name} ({evidence}); "
                f"load it with variant={ident.variant!r} or leave the variant out"
            )
        return spec, ident
    if ident.variant is None:
        closest = ident.best.variant if ident.best else None
        detail = ""
        if closest:
            from .doctor import diagnose_against_variant

            detail = f"; against {closest}: {diagnose_against_variant(metas, closest).summary()}"
        raise IncompatibleCheckpointError(f"{source}: {ident.summary()}{detail}")
    return get_variant(ident.variant), ident


def _verify_derived(state: Mapping[str, Any], target: Target, source: str) -> FixRecord | None:
    """Check the derived buffers the file stores equal the values the architecture defines."""
    import torch

    keys = [k for k in state if k in target.derived and target.derive is not None
            and not k.endswith("num_batches_tracked")]
    for key in keys:
        stored = state[key]
        stored = stored.materialize() if hasattr(stored, "materialize") else stored
        expected = target.derive(key)
        if stored.shape != expected.shape or not torch.equal(stored.to(expected.dtype), expected):
            raise IncompatibleCheckpointError(
                f"{source}: {key} differs from the value the architecture defines; the file is "
                "corrupt or was made for another input size"
            )
    if not keys:
        return None
    return FixRecord("VerifyDerived", f"checked {len(keys)} stored derived buffers",
                     "a stored index or mask must equal the regenerated one", True, tuple(keys))


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
            the named variant raises with the explanation.
        device: where the model lives.
        dtype: the model's floating dtype (default float32; fp16/bf16 files are cast).

    Raises:
        CheckpointFormatError, UnsafeCheckpointError: the file cannot be read safely.
        IncompatibleCheckpointError: the file is not (a safely fixable form of) the variant;
            ``error.report`` holds the doctor's diagnosis when there is one.
    """
    import torch

    from .checkpoint import find_state_dict, open_checkpoint
    from .doctor import CastDtype
    from .models.derived import materialize_derived_buffers

    source = Path(path).name
    target_dtype = dtype if dtype is not None else torch.float32
    ckpt = open_checkpoint(path, mode="strict")
    found = find_state_dict(ckpt.root, source=source)
    metas = {k: t.meta for k, t in found.tensors.items()}
    spec, ident = choose_variant(metas, variant, source)

    model = build_model(spec, device="meta")
    target = Target.from_module(model, name=spec.name,
                                unused=load_layout(spec.name).unused_keys())
    report = diagnose(found.tensors, target, unwrapped=found, name=source)
    if report.verdict not in _LOADABLE:
        raise IncompatibleCheckpointError(f"{source}: {report.summary()}", report)
    state, steps = apply_fixes(ckpt.root if found.path else found.tensors, report.safe_fixes)
    verified = _verify_derived(state, target, source)
    if verified:
        steps.append(verified)
    dtype_name = str(target_dtype).removeprefix("torch.")
    state, cast = CastDtype(dtype_name, reason=f"the model runs in {dtype_name}").apply(state)
    if cast.keys:
        steps.append(cast)

    tensors = {}
    for key, value in state.items():
        tensor = value.materialize() if hasattr(value, "materialize") else value
        tensors[key] = tensor.to(device)
    model.load_state_dict(tensors, strict=True, assign=True)
    materialize_derived_buffers(model, device)
    if target_dtype != torch.float32:
        model.to(target_dtype)  # float buffers (masks, coordinate tables) follow the weights
    return LoadedModel(
        model=model.eval(),
        transform=Transform(spec.preprocess),
        spec=spec,
        steps=steps,
        report=report,
        identification=ident,
    )

