"""Read official EG3D network pickles (NVlabs/eg3d ``network-snapshot-*.pkl``) without running anything in them.

Official pickles store each network through ``torch_utils.persistence``: the *source code* of the defining module
plus the object's ``__dict__``; the official loader ``exec``s that source. Here an unpickler (Python's reference
implementation, so that every opcode can be checked) resolves only an explicit allow-list of globals (see
``_ALLOWED``) to our own checking functions and inert stub classes; every other global, any persistent id and any
malformed argument raises ``UnsafePickleError``. BUILD (``__setstate__``) and NEWOBJ are allowed only on our own
stand-in classes (never on a tensor: ``Tensor.__setstate__`` calls ``set_()``, which would resize a storage past
its data), dict keys and set items must be atomic values (hashing a nested tuple of shared references never ends),
and no item may declare more bytes than the file has left. The embedded source is kept as a string, hashed, and
never compiled, imported or executed. Tensor storages (legacy ``torch.save`` bytes inside the pickle) are parsed by
``torch.load(..., weights_only=True)``; every tensor must lie inside its storage. Walking the result is bounded
(``MAX_TREE_ITEMS``, ``MAX_TREE_DEPTH``, ``MAX_MODULES``; cycles refused), so a small crafted file cannot make
loading run for ever.

Usage::

    pkl = load_eg3d_pickle("ffhqrebalanced512-128.pkl")
    G = pkl.G_ema                     # NetworkRecord: class_name, init_kwargs, state_dict, attributes, ...
    print(describe(pkl))
"""

from __future__ import annotations

import io
import pickle
import re
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch._utils

from adapt3d.models.eg3d_pickle_records import (
    MAX_MODULES,
    MAX_TREE_DEPTH,
    MAX_TREE_ITEMS,
    EasyDict,
    EG3DCheckpointError,
    EG3DPickle,
    NetworkRecord,
    NumpyDtypeSpec,
    PersistentRecord,
    ReferenceStub,
    UnsafePickleError,
    build_network_record,
    check_state_dict,
    describe,
    short_repr,
    to_plain,
)
from adapt3d.utils.torch_load import OldTorchError, load_weights_only

__all__ = [
    "load_eg3d_pickle",
    "describe",
    "EG3DPickle",
    "NetworkRecord",
    "EG3DCheckpointError",
    "UnsafePickleError",
    "ALLOWED_GLOBALS",
    "FORBIDDEN_MODULE_PREFIXES",
    "is_forbidden_module",
    "MAX_TREE_ITEMS",
    "MAX_TREE_DEPTH",
    "MAX_MODULES",
]

# Modules that the official loader would import (or create by exec); loading must never add them to sys.modules.
FORBIDDEN_MODULE_PREFIXES = ("training", "torch_utils", "dnnlib", "_imported_module_")

_GENERATOR_CLASS = "TriPlaneGenerator"
_SNAPSHOT_KEYS = ("training_set_kwargs", "G", "D", "G_ema", "augment_pipe")


def _refuse(what: str) -> UnsafePickleError:
    return UnsafePickleError(what)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_no_hooks(hooks: Any, where: str) -> None:
    if not isinstance(hooks, dict) or len(hooks) != 0:
        raise _refuse(f"{where}: backward hooks must be an empty OrderedDict, got {type(hooks).__name__}")


# ---------------------------------------------------------------------------------------------- allowed callables
def _safe_rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                            backward_hooks: Any, metadata: Any = None) -> torch.Tensor:
    where = "torch._utils._rebuild_tensor_v2"
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _refuse(f"{where}: first argument must be a tensor storage, got {type(storage).__name__}")
    if not (_is_int(storage_offset) and storage_offset >= 0):
        raise _refuse(f"{where}: bad storage offset {storage_offset!r}")
    for arg in (size, stride):
        if not (isinstance(arg, tuple) and all(_is_int(v) and v >= 0 for v in arg)):
            raise _refuse(f"{where}: size/stride must be tuples of non-negative ints, got {short_repr(arg)}")
    if len(size) != len(stride) or not isinstance(requires_grad, bool):
        raise _refuse(f"{where}: malformed arguments")
    _check_no_hooks(backward_hooks, where)
    if metadata:
        raise _refuse(f"{where}: tensor metadata is not supported")
    n_items = storage._untyped_storage.nbytes() // storage.dtype.itemsize
    numel = 1
    for s in size:
        numel *= s
    if numel and (storage_offset + sum((s - 1) * st for s, st in zip(size, stride)) >= n_items or numel > n_items):
        raise _refuse(f"{where}: view {short_repr(size)}/{short_repr(stride)}+{storage_offset} exceeds its storage "
                      f"({n_items} items)")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, OrderedDict())


def _safe_rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> torch.nn.Parameter:
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise _refuse(f"torch._utils._rebuild_parameter: bad arguments ({type(data).__name__}, "
                      f"{type(requires_grad).__name__})")
    _check_no_hooks(backward_hooks, "torch._utils._rebuild_parameter")
    return torch.nn.Parameter(data, requires_grad=requires_grad)


def _safe_rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any,
                                       state: Any) -> torch.nn.Parameter:
    empty = not state or (isinstance(state, tuple) and not any(state))
    if not empty:
        raise _refuse("torch._utils._rebuild_parameter_with_state: extra parameter state is not supported")
    return _safe_rebuild_parameter(data, requires_grad, backward_hooks)


def _torch_reason(exc: Exception) -> str:
    """The useful line of torch's long weights-only error message."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"global {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    return (found.group(1) if found else text)[:200]


def _safe_load_from_bytes(data: Any) -> torch.storage.TypedStorage:
    """Replacement for ``torch.storage._load_from_bytes``: parse legacy storage bytes with weights_only=True."""
    if not isinstance(data, bytes):
        raise _refuse(f"torch.storage._load_from_bytes: expected bytes, got {type(data).__name__}")
    try:
        storage = load_weights_only(io.BytesIO(data), "the tensor storages of an EG3D pickle")
    except OldTorchError:
        raise
    except pickle.UnpicklingError as exc:
        raise _refuse(f"tensor storage bytes refused by torch's weights-only loader ({_torch_reason(exc)})") from None
    except Exception as exc:  # corrupt storage bytes
        raise EG3DCheckpointError(f"corrupt tensor storage ({type(exc).__name__}: {exc})") from None
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _refuse(f"tensor storage bytes decoded to a {type(storage).__name__}, not a storage")
    return storage


def _safe_ordered_dict(*args: Any) -> OrderedDict:
    if not args:
        return OrderedDict()
    if len(args) == 1 and isinstance(args[0], list) and all(
            isinstance(p, tuple) and len(p) == 2 and _is_atomic(p[0]) for p in args[0]):
        return OrderedDict(args[0])
    raise _refuse(f"collections.OrderedDict: unexpected arguments {[type(a).__name__ for a in args]}")


def _safe_numpy_dtype(spec: Any, align: Any = False, copy: Any = False) -> NumpyDtypeSpec:
    if not isinstance(spec, str) or len(spec) > 8 or not isinstance(align, bool) or not isinstance(copy, bool):
        raise _refuse(f"numpy.dtype: unexpected arguments ({short_repr(spec)}, {short_repr(align)}, "
                      f"{short_repr(copy)})")
    try:
        NumpyDtypeSpec(spec).to_dtype()
    except TypeError as exc:
        raise _refuse(f"numpy.dtype: invalid dtype {spec!r}") from exc
    return NumpyDtypeSpec(spec)  # the BUILD that follows is validated by NumpyDtypeSpec.__setstate__


def _safe_numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, NumpyDtypeSpec):
        raise _refuse(f"numpy scalar: expected a numpy.dtype, got {type(dtype).__name__}")
    dt = dtype.to_dtype()
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise _refuse(f"numpy scalar: expected {dt.itemsize} bytes for {dt}, got {type(data).__name__}")
    return np.frombuffer(data, dtype=dt)[0]


def _inert_persistent_obj(meta: Any) -> PersistentRecord:
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: keep the data, run nothing."""
    where = "torch_utils.persistence._reconstruct_persistent_obj"
    if not isinstance(meta, dict) or set(meta) != {"type", "version", "module_src", "class_name", "state"}:
        got = sorted(map(str, meta)) if isinstance(meta, dict) else type(meta).__name__
        raise _refuse(f"{where}: malformed metadata ({got})")
    if meta["type"] != "class" or meta["version"] != 6:
        raise EG3DCheckpointError(f"unsupported torch_utils.persistence record (type={short_repr(meta['type'])}, "
                                  f"version={short_repr(meta['version'])}; expected 'class', 6)")
    name, src, state = meta["class_name"], meta["module_src"], meta["state"]
    if not (isinstance(name, str) and name.isidentifier()) or not isinstance(src, str):
        raise _refuse(f"{where}: malformed class_name/module_src")
    return PersistentRecord(name, src, check_state_dict(name, state))


def _make_stub(qualified_name: str) -> type:
    name = qualified_name.rpartition(".")[2]
    return type(name, (ReferenceStub,), {"__slots__": (), "qualified_name": qualified_name,
                                         "__module__": __name__, "__qualname__": f"stub.{name}"})


# Classes that official pickles store by reference (their code is not in the pickle): inert stand-ins.
_BY_REFERENCE = (
    "training.triplane.OSGDecoder",
    "training.volumetric_rendering.renderer.ImportanceRenderer",
    "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "training.volumetric_rendering.ray_sampler.RaySampler",
    "training.superresolution.SuperresolutionHybrid8XDC_afhq",  # DATID-3D's cat SR head (not a persistent class)
    "torch.nn.modules.activation.Softplus",
    "torch.nn.modules.container.Sequential",
)

_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _safe_rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _safe_rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
    ("collections", "OrderedDict"): _safe_ordered_dict,
    ("numpy", "dtype"): _safe_numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _safe_numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_numpy_scalar,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _inert_persistent_obj,
}
_ALLOWED.update({tuple(q.rsplit(".", 1)): _make_stub(q) for q in _BY_REFERENCE})  # type: ignore[misc]

#: The exact set of ``module.name`` globals an EG3D pickle may reference.
ALLOWED_GLOBALS = frozenset(f"{m}.{n}" for m, n in _ALLOWED)


_ATOMIC = (str, bytes, int, float, bool, type(None))


def _is_atomic(x: Any) -> bool:
    return type(x) in _ATOMIC


# The only objects a BUILD opcode may target (each validates its state) and the only classes NEWOBJ may create.
_BUILD_TARGETS = (NumpyDtypeSpec, ReferenceStub, EasyDict, PersistentRecord)
_NEWOBJ_CLASSES = (ReferenceStub, EasyDict)


class _SizedReader:
    """File wrapper: a read that asks for more bytes than the file has left is refused before anything is allocated."""

    def __init__(self, file: Any, size: int) -> None:
        self._file, self._left = file, size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left
        if n > self._left:
            raise EG3DCheckpointError(f"truncated or corrupt: an item declares {n:,} bytes but only {self._left:,} "
                                      "are left in the file")
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self._file.readline(self._left)
        self._left -= len(data)
        return data


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be overridden
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise UnsafePickleError(f"refused to load global {module}.{name!s}: not on the EG3D allow-list")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused persistent id {short_repr(pid)}: EG3D pickles have none")

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _BUILD_TARGETS):
            hint = (" (Tensor.__setstate__ calls set_(), which can point a tensor past its storage)"
                    if isinstance(inst, torch.Tensor) else "")
            raise UnsafePickleError(f"refused BUILD (__setstate__) on a {type(inst).__qualname__}{hint}; EG3D "
                                    "pickles only set the state of their by-reference modules")
        inst.__setstate__(state)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, _NEWOBJ_CLASSES)):
            raise UnsafePickleError(f"refused NEWOBJ of {getattr(cls, '__qualname__', type(cls).__name__)}: "
                                    "only by-reference modules and EasyDict are created this way")
        if not isinstance(args, tuple):
            raise UnsafePickleError("NEWOBJ: arguments must be a tuple")
        self.append(cls.__new__(cls, *args))

    def _refuse_opcode(self) -> None:
        raise UnsafePickleError("refused opcode (INST, OBJ, NEWOBJ_EX, BYTEARRAY8 or an out-of-band buffer): "
                                "EG3D pickles never use it")

    # After a MARK the pure-Python unpickler collects the marked items in a fresh ``self.stack`` and keeps the
    # enclosing stack (whose last item is the container being filled) in ``self.metastack[-1]``.
    @staticmethod
    def _check(target: Any, kind: type, keys: Any, what: str) -> None:
        if type(target) is not kind and not (kind is dict and isinstance(target, dict)):
            raise UnsafePickleError(f"refused to add {what}s to a {type(target).__qualname__}")
        for key in keys:
            if not _is_atomic(key):
                raise UnsafePickleError(f"refused {what} of type {type(key).__name__} (only str, bytes, numbers, "
                                        "bool and None are allowed)")

    def _load_setitem(self) -> None:
        self._check(self.stack[-3], dict, self.stack[-2:-1], "dict key")
        pickle._Unpickler.load_setitem(self)

    def _load_setitems(self) -> None:
        self._check(self.metastack[-1][-1], dict, self.stack[0::2], "dict key")
        pickle._Unpickler.load_setitems(self)

    def _load_dict(self) -> None:
        self._check({}, dict, self.stack[0::2], "dict key")
        pickle._Unpickler.load_dict(self)

    def _load_additems(self) -> None:
        self._check(self.metastack[-1][-1], set, self.stack, "set item")
        pickle._Unpickler.load_additems(self)

    def _load_frozenset(self) -> None:
        self._check(set(), set, self.stack, "set item")
        pickle._Unpickler.load_frozenset(self)

    def _load_append(self) -> None:
        self._check(self.stack[-2], list, (), "list item")
        pickle._Unpickler.load_append(self)

    def _load_appends(self) -> None:
        self._check(self.metastack[-1][-1], list, (), "list item")
        pickle._Unpickler.load_appends(self)

    for _op, _fn in ((pickle.BUILD, _load_build), (pickle.NEWOBJ, _load_newobj), (pickle.SETITEM, _load_setitem),
                     (pickle.SETITEMS, _load_setitems), (pickle.DICT, _load_dict), (pickle.ADDITEMS, _load_additems),
                     (pickle.FROZENSET, _load_frozenset), (pickle.APPEND, _load_append),
                     (pickle.APPENDS, _load_appends)):
        dispatch[_op[0]] = _fn
    for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX, pickle.BYTEARRAY8, pickle.NEXT_BUFFER,
                pickle.READONLY_BUFFER):
        dispatch[_op[0]] = _refuse_opcode
    del _op, _fn


# -------------------------------------------------------------------------------------------------- public API
def _read_raw(path: Path) -> Any:
    if not path.exists():
        raise EG3DCheckpointError(f"EG3D checkpoint not found: {path}")
    if not path.is_file():
        raise EG3DCheckpointError(f"EG3D checkpoint is not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
        if head[:2] == b"PK":
            raise EG3DCheckpointError(f"{path} is a zip archive (a torch.save checkpoint?), not an EG3D network "
                                      "pickle (network-snapshot-*.pkl)")
        if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
            raise EG3DCheckpointError(f"{path} is not a pickle file (first bytes {head!r}; an EG3D network "
                                      "pickle starts with a protocol 2-5 header)")
        f.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
                return _RestrictedUnpickler(_SizedReader(f, path.stat().st_size)).load()
        except OldTorchError:
            raise
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{exc} (file: {path})") from None
        except EG3DCheckpointError as exc:
            raise EG3DCheckpointError(f"{path}: {exc}") from None
        except EOFError:
            raise EG3DCheckpointError(f"{path} is truncated (ran out of data while unpickling); "
                                      "re-download the file") from None
        except Exception as exc:  # UnpicklingError, ValueError, MemoryError, ... from malformed data
            kind = "truncated" if "truncated" in str(exc) else "corrupt or not an EG3D network pickle"
            raise EG3DCheckpointError(f"{path} is {kind} ({type(exc).__name__}: {exc})") from None


def _network(raw: dict, key: str, path: Path) -> NetworkRecord | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, PersistentRecord):
        raise EG3DCheckpointError(f"{path}: {key} is a {type(value).__name__}, not a pickled persistent network")
    return build_network_record(value, f"{path} [{key}]")


def _check_generator(rec: NetworkRecord | None, key: str, path: Path) -> None:
    if rec is None or rec.class_name == _GENERATOR_CLASS:
        return
    if rec.class_name == "Generator":
        raise EG3DCheckpointError(f"{path}: {key} is a 'Generator' (a 2D StyleGAN2/StyleGAN3 generator), not EG3D's "
                                  f"'{_GENERATOR_CLASS}'; this is a 2D StyleGAN generator, not EG3D")
    raise EG3DCheckpointError(f"{path}: {key} has class {rec.class_name!r}; expected '{_GENERATOR_CLASS}'")


def is_forbidden_module(name: str) -> bool:
    """True for modules the official loader would import or create (``training``, ``_imported_module_*``, ...)."""
    return name.split(".")[0] in FORBIDDEN_MODULE_PREFIXES[:3] or name.startswith(FORBIDDEN_MODULE_PREFIXES[3])


def _new_forbidden_modules(before: set[str]) -> list[str]:
    return sorted(m for m in set(sys.modules) - before if is_forbidden_module(m))


def load_eg3d_pickle(path: str | Path) -> EG3DPickle:
    """Read an official EG3D network pickle as data. Never imports or executes code from the file.

    Raises ``EG3DCheckpointError`` (missing/truncated/corrupt file, not an EG3D pickle, 2D StyleGAN pickle) and
    its subclass ``UnsafePickleError`` (anything outside the allow-list).
    """
    path = Path(path)
    modules_before = set(sys.modules)
    raw = _read_raw(path)
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise EG3DCheckpointError(f"not an EG3D network pickle: {path} holds a {type(raw).__name__}, "
                                  "expected a dict with G, D, G_ema")
    if raw.get("G") is None and raw.get("G_ema") is None:
        raise EG3DCheckpointError(f"not an EG3D network pickle: {path}: found keys {sorted(raw)}, "
                                  "expected G / G_ema (and D, augment_pipe, training_set_kwargs)")
    notes: list[str] = []
    extra = sorted(set(raw) - set(_SNAPSHOT_KEYS))
    if extra:
        notes.append(f"ignored extra top-level keys {extra}")
    nets = {key: _network(raw, key, path) for key in ("G", "D", "G_ema", "augment_pipe")}
    for key in ("G_ema", "G"):
        _check_generator(nets[key], key, path)
    if nets["G_ema"] is None:
        notes.append("no G_ema in the pickle; use G (the non-averaged training generator)")
    if nets["D"] is None:
        notes.append("no D (discriminator) in the pickle")
    if nets["augment_pipe"] is not None:
        p = nets["augment_pipe"].state_dict.get("p")
        p_txt = f", p={float(p):.4g}" if isinstance(p, torch.Tensor) and p.numel() == 1 else ""
        notes.append(f"augment_pipe ({nets['augment_pipe'].class_name}{p_txt}) read as data and ignored")
    tsk = raw.get("training_set_kwargs")
    if tsk is not None and not isinstance(tsk, dict):
        raise EG3DCheckpointError(f"{path}: training_set_kwargs is a {type(tsk).__name__}, expected a dict")
    leaked = _new_forbidden_modules(modules_before)
    if leaked:  # internal invariant: nothing above may import the official code
        raise RuntimeError(f"loading {path} imported forbidden modules {leaked}")
    tsk = to_plain(tsk, f"{path}: training_set_kwargs") if tsk is not None else None
    return EG3DPickle(path=path, G=nets["G"], D=nets["D"], G_ema=nets["G_ema"], augment_pipe=nets["augment_pipe"],
                      training_set_kwargs=tsk, notes=notes)
