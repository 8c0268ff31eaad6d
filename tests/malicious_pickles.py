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


class _CraftPickler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_ref(self, obj: GlobalRef) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))

    dispatch[GlobalRef] = _save_global_ref


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
    return module_state(m, _init_args=(), _init_kwargs={}, **attrs)


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
