"""3D-DST building blocks: viewpoint sampling, camera/angle conventions, CAD loading and mesh lists, prompts."""

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from adapt3d.cameras import matrices_from_label, project_points
from adapt3d.data.cad import file_to_object, find_models, load_cad_mesh, read_mesh_list, select_classes
from adapt3d.data.cad_procedural import write_demo_meshes
from adapt3d.dst.annotations import (bbox_from_mask, dst_camera, dst_from_pascal3d, keypoint_annotations,
                                     pascal3d_from_dst, pascal3d_project, project_px)
from adapt3d.dst.prompts import DST_SUFFIX, LLMPromptRewriter, PromptBuilder, PromptConfig, clean_generated_text
from adapt3d.dst.render import canny_edges, depth_control, render_view
from adapt3d.dst.viewpoints import PHI_EPS, Viewpoint, ViewpointConfig, parse_strategy, sample_viewpoint


def _views(strategy, n=2000, **kw):
    cfg = ViewpointConfig(strategy=strategy, distance_jitter=kw.pop("jitter", False))
    return [sample_viewpoint(cfg, 0, 7, i, **kw) for i in range(n)]


# ----------------------------------------------------------------------------------------------- viewpoints
def test_strategy_1_and_3_polar_distributions():
    polar = np.degrees([v.polar for v in _views(1)])
    az = np.degrees([v.azimuth for v in _views(1)])
    assert 0 <= polar.min() and polar.max() <= 180
    assert abs(polar.mean() - 90) < 2.5 and 26 < polar.std() < 31  # truncation at +-3 sigma barely narrows it
    assert az.min() >= 0 and az.max() < 360 and abs(az.mean() - 180) < 8
    polar3 = np.degrees([v.polar for v in _views(3)])
    # N(60, 20) on [0, 195]: mean ~60.4 (the lower tail is cut at 3 sigma)
    assert abs(polar3.mean() - 60.4) < 2 and 18 < polar3.std() < 21


def test_strategy_2_front_half_and_5_uniform():
    az = np.degrees([v.azimuth for v in _views(2)])
    # U[-195, 15] mod 360 = [165, 360) U [0, 15]
    assert np.all((az >= 165 - 1e-9) | (az <= 15 + 1e-9))
    polar = np.degrees([v.polar for v in _views(5)])
    assert abs(polar.mean() - 90) < 3 and abs(polar.std() - 180 / math.sqrt(12)) < 2


def test_distance_jitter_range_and_fixed_distance():
    d = np.array([v.distance for v in _views(1, n=1000, jitter=True, distance=2.0)])
    assert d.min() >= 1.5 - 1e-9 and d.max() <= 3.5 + 1e-9 and abs(np.median(d) - 2.15) < 0.15
    assert {v.distance for v in _views(1, n=20, distance=2.0)} == {2.0}


def test_alignment_offsets_and_pole_folding():
    cfg = ViewpointConfig(strategy=5, distance_jitter=False)
    base = sample_viewpoint(cfg, 3, 1, 0)
    shifted = sample_viewpoint(cfg, 3, 1, 0, azimuth_offset_deg=30, elevation_offset_deg=10)
    assert math.isclose((shifted.azimuth - base.azimuth) % (2 * math.pi), math.radians(30), abs_tol=1e-9)
    if base.polar > math.radians(12):
        assert math.isclose(base.polar - shifted.polar, math.radians(10), abs_tol=1e-9)
    # an elevation offset that pushes the camera over the north pole flips it to the other side
    over = [sample_viewpoint(cfg, 3, 1, i, elevation_offset_deg=170) for i in range(50)]
    assert all(PHI_EPS <= v.polar <= math.pi - PHI_EPS for v in over)
    b = [sample_viewpoint(cfg, 3, 1, i) for i in range(50)]
    for v0, v1 in zip(b, over):
        if math.radians(170) - v0.polar > 0.01:  # folded: theta + 180, phi = -(phi - 170)
            assert math.isclose(v1.polar, math.radians(170) - v0.polar, abs_tol=1e-9)
            assert math.isclose((v1.azimuth - v0.azimuth) % (2 * math.pi), math.pi, abs_tol=1e-9)


def test_views_are_seeded_per_view():
    cfg = ViewpointConfig()
    a = sample_viewpoint(cfg, 5, 11, 3)
    assert a == sample_viewpoint(cfg, 5, 11, 3)  # same key -> same view, whatever was drawn before
    assert a != sample_viewpoint(cfg, 5, 11, 4) and a != sample_viewpoint(cfg, 6, 11, 3)
    assert a != sample_viewpoint(cfg, 5, 12, 3)


def test_parse_strategy():
    assert parse_strategy("above") == 3 and parse_strategy(4) == 4 and parse_strategy("5") == 5
    with pytest.raises(ValueError, match="--pose-sampling.*1-5"):
        parse_strategy("sideways")
    with pytest.raises(ValueError, match="--distance"):
        sample_viewpoint(ViewpointConfig(distance=-1), 0, 0, 0)


# ---------------------------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("seed", range(4))
def test_camera_matches_blender_and_pascal3d(seed):
    rng = np.random.default_rng(seed)
    az, pol, roll, d = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 2.9), rng.uniform(-1, 1), rng.uniform(1, 3)
    cam = dst_camera(az, pol, roll, d, 512, 512)
    # Blender: C = d (sin phi cos theta, sin phi sin theta, cos phi), looking at the origin
    centre = d * np.array([math.sin(pol) * math.cos(az), math.sin(pol) * math.sin(az), math.cos(pol)])
    assert np.allclose(cam.cam2world[:3, 3], centre, atol=1e-12)
    assert np.allclose(cam.R @ np.zeros(3) + cam.t, [0, 0, d], atol=1e-12)  # origin on the optical axis
    assert np.allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12) and math.isclose(np.linalg.det(cam.R), 1.0)
    assert math.isclose(cam.K[0, 0], 560.0) and cam.K[0, 2] == 256.0  # Blender 35 mm / 32 mm at 512 px
    pts = rng.uniform(-0.5, 0.5, (30, 3))
    uv, _ = project_px(pts, cam.K, cam.R, cam.t)
    p = pascal3d_from_dst(az, pol, roll, d)
    uv_p = pascal3d_project(pts, p["azimuth"], p["elevation"], p["theta"], p["distance"], cam.K[0, 0], (256, 256))
    assert np.abs(uv - uv_p).max() < 1e-9
    back = dst_from_pascal3d(**p)
    assert np.allclose([back["azimuth"], back["polar"], back["roll"], back["distance"]], [az, pol, roll, d])


def test_no_roll_keeps_object_up_pointing_up_and_roll_turns_the_image():
    cam = dst_camera(0.3, 1.2, 0.0, 2.0, 64, 64)
    uv, _ = project_px(np.array([[0, 0, 0.0], [0, 0, 0.3]]), cam.K, cam.R, cam.t)
    assert abs(uv[1, 0] - uv[0, 0]) < 1e-9 and uv[1, 1] < uv[0, 1]  # +z is straight up in the image
    rolled = dst_camera(0.3, 1.2, math.radians(90), 2.0, 64, 64)
    uv_r, _ = project_px(np.array([[0, 0, 0.0], [0, 0, 0.3]]), rolled.K, rolled.R, rolled.t)
    assert uv_r[1, 0] < uv_r[0, 0] and abs(uv_r[1, 1] - uv_r[0, 1]) < 1e-9  # +90 deg: up turns to the left


def test_eg3d_label_is_the_same_camera_in_the_file_frame():
    cam = dst_camera(1.0, 1.0, 0.2, 2.5, 128, 128)
    pts_obj = np.random.default_rng(0).uniform(-0.5, 0.5, (10, 3))
    pts_file = pts_obj @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0.0]]).T  # object (x, y, z) -> file (x, z, -y)
    assert np.allclose(file_to_object(pts_file), pts_obj)
    c2w, k = matrices_from_label(torch.from_numpy(cam.eg3d_label)[None])
    uv_norm, _ = project_points(torch.from_numpy(pts_file)[None], c2w, k)
    uv, _ = project_px(pts_obj, cam.K, cam.R, cam.t)
    assert np.allclose(uv_norm[0].numpy() * 128, uv, atol=1e-9)


def test_bbox_and_keypoint_visibility():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert bbox_from_mask(mask) == [3.0, 2.0, 6.0, 3.0]
    assert bbox_from_mask(np.zeros((4, 4), bool)) is None
    models = find_models(write_demo_meshes_cached())
    car = next(m for m in models if m.class_name == "car")
    mesh = load_cad_mesh(car.path, car.up_axis, car.keypoints)
    # camera on the car's right (+x): right wheels visible, left wheels hidden by the body
    view = render_view(mesh, Viewpoint(azimuth=0.0, polar=math.radians(80), roll=0.0, distance=1.5, strategy=1), 128)
    vis = {k["name"]: k["visible"] for k in view.keypoints}
    assert vis["wheel_fr"] and vis["wheel_rr"] and not vis["wheel_fl"] and not vis["wheel_rl"]
    for k in view.keypoints:
        if k["visible"]:  # visible keypoints land on the silhouette (or its 1-pixel rim)
            i, j = int(k["uv"][1]), int(k["uv"][0])
            assert view.mask[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].any()
    kps = keypoint_annotations({"far": np.array([0.0, 0.0, 50.0])}, view.camera, view.depth)
    assert kps[0]["in_image"] is False and kps[0]["visible"] is False


def test_canny_and_depth_control():
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = 200
    edges = canny_edges(img)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    assert edges[8:24, 8].any() and not edges[14:18, 14:18].any()
    with pytest.raises(ValueError, match="--canny-low"):
        canny_edges(img, 200, 100)
    depth = np.array([[0, 2.0], [4.0, 0]], np.float32)
    ctrl = depth_control(depth, depth > 0)
    assert ctrl.tolist() == [[0, 255], [51, 0]]  # near -> 1.0, far -> 0.2, background 0


# ------------------------------------------------------------------------------------------------------ CAD
_DEMO = {}


def write_demo_meshes_cached():
    import tempfile
    if "path" not in _DEMO:
        _DEMO["path"] = write_demo_meshes(tempfile.mkdtemp(prefix="adapt3d-demo-meshes-"))
    return _DEMO["path"]


@pytest.mark.parametrize("ext", ["obj", "glb", "ply", "off", "stl"])
def test_load_formats_normalise_and_convert_frame(tmp_path, ext):
    box = trimesh.creation.box(extents=(0.2, 0.4, 0.8))
    box.apply_translation((1.0, 2.0, 3.0))
    path = tmp_path / f"box.{ext}"
    box.export(path)
    mesh = load_cad_mesh(path, up_axis="y", keypoints={"corner": (0.9, 1.8, 3.4)})
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    # y-up file extents (0.2, 0.4, 0.8) -> object (x, -z, y) = (0.2, 0.8, 0.4), largest side scaled to 1
    assert np.allclose(hi - lo, [0.25, 1.0, 0.5], atol=1e-6) and np.allclose(lo + hi, 0, atol=1e-6)
    assert math.isclose(mesh.scale, 1 / 0.8, rel_tol=1e-6)
    # the corner (min x, min y, max z) in the file is (min x, min y_obj, min z_obj) after conversion
    assert np.allclose(mesh.keypoints["corner"], [-0.125, -0.5, -0.25], atol=1e-6)
    z_up = load_cad_mesh(path, up_axis="z")
    assert np.allclose(z_up.vertices.max(0) - z_up.vertices.min(0), [0.25, 0.5, 1.0], atol=1e-6)


def test_mesh_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        load_cad_mesh(tmp_path / "missing.obj")
    (tmp_path / "x.fbx").write_text("x")
    with pytest.raises(ValueError, match="x.fbx.*unsupported"):
        load_cad_mesh(tmp_path / "x.fbx")
    (tmp_path / "garbage.glb").write_bytes(b"\x00\x01not a glb at all")
    with pytest.raises(ValueError, match="garbage.glb"):
        load_cad_mesh(tmp_path / "garbage.glb")
    (tmp_path / "empty.obj").write_text("v 0 0 0\nv 1 0 0\n")
    with pytest.raises(ValueError, match="empty.obj.*no triangles"):
        load_cad_mesh(tmp_path / "empty.obj")
    (tmp_path / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="flat.obj.*degenerate"):
        load_cad_mesh(tmp_path / "flat.obj")


def test_mesh_list_csv_json_and_folder(tmp_path):
    trimesh.creation.box().export(tmp_path / "a.obj")
    (tmp_path / "chair").mkdir()
    trimesh.creation.box().export(tmp_path / "chair" / "c1.ply")
    (tmp_path / "kp.json").write_text(json.dumps({"top": [0, 0.5, 0]}))
    (tmp_path / "list.csv").write_text("synset,model,path,azimuth,elevation,distance,sampling,strength,tags,keypoints\n"
                                       "car,a,a.obj,90,5,2.0,3,2,red;sporty,kp.json\n"
                                       "chair,c1,,0,0,,,,,\n")
    models = read_mesh_list(tmp_path / "list.csv")
    car, chair = models
    assert (car.class_name, car.model_id, car.azimuth_deg, car.elevation_deg, car.distance, car.sampling,
            car.strength, car.tags) == ("car", "a", 90.0, 5.0, 2.0, 3, 2, ("red", "sporty"))
    assert car.keypoints == {"top": (0.0, 0.5, 0.0)}
    assert chair.path == tmp_path / "chair" / "c1.ply" and chair.distance is None and chair.sampling is None
    (tmp_path / "list.json").write_text(json.dumps([{"class": "car", "id": "a", "path": "a.obj", "tags": ["x"],
                                                     "keypoints": {"k": [1, 2, 3]}}]))
    assert read_mesh_list(tmp_path / "list.json")[0].keypoints == {"k": (1.0, 2.0, 3.0)}
    folder_models = find_models(tmp_path)  # no mesh_list.*: <class>/<mesh> files, then loose <mesh> files
    assert [(m.class_name, m.model_id) for m in folder_models] == [("chair", "c1"), ("a", "a")]
    assert [m.class_name for m in find_models(tmp_path, default_class="car")] == ["chair", "car"]
    with pytest.raises(ValueError, match="--classes: unknown class.*bus.*car, chair"):
        select_classes(models, ["bus"])
    assert [m.model_id for m in select_classes(models, ["chair"])] == ["c1"]


@pytest.mark.parametrize("row, needle", [
    ("car,a,a.obj,x,0,,,,,", "'azimuth' must be a number"),
    ("car,a,a.obj,0,0,,9,,,", "'sampling' must be a 3D-DST strategy"),
    (",a,a.obj,0,0,,,,,", "needs 'class'"),
    ("car,a,a.obj,0,0,-1,,,,", "'distance' must be > 0"),
])
def test_mesh_list_errors_name_file_and_row(tmp_path, row, needle):
    trimesh.creation.box().export(tmp_path / "a.obj")
    (tmp_path / "l.csv").write_text("class,id,path,azimuth,elevation,distance,sampling,strength,tags,keypoints\n"
                                    + row + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=needle) as err:
        read_mesh_list(tmp_path / "l.csv")
    assert "l.csv row 1" in str(err.value)


def test_missing_mesh_file_is_a_problem_of_that_row_only(tmp_path):
    trimesh.creation.box().export(tmp_path / "a.obj")
    (tmp_path / "l.csv").write_text("class,id,path\ncar,a,a.obj\ncar,b,nope.obj\nbus,c,\n")
    a, b, c = read_mesh_list(tmp_path / "l.csv")
    assert a.problem is None and a.path == tmp_path / "a.obj"
    assert b.path is None and "nope.obj does not exist" in b.problem
    assert c.path is None and "no mesh file for class 'bus' id 'c'" in c.problem


# --------------------------------------------------------------------------------------------------- prompts
def test_template_prompts_use_synonyms_tags_and_are_seeded():
    b = PromptBuilder()
    cands = b.templates("car", ("red",))
    assert "An image of car" in cands and "a photo of a red sedan" in cands
    assert all("{" not in c for c in cands)
    p = b.prompt_for("car", ("red",), key=123)
    assert p.endswith(", " + DST_SUFFIX) and p == b.prompt_for("car", ("red",), key=123)
    assert len({b.prompt_for("car", ("red",), key=k) for k in range(50)}) > 5
    assert PromptBuilder().templates("spaceship_x") [0] == "An image of spaceship x"  # unknown class: its own name
    with pytest.raises(ValueError, match="--templates.*no \\{name\\}"):
        PromptBuilder(PromptConfig(templates=("a photo",)))


def test_clean_generated_text():
    assert clean_generated_text("  a red car\u00e9 on  a road.\nsecond line") == "a red car on a road"
    assert clean_generated_text("") == ""


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from adapt3d.diffusion.tiny_models import _bytes_to_unicode
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    tok = GPT2Tokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tok.save_pretrained(path)
    model.save_pretrained(path)
    return path


def test_llm_prompts_are_generated_once_and_cached(tiny_gpt2, tmp_path):
    cfg = PromptConfig(llm=str(tiny_gpt2), llm_variants=3, llm_max_new_tokens=12)
    cache = tmp_path / "prompts.json"
    rewriter = LLMPromptRewriter.from_pretrained(str(tiny_gpt2))
    first = PromptBuilder(cfg, rewriter, cache_path=cache).candidates("car")
    assert len(first) == 3 and all("car" in p for p in first) and all(p.isprintable() for p in first)
    assert json.loads(cache.read_text())["car"]["prompts"] == first
    # a rerun without a model reads the cache: the same prompts, deterministically
    again = PromptBuilder(cfg, None, cache_path=cache)
    assert again.candidates("car") == first and again.has_llm_prompts("car")
    assert again.prompt_for("car", (), 5) == PromptBuilder(cfg, rewriter, cache_path=cache).prompt_for("car", (), 5)
    with pytest.raises(ValueError, match="--llm.*chair"):
        again.candidates("chair")  # not cached and no model
    # sampling is seeded: a fresh cache regenerates the same texts
    fresh = PromptBuilder(cfg, rewriter, cache_path=tmp_path / "other.json").candidates("car")
    assert fresh == first
    with pytest.raises(FileNotFoundError, match="--llm"):
        LLMPromptRewriter.from_pretrained(str(tmp_path / "no-such-model"))
