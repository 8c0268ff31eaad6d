"""Write EG3D network pickles in the official snapshot format from adapt3d modules (test data, benchmarks).

The official training loop pickles ``dict(training_set_kwargs, G, D, G_ema, augment_pipe)``; each network is a
``torch_utils.persistence`` record (class name, the defining module's source, the object's ``__dict__``) and
helper modules (decoder, renderer, ``Sequential``...) are pickled by reference (``shared/docs/eg3d-facts.md`` §2).
:func:`write_eg3d_snapshot` writes that format from our ``TriPlaneGenerator`` / ``DualDiscriminator``: the records
carry the official class names and constructor kwargs, our (identically named) parameters and persistent
buffers, and a placeholder instead of the module source (a real snapshot embeds the source; adapt3d never runs
it either way). Reading such a file back with :func:`adapt3d.models.eg3d_convert.load_official_pickle` runs the
same code path as a released checkpoint.

Only writes (dumping a pickle executes nothing). Globals the reader must see by name but that cannot be imported
here (``torch_utils.persistence._reconstruct_persistent_obj``, ``dnnlib.util.EasyDict``...) are written as raw
``GLOBAL`` opcodes by a pure-Python pickler.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = ["GlobalRef", "Call", "EasyDictRef", "dumps", "persistent", "by_reference", "network_record",
           "write_eg3d_snapshot", "PLACEHOLDER_SRC"]

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


class EasyDictRef(dict):
    """Pickles as ``dnnlib.util.EasyDict`` with these items (as the official snapshots do)."""

    def __reduce__(self) -> tuple:
        return (GlobalRef("dnnlib.util", "EasyDict"), (), None, None, iter(self.items()))


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_ref(self, obj: GlobalRef) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))

    dispatch[GlobalRef] = _save_global_ref


def dumps(obj: Any, protocol: int = 4) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def persistent(class_name: str, state: dict, module_src: str = PLACEHOLDER_SRC, *, version: int = 6,
               kind: str = "class") -> Call:
    """What ``torch_utils.persistence`` writes for a decorated object."""
    meta = dict(type=kind, version=version, module_src=module_src, class_name=class_name, state=state)
    return Call(GlobalRef("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


def by_reference(qualified_name: str, state: dict) -> Call:
    module, _, name = qualified_name.rpartition(".")
    return Call(GlobalRef(module, name), (), state)


# Our class name -> the official one (persistent classes) or its import path (classes pickled by reference).
_PERSISTENT_NAMES = {"StyleGAN2Backbone": "Generator"}
_BY_REFERENCE = {
    "OSGDecoder": "training.triplane.OSGDecoder",
    "ImportanceRenderer": "training.volumetric_rendering.renderer.ImportanceRenderer",
    "MipRayMarcher2": "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "RaySampler": "training.volumetric_rendering.ray_sampler.RaySampler",
    "Sequential": "torch.nn.modules.container.Sequential",
    "Softplus": "torch.nn.modules.activation.Softplus",
}


def _official_name(module: torch.nn.Module) -> str:
    name = type(module).__name__
    if name == "SuperResolution":  # one class here, one class per head there
        return module.kind
    return _PERSISTENT_NAMES.get(name, name)


def network_record(module: torch.nn.Module, init_kwargs: dict | None = None, attributes: dict | None = None) -> Call:
    """The persistence record of ``module`` and its children: parameters and persistent buffers (detached, CPU),
    official class names; ``init_kwargs`` / ``attributes`` go into the top-level record's state."""
    children = OrderedDict((n, None if c is None else network_record(c)) for n, c in module._modules.items())
    skip = module._non_persistent_buffers_set
    state = {
        "training": False,
        "_parameters": OrderedDict((n, None if p is None else torch.nn.Parameter(p.detach().cpu(), requires_grad=False))
                                   for n, p in module._parameters.items()),
        "_buffers": OrderedDict((n, b.detach().cpu()) for n, b in module._buffers.items() if n not in skip),
        "_non_persistent_buffers_set": set(),
        "_modules": children,
    }
    name = type(module).__name__
    if name in _BY_REFERENCE:
        return by_reference(_BY_REFERENCE[name], state)
    state.update(_init_args=(), _init_kwargs=_easydicts(init_kwargs or {}))
    state.update(attributes or {})
    return persistent(_official_name(module), state)


def _easydicts(kwargs: dict) -> dict:
    """Nested kwargs dicts become EasyDicts, as in the official pickles (rendering_kwargs stays a plain dict)."""
    return {k: EasyDictRef(v) if isinstance(v, dict) and k != "rendering_kwargs" else v for k, v in kwargs.items()}


def write_eg3d_snapshot(path: str | os.PathLike, G: torch.nn.Module, G_kwargs: dict, D: torch.nn.Module | None = None,
                        D_kwargs: dict | None = None, G_attributes: dict | None = None) -> Path:
    """Write ``network-snapshot-*.pkl``-format ``path`` holding G = G_ema (one record, stored once) and D.

    ``G_kwargs`` / ``D_kwargs`` are the official constructor kwargs (e.g. ``adapt3d.configs`` ``eg3d-*``);
    ``G_attributes`` default to the generator's ``neural_rendering_resolution`` and ``rendering_kwargs``. The
    file is written to a temporary name and renamed into place.
    """
    path = Path(path)
    attrs = {"neural_rendering_resolution": int(G.neural_rendering_resolution),
             "rendering_kwargs": dict(G_kwargs.get("rendering_kwargs") or {})}
    attrs.update(G_attributes or {})
    g = network_record(G, G_kwargs, attrs)
    d = network_record(D, D_kwargs or {}) if D is not None else None
    snapshot = {"training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "random.zip",
                                        "use_labels": True, "max_size": None, "xflip": False,
                                        "resolution": int(G_kwargs.get("img_resolution", 0)), "random_seed": 0},
                "G": g, "D": d, "G_ema": g, "augment_pipe": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _Pickler(f, protocol=4).dump(snapshot)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
