"""3D-DST's .npy annotations both ways (conventions checked against Blender's camera written out independently),
safe reading, 3D-DST datasets through our KCF; imported captions; random lighting and backgrounds."""

import json
import math

import numpy as np
import pytest

from adapt3d.dst.annotations import project_px
from adapt3d.dst.dataset import load_annotations
from adapt3d.dst.dst3d_format import UnsafeNpyError, load_npy_dict, read_dst3d_npy
from adapt3d.dst.prompts import PromptBuilder, PromptConfig, check_captions_file, load_captions
from adapt3d.dst.scene import SceneConfig, check_scene_config, composite, render_background, sample_scene
from adapt3d.pipelines.kcf import KcfConfig, kcf
from adapt3d.pipelines.synth import SynthConfig, synth

RENDER = dict(preset="tiny", per_mesh=3, render_only=True, resolution=32, device="cpu", progress=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("fmt") / "run"
    synth(SynthConfig(out=out, roll_max_deg=30.0, **RENDER))  # with in-plane rotation, so its sign is checked
    return out


def blender_camera(theta, phi, dist, roll=0.0):
    """Blender's camera of 3D-DST's script, written from its description: location d (sin phi cos theta, sin phi
    sin theta, cos phi), TRACK_TO the origin with -Z forward and Y up (Y as close to world +Z as possible), then
    turned by ``roll`` about the viewing direction. Returns matrix_world (4, 4)."""
    loc = dist * np.array([math.sin(phi) * math.cos(theta), math.sin(phi) * math.sin(theta), math.cos(phi)])
    back = loc / np.linalg.norm(loc)  # camera +Z points away from the target
    up = np.array([0.0, 0.0, 1.0]) - back[2] * back
    up /= np.linalg.norm(up)
    right = np.cross(up, back)
    rot = np.stack([right, up, back], 1)
    forward = -back
    c, s = math.cos(roll), math.sin(roll)  # Rodrigues rotation about the forward axis, applied to the camera axes
    k = np.array([[0, -forward[2], forward[1]], [forward[2], 0, -forward[0]], [-forward[1], forward[0], 0]])
    turn = np.eye(3) + s * k + (1 - c) * k @ k
    mw = np.eye(4)
    mw[:3, :3] = turn @ rot
    mw[:3, 3] = loc
    return mw


def blender_pixel(point, matrix_world, projection, width, height):
    """Project with Blender's matrices (OpenGL clip space -> pixels, row 0 at the top)."""
    clip = projection @ np.linalg.inv(matrix_world) @ np.append(point, 1.0)
    ndc = clip[:3] / clip[3]
    return np.array([(ndc[0] + 1) / 2 * width, (1 - ndc[1]) / 2 * height])


def test_written_npy_follows_3ddst_conventions(rendered):
    points = np.array([[0.2, -0.1, 0.3], [-0.4, 0.25, -0.1], [0.0, 0.0, 0.45]])
    checked = 0
    for view_json in sorted(rendered.glob("*/*/view/*.json")):
        a = json.loads(view_json.read_text())
        d = load_npy_dict(view_json.parent.parent / "annotation" / f"{view_json.stem}.npy")
        # 3D-DST's pose loader: azimuth = theta, elevation = pi/2 - phi
        assert d["theta"] == a["azimuth"] and math.isclose(math.pi / 2 - d["phi"], a["elevation"], abs_tol=1e-12)
        assert d["camera_rotation"] == a["inplane_rotation"] and d["dist"] == a["distance"]
        assert d["shape_id"] == a["mesh_id"] and list(d["principal"]) == [16, 16]
        # Blender's camera of those angles, built independently, is the stored matrix_world
        expected = blender_camera(d["theta"], d["phi"], d["dist"], d["camera_rotation"])
        assert np.allclose(d["matrix_world"], expected, atol=1e-9), view_json
        assert np.allclose(d["modelview_matrix"] @ d["matrix_world"], np.eye(4), atol=1e-12)
        # Blender's projection of points lands where our K, R, t put them
        K, R, t = (np.array(a[k]) for k in ("K", "R", "t"))
        ours, _ = project_px(points, K, R, t)
        theirs = np.stack([blender_pixel(p, d["matrix_world"], d["projection_matrix"], 32, 32) for p in points])
        assert np.allclose(ours, theirs, atol=1e-6)
        checked += 1
    assert checked == 6


def test_npy_round_trip_and_an_upstream_file_read_back(rendered, tmp_path):
    for view_json in sorted(rendered.glob("*/*/view/*.json")):
        a = json.loads(view_json.read_text())
        back = read_dst3d_npy(view_json.parent.parent / "annotation" / f"{view_json.stem}.npy")
        for key in ("azimuth", "polar", "elevation", "inplane_rotation", "distance"):
            assert math.isclose(back[key], a[key], abs_tol=1e-12), key
        for key in ("K", "R", "t", "cam2world"):
            assert np.allclose(back[key], a[key], atol=1e-9), key
        assert back["matrix_world_error"] < 1e-9 and back["pascal3d"] == pytest.approx(a["pascal3d"])
    # a file as 3D-DST's Blender script writes it (512 px, principal [256, 256], its own matrix_world)
    theta, phi, dist = 4.0, 1.1, 1.7
    upstream = {"theta": np.float64(theta), "phi": phi, "dist": dist, "camera_rotation": 0.0,
                "principal": np.array([256, 256]), "source": "shapenet", "shape_id": "abc", "rendering_scale": 0.8,
                "rendering_offset": np.zeros(3), "azimuth": 90.0, "elevation": 0.0, "pose_sampling": 3,
                "strength": 1, "matrix_world": blender_camera(theta, phi, dist), "focal_length": 35,
                "sensor_width": 32, "sensor_height": 24}
    np.save(tmp_path / "000.npy", upstream)
    rec = read_dst3d_npy(tmp_path / "000.npy")
    assert (rec["width"], rec["azimuth"], rec["elevation"], rec["inplane_rotation"]) == \
        (512, theta, pytest.approx(math.pi / 2 - phi), 0.0)
    assert rec["alignment"]["azimuth_deg"] == 90.0 and rec["pose_sampling"] == 3
    assert np.allclose(np.array(rec["K"]), [[560, 0, 256], [0, 560, 256], [0, 0, 1]])  # 35 / 32 * 512
    upstream["matrix_world"] = blender_camera(theta + 0.3, phi, dist)  # a file with another convention
    np.save(tmp_path / "001.npy", upstream)
    with pytest.raises(ValueError, match="001.npy.*matrix_world differs"):
        read_dst3d_npy(tmp_path / "001.npy")


def test_a_crafted_npy_cannot_run_code(tmp_path):
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    arr = np.empty((), dtype=object)
    arr[()] = {"theta": Evil()}
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    with pytest.raises(UnsafeNpyError, match="evil.npy.*refused.*system"):
        load_npy_dict(tmp_path / "evil.npy")
    assert not marker.exists()


def test_our_dataset_reads_the_way_3ddst_reads_it(rendered):
    """3D-DST's pose loader maps image <class>/<model>/<data_name>/VVV_00.png to <class>/<model>/annotation/VVV.npy
    and reads theta/phi; with --data_name render our renders are found."""
    found = 0
    for image in sorted(rendered.glob("*/*/render/*.png")):
        ann = image.parent.parent / "annotation" / f"{image.stem}.npy"
        d = np.load(ann, allow_pickle=True)[()]  # our own file: plain numpy reads it
        a = json.loads((image.parent.parent / "annotation" / f"{image.stem}_00.json").read_text())
        assert (d["theta"], math.pi / 2 - d["phi"]) == (a["azimuth"], pytest.approx(a["elevation"]))
        found += 1
    assert found == 6


def test_our_kcf_trains_on_a_3ddst_dataset(tmp_path):
    """A dataset in 3D-DST's layout (npy poses, generated images in image_dst/) goes through adapt3d kcf."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for m in range(2):
        folder = tmp_path / "n02690373" / f"model{m}"
        (folder / "annotation").mkdir(parents=True)
        (folder / "image_dst").mkdir()
        for i in range(6):
            theta, phi = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.5, 2.5))
            np.save(folder / "annotation" / f"{i:03d}.npy",
                    {"theta": theta, "phi": phi, "dist": 1.5, "camera_rotation": 0.0, "principal": np.array([16, 16]),
                     "matrix_world": blender_camera(theta, phi, 1.5)})
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                folder / "image_dst" / f"{i:03d}_00.png")
    records = load_annotations(tmp_path)
    assert len(records) == 12 and {r["format"] for r in records} == {"dst3d"}
    assert records[0]["class_name"] == "airliner" and records[0]["image"].endswith("image_dst/000_00.png")
    result = kcf(KcfConfig(dataset=tmp_path, folds=2, drop=0.25, epochs=1, image_size=16, num_bins=4, width=4,
                           device="cpu", progress=False))
    assert len(result.losses) == 12 and len(result.removed) == 3  # round(0.25 * 12): one class of 12 images
    assert all(k.endswith(".png") for k in result.losses)  # one entry per image, keyed by its file
    assert (tmp_path / "kcf" / "removed.txt").read_text().splitlines() == result.removed


# --------------------------------------------------------------------------------------------------- captions
def test_captions_in_the_formats_we_accept(tmp_path):
    (tmp_path / "by_file.csv").write_text('image,caption\nn02690373_12.JPEG,"A white airliner, on a runway"\n'
                                          "n02690373_13.JPEG,An airliner in the sky\nn04285008_1.JPEG,A red car\n")
    (tmp_path / "headerless.csv").write_text("n02690373,a jet over clouds\nairliner,a plane at the gate\n")
    (tmp_path / "by_class.json").write_text(json.dumps({"n02690373": ["cap 1", "cap 2", "cap 3"]}))
    (tmp_path / "records.jsonl").write_text('{"synset": "n02690373", "text": "jsonl caption"}\n')
    got = load_captions(tmp_path / "by_file.csv", ["n02690373"])
    assert got == {"n02690373": ["A white airliner, on a runway", "An airliner in the sky"]}
    # a caption keyed by the synset or by its class name both belong to the class
    assert load_captions(tmp_path / "headerless.csv", ["airliner"]) == {"airliner": ["a jet over clouds",
                                                                                     "a plane at the gate"]}
    assert load_captions(tmp_path / "by_class.json", ["n02690373"], limit=2) == {"n02690373": ["cap 1", "cap 2"]}
    assert load_captions(tmp_path / "records.jsonl", None) == {"n02690373": ["jsonl caption"]}
    (tmp_path / "bad.csv").write_text("name,words\nfoo,bar\n")
    (tmp_path / "one.csv").write_text("only\n")
    with pytest.raises(ValueError, match="--captions.*one.csv.*fewer than two columns"):
        check_captions_file(tmp_path / "one.csv")
    with pytest.raises(FileNotFoundError, match="--captions"):
        check_captions_file(tmp_path / "nope.csv")


def test_captions_become_the_prompts_of_their_class(tmp_path):
    (tmp_path / "caps.csv").write_text("synset,caption\ncar,a vintage car on a cobbled street\n")
    result = synth(SynthConfig(out=tmp_path / "run", captions=tmp_path / "caps.csv", **RENDER))
    assert any("no caption for 1 class" in n for n in result.notes)
    for path in sorted((tmp_path / "run").glob("*/*/annotation/*.json")):
        a = json.loads(path.read_text())
        if a["class"] == "car":
            assert a["prompt"].startswith("a vintage car on a cobbled street, ") and a["prompt_source"] == "captions"
        else:
            assert a["prompt_source"] == "templates"
    with pytest.raises(ValueError, match="--captions/--llm"):
        synth(SynthConfig(out=tmp_path / "r2", captions=tmp_path / "caps.csv", llm="x", **RENDER))
    b = PromptBuilder(PromptConfig(captions=str(tmp_path / "caps.csv")))
    b.load_captions(["car"])
    assert b.candidates("car") == ["a vintage car on a cobbled street"]


# --------------------------------------------------------------------------------------------------- scenes
def test_scene_draws_are_seeded_recorded_and_composited(tmp_path):
    from PIL import Image

    cfg = SceneConfig(lighting="random", background="gradient")
    a, b = sample_scene(cfg, 0, 11, 3), sample_scene(cfg, 0, 11, 3)
    assert a == b and sample_scene(cfg, 0, 11, 4) != a  # per view, reproducible
    light = a.lighting
    assert np.isclose(np.linalg.norm(light["direction"]), 1) and 15 <= light["elevation_deg"] <= 75
    assert np.isclose(light["direction"][2], math.sin(math.radians(light["elevation_deg"])))
    assert 0.2 <= light["ambient"] <= 0.45 and 0.5 <= light["diffuse"] <= 1.0
    bg = render_background(a, 8, 8)
    c0, c1 = (np.array(c) for c in a.background["colors"])
    corners = [bg[0, 0], bg[0, -1], bg[-1, 0], bg[-1, -1]]
    assert min(np.abs(c - c0).max() for c in corners) < 0.2 and min(np.abs(c - c1).max() for c in corners) < 0.2
    rgb = np.full((8, 8, 3), 7, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    out = composite(rgb, mask, bg)
    assert (out[mask] == 7).all() and np.array_equal(out[~mask], np.round(bg[~mask] * 255).astype(np.uint8))
    (tmp_path / "bgs").mkdir()
    Image.fromarray(np.full((20, 40, 3), [10, 200, 30], np.uint8)).save(tmp_path / "bgs" / "green.png")
    pics = check_scene_config(SceneConfig(background="images", background_dir=tmp_path / "bgs"))
    shot = sample_scene(SceneConfig(background="images"), 1, 2, 3, pics)
    assert shot.background["image"].endswith("green.png")
    assert np.allclose(render_background(shot, 16, 16), np.array([10, 200, 30]) / 255)
    with pytest.raises(ValueError, match="--background-dir.*no pictures"):
        (tmp_path / "empty").mkdir()
        check_scene_config(SceneConfig(background="images", background_dir=tmp_path / "empty"))
    with pytest.raises(ValueError, match="--ambient"):
        check_scene_config(SceneConfig(ambient=(0.5, 0.2)))


def test_synth_with_random_light_and_solid_backgrounds(tmp_path):
    result = synth(SynthConfig(out=tmp_path / "run", lighting="random", background="solid", **RENDER))
    assert result.images == 6
    seen = set()
    for path in sorted((tmp_path / "run").glob("*/*/annotation/*_00.json")):
        a = json.loads(path.read_text())
        scene = a["scene"]
        assert scene["lighting"]["mode"] == "random" and scene["background"]["kind"] == "solid"
        from PIL import Image
        render = np.asarray(Image.open(tmp_path / "run" / a["files"]["render"]))
        mask = np.asarray(Image.open(tmp_path / "run" / a["files"]["mask"])) > 127
        expected = np.round(np.array(scene["background"]["color"]) * 255)
        assert np.abs(render[~mask].astype(float) - expected).max() <= 0.5  # the recorded colour is the backdrop
        seen.add(tuple(scene["background"]["color"]))
    assert len(seen) == 6  # a new draw per view
