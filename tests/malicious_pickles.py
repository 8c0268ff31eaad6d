"""Test-data builder: official-format EG3D pickles and crafted malicious pickles, written opcode by opcode.

Only *writes* pickles (dumping is safe). ``GlobalRef(module, name)`` is emitted as a raw ``GLOBAL`` opcode, so a
payload can name any global (``os.system``, ``torch_utils.persistence._reconstruct_persistent_obj``) without that
module being importable here. ``Call(func, args, state)`` becomes ``func(*args)`` (REDUCE) plus an optional BUILD.
Every payload builder takes the path of a marker file that the payload would create if anything ran.
"""

from __future__ import annotations

import io
import pickle
import shlex
import struct
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

PLACEHOLDER_SRC = "# module source removed: adapt3d never executes embedded source.\n"


class GlobalRef:
    """A ``module.name`` global, written as a GLOBAL opcode (never resolved while writing)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # only so that pickle accepts it as a REDUCE callable
        raise RuntimeError("GlobalRef is a pickling placeholder")


class Call:
    """Unpickles as ``func(*args)``, then ``BUILD state`` if a state is given."""

    def __init__(self, func: Any, args: tuple = (), state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __call__(self, *args: Any) -> Any:
        raise RuntimeError("Call is a pickling placeholder")

    def __reduce__(self) -> tuple:
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class RawDict:
    """Unpickles as a dict filled by SETITEMS with these (key, value) pairs; the keys are never hashed here."""

    def __init__(self, *pairs: tuple) -> None:
        self.pairs = pairs


class RawSet:
    """Unpickles as a set filled by ADDITEMS; the items are never hashed here."""

    def __init__(self, *items: Any) -> None:
        self.items = items


class RawOps:
    """Raw opcode bytes written as they are (around already-saved objects)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts  # bytes are written, anything else is saved as an object


class _CraftPickler(pickle._Pickler):  # the pure-Python pickler lets us add dispatch entries
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_ref(self, obj: GlobalRef) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))

    def _save_raw_dict(self, obj: RawDict) -> None:
        self.write(pickle.EMPTY_DICT + pickle.MARK)
        for key, value in obj.pairs:
            self.save(key)
            self.save(value)
        self.write(pickle.SETITEMS)

    def _save_raw_set(self, obj: RawSet) -> None:
        self.write(pickle.EMPTY_SET + pickle.MARK)
        for item in obj.items:
            self.save(item)
        self.write(pickle.ADDITEMS)

    def _save_raw_ops(self, obj: RawOps) -> None:
        for part in obj.parts:
            self.write(part) if isinstance(part, bytes) else self.save(part)

    dispatch[GlobalRef] = _save_global_ref
    dispatch[RawDict] = _save_raw_dict
    dispatch[RawSet] = _save_raw_set
    dispatch[RawOps] = _save_raw_ops


def dumps(obj: Any, protocol: int = 4) -> bytes:
    buf = io.BytesIO()
    _CraftPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


# ------------------------------------------------------------------------------- official-format EG3D snapshots
def persistent(class_name: str, state: dict, module_src: str = PLACEHOLDER_SRC, *, version: int = 6,
               kind: str = "class") -> Call:
    """What ``torch_utils.persistence`` writes for a decorated object."""
    meta = dict(type=kind, version=version, module_src=module_src, class_name=class_name, state=state)
    return Call(GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


def by_reference(qualified_name: str, state: dict) -> Call:
    module, _, name = qualified_name.rpartition(".")
    return Call(GlobalRef(module, name), (), state)


def module_state(module: torch.nn.Module, children: dict[str, Any] | None = None, **attrs: Any) -> dict:
    """The pickled ``__dict__`` of ``module`` with its children replaced by already-converted records."""
    state = dict(module.__dict__)
    state["_parameters"] = OrderedDict(module._parameters)
    state["_buffers"] = OrderedDict(module._buffers)
    state["_modules"] = OrderedDict(children if children is not None else {})
    state.update(attrs)
    return state


def persist_tree(module: torch.nn.Module, by_ref: dict[type, str] | None = None) -> Call:
    """Convert an nn.Module tree to persistence records (children of a type in ``by_ref`` go by reference)."""
    by_ref = by_ref or {}
    children = {}
    for name, child in module._modules.items():
        children[name] = None if child is None else persist_tree(child, by_ref)
    state = module_state(module, children, _init_args=(), _init_kwargs={})
    if type(module) in by_ref:
        state.pop("_init_args"), state.pop("_init_kwargs")
        return by_reference(by_ref[type(module)], state)
    return persistent(type(module).__name__, state)


def tiny_module_state(**attrs: Any) -> dict:
    m = torch.nn.Module()
    m.register_buffer("w", torch.zeros(2))
    return module_state(m, **{"_init_args": (), "_init_kwargs": {}, **attrs})


class EasyDictRef(dict):
    """Pickles as ``dnnlib.util.EasyDict`` with these items (as the official snapshots do)."""

    def __reduce__(self) -> tuple:
        return (GlobalRef("dnnlib.util", "EasyDict"), (), None, None, iter(self.items()))


def snapshot(**networks: Any) -> dict:
    base = dict(training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="x.zip"))
    base.update(networks)
    return base


# ---------------------------------------------------------------------------------------- malicious payloads
def _touch_cmd(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def _py_touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _inner_os_system(marker: Path, protocol: int = 4) -> bytes:
    return dumps(Call(GlobalRef("os", "system"), (_touch_cmd(marker),)), protocol=protocol)


def _legacy_storage_bytes_with_payload(marker: Path) -> bytes:
    """Legacy ``torch.save`` layout (magic, protocol, sys info, object...) whose object pickle runs os.system."""
    header = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    sys_info = pickle.dumps(dict(protocol_version=1001, little_endian=sys.byteorder == "little",
                                 type_sizes=dict(short=2, int=4, long=8)), protocol=2)
    return header + sys_info + _inner_os_system(marker, protocol=2)


def _typed_storage(n: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.zeros(n).storage()  # the (deprecated) TypedStorage that official pickles hold


def _module_ref(name: str) -> Call:
    return Call(GlobalRef("builtins", "__import__"), (name,))


def _wrap(obj: Any) -> bytes:
    """Hide a payload inside an otherwise EG3D-looking snapshot."""
    return dumps(snapshot(G_ema=obj))


def _raw(*chunks: bytes) -> bytes:
    return b"\x80\x04" + b"".join(chunks) + pickle.STOP


def _short_str(s: str) -> bytes:
    data = s.encode("utf-8")
    return pickle.SHORT_BINUNICODE + struct.pack("<B", len(data)) + data


def shared_bomb(depth: int, kind: type = list) -> Any:
    """``depth`` levels of containers that each hold the level below twice: a few bytes per level once pickled
    (shared references), 2**depth leaves when walked as a tree (or hashed, or printed)."""
    node: Any = kind()
    for _ in range(depth):
        node = kind([node, node])
    return node


def cycle_list() -> list:
    loop: list = []
    loop.append(loop)
    return loop


def cycle_dict() -> dict:
    loop: dict = {}
    loop["self"] = loop
    return loop


def nested(depth: int) -> list:
    node: list = []
    for _ in range(depth):
        node = [node]
    return node


def _rebuild(storage: Any, size: tuple, stride: tuple, state: Any = None, offset: int = 0) -> Call:
    return Call(GlobalRef("torch._utils", "_rebuild_tensor_v2"),
                (storage, offset, size, stride, False, Call(GlobalRef("collections", "OrderedDict"))), state)


def generator_with(*, buffers: dict | None = None, modules: dict | None = None, **attrs: Any) -> Call:
    """A tiny persistent 'TriPlaneGenerator' whose buffers, child modules or attributes are replaced."""
    state = tiny_module_state(**attrs)
    if buffers is not None:
        state["_buffers"] = OrderedDict(buffers)
    if modules is not None:
        state["_modules"] = OrderedDict(modules)
    return persistent("TriPlaneGenerator", state)


def _gen_snapshot(**kwargs: Any) -> bytes:
    tsk = kwargs.pop("training_set_kwargs", None)
    snap = snapshot(G_ema=generator_with(**kwargs))
    if tsk is not None:
        snap["training_set_kwargs"] = tsk
    return dumps(snap)


def module_bomb(depth: int) -> Call:
    """``depth`` levels of by-reference modules whose two children are the same module below: 2**depth paths."""
    leaf = by_reference("torch.nn.modules.activation.Softplus", dict(_parameters={}, _buffers={}, _modules={}))
    for _ in range(depth):
        leaf = by_reference("torch.nn.modules.container.Sequential",
                            dict(_parameters={}, _buffers={}, _modules=OrderedDict(a=leaf, b=leaf)))
    return leaf


def module_cycle() -> Call:
    node = by_reference("torch.nn.modules.container.Sequential", {})
    node.state = dict(_parameters={}, _buffers={}, _modules=OrderedDict(me=node))  # BUILD after the node is memoised
    return node


def _legacy_storage_bytes_declaring(numel: int) -> bytes:
    """``torch.save`` legacy bytes of a 2-element float storage whose header claims ``numel`` elements."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(torch.zeros(2).storage(), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    assert data.count(b"K\x02N") == 1
    return data.replace(b"K\x02N", b"J" + struct.pack("<i", numel) + b"N")


def _declared_size(opcode: bytes, size: int, fmt: str = "<Q") -> bytes:
    return _raw(opcode + struct.pack(fmt, size) + b"abc")


PAYLOADS: dict[str, Callable[[Path], bytes]] = {
    "os.system": lambda m: _wrap(Call(GlobalRef("os", "system"), (_touch_cmd(m),))),
    "posix.system": lambda m: dumps(Call(GlobalRef("posix", "system"), (_touch_cmd(m),))),
    "builtins.exec": lambda m: _wrap(Call(GlobalRef("builtins", "exec"), (_py_touch(m),))),
    "builtins.eval": lambda m: dumps(Call(GlobalRef("builtins", "eval"), (_py_touch(m),))),
    "subprocess.Popen": lambda m: dumps(Call(GlobalRef("subprocess", "Popen"), (["touch", str(m)],))),
    "subprocess.check_call": lambda m: dumps(Call(GlobalRef("subprocess", "check_call"), (["touch", str(m)],))),
    "importlib.import_module+getattr": lambda m: dumps(Call(Call(GlobalRef("builtins", "getattr"), (
        Call(GlobalRef("importlib", "import_module"), ("os",)), "system")), (_touch_cmd(m),))),
    "builtins.__import__+getattr": lambda m: dumps(Call(Call(GlobalRef("builtins", "getattr"), (
        _module_ref("os"), "system")), (_touch_cmd(m),))),
    "shutil.rmtree": lambda m: dumps(Call(GlobalRef("shutil", "rmtree"), (str(m.parent / "victim"),))),
    "nested pickle.loads": lambda m: _wrap(Call(GlobalRef("pickle", "loads"), (_inner_os_system(m),))),
    "torch.load(pickle_module=pickle)": lambda m: dumps(Call(GlobalRef("torch", "load"), (
        Call(GlobalRef("io", "BytesIO"), (_inner_os_system(m),)), None, _module_ref("pickle")))),
    "torch.serialization.load": lambda m: dumps(Call(GlobalRef("torch.serialization", "load"), (
        Call(GlobalRef("io", "BytesIO"), (_inner_os_system(m),)), "cpu", _module_ref("pickle")))),
    "payload inside tensor storage bytes": lambda m: _wrap(Call(GlobalRef("torch._utils", "_rebuild_tensor_v2"), (
        Call(GlobalRef("torch.storage", "_load_from_bytes"), (_legacy_storage_bytes_with_payload(m),)),
        0, (1,), (1,), False, OrderedDict()))),
    "_rebuild_tensor_v2 with a non-storage": lambda m: _wrap(Call(GlobalRef("torch._utils", "_rebuild_tensor_v2"), (
        _touch_cmd(m).encode(), 0, (1,), (1,), False, OrderedDict()))),
    "_rebuild_tensor_v2 out of bounds": lambda m: _wrap(Call(GlobalRef("torch._utils", "_rebuild_tensor_v2"), (
        _typed_storage(2), 0, (1000,), (1,), False, OrderedDict()))),
    "stub BUILD with slot state": lambda m: _wrap(by_reference(
        "training.triplane.OSGDecoder", (None, {"__class__": "builtins.exec", "x": _py_touch(m)}))),
    "stub BUILD with dunder keys": lambda m: _wrap(persistent("TriPlaneGenerator", tiny_module_state(
        _modules={"decoder": by_reference("training.triplane.OSGDecoder",
                                          {"__class__": "os.system", "__reduce__": _touch_cmd(m)})}))),
    "stub BUILD with non-dict state": lambda m: _wrap(by_reference(
        "torch.nn.modules.container.Sequential", [_touch_cmd(m)])),
    "stub state holding os.system": lambda m: _wrap(by_reference(
        "training.triplane.OSGDecoder", {"_modules": Call(GlobalRef("os", "system"), (_touch_cmd(m),))})),
    "BUILD on a persistent record": lambda m: _wrap(Call(
        GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj"),
        (dict(type="class", version=6, module_src="", class_name="X", state={}),), {"module_src": _py_touch(m)})),
    "EasyDict BUILD state": lambda m: _wrap(Call(GlobalRef("dnnlib.util", "EasyDict"), (), {"x": _py_touch(m)})),
    "numpy scalar, object dtype": lambda m: _wrap(Call(GlobalRef("numpy._core.multiarray", "scalar"), (
        Call(GlobalRef("numpy", "dtype"), ("O8", False, True)), _inner_os_system(m)))),
    "numpy.core scalar, f8 turned object by BUILD": lambda m: _wrap(Call(GlobalRef("numpy.core.multiarray", "scalar"), (
        Call(GlobalRef("numpy", "dtype"), ("f8", False, True), (3, "<", None, None, None, -1, -1, 63)),
        _inner_os_system(m)))),
    "numpy ndarray _reconstruct": lambda m: dumps(Call(GlobalRef("numpy.core.multiarray", "_reconstruct"), (
        GlobalRef("numpy", "ndarray"), (0,), b"b"))),
    "OrderedDict with odd arguments": lambda m: _wrap(Call(GlobalRef("collections", "OrderedDict"), (
        _touch_cmd(m),))),
    "dotted-name traversal": lambda m: _raw(
        _short_str("torch._utils"), _short_str("_rebuild_tensor_v2.__globals__"), pickle.STACK_GLOBAL),
    "persistent id (BINPERSID)": lambda m: _raw(_short_str(_touch_cmd(m)), pickle.BINPERSID),
    "extension registry (EXT1)": lambda m: _raw(pickle.EXT1 + b"\x07"),
    "copyreg._reconstructor": lambda m: dumps(Call(GlobalRef("copyreg", "_reconstructor"), (
        GlobalRef("subprocess", "Popen"), GlobalRef("builtins", "object"), None))),
    "persistence record version 5": lambda m: _wrap(persistent("TriPlaneGenerator", tiny_module_state(),
                                                               _py_touch(m), version=5)),
    "persistence record with extra meta": lambda m: _wrap(Call(
        GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj"),
        (dict(type="class", version=6, module_src="", class_name="X", state={}, exec=_py_touch(m)),))),
    "torch_utils.persistence.import_hook": lambda m: dumps(Call(
        GlobalRef("torch_utils.persistence", "import_hook"), (GlobalRef("builtins", "exec"),))),
    # BUILD on an allowed tensor: Tensor.__setstate__ -> set_() would grow a 2-element storage to 64 (heap memory).
    "BUILD on a tensor (set_ past its storage)": lambda m: _gen_snapshot(buffers=dict(
        w=_rebuild(_typed_storage(2), (2,), (1,), state=(_typed_storage(2), 0, (64,), (1,))))),
    "BUILD on a tensor (legacy Variable state)": lambda m: _gen_snapshot(buffers=dict(
        w=_rebuild(_typed_storage(2), (2,), (1,), state=(_typed_storage(64), False, None, False, None)))),
    "BUILD on a parameter": lambda m: _gen_snapshot(buffers=dict(w=Call(
        GlobalRef("torch._utils", "_rebuild_parameter"), (_rebuild(_typed_storage(2), (2,), (1,)), False,
                                                          Call(GlobalRef("collections", "OrderedDict"))),
        (_typed_storage(2), 0, (64,), (1,))))),
    "BUILD on an OrderedDict (slot state)": lambda m: _wrap(Call(GlobalRef("collections", "OrderedDict"), (),
                                                                (None, {"__class__": _py_touch(m)}))),
    "tensor with more elements than its storage (zero strides)": lambda m: _gen_snapshot(buffers=dict(
        w=_rebuild(_typed_storage(1), (1 << 20, 1 << 20), (0, 0)))),
    "NEWOBJ of a function": lambda m: _raw(
        _short_str("torch._utils"), _short_str("_rebuild_tensor_v2"), pickle.STACK_GLOBAL, pickle.EMPTY_TUPLE,
        pickle.NEWOBJ),
    "SETITEM on a tensor": lambda m: _gen_snapshot(buffers=dict(w=RawOps(
        _rebuild(_typed_storage(2), (2,), (1,)), 0, 1.0, pickle.SETITEM))),
    # Pickle bombs: ~1 kB files that expand to 2**40 items when walked, hashed or printed.
    "bomb depth 40 in training_set_kwargs": lambda m: _gen_snapshot(training_set_kwargs=dict(x=shared_bomb(40))),
    "bomb depth 20 in training_set_kwargs": lambda m: _gen_snapshot(training_set_kwargs=dict(x=shared_bomb(20))),
    "bomb depth 20 in _init_kwargs": lambda m: _gen_snapshot(_init_kwargs=dict(mapping_kwargs=shared_bomb(20))),
    "bomb depth 40 in _init_kwargs": lambda m: _gen_snapshot(_init_kwargs=dict(mapping_kwargs=shared_bomb(40))),
    "bomb depth 40 of tuples in an attribute": lambda m: _gen_snapshot(rendering_kwargs=shared_bomb(40, tuple)),
    "bomb depth 40 of shared child modules": lambda m: _gen_snapshot(modules=dict(backbone=module_bomb(40))),
    "bomb depth 16 of shared child modules": lambda m: _gen_snapshot(modules=dict(backbone=module_bomb(16))),
    "hash bomb: nested tuple as a dict key": lambda m: _gen_snapshot(training_set_kwargs=RawDict(
        (shared_bomb(40, tuple), 1))),
    "hash bomb: nested tuple in a set": lambda m: _gen_snapshot(
        _non_persistent_buffers_set=RawSet(shared_bomb(40, tuple))),
    "hash bomb: nested tuple as an OrderedDict key": lambda m: _wrap(Call(GlobalRef("collections", "OrderedDict"), (
        [(shared_bomb(40, tuple), 1)],))),
    "print bomb in a refused tensor size": lambda m: _wrap(_rebuild(_typed_storage(2), shared_bomb(40, tuple), (1,))),
    "print bomb in a numpy dtype state": lambda m: _wrap(Call(GlobalRef("numpy", "dtype"), ("f8", False, True),
                                                              shared_bomb(40, tuple))),
    "print bomb in a persistent id": lambda m: _raw(dumps(shared_bomb(40, tuple), protocol=2)[2:-1],
                                                    pickle.BINPERSID),
    "cycle: list inside itself in training_set_kwargs": lambda m: _gen_snapshot(
        training_set_kwargs=dict(x=cycle_list())),
    "cycle: dict inside itself in _init_kwargs": lambda m: _gen_snapshot(_init_kwargs=cycle_dict()),
    "cycle: module inside itself": lambda m: _gen_snapshot(modules=dict(backbone=module_cycle())),
    "nesting 200 levels deep in training_set_kwargs": lambda m: _gen_snapshot(training_set_kwargs=dict(x=nested(200))),
    # Sizes the file cannot back: refused before anything is allocated.
    "BINBYTES8 declaring 2**60 bytes": lambda m: _declared_size(pickle.BINBYTES8, 1 << 60),
    "BINUNICODE8 declaring 8 GiB": lambda m: _declared_size(pickle.BINUNICODE8, 1 << 33),
    "FRAME declaring 2**40 bytes": lambda m: _declared_size(pickle.FRAME, 1 << 40),
    "BYTEARRAY8 of 8 GiB": lambda m: _declared_size(pickle.BYTEARRAY8, 1 << 33),
    "tensor storage declaring 2**31 elements": lambda m: _gen_snapshot(buffers=dict(w=_rebuild(
        Call(GlobalRef("torch.storage", "_load_from_bytes"), (_legacy_storage_bytes_declaring(2 ** 31 - 1),)),
        (2,), (1,)))),
}

# Payloads whose effect is a marker file, for a positive control under an unrestricted unpickler.
LIVE_MARKER_PAYLOADS = ("os.system", "builtins.exec", "builtins.eval", "subprocess.check_call",
                        "importlib.import_module+getattr", "builtins.__import__+getattr", "nested pickle.loads",
                        "torch.load(pickle_module=pickle)")


def module_src_payload(marker: Path) -> tuple[bytes, str]:
    """An EG3D-looking snapshot whose embedded module source would create ``marker`` when executed."""
    src = (f'"""Evil training/triplane.py."""\nimport os\nos.system({_touch_cmd(marker)!r})\n{_py_touch(marker)}\n'
           "class TriPlaneGenerator:\n    pass\n")
    g = persistent("TriPlaneGenerator", tiny_module_state(), src)
    return dumps(snapshot(G=g, G_ema=g, D=None)), src
