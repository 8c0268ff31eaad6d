"""Inert data records produced by the restricted EG3D pickle reader (see ``eg3d_pickle.py``).

Nothing here imports, compiles or executes code found in a pickle. ``PersistentRecord`` keeps the embedded module
source as a plain string; ``ReferenceStub`` subclasses stand in for the classes that official pickles store by
reference. ``build_network_record`` walks such a tree and flattens it exactly like ``nn.Module.state_dict()``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import reprlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "EG3DCheckpointError",
    "UnsafePickleError",
    "PersistentRecord",
    "ReferenceStub",
    "EasyDict",
    "NumpyDtypeSpec",
    "NetworkRecord",
    "EG3DPickle",
    "build_network_record",
    "describe",
    "short_repr",
    "MAX_TREE_ITEMS",
    "MAX_TREE_DEPTH",
    "MAX_MODULES",
]

# Bounds on what reading one pickle may cost. Official snapshots are far below them: a kwargs tree has < 1,000
# items and is < 6 levels deep, a network < 1,000 modules nested < 10 deep. A 1 kB file of shared references can
# describe a structure of 2**40 items (a "pickle bomb"); every walk below counts each *use* of an object, so such a
# file is refused after at most MAX_TREE_ITEMS steps instead of running for ever.
MAX_TREE_ITEMS = 10_000
MAX_TREE_DEPTH = 32
MAX_MODULES = 20_000

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def short_repr(value: Any) -> str:
    """A bounded ``repr`` for error messages: never expands a deep or shared structure (a pickle bomb)."""
    try:
        return _REPR.repr(value)
    except Exception:  # a huge int, an object whose repr fails, ...
        return f"<{type(value).__name__}>"


class EG3DCheckpointError(ValueError):
    """The file is not a readable EG3D network pickle (missing, truncated, wrong content, wrong model type)."""


class UnsafePickleError(EG3DCheckpointError, pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list (a global, a persistent id, a malformed argument)."""


class EasyDict(dict):
    """Plain-data replacement for ``dnnlib.util.EasyDict`` (attribute access to keys, nothing else)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:  # the official class never has instance state
        if state:
            raise UnsafePickleError(f"unexpected instance state for dnnlib.util.EasyDict: {type(state).__name__}")


def check_state_dict(owner: str, state: Any) -> dict:
    """A pickled ``__dict__`` must be a dict of str keys, none of them a dunder name."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UnsafePickleError(f"state of {owner} must be a dict with str keys, got {type(state).__name__}")
    dunder = sorted(k for k in state if k.startswith("__"))
    if dunder:
        raise UnsafePickleError(f"state of {owner} has unexpected special keys {dunder[:5]}")
    return state


class NumpyDtypeSpec:
    """Stand-in for a pickled ``numpy.dtype``: records the spec and validates the BUILD state.

    numpy's own ``dtype.__setstate__`` accepts states that turn a float dtype into one with object fields, so a
    real dtype is only built (by ``to_dtype``) from a spec and state that match a plain numeric dtype.
    """

    __slots__ = ("spec", "byteorder")

    def __init__(self, spec: str) -> None:
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state: Any) -> None:
        plain = (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                 and state[2:] == (None, None, None, -1, -1, 0))
        if not plain:
            raise UnsafePickleError(f"numpy.dtype({self.spec!r}): state {short_repr(state)} is not that of a plain "
                                    "numeric dtype (object/structured dtypes refused)")
        self.byteorder = state[1]

    def to_dtype(self) -> np.dtype:
        dt = np.dtype(self.spec)
        if self.byteorder in "<>":
            dt = dt.newbyteorder(self.byteorder)
        if dt.hasobject or dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
            raise UnsafePickleError(f"numpy dtype {dt!r} is not a plain numeric dtype")
        return dt


class PersistentRecord:
    """What ``torch_utils.persistence`` stored for one object: class name, module source (text only), state."""

    __slots__ = ("class_name", "module_src", "state")

    def __init__(self, class_name: str, module_src: str, state: dict) -> None:
        self.class_name = class_name
        self.module_src = module_src  # never exec'd, compiled or imported
        self.state = state

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("a BUILD opcode targeted a persistent record; refused")

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r}, {len(self.state)} state keys)"


class ReferenceStub:
    """Base of the inert stand-ins for classes pickled by reference; ``__setstate__`` only stores the state."""

    qualified_name = "?"
    __slots__ = ("state",)  # subclasses are created with __slots__ = () too: no instance __dict__

    def __new__(cls, *args: Any) -> "ReferenceStub":
        if cls is ReferenceStub or args:
            raise UnsafePickleError(f"{cls.qualified_name}: unexpected constructor arguments ({len(args)})")
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __init__(self, *args: Any) -> None:
        if args:
            raise UnsafePickleError(f"{self.qualified_name}: unexpected constructor arguments")

    def __setstate__(self, state: Any) -> None:
        self.state = dict(check_state_dict(self.qualified_name, state))

    def __repr__(self) -> str:
        return f"<stub {self.qualified_name}>"

    @property
    def class_name(self) -> str:
        return type(self).__name__


def _state_of(obj: Any) -> dict | None:
    if isinstance(obj, PersistentRecord):
        return obj.state
    if isinstance(obj, ReferenceStub):
        return obj.state
    return None


def _is_module_state(state: dict | None) -> bool:
    return isinstance(state, dict) and all(
        isinstance(state.get(k), dict) for k in ("_parameters", "_buffers", "_modules"))


def to_plain(value: Any, where: str = "value", *, max_items: int = MAX_TREE_ITEMS,
             max_depth: int = MAX_TREE_DEPTH) -> Any:
    """EasyDict -> dict, numpy scalars -> Python numbers, recursively through dicts, lists and tuples.

    The result is a tree: an object referenced twice is converted twice. At most ``max_items`` conversions (each
    use of a shared object counts) and ``max_depth`` levels; a reference cycle, a deeper or a larger structure raises
    ``EG3DCheckpointError`` naming ``where``.
    """
    count = 0
    active: set[int] = set()  # ids of the containers on the current path: seeing one again is a cycle

    def convert(v: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > max_items:
            raise EG3DCheckpointError(f"{where} expands to more than {max_items:,} items (each use of a shared "
                                      "object counts); refused as a pickle bomb")
        if depth > max_depth:
            raise EG3DCheckpointError(f"{where} is nested more than {max_depth} levels deep; refused")
        if not isinstance(v, (dict, list, tuple)):
            if isinstance(v, np.generic):
                return v.item()
            if isinstance(v, (PersistentRecord, ReferenceStub)):
                return f"<{v.class_name}>"
            return str(v.to_dtype()) if isinstance(v, NumpyDtypeSpec) else v
        if id(v) in active:
            raise EG3DCheckpointError(f"{where} contains a reference cycle (a container inside itself); refused")
        active.add(id(v))
        try:
            if isinstance(v, dict):
                items = [(k, convert(x, depth + 1)) for k, x in v.items()]
                return OrderedDict(items) if isinstance(v, OrderedDict) else dict(items)
            converted = [convert(x, depth + 1) for x in v]
            return tuple(converted) if isinstance(v, tuple) else converted
        finally:
            active.discard(id(v))

    return convert(value, 0)


# Class names defined by the official source files, used to guess which file a module_src came from.
_FILE_SIGNATURES = (
    ("TriPlaneGenerator", "training/triplane.py"),
    ("DualDiscriminator", "training/dual_discriminator.py"),
    ("AugmentPipe", "training/augment.py"),
    ("SuperresolutionHybrid8XDC", "training/superresolution.py"),
    ("SynthesisInput", "training/networks_stylegan3.py"),
    ("SynthesisLayer", "training/networks_stylegan2.py"),
)


def module_file_hint(module_src: str) -> str | None:
    """Guess the file a persistent class came from, by reading (never running) its source text."""
    defined = set(re.findall(r"^class\s+(\w+)\s*[(:]", module_src, flags=re.MULTILINE))
    for class_name, filename in _FILE_SIGNATURES:
        if class_name in defined:
            return filename
    head = module_src[:4000]
    doc = re.search(r'("""|\'\'\')(.*?)\1', head, flags=re.DOTALL)
    for text in ([doc.group(2)] if doc else []) + [head]:
        match = re.search(r"([\w./-]*\w\.py)\b", text)
        if match:
            return match.group(1)
    return None


@dataclass
class NetworkRecord:
    """One pickled network, as data: enough to build an equivalent module and load its weights."""

    class_name: str
    module_src_sha256: str | None
    module_file_hint: str | None
    init_args: tuple
    init_kwargs: dict
    state_dict: "OrderedDict[str, torch.Tensor]"
    attributes: dict
    children_classes: dict[str, str]

    @property
    def num_tensors(self) -> int:
        return len(self.state_dict)

    @property
    def num_elements(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())


def check_tensor_extent(tensor: torch.Tensor, name: str, where: str) -> None:
    """Refuse a tensor that reaches outside its storage or has more elements than its storage holds."""
    n_items = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    if tensor.numel() == 0:
        return
    last = tensor.storage_offset() + sum((s - 1) * st for s, st in zip(tensor.shape, tensor.stride()))
    if last >= n_items or tensor.numel() > n_items:
        raise UnsafePickleError(f"{where}: tensor {name} {tuple(tensor.shape)} does not fit its storage of "
                                f"{n_items} items; refused")


def _flatten(obj: Any, prefix: str, out: "OrderedDict[str, torch.Tensor]", classes: dict[str, str],
             where: str, walk: dict) -> None:
    walk["modules"] += 1
    depth = prefix.count(".")
    if walk["modules"] > MAX_MODULES or depth > MAX_TREE_DEPTH:
        raise EG3DCheckpointError(f"{where}: the network has more than {MAX_MODULES:,} modules or is nested more "
                                  f"than {MAX_TREE_DEPTH} levels deep (at {prefix[:80]!r}); refused")
    if id(obj) in walk["active"]:
        raise EG3DCheckpointError(f"{where}: module {prefix[:-1]!r} contains itself (a reference cycle); refused")
    state = _state_of(obj)
    if not _is_module_state(state):
        raise EG3DCheckpointError(f"{where}: {prefix or 'network'!r} is not a pickled nn.Module "
                                  f"({type(obj).__name__})")
    walk["active"].add(id(obj))
    skip = state.get("_non_persistent_buffers_set") or set()
    if not isinstance(skip, (set, frozenset)):
        raise EG3DCheckpointError(f"{where}: {prefix}_non_persistent_buffers_set is a {type(skip).__name__}, "
                                  "expected a set")
    for kind in ("_parameters", "_buffers"):
        for name, tensor in state[kind].items():
            if tensor is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise EG3DCheckpointError(f"{where}: {prefix}{short_repr(name)} is a {type(tensor).__name__}, "
                                          "not a tensor")
            check_tensor_extent(tensor, prefix + name, where)
            out[prefix + name] = tensor.detach()
    for name, child in state["_modules"].items():
        if child is None:
            continue
        if not isinstance(name, str):
            raise EG3DCheckpointError(f"{where}: {prefix}_modules has a non-string key {short_repr(name)}")
        classes[prefix + name] = child.class_name if hasattr(child, "class_name") else type(child).__name__
        _flatten(child, f"{prefix}{name}.", out, classes, where, walk)
    walk["active"].discard(id(obj))


_MODULE_INTERNALS = re.compile(r"^(_parameters|_buffers|_modules|_non_persistent_buffers_set|_init_args|"
                               r"_init_kwargs|_is_full_backward_hook|_.*hooks.*)$")


def build_network_record(obj: Any, where: str) -> NetworkRecord:
    """Turn a ``PersistentRecord`` (a pickled persistent nn.Module) into a ``NetworkRecord``."""
    if not isinstance(obj, PersistentRecord):
        raise EG3DCheckpointError(f"{where}: expected a persistent network object, found {type(obj).__name__}")
    state = obj.state
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    classes: dict[str, str] = {}
    _flatten(obj, "", sd, classes, where, {"modules": 0, "active": set()})
    init_args = state.get("_init_args", ())
    init_kwargs = state.get("_init_kwargs", {})
    if not isinstance(init_args, tuple) or not isinstance(init_kwargs, dict):
        raise EG3DCheckpointError(f"{where}: malformed _init_args/_init_kwargs")
    attributes = to_plain({k: v for k, v in state.items() if not _MODULE_INTERNALS.match(k)},
                          f"{where}: attributes")
    src = obj.module_src
    return NetworkRecord(
        class_name=obj.class_name,
        module_src_sha256=hashlib.sha256(src.encode("utf-8")).hexdigest() if src is not None else None,
        module_file_hint=module_file_hint(src) if src else None,
        init_args=to_plain(init_args, f"{where}: _init_args"),
        init_kwargs=to_plain(init_kwargs, f"{where}: _init_kwargs"),
        state_dict=sd,
        attributes=attributes,
        children_classes=classes,
    )


@dataclass
class EG3DPickle:
    """The content of an official EG3D network pickle, read as data only."""

    path: Path
    G: NetworkRecord | None
    D: NetworkRecord | None
    G_ema: NetworkRecord | None
    augment_pipe: NetworkRecord | None
    training_set_kwargs: dict | None
    notes: list[str] = field(default_factory=list)

    @property
    def generator(self) -> NetworkRecord:
        """The network to use for inference: ``G_ema``, or ``G`` when the pickle has no ``G_ema``."""
        gen = self.G_ema if self.G_ema is not None else self.G
        assert gen is not None  # load_eg3d_pickle guarantees one of them
        return gen


def describe(pkl: EG3DPickle) -> str:
    """A short human-readable summary of a loaded pickle."""
    lines = [f"EG3D network pickle: {pkl.path}"]
    for key in ("G", "G_ema", "D", "augment_pipe"):
        rec = getattr(pkl, key)
        if rec is None:
            lines.append(f"  {key}: -")
            continue
        lines.append(f"  {key}: {rec.class_name} ({rec.num_tensors} tensors, {rec.num_elements:,} elements"
                     f"{', source ' + rec.module_file_hint if rec.module_file_hint else ''})")
        if key in ("G_ema", "G") and "neural_rendering_resolution" in rec.attributes:
            rk = rec.attributes.get("rendering_kwargs") or {}
            lines.append(f"    img_resolution={rec.init_kwargs.get('img_resolution')} "
                         f"neural_rendering_resolution={rec.attributes['neural_rendering_resolution']} "
                         f"superresolution={rk.get('superresolution_module')}")
    if pkl.training_set_kwargs:
        lines.append(f"  training_set_kwargs: {sorted(pkl.training_set_kwargs)}")
    lines.extend(f"  note: {n}" for n in pkl.notes)
    return "\n".join(lines)
