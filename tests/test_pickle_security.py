"""Crafted malicious pickles: every one is refused and nothing in it runs (adapt3d.models.eg3d_pickle).

Each payload would create ``MARKER`` (or delete ``victim/``) in ``tmp_path`` if any of its code ran. After every
load attempt we check that the marker does not exist, that the victim folder is intact, that no other file
appeared, and that no ``training``/``torch_utils``/``dnnlib`` module was imported. A control test runs some of the
same bytes through an unrestricted unpickler in a subprocess to show that they really are live payloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from adapt3d.models.eg3d_pickle import (
    ALLOWED_GLOBALS,
    EG3DCheckpointError,
    UnsafePickleError,
    is_forbidden_module,
    load_eg3d_pickle,
)

try:
    from . import malicious_pickles as mp
except ImportError:
    import malicious_pickles as mp

_SHARED = os.environ.get("ADAPT3D_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared"
FIXTURES = Path(_SHARED) / "fixtures" / "eg3d"
FIXTURE = FIXTURES / "ffhq512_tiny.pkl"

# payload -> (expected exception, text the message must contain)
EXPECTED: dict[str, tuple[type[Exception], str]] = {
    "os.system": (UnsafePickleError, "os.system"),
    "posix.system": (UnsafePickleError, "posix.system"),
    "builtins.exec": (UnsafePickleError, "builtins.exec"),
    "builtins.eval": (UnsafePickleError, "builtins.eval"),
    "subprocess.Popen": (UnsafePickleError, "subprocess.Popen"),
    "subprocess.check_call": (UnsafePickleError, "subprocess.check_call"),
    "importlib.import_module+getattr": (UnsafePickleError, "builtins.getattr"),
    "builtins.__import__+getattr": (UnsafePickleError, "builtins.getattr"),
    "shutil.rmtree": (UnsafePickleError, "shutil.rmtree"),
    "nested pickle.loads": (UnsafePickleError, "pickle.loads"),
    "torch.load(pickle_module=pickle)": (UnsafePickleError, "torch.load"),
    "torch.serialization.load": (UnsafePickleError, "torch.serialization.load"),
    "payload inside tensor storage bytes": (UnsafePickleError, "weights-only loader (global os.system)"),
    "_rebuild_tensor_v2 with a non-storage": (UnsafePickleError, "must be a tensor storage"),
    "_rebuild_tensor_v2 out of bounds": (UnsafePickleError, "exceeds its storage"),
    "stub BUILD with slot state": (UnsafePickleError, "must be a dict"),
    "stub BUILD with non-dict state": (UnsafePickleError, "must be a dict"),
    "stub BUILD with dunder keys": (UnsafePickleError, "special keys ['__class__', '__reduce__']"),
    "stub state holding os.system": (UnsafePickleError, "os.system"),
    "BUILD on a persistent record": (UnsafePickleError, "BUILD"),
    "EasyDict BUILD state": (UnsafePickleError, "EasyDict"),
    "numpy scalar, object dtype": (UnsafePickleError, "not a plain numeric dtype"),
    "numpy.core scalar, f8 turned object by BUILD": (UnsafePickleError, "not that of a plain numeric dtype"),
    "numpy ndarray _reconstruct": (UnsafePickleError, "numpy.core.multiarray._reconstruct"),
    "OrderedDict with odd arguments": (UnsafePickleError, "collections.OrderedDict"),
    "dotted-name traversal": (UnsafePickleError, "_rebuild_tensor_v2.__globals__"),
    "persistent id (BINPERSID)": (UnsafePickleError, "persistent id"),
    "extension registry (EXT1)": (EG3DCheckpointError, "extension code"),
    "copyreg._reconstructor": (UnsafePickleError, "copyreg._reconstructor"),
    "persistence record version 5": (EG3DCheckpointError, "version=5"),
    "persistence record with extra meta": (EG3DCheckpointError, "malformed metadata"),
    "torch_utils.persistence.import_hook": (UnsafePickleError, "torch_utils.persistence.import_hook"),
    "BUILD on a tensor (set_ past its storage)": (UnsafePickleError, "BUILD (__setstate__) on a Tensor"),
    "BUILD on a tensor (legacy Variable state)": (UnsafePickleError, "BUILD (__setstate__) on a Tensor"),
    "BUILD on a parameter": (UnsafePickleError, "BUILD (__setstate__) on a Parameter"),
    "BUILD on an OrderedDict (slot state)": (UnsafePickleError, "BUILD (__setstate__) on a OrderedDict"),
    "tensor with more elements than its storage (zero strides)": (UnsafePickleError, "exceeds its storage"),
    "NEWOBJ of a function": (UnsafePickleError, "NEWOBJ"),
    "SETITEM on a tensor": (UnsafePickleError, "dict keys to a Tensor"),
    "bomb depth 40 in training_set_kwargs": (EG3DCheckpointError, "training_set_kwargs is nested more than 32"),
    "bomb depth 20 in training_set_kwargs": (EG3DCheckpointError, "training_set_kwargs expands to more than"),
    "bomb depth 20 in _init_kwargs": (EG3DCheckpointError, "_init_kwargs expands to more than"),
    "bomb depth 40 in _init_kwargs": (EG3DCheckpointError, "_init_kwargs is nested more than 32"),
    "bomb depth 40 of tuples in an attribute": (EG3DCheckpointError, "attributes is nested more than 32"),
    "bomb depth 40 of shared child modules": (EG3DCheckpointError, "nested more than 32 levels"),
    "bomb depth 16 of shared child modules": (EG3DCheckpointError, "more than 20,000 modules"),
    "hash bomb: nested tuple as a dict key": (UnsafePickleError, "dict key of type tuple"),
    "hash bomb: nested tuple in a set": (UnsafePickleError, "set item of type tuple"),
    "hash bomb: nested tuple as an OrderedDict key": (UnsafePickleError, "collections.OrderedDict"),
    "print bomb in a refused tensor size": (UnsafePickleError, "size/stride must be tuples"),
    "print bomb in a numpy dtype state": (UnsafePickleError, "not that of a plain numeric dtype"),
    "print bomb in a persistent id": (UnsafePickleError, "persistent id"),
    "cycle: list inside itself in training_set_kwargs": (EG3DCheckpointError, "training_set_kwargs contains a "
                                                                              "reference cycle"),
    "cycle: dict inside itself in _init_kwargs": (EG3DCheckpointError, "_init_kwargs contains a reference cycle"),
    "cycle: module inside itself": (EG3DCheckpointError, "'backbone.me' contains itself"),
    "nesting 200 levels deep in training_set_kwargs": (EG3DCheckpointError, "nested more than 32 levels"),
    "BINBYTES8 declaring 2**60 bytes": (EG3DCheckpointError, "declares 1,152,921,504,606,846,976 bytes"),
    "BINUNICODE8 declaring 8 GiB": (EG3DCheckpointError, "declares 8,589,934,592 bytes"),
    "FRAME declaring 2**40 bytes": (EG3DCheckpointError, "declares 1,099,511,627,776 bytes"),
    "BYTEARRAY8 of 8 GiB": (UnsafePickleError, "BYTEARRAY8"),
    "tensor storage declaring 2**31 elements": (EG3DCheckpointError, "corrupt tensor storage"),
}

# Every load must end quickly (no pickle bomb may run for long); the marker also bounds each test's wall time,
# with the thread method so that even a loop inside C code (hashing a nested tuple) cannot hang the run.
LOAD_SECONDS = 10.0


def _forbidden_modules() -> list[str]:
    return sorted(m for m in sys.modules if is_forbidden_module(m))


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    return tmp_path


def _assert_nothing_ran(root: Path, allowed: set[str]) -> None:
    assert not (root / "MARKER").exists(), "payload code ran: marker file exists"
    assert (root / "victim" / "keep.txt").read_text() == "keep", "payload code ran: victim folder changed"
    files = {p.relative_to(root).as_posix() for p in root.rglob("*")}
    assert files == allowed | {"victim", "victim/keep.txt"}, files
    assert _forbidden_modules() == []


def test_every_payload_has_an_expectation() -> None:
    assert set(EXPECTED) == set(mp.PAYLOADS)
    assert len(mp.PAYLOADS) >= 12


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("name", sorted(mp.PAYLOADS))
def test_malicious_pickle_is_refused(name: str, sandbox: Path) -> None:
    marker = sandbox / "MARKER"
    path = sandbox / "evil.pkl"
    path.write_bytes(mp.PAYLOADS[name](marker))
    assert path.stat().st_size < 5000  # every attack is a small file
    error, text = EXPECTED[name]
    start = time.perf_counter()
    with pytest.raises(error) as exc:
        load_eg3d_pickle(path)
    assert time.perf_counter() - start < LOAD_SECONDS, "loading took too long: a pickle bomb went off"
    assert text in str(exc.value)
    assert str(path) in str(exc.value)
    assert len(str(exc.value)) < 600  # a one-line message, never a printed bomb
    _assert_nothing_ran(sandbox, {"evil.pkl"})


def test_build_on_a_tensor_would_really_read_past_the_storage(tmp_path: Path) -> None:
    """Control for the BUILD payload: under a plain unpickler (with our allow-list) the 2-element buffer comes out
    with 64 elements, i.e. memory that the file never held. The restricted loader refuses it (above)."""
    import pickle as _pickle

    from adapt3d.models import eg3d_pickle

    class Plain(_pickle.Unpickler):
        find_class = eg3d_pickle._RestrictedUnpickler.find_class

    path = tmp_path / "build.pkl"
    path.write_bytes(mp.PAYLOADS["BUILD on a tensor (set_ past its storage)"](tmp_path / "MARKER"))
    with open(path, "rb") as f:
        raw = Plain(f).load()
    assert raw["G_ema"].state["_buffers"]["w"].numel() == 64


def test_embedded_module_source_is_never_executed(sandbox: Path) -> None:
    marker = sandbox / "MARKER"
    data, src = mp.module_src_payload(marker)
    path = sandbox / "evil_src.pkl"
    path.write_bytes(data)
    pkl = load_eg3d_pickle(path)  # an inert record: loads, and its source stays a string
    for rec in (pkl.G, pkl.G_ema):
        assert rec.class_name == "TriPlaneGenerator"
        assert rec.module_src_sha256 == hashlib.sha256(src.encode()).hexdigest()
        assert rec.module_file_hint == "training/triplane.py"
        assert list(rec.state_dict) == ["w"]
    _assert_nothing_ran(sandbox, {"evil_src.pkl"})


def test_allow_list_is_exactly_what_eg3d_needs() -> None:
    assert ALLOWED_GLOBALS == {
        "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state", "torch.storage._load_from_bytes", "collections.OrderedDict",
        "numpy.dtype", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "dnnlib.util.EasyDict",
        "torch_utils.persistence._reconstruct_persistent_obj", "training.triplane.OSGDecoder",
        "training.volumetric_rendering.renderer.ImportanceRenderer",
        "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
        "training.volumetric_rendering.ray_sampler.RaySampler", "torch.nn.modules.activation.Softplus",
        "training.superresolution.SuperresolutionHybrid8XDC_afhq",
        "torch.nn.modules.container.Sequential"}


# Control only: an unrestricted unpickler, run in a subprocess on payloads that just create a file in tmp_path.
_RUN_UNRESTRICTED = textwrap.dedent("""
    import pickle, sys
    try:
        pickle.Unpickler(open(sys.argv[1], "rb")).load()
    except Exception:
        pass
""")


@pytest.mark.parametrize("name", mp.LIVE_MARKER_PAYLOADS)
def test_control_payloads_are_live_under_an_unrestricted_unpickler(name: str, tmp_path: Path) -> None:
    """Proof that the tests above are meaningful: the same bytes do run code when unpickled naively."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(mp.PAYLOADS[name](marker))
    subprocess.run([sys.executable, "-c", _RUN_UNRESTRICTED, str(path)], cwd=tmp_path, timeout=120,
                   capture_output=True, check=False)
    assert marker.exists()


@pytest.mark.skipif(not FIXTURE.is_file(), reason="EG3D fixture not available")
def test_legit_fixture_creates_no_file_and_imports_no_official_module(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import json, sys
        from adapt3d.models.eg3d_pickle import load_eg3d_pickle
        pkl = load_eg3d_pickle({str(FIXTURE)!r})
        bad = [m for m in sys.modules if m.split(".")[0] in ("training", "torch_utils", "dnnlib")
               or m.startswith("_imported_module_")]
        print(json.dumps({{"bad": bad, "n": len(pkl.G_ema.state_dict)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=300, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"bad": [], "n": 177}
    assert list(tmp_path.iterdir()) == []
