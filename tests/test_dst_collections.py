"""3D-DST's released model list: ImageNet synsets -> class names, ShapeNet / Objaverse / OmniObject3D layouts,
missing models skipped with their reason, loose mesh folders."""

import json

import pytest
import trimesh

from adapt3d.data.cad import find_models, read_mesh_list
from adapt3d.data.cad_collections import CollectionRoots
from adapt3d.dst.imagenet import class_display_name, imagenet_classes
from adapt3d.dst.prompts import PromptBuilder, PromptConfig
from adapt3d.pipelines.synth import SynthConfig, synth

HEADER = "synset,model,distance,azimuth,elevation,strength,sampling\n"
ROWS = [
    "n02690373,1a04e3eab45ca15dd86060f189eb133,1.5,90,0,1,1",     # ShapeNet v2 (airliner)
    "n04285008,2b8ac6bd7a2d4d2b9ae3a8fcaa2bd5c0,2.0,0,5,1,3",     # ShapeNet v1 layout (sports car)
    "n03891251,f8a1b3c2d4e5f60718293a4b5c6d7e8f,1.5,0,0,2,1",     # Objaverse, package cache layout (park bench)
    "n03891251,0a1b2c3d4e5f60718293a4b5c6d7e8f9,1.5,0,0,1,1",     # Objaverse, flat <uid>.glb
    "n04037443,omniobject3d_toy_car_001,1.5,0,0,1,3",             # OmniObject3D (race car)
    "n04037443,toys4k_car_003,1.5,0,0,1,3",                       # Toys4k: .blend, unsupported
    "n02690373,ffffffffffffffffffffffffffffffff,1.5,0,0,1,1",     # in no collection
]


def _box(path, extents=(0.4, 0.2, 0.8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=extents).export(path)
    return path


@pytest.fixture()
def collections(tmp_path):
    sn, ob, om = tmp_path / "ShapeNetCore.v2", tmp_path / "objaverse", tmp_path / "OmniObject3D"
    _box(sn / "02691156" / "1a04e3eab45ca15dd86060f189eb133" / "models" / "model_normalized.obj")
    _box(sn / "02958343" / "2b8ac6bd7a2d4d2b9ae3a8fcaa2bd5c0" / "model.obj")
    _box(ob / "hf-objaverse-v1" / "glbs" / "000-023" / "f8a1b3c2d4e5f60718293a4b5c6d7e8f.glb")
    _box(ob / "0a1b2c3d4e5f60718293a4b5c6d7e8f9.glb")
    _box(om / "raw" / "raw_scans" / "toy_car" / "toy_car_001" / "Scan" / "Scan.obj")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "3d-dst-models.csv").write_text(HEADER + "\n".join(ROWS) + "\n")
    (tmp_path / "lists" / "no-header.csv").write_text("\n".join(ROWS) + "\n")
    return tmp_path, CollectionRoots(shapenet=sn, objaverse=ob, omniobject3d=om)


def test_imagenet_index_is_complete_and_names_synsets():
    classes = imagenet_classes()
    assert len(classes) == 1000 and sorted(c.index for c in classes.values()) == list(range(1000))
    assert classes["n01440764"].index == 0 and classes["n15075141"].index == 999  # first and last of ILSVRC-2012
    assert class_display_name("n02690373") == "airliner"
    # the two ImageNet "crane"s get distinct names (the bird and the machine)
    assert class_display_name("n02012849") != class_display_name("n03126707")
    assert class_display_name("car_model") == "car model" and class_display_name("n99999999") == "n99999999"


def test_dst_list_resolves_every_collection_and_reports_the_rest(collections):
    root, roots = collections
    models = read_mesh_list(root / "lists" / "3d-dst-models.csv", roots)
    got = [(m.model_id[:8], m.collection, m.path is not None) for m in models]
    assert got == [("1a04e3ea", "shapenet", True), ("2b8ac6bd", "shapenet", True), ("f8a1b3c2", "objaverse", True),
                   ("0a1b2c3d", "objaverse", True), ("omniobje", "omniobject3d", True), ("toys4k_c", "toys4k", False),
                   ("ffffffff", "unknown", False)]
    assert all(m.problem is None for m in models[:5])
    assert models[0].path.name == "model_normalized.obj" and models[1].path.name == "model.obj"
    assert (models[0].distance, models[0].azimuth_deg, models[1].elevation_deg, models[1].sampling,
            models[2].strength) == (1.5, 90.0, 5.0, 3, 2)
    assert "needs Blender" in models[5].problem
    assert "not found" in models[6].problem and "--shapenet-root" in models[6].problem
    # 3D-DST's file read by position when it has no header row
    plain = read_mesh_list(root / "lists" / "no-header.csv", roots)
    assert [(m.class_name, m.model_id, m.path, m.distance) for m in plain] == \
        [(m.class_name, m.model_id, m.path, m.distance) for m in models]
    # without roots every row is a problem, and says which roots to give
    bare = read_mesh_list(root / "lists" / "3d-dst-models.csv")
    assert all(m.path is None and "--shapenet-root" in m.problem for m in bare[:5])
    with pytest.raises(FileNotFoundError, match="--objaverse-root"):
        CollectionRoots(objaverse=root / "nope")


def test_prompts_use_class_names_not_synsets():
    b = PromptBuilder(PromptConfig())
    prompts = b.templates("n02690373")
    assert prompts and all("n02690373" not in p for p in prompts) and any("airliner" in p for p in prompts)


def test_synth_on_the_dst_list_skips_what_is_missing_and_completes(collections, capsys):
    root, roots = collections
    out = root / "run"
    result = synth(SynthConfig(out=out, meshes=str(root / "lists" / "3d-dst-models.csv"), shapenet_root=roots.shapenet,
                               objaverse_root=roots.objaverse, omniobject3d_root=roots.omniobject3d, render_only=True,
                               per_mesh=1, resolution=32, progress=False))
    assert result.images == 5 and result.meshes_done == 5
    summary = json.loads((out / "synth.json").read_text())
    skipped = {s["id"]: s["reason"] for s in summary["meshes_skipped"]}
    assert set(skipped) == {"toys4k_car_003", "ffffffffffffffffffffffffffffffff"}
    status = {m["id"][:8]: m["status"] for m in summary["models"]}
    assert list(status.values()).count("done") == 5 and status["toys4k_c"] == "skipped"
    assert "5 mesh(es) done, 2 skipped" in summary["summary"]
    ann = json.loads((out / "n02690373" / "1a04e3eab45ca15dd86060f189eb133" / "annotation" / "000_00.json").read_text())
    assert ann["class"] == "n02690373" and ann["class_name"] == "airliner" and ann["collection"] == "shapenet"
    assert "airliner" in ann["prompt"] or "passenger jet" in ann["prompt"]
    err = capsys.readouterr().err
    assert err.count("skipped mesh") == 2


def test_a_folder_of_loose_meshes(tmp_path):
    for name in ("chair_01.obj", "chair_02.obj", "mug.glb"):
        _box(tmp_path / "loose" / name)
    models = find_models(tmp_path / "loose")
    assert [(m.class_name, m.model_id) for m in models] == [("chair", "chair_01"), ("chair", "chair_02"),
                                                            ("mug", "mug")]
    assert {m.class_name for m in find_models(tmp_path / "loose", default_class="thing")} == {"thing"}
    result = synth(SynthConfig(out=tmp_path / "run", meshes=str(tmp_path / "loose"), mesh_class="cup",
                               render_only=True, per_mesh=1, resolution=32, progress=False))
    assert result.images == 3 and (tmp_path / "run" / "cup" / "mug" / "annotation" / "000_00.json").is_file()
