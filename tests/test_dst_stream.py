"""synth at scale: a list of many small meshes with bad ones streams to the end (one mesh in memory, one line per
bad mesh, reasons in synth.json); resumed runs are byte-identical to uninterrupted ones; torchrun sharding."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

import adapt3d.pipelines.synth as synth_module
from adapt3d.dst.dataset import annotation_files
from adapt3d.pipelines.synth import SynthConfig, synth

N_GOOD = 24


def _bad_meshes(folder: Path) -> dict[str, str]:
    """One file per kind of bad mesh; name -> a word its reason must contain."""
    (folder / "empty.obj").write_bytes(b"")
    (folder / "points.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                       "property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n")
    (folder / "nan.obj").write_text("v 0 0 0\nv 1 0 nan\nv 0 1 0\nf 1 2 3\n")
    (folder / "nofaces.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    tex = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    plane = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0]], [[0, 1, 2]], process=False,
                            visual=trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1]], image=tex))
    plane.export(folder / "badtex.glb")
    data = bytearray((folder / "badtex.glb").read_bytes())
    start = data.find(b"\x89PNG")
    data[start + 16:start + 60] = b"\x00" * 44
    (folder / "badtex.glb").write_bytes(bytes(data))
    return {"empty": "empty", "points": "no triangles", "nan": "non-finite", "nofaces": "no triangles",
            "badtex": "texture", "missing": "does not exist"}


@pytest.fixture(scope="module")
def mesh_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    rows = []
    for i in range(N_GOOD):
        box = trimesh.creation.box(extents=(0.3 + 0.02 * i, 0.5, 0.2))
        box.export(root / f"box{i:02d}.obj")
        rows.append(f"box,box{i:02d},box{i:02d}.obj")
    bad = _bad_meshes(root)
    rows += [f"bad,{name},{name}{ext}" for name, ext in
             [("empty", ".obj"), ("points", ".ply"), ("nan", ".obj"), ("nofaces", ".obj"), ("badtex", ".glb"),
              ("missing", ".obj")]]
    (root / "list.csv").write_text("class,id,path\n" + "\n".join(rows) + "\n")
    return root / "list.csv", bad


def test_a_long_list_with_bad_meshes_streams_to_the_end(mesh_list, tmp_path, monkeypatch, capsys):
    path, bad = mesh_list
    alive, peak = [], [0]
    real_load = synth_module.load_cad_mesh

    def counting_load(*args, **kwargs):
        peak[0] = max(peak[0], sum(r() is not None for r in alive))  # meshes still held when the next one loads
        mesh = real_load(*args, **kwargs)
        alive.append(weakref.ref(mesh))
        return mesh

    monkeypatch.setattr(synth_module, "load_cad_mesh", counting_load)
    result = synth(SynthConfig(out=tmp_path / "run", meshes=str(path), render_only=True, per_mesh=2, resolution=32,
                               batch_size=1, progress=False))
    assert result.images == 2 * N_GOOD and result.meshes_done == N_GOOD
    assert peak[0] == 0  # one mesh at a time: the previous one is released before the next is loaded
    summary = json.loads((tmp_path / "run" / "synth.json").read_text())
    reasons = {s["id"]: s["reason"] for s in summary["meshes_skipped"]}
    assert set(reasons) == set(bad)
    for name, word in bad.items():
        assert word in reasons[name] and name in reasons[name], (name, reasons[name])
    err = capsys.readouterr().err
    for name in bad:
        assert err.count(f"skipped mesh bad/{name}:") == 1  # one line per bad mesh, even with 2 units each
    assert f"{N_GOOD} mesh(es) done, {len(bad)} skipped" in err


def test_torchrun_ranks_shard_the_units(mesh_list, tmp_path, monkeypatch):
    path, _ = mesh_list
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        synth(SynthConfig(out=tmp_path / "run", meshes=str(path), classes="box", render_only=True, per_mesh=2,
                          resolution=32, batch_size=1, progress=False))
    summaries = [json.loads((tmp_path / "run" / f"synth-shard{r}of2.json").read_text()) for r in (0, 1)]
    assert [s["shard"] for s in summaries] == [[0, 2], [1, 2]]
    assert summaries[0]["generated_images"] == summaries[1]["generated_images"] == N_GOOD
    assert len(annotation_files(tmp_path / "run")) == 2 * N_GOOD


FAST = dict(preset="tiny", per_mesh=4, num_inference_steps=2, batch_size=2, device="cpu", progress=False)


def _same_files(a: Path, b: Path, also: Path | None = None) -> None:
    """The files under a and b are equal byte for byte, up to the output folder's name inside annotations."""
    import difflib

    fa, fb = _files(a, also), _files(b)
    assert fa.keys() == fb.keys()
    differ = [k for k in fa if fa[k] != fb[k]]
    text = [k for k in differ if k.endswith(".json")]
    detail = "".join(difflib.unified_diff(fb[text[0]].decode().splitlines(True), fa[text[0]].decode().splitlines(True),
                                          n=1)) if text else ""
    assert differ == [], detail


def _files(root: Path, also: Path | None = None) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("synth"):
            data = p.read_bytes().replace(str(root).encode(), b"<out>")
            out[p.relative_to(root).as_posix()] = data.replace(str(also).encode(), b"<out>") if also else data
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    synth(SynthConfig(out=out, **FAST))
    return out


def test_a_half_done_batch_is_regenerated_whole_and_matches(uninterrupted, tmp_path):
    """Batch [000_00, 001_00] of a mesh with only its first image done: the resumed run computes the batch as the
    uninterrupted run did (same make-up), so the second image is byte-identical (generated alone, its pixels would
    round differently)."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    for rel in ("car/box_car/annotation/001_00.json", "car/box_car/image/001_00.png"):
        (out / rel).unlink()
    resumed = synth(SynthConfig(out=out, **FAST))
    assert resumed.images == 1
    _same_files(out, uninterrupted, also=uninterrupted)  # copied annotations name the original folder


def test_killed_and_resumed_run_writes_the_same_bytes(uninterrupted, tmp_path):
    out = tmp_path / "run"
    code = ("import sys; from adapt3d.pipelines.synth import SynthConfig, synth; "
            f"synth(SynthConfig(out=sys.argv[1], **{FAST!r}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not list(out.glob("*/*/annotation/*.json")):
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)  # mid-run, right after its first finished image
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 1 <= len(annotation_files(out)) < 8
    synth(SynthConfig(out=out, **FAST))
    leftovers = [p for p in out.rglob(".*") if p.is_file() and p.name != ".adapt3d-write-test"]
    for p in leftovers:  # temporary files of the killed writer (atomic writes) are not part of the dataset
        p.unlink()
    _same_files(out, uninterrupted)
