"""What a checkpoint is compared against: a :class:`Target` built from a model, a checkpoint or a
key/shape manifest.

A target is plain data (keys, shapes, module types, which buffers are computed) plus an optional
``derive(key)`` callable that computes a derived buffer, which the fixes use to check or fill them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any

from ..checkpoint.types import TensorMeta
from ..errors import MidaskitError
from .fixes import NUM_BATCHES_TRACKED, meta_of

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["Target", "as_target", "variant_target", "load_factory", "build_model_from_spec"]


@dataclass(frozen=True)
class Target:
    """The key layout a checkpoint must match.

    Attributes:
        metas: every state-dict entry the target expects, in the model's order.
        module_types: module prefix -> class name (``"pretrained.model.blocks.0.norm1"`` ->
            ``"LayerNorm"``); ``""`` is the root. Optional: layer types are otherwise inferred
            from the parameter signature.
        derived: keys (in ``metas`` or ``non_persistent``) whose values are computed, not learned
            (``relative_position_index``, ``attn_mask``); every ``num_batches_tracked`` is added.
        unused: keys that load but are never read by forward (an ImageNet head).
        non_persistent: buffers the model keeps out of its state dict, with their metas (or
            ``None`` when unknown); a file that stores them has extra keys.
        name: how messages call the target ("your model").
        derive: ``derive(key) -> torch.Tensor`` computing a derived buffer, when available.
    """

    metas: Mapping[str, TensorMeta]
    module_types: Mapping[str, str] = field(default_factory=dict)
    derived: frozenset[str] = frozenset()
    unused: frozenset[str] = frozenset()
    non_persistent: Mapping[str, TensorMeta | None] = field(default_factory=dict)
    name: str = "your model"
    derive: Callable[[str], Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        metas = {k: meta_of(v) for k, v in self.metas.items()}
        non_persistent = {k: None if v is None else meta_of(v)
                          for k, v in self.non_persistent.items()}
        auto = {k for k in metas if k.rpartition(".")[2] == NUM_BATCHES_TRACKED}
        object.__setattr__(self, "metas", metas)
        object.__setattr__(self, "non_persistent", non_persistent)
        object.__setattr__(self, "module_types", dict(self.module_types))
        object.__setattr__(self, "derived", frozenset(self.derived) | auto)
        object.__setattr__(self, "unused", frozenset(self.unused))

    @classmethod
    def from_module(cls, model: nn.Module, *, name: str | None = None,
                    unused: Iterable[str] = ()) -> Target:
        """The target of an ``nn.Module`` (best built on ``meta``: no memory, no init).

        Derived buffers are those of modules defining ``derived_buffers()`` (see
        :mod:`midaskit.models.derived`) and every BatchNorm ``num_batches_tracked``.
        """
        from ..models.derived import derived_buffer_keys

        metas = {k: meta_of(v) for k, v in model.state_dict().items()}
        module_types = {prefix: type(m).__name__ for prefix, m in model.named_modules()}
        non_persistent: dict[str, TensorMeta | None] = {}
        for prefix, module in model.named_modules():
            for buf in getattr(module, "_non_persistent_buffers_set", ()):
                value = module._buffers.get(buf)
                if value is not None:
                    non_persistent[f"{prefix}.{buf}" if prefix else buf] = meta_of(value)
        derived = set(derived_buffer_keys(model))
        return cls(metas, module_types, frozenset(derived), frozenset(unused), non_persistent,
                   name or f"your model ({type(model).__name__})", _module_deriver(model))

    @classmethod
    def from_checkpoint(cls, source: Mapping[str, Any] | str | PathLike, *,
                        name: str | None = None) -> Target:
        """The layout of another checkpoint (a path, or its state dict / metas)."""
        if isinstance(source, Mapping):
            return cls(dict(source), name=name or "the other checkpoint")
        from ..checkpoint import read_state_dict_meta

        return cls(read_state_dict_meta(source), name=name or str(source))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], *, name: str | None = None,
                      unused: Iterable[str] = ()) -> Target:
        """A target from a reference manifest (``{"entries": [{"key", "shape", "dtype",
        "module_type", "derived"}, ...], "non_persistent_buffers_not_in_state_dict": [...]}``)."""
        entries = manifest["entries"]
        metas = {e["key"]: TensorMeta(tuple(e["shape"]), e.get("dtype", "float32"))
                 for e in entries}
        module_types = {e["key"].rpartition(".")[0]: e["module_type"]
                        for e in entries if "module_type" in e}
        derived = {e["key"] for e in entries if e.get("derived")}
        non_persistent = dict.fromkeys(manifest.get("non_persistent_buffers_not_in_state_dict", ()))
        return cls(metas, module_types, frozenset(derived), frozenset(unused), non_persistent,
                   name or manifest.get("variant", "the manifest"))

    @property
    def num_params(self) -> int:
        return sum(m.numel for m in self.metas.values() if m.is_floating)


def _module_deriver(model: nn.Module) -> Callable[[str], Any]:
    def derive(key: str):
        import torch

        prefix, _, name = key.rpartition(".")
        module = model.get_submodule(prefix)
        compute = getattr(module, "derived_buffers", None)
        values = compute() if callable(compute) else {}
        if name in values:
            return values[name]
        if name == NUM_BATCHES_TRACKED:
            return torch.tensor(0)
        raise MidaskitError(f"{key} is not a derived buffer of {type(model).__name__}")

    return derive


def variant_target(name: str, *, build: bool = True) -> Target:
    """The official layout of a MiDaS variant (:mod:`midaskit.layouts`), with its unused keys.

    With ``build``, the variant's model is built on ``meta`` to name the module types and to
    compute derived buffers; without it (or when the variant's code is missing), the target
    cannot compute them and says so.

    Raises:
        UnknownVariantError: ``name`` is not a variant.
    """
    from ..layouts import load_layout
    from ..variants import build_model, get_variant

    spec = get_variant(name)
    layout = load_layout(spec.name)
    module_types: dict[str, str] = {}
    derive = None
    if build:
        try:
            model = build_model(spec, device="meta")
        except ImportError:  # a backbone whose code is not there: the layout alone still works
            model = None
        if model is not None:
            module_types = {prefix: type(m).__name__ for prefix, m in model.named_modules()}
            derive = _module_deriver(model)
    return Target(layout.metas, module_types, layout.derived, frozenset(layout.unused_keys()),
                  {}, spec.name, derive)


def as_target(obj: Target | Mapping[str, Any] | nn.Module) -> Target:
    """Coerce a :class:`Target`, an ``nn.Module`` or a ``{key: meta or tensor}`` mapping."""
    if isinstance(obj, Target):
        return obj
    if hasattr(obj, "state_dict") and hasattr(obj, "named_modules"):
        return Target.from_module(obj)  # type: ignore[arg-type]
    if isinstance(obj, Mapping):
        return Target.from_checkpoint(obj)
    raise TypeError(f"cannot compare a checkpoint with a {type(obj).__name__}")


def load_factory(spec: str) -> Callable[[], Any]:
    """Import ``"pkg.module:factory"`` (``factory`` may be dotted: ``"pkg.mod:Class.build"``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise MidaskitError(f"--model needs the form pkg.module:factory, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise MidaskitError(f"cannot import {module_name!r} for --model: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise MidaskitError(f"{module_name!r} has no {attr!r} (from --model {spec})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise MidaskitError(f"--model {spec}: {attr!r} is not callable")
    return obj


def build_model_from_spec(spec: str, *, meta: bool = True) -> nn.Module:
    """Call the factory of ``spec`` (on the ``meta`` device when it can be built there)."""
    import torch

    factory = load_factory(spec)
    model = None
    if meta:
        try:
            with torch.device("meta"):
                model = factory()
        except Exception:  # noqa: BLE001 - some constructors need real tensors; build normally
            model = None
    if model is None:
        model = factory()
    if not isinstance(model, torch.nn.Module):
        raise MidaskitError(f"--model {spec} returned a {type(model).__name__}, not an nn.Module")
    return model.eval()
