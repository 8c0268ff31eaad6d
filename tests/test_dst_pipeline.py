"""End to end: adapt3d synth (tiny preset, offline) -> kcf -> export-coco; resume, shards, errors."""

import json

import numpy as np
import pytest
import tyro
from PIL import Image

from adapt3d.data.cad import load_cad_mesh
from adapt3d.diffusion.loading import PretrainedNotFoundError
from adapt3d.dst.annotations import bbox_from_mask, project_px
from adapt3d.dst.dataset import annotation_files
from adapt3d.dst.prompts import DST_NEGATIVE, DST_SUFFIX
from adapt3d.pipelines.export_coco import ExportCocoConfig, export_coco
from adapt3d.pipelines.kcf import KcfConfig, kcf
from adapt3d.pipelines.synth import SynthConfig, synth

FAST = dict(preset="tiny", per_mesh=3, num_inference_steps=2, batch_size=4, device="cpu", progress=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("dst") / "run"
    result = synth(SynthConfig(out=out, **FAST))
    return out, result


def _read(path):
    return np.asarray(Image.open(path))


def test_demo_writes_a_complete_annotated_dataset(demo):
    out, result = demo
    assert result.views == 6 and result.images == 6  # 2 meshes x 3 views, 1 sample each
    anns = annotation_files(out)
    assert len(anns) == 6
    summary = json.loads((out / "synth.json").read_text())
    assert summary["generated_images"] == 6 and summary["resolved"]["resolution"] == 64
    for path in anns:
        a = json.loads(path.read_text())
        assert a["class"] in ("car", "chair") and a["generation"]["generated"] is True
        assert a["prompt"].endswith(DST_SUFFIX) and a["negative_prompt"] == DST_NEGATIVE
        assert a["generation"]["guidance_scale"] == 9.0 and a["generation"]["eta"] == 1.0
        img = _read(out / a["image"])
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        mask = _read(out / a["files"]["mask"]) > 127
        depth = np.load(out / a["files"]["depth"])
        edges = _read(out / a["files"]["control"])
        assert depth.shape == (64, 64) and np.all((depth > 0) == mask) and set(np.unique(edges)) <= {0, 255}
        assert _read(out / a["files"]["render"]).shape == (64, 64, 3)
        assert _read(out / a["files"]["normal"]).shape == (64, 64, 3)
        assert a["bbox"] == bbox_from_mask(mask) and a["area"] == mask.sum()
        for key in ("azimuth", "elevation", "inplane_rotation", "distance", "K", "R", "t", "principal", "pascal3d",
                    "eg3d_label", "seed", "keypoints", "mesh_id", "tags", "class_name", "scene"):
            assert key in a, key
        assert "theta" not in a  # ambiguous (azimuth in 3D-DST's .npy, in-plane rotation in PASCAL3D+)
        assert a["principal"] == [32.0, 32.0] and np.isclose(a["focal_px"], 70.0)  # 35/32 * 64


def test_annotation_projects_the_mesh_onto_its_silhouette_and_depth(demo):
    """The stored K, R, t put the mesh's vertices on the stored silhouette and visible vertices at the stored
    depth; keypoints marked visible lie on the silhouette."""
    out, _ = demo
    seen = []
    for path in annotation_files(out):
        a = json.loads(path.read_text())
        mesh = load_cad_mesh(a["mesh_path"], a["alignment"]["up_axis"])
        K, R, t = (np.array(a[k]) for k in ("K", "R", "t"))
        uv, z = project_px(mesh.vertices, K, R, t)
        mask = _read(out / a["files"]["mask"]) > 127
        depth = np.load(out / a["files"]["depth"])
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < 64) & (uv[:, 1] >= 0) & (uv[:, 1] < 64)
        j, i = uv[inside, 0].astype(int), uv[inside, 1].astype(int)
        near_mask = [mask[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any() for r, c in zip(i, j)]
        assert all(near_mask)
        # no vertex lies in front of everything drawn around its pixel (else the z-buffer or the camera is wrong)
        far = np.where(mask, depth, np.inf)
        nearest = np.array([far[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].min() for r, c in zip(i, j)])
        assert np.all(nearest <= z[inside] + 0.05)
        drawn = depth[i, j]
        on = drawn > 0
        front = np.abs(z[inside][on] - drawn[on]) < 0.01
        assert front.mean() > 0.1  # the visible vertices (a share of them) sit exactly on the depth map
        for kp in a["keypoints"]:
            if kp["visible"]:
                r, c = int(kp["uv"][1]), int(kp["uv"][0])
                assert mask[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2].any()
        seen += [kp["visible"] for kp in a["keypoints"]]
    assert any(seen) and not all(seen)  # both visible and occluded keypoints occur


def test_rerun_resumes_without_recomputing(demo):
    out, _ = demo
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = synth(SynthConfig(out=out, **FAST))
    assert again.views == 0 and again.images == 0 and again.skipped == 6  # images already there
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    with pytest.raises(ValueError, match="--out.*other options.*seed: 0 now 1"):
        synth(SynthConfig(out=out, **{**FAST, "seed": 1}))
    with pytest.raises(ValueError, match="--out.*other options.*background: 'white' now 'solid'"):
        synth(SynthConfig(out=out, **{**FAST, "background": "solid"}))


def test_shards_split_the_work_and_match_a_single_run(tmp_path):
    cfg = dict(FAST, render_only=True, control="depth")
    synth(SynthConfig(out=tmp_path / "one", **cfg))
    for shard in ("0/2", "1/2"):
        synth(SynthConfig(out=tmp_path / "two", shard=shard, **cfg))
    one = {p.relative_to(tmp_path / "one") for p in annotation_files(tmp_path / "one")}
    two = {p.relative_to(tmp_path / "two") for p in annotation_files(tmp_path / "two")}
    assert one == two and len(one) == 6
    assert (tmp_path / "two" / "synth-shard1of2.json").is_file()
    for rel in {p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*")
                if p.is_file() and p.name != "synth.json"}:
        two = (tmp_path / "two" / rel).read_bytes().replace(str(tmp_path / "two").encode(), str(tmp_path / "one").encode())
        assert (tmp_path / "one" / rel).read_bytes() == two, rel  # mesh_path names each run's demo meshes
    for rel in one:  # the same poses, whichever process drew them
        a, b = (json.loads((tmp_path / d / rel).read_text()) for d in ("one", "two"))
        assert a["R"] == b["R"] and a["distance"] == b["distance"] and a["prompt"] == b["prompt"]
        assert a["generation"] == {"generated": False} and a["image"] == a["files"]["render"]
        assert a["control"] == "depth"


def test_kcf_then_export_coco(demo):
    out, _ = demo
    result = kcf(KcfConfig(dataset=out, folds=3, drop=0.34, epochs=2, image_size=32, num_bins=8, width=4,
                           device="cpu", progress=False))
    assert len(result.removed) == 2  # round(0.34 * 3) per class
    coco_path = out / "coco.json"
    exported = export_coco(ExportCocoConfig(dataset=out, output=coco_path))
    coco = json.loads(coco_path.read_text())  # a plain json reader
    assert exported.images == len(coco["images"]) == 4 and exported.categories == ["car", "chair"]
    cats = {c["id"]: c for c in coco["categories"]}
    for img, ann in zip(coco["images"], coco["annotations"]):
        a = json.loads((out / img["annotation_file"]).read_text())
        assert a["kcf"]["kept"] and ann["image_id"] == img["id"] and img["file_name"] == a["image"]
        assert ann["bbox"] == a["bbox"] and ann["area"] == a["area"] and cats[ann["category_id"]]["name"] == a["class"]
        assert ann["pose"]["azimuth"] == a["azimuth"] and ann["pose"]["R"] == a["R"]
        names = cats[ann["category_id"]]["keypoints"]
        assert len(ann["keypoints"]) == 3 * len(names)
        for name, (x, y, v) in zip(names, np.array(ann["keypoints"]).reshape(-1, 3)):
            kp = next(k for k in a["keypoints"] if k["name"] == name)
            assert v == (2 if kp["visible"] else 1 if kp["in_image"] else 0)
            if v:
                assert np.allclose([x, y], kp["uv"], atol=1e-3)
        assert ann["num_keypoints"] == sum(1 for k in a["keypoints"] if k["in_image"])
        x0, y0, w, h = ann["bbox"]
        poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert poly[:, 0].min() >= x0 and poly[:, 0].max() <= x0 + w and poly[:, 1].max() <= y0 + h
    everything = export_coco(ExportCocoConfig(dataset=out, output=out / "all.json", only_kept=False))
    assert everything.images == 6


def test_cli_flags_parse():
    cfg = tyro.cli(SynthConfig, args=["--preset", "tiny", "--classes", "car", "--per-mesh", "2", "--pose-sampling",
                                      "above", "--no-distance-jitter", "--shard", "1/3", "--control", "depth"])
    assert cfg.per_mesh == 2 and not cfg.distance_jitter and cfg.shard == "1/3" and cfg.control == "depth"
    k = tyro.cli(KcfConfig, args=["runs/dst", "--folds", "5", "--drop", "0.1"])
    assert k.folds == 5 and k.drop == 0.1
    e = tyro.cli(ExportCocoConfig, args=["runs/dst", "runs/dst/coco.json"])
    assert e.output.name == "coco.json"


@pytest.mark.parametrize("kwargs, error, needle", [
    (dict(classes="car,bus"), ValueError, "--classes: unknown class.*bus"),
    (dict(shard="2/2"), ValueError, "--shard"),
    (dict(resolution=60), ValueError, "--resolution: 60"),
    (dict(canny_low=300), ValueError, "--canny-low"),
    (dict(pose_sampling="9"), ValueError, "--pose-sampling"),
    (dict(eta=2.0), ValueError, "--eta"),
    (dict(controlnet="nobody/missing-controlnet"), PretrainedNotFoundError, "--controlnet.*nobody/missing"),
    (dict(preset=None), ValueError, "--meshes"),
])
def test_errors_before_any_work(tmp_path, monkeypatch, kwargs, error, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    with pytest.raises(error, match=needle):
        synth(SynthConfig(out=out, **{**FAST, **kwargs}))
    assert not annotation_files(out) and not list(out.glob("*/*/render/*.png"))


def test_a_bad_mesh_is_skipped_with_its_reason_and_the_run_completes(tmp_path, capsys):
    (tmp_path / "car").mkdir()
    (tmp_path / "car" / "broken.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    import trimesh
    trimesh.creation.box().export(tmp_path / "car" / "good.obj")
    result = synth(SynthConfig(out=tmp_path / "run", meshes=str(tmp_path), render_only=True, per_mesh=1,
                               resolution=32, progress=False))
    assert result.images == 1 and result.meshes_done == 1
    assert [(s["id"], "degenerate" in s["reason"]) for s in result.meshes_skipped] == [("broken", True)]
    err = capsys.readouterr().err
    assert "skipped mesh car/broken" in err and "broken.obj is degenerate" in err and "1 skipped" in err
