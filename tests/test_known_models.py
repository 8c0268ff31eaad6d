"""Every known checkpoint name resolves to the configuration of the upstream command that made it.

Expected values are written here from the upstream sources (NVlabs/eg3d 7cf1fd1, gwang-kim/DATID-3D 7f1046c), not
imported from adapt3d:
- EG3D eg3d/train.py:273-278 (SR by resolution: 512 -> 8XDC, 128 -> 2X), :290-291 (c_gen_conditioning_zero =
  not --gen_pose_cond, gpc_reg_prob), :301-331 (per --cfg: depth 48/48 or 64/64, ray 2.25-3.3 or 0.1-2.6, box 1 or
  1.6, white_back for shapenet, radius 2.7/1.7, pivot [0,0,0.2] ffhq, [0,0,-0.06] afhq, [0,0,0] shapenet);
  docs/models.md:43-50 (ffhqrebalanced512-128: --gen_pose_cond=True --gpc_reg_prob=0.8, final resolution 128),
  :53-60 (afhqcats512-128: same), :65-71 (shapenetcars128-64: no pose conditioning).
- DATID-3D eg3d/train.py:276-277 (--cfg=cat -> SuperresolutionHybrid8XDC_afhq), :328-337 (cat cameras = AFHQ's);
  datid3d_train.py:94-101 (--cfg=<type> --gen_pose_cond=True --gpc_reg_prob=0.8 ... resumed from the EG3D model);
  eg3d/datid3d_data_gen.py:33-34 (--ffhq_pivot 0.2, --cat_pivot 0.05), :96 (fov_deg 18.837);
  eg3d/gen_samples.py:169-171 (cat renders around [0, 0, -0.06], ffhq around [0, 0, 0.2]).
- afhq's SR head (128/64 channels, 8X) is inferred: DATID-3D copies that file's tensors by name into
  8XDC_afhq (training_loop.py:175-180), which needs equal shapes.
"""

import pytest
import torch

from adapt3d.models import hub
from adapt3d.models.known_models import (KNOWN_MODELS, check_known_model, datid3d_data_pivot, known_model_config,
                                         model_family)
from adapt3d.models.triplane import TriPlaneGenerator, preset_config
from adapt3d.rendering.renderer import RenderingConfig

FFHQ = dict(depth=(48, 48), ray=(2.25, 3.3), box=1.0, white=False, radius=2.7, pivot=[0, 0, 0.2], fov=18.837,
            res=512, cond_zero=False, gpc=0.8, data_pivot=[0, 0, 0.2])
CAT = dict(FFHQ, pivot=[0, 0, -0.06], data_pivot=[0, 0, 0.05])
SHAPENET = dict(depth=(64, 64), ray=(0.1, 2.6), box=1.6, white=True, radius=1.7, pivot=[0, 0, 0],
                # fov: adapt3d's dataset value (ShapeNet cars); EG3D's gen_videos.py:94 renders with focal 1.7074
                fov=49.134, res=128, cond_zero=True, gpc=None, data_pivot=None)

EXPECTED = {  # name: (family, base, SR head, neural rendering resolution in the file or None, cameras)
    "ffhq": ("ffhq", "ffhq", "SuperresolutionHybrid8XDC", 128, FFHQ),
    "afhq": ("cat", "afhq", "SuperresolutionHybrid8X", 128, CAT),
    "shapenet": ("shapenet", "shapenet", "SuperresolutionHybrid2X", 64, SHAPENET),
    **{f"datid3d-{d}": ("ffhq", "ffhq", "SuperresolutionHybrid8XDC", None, FFHQ) for d in (
        "elf", "greek_statue", "hobbit", "lego", "masquerade", "neanderthal", "orc", "pixar", "skeleton",
        "stone_golem", "super_mario", "tekken", "yoda", "zombie")},
    **{f"datid3d-{d}": ("cat", "afhq", "SuperresolutionHybrid8XDC_afhq", None, CAT) for d in (
        "cat_in_Zootopia", "fox_in_Zootopia", "golden_aluminum_animal")},
}


def test_every_known_name_has_a_configuration():
    assert {hub.checkpoint_key(n) for n in EXPECTED} == set(hub.known_checkpoints()) == set(KNOWN_MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_known_name_resolves_to_upstream_config(name):
    family, base, sr, nrr, cam = EXPECTED[name]
    k = known_model_config(name)
    assert (k.family, k.base, k.superresolution_module, k.neural_rendering_resolution) == (family, base, sr, nrr)
    assert k.img_resolution == cam["res"] and k.fov_deg == cam["fov"]
    r = k.rendering
    assert (r["depth_resolution"], r["depth_resolution_importance"]) == cam["depth"]
    assert (r["ray_start"], r["ray_end"]) == cam["ray"]
    assert (r["box_warp"], r["white_back"], r["avg_camera_radius"]) == (cam["box"], cam["white"], cam["radius"])
    assert r["avg_camera_pivot"] == cam["pivot"]
    assert (r["c_gen_conditioning_zero"], r["gpc_reg_prob"]) == (cam["cond_zero"], cam["gpc"])
    assert k.data_camera_pivot == cam["data_pivot"]
    # the base model is itself known, of the same family; its file is what DATID-3D's scripts load first
    assert known_model_config(k.base).family == family and hub.get_checkpoint(k.base)
    g = k.generator_config()
    assert g.rendering.superresolution_module == sr and g.img_resolution == cam["res"]


def test_datid3d_cat_models_use_the_cat_super_resolution_head_and_files():
    for d in ("cat_in_Zootopia", "fox_in_Zootopia", "golden_aluminum_animal"):
        entry = hub.get_checkpoint(f"datid3d-{d}")
        assert entry.filename == f"cat-{d}.pkl"
        assert known_model_config(f"datid3d-{d}").superresolution_module == "SuperresolutionHybrid8XDC_afhq"


def test_unknown_name_error_lists_names():
    with pytest.raises(ValueError, match="not a known checkpoint name.*datid3d-pixar"):
        known_model_config("datid3d-nope")


def test_presets_match_the_known_architectures():
    for preset, name in (("ffhq512", "ffhq"), ("afhq512", "afhq"), ("shapenet128", "shapenet")):
        p, k = preset_config(preset), known_model_config(name)
        assert p.rendering.superresolution_module == k.superresolution_module
        assert p.rendering.avg_camera_pivot == k.rendering["avg_camera_pivot"]
        assert p.camera_fov_deg == k.fov_deg and p.img_resolution == k.img_resolution


def test_family_and_datid3d_data_pivot_from_rendering_settings():
    assert datid3d_data_pivot(RenderingConfig(avg_camera_pivot=[0, 0, -0.06])) == [0, 0, 0.05]
    assert datid3d_data_pivot(RenderingConfig(avg_camera_pivot=[0, 0, 0.2])) == [0, 0, 0.2]
    assert datid3d_data_pivot(RenderingConfig(avg_camera_pivot=[0, 0, 0.1])) == [0, 0, 0.1]  # unknown: its own
    assert model_family(RenderingConfig(avg_camera_pivot=[0.0, 0.0, 0.0], avg_camera_radius=1.7,
                                        box_warp=1.6)) == "shapenet"


def test_check_known_model_reports_a_file_that_is_not_what_the_name_says():
    cfg = known_model_config("datid3d-cat_in_Zootopia").generator_config()
    cfg.channel_base, cfg.channel_max, cfg.triplane_resolution = 1024, 32, 16  # small; checks only read configs
    with torch.device("meta"):
        G = TriPlaneGenerator(cfg)
    assert check_known_model("datid3d-cat_in_Zootopia", G) == []
    G.rendering.avg_camera_pivot = [0.0, 0.0, 0.2]
    notes = check_known_model("datid3d-cat_in_Zootopia", G)
    assert len(notes) == 1 and "avg_camera_pivot is [0.0, 0.0, 0.2] (expected [0.0, 0.0, -0.06])" in notes[0]
