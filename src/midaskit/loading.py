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

__all__ = ["LoadedModel", "Prepared", "load", "prepare", "choose_variant"]

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


@dataclass
class Prepared:
    """A checkpoint's tensors on their way to a model: lazy (memory-mapped, no bytes read yet),
    in the official layout once the variant is known, with every fix that got them there.

    Attributes:
        path: the file read (``model.safetensors`` for a transformers folder).
        format: the reader's format name (``torch-zip``, ``torch-legacy``, ``safetensors``).
        tensors: the state dict (official keys when ``spec`` is set).
        spec: the variant, or None (only in lenient mode) when the file is not a fixable one.
        hf: the file is a transformers ``DPTForDepthEstimation`` checkpoint.
        steps: the fixes applied, in order.
        report: the doctor's diagnosis against the variant.
        identification: how the file was recognised.
        model: the variant's model built on ``meta``, when ``spec`` is set.
        target: the diagnosis target made from ``model`` (it computes derived buffers).
    """

    path: Path
    format: str
    tensors: dict[str, Any]
    spec: VariantSpec | None
    hf: bool = False
    steps: list[FixRecord] = field(default_factory=list)
    report: Report | None = None
    identification: Identification | None = None
    model: Any = None
    target: Target | None = None


def prepare(
    path: str | Path,
    variant: str | None = None,
    *,
    lenient: bool = False,
    to_official: bool = True,
) -> Prepared:
    """Read a checkpoint file or transformers folder safely and bring its tensors, lazily, to the
    official layout of its variant with the doctor's safe fixes (the part of :func:`load` before
    any tensor byte is read; ``convert`` and ``export`` share it).

    Args:
        path: a checkpoint file, a transformers folder or its ``model.safetensors``.
        variant: the variant the file must be; identified when None.
        lenient: when no variant was named and the file is not a safely fixable MiDaS file,
            return its unwrapped tensors with ``spec=None`` instead of raising.
        to_official: map a transformers checkpoint to the official layout (else keep its keys).

    Raises:
        CheckpointFormatError, UnsafeCheckpointError: the file cannot be read safely.
        IncompatibleCheckpointError: the file is not (a safely fixable form of) the variant.
    """
    from .checkpoint import find_state_dict, open_checkpoint
    from .doctor import Unwrap
    from .doctor.fixes import meta_of
    from .interop.hf import hf_to_official, hf_weights_file, is_hf_layout, read_hf_config

    path = Path(path)
    weights = hf_weights_file(path) if path.is_dir() else path
    source = weights.name
    ckpt = open_checkpoint(weights, mode="strict")
    found = find_state_dict(ckpt.root, source=source)
    tensors: dict[str, Any] = dict(found.tensors)
    root: Any = ckpt.root if found.path else tensors
    unwrapped: Any = found
    steps: list[FixRecord] = []
    hf = is_hf_layout(tensors)
    if hf:
        if found.path:
            steps.append(Unwrap(found.path).apply(ckpt.root)[1])
        if not to_official:
            return Prepared(weights, ckpt.format, tensors, None, True, steps)
        name, tensors = hf_to_official(tensors, read_hf_config(path))
        steps.append(FixRecord(
            "FromTransformers", f"mapped {len(tensors)} keys to the official {name} layout "
            "(q/k/v re-fused, the classifier parts transformers lacks filled neutrally)",
            "the file is a transformers DPTForDepthEstimation checkpoint", True))
        root, unwrapped = tensors, None
    metas = {k: meta_of(v) for k, v in tensors.items()}
    try:
        spec, ident = choose_variant(metas, variant, source)
    except IncompatibleCheckpointError:
        if lenient and variant is None:
            return Prepared(weights, ckpt.format, tensors, None, hf, steps)
        raise
    model = build_model(spec, device="meta")
    target = Target.from_module(model, name=spec.name,
                                unused=load_layout(spec.name).unused_keys())
    report = diagnose(tensors, target, unwrapped=unwrapped, name=source)
    if report.verdict not in _LOADABLE:
        if lenient and variant is None:
            return Prepared(weights, ckpt.format, tensors, None, hf, steps, report, ident)
        raise IncompatibleCheckpointError(f"{source}: {report.summary()}", report)
    tensors, fixed = apply_fixes(root, report.safe_fixes)
    return Prepared(weights, ckpt.format, tensors, spec, hf, steps + fixed, report, ident, model,
                    target)


def load(
    path: str | Path,
    variant: str | None = None,
    *,
    device: Any = "cpu",
    dtype: Any = None,
) -> LoadedModel:
    """Load a MiDaS checkpoint (a file, or a transformers folder) into a ready model and its
    transform.

    Args:
        path: the checkpoint (torch zip, legacy torch, safetensors, or a transformers folder).
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

    from .doctor import CastDtype
    from .models.derived import materialize_derived_buffers

    target_dtype = dtype if dtype is not None else torch.float32
    prep = prepare(path, variant)
    spec, model = prep.spec, prep.model
    steps = list(prep.steps)
    verified = _verify_derived(prep.tensors, prep.target, prep.path.name)
    if verified:
        steps.append(verified)
    dtype_name = str(target_dtype).removeprefix("torch.")
    state, cast = CastDtype(dtype_name, reason=f"the model runs in {dtype_name}").apply(
        prep.tensors
    )
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
        report=prep.report,
        identification=prep.identification,
    )
