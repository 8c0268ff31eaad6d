"""What each known checkpoint name (``adapt3d.models.hub``) is: architecture and cameras, from the upstream options.

The values come from the commands that made the files (read in the upstream sources, not in the files, which are
not available here):

* EG3D (NVlabs/eg3d ``docs/models.md``, ``eg3d/train.py``): ``ffhq`` = ``--cfg=ffhq --gen_pose_cond=True
  --gpc_reg_prob=0.8 --neural_rendering_resolution_final=128`` on 512 px FFHQ-rebalanced; ``afhq`` = ``--cfg=afhq
  ... --aug=ada --gen_pose_cond=True --gpc_reg_prob=0.8 --neural_rendering_resolution_final=128``; ``shapenet`` =
  ``--cfg=shapenet`` (no pose conditioning) on 128 px cars, neural rendering 64.
* DATID-3D (gwang-kim/DATID-3D ``datid3d_train.py``, ``eg3d/train.py``): ``datid3d-<domain>`` are fine-tuned with
  ``train.py --cfg=ffhq|cat --resume=<EG3D model> --gen_pose_cond=True --gpc_reg_prob=0.8 --aug=ada
  --neural_rendering_resolution_final=128 --kimg=200``. ``--cfg=cat`` selects the super-resolution head
  ``SuperresolutionHybrid8XDC_afhq`` and the AFHQ cameras; ``--cfg=ffhq`` the FFHQ ones.
* Source cameras of DATID-3D's dataset generation (``eg3d/datid3d_data_gen.py``): the render and conditioning
  cameras look at ``[0, 0, --ffhq_pivot 0.2]`` for FFHQ and ``[0, 0, --cat_pivot 0.05]`` for cats (not the AFHQ
  model's ``avg_camera_pivot`` [0, 0, -0.06]), radius ``avg_camera_radius``, field of view 18.837 degrees.

The super-resolution head of EG3D's released AFHQ model is not in its training command (today's ``train.py`` would
pick ``SuperresolutionHybrid8XDC`` for 512 px): DATID-3D fine-tunes that file into ``SuperresolutionHybrid8XDC_afhq``
(128/64 channels) by copying tensors by name, which only works if it has ``SuperresolutionHybrid8X``'s channels, and
third-party code loads it as ``8X``. It is listed as ``8X`` and marked unverified. Loading a file always uses what
the file says; :func:`check_known_model` only reports where a known name's file differs from this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adapt3d.models.hub import checkpoint_key
from adapt3d.models.triplane import TriPlaneGeneratorConfig
from adapt3d.rendering.renderer import RenderingConfig

__all__ = ["KnownModelConfig", "KNOWN_MODELS", "known_model_config", "check_known_model", "model_family",
           "datid3d_data_pivot"]

Family = Literal["ffhq", "cat", "shapenet"]

# rendering_kwargs per train.py --cfg (eg3d/train.py, same values in DATID-3D's copy; c_gen_conditioning_zero and
# gpc_reg_prob from --gen_pose_cond / --gpc_reg_prob of the commands above).
_FAMILY_RENDERING: dict[str, dict] = {
    "ffhq": dict(depth_resolution=48, depth_resolution_importance=48, ray_start=2.25, ray_end=3.3, box_warp=1.0,
                 white_back=False, avg_camera_radius=2.7, avg_camera_pivot=[0.0, 0.0, 0.2], image_resolution=512,
                 c_gen_conditioning_zero=False, gpc_reg_prob=0.8, superresolution_noise_mode="none",
                 sr_antialias=True),
    "cat": dict(depth_resolution=48, depth_resolution_importance=48, ray_start=2.25, ray_end=3.3, box_warp=1.0,
                white_back=False, avg_camera_radius=2.7, avg_camera_pivot=[0.0, 0.0, -0.06], image_resolution=512,
                c_gen_conditioning_zero=False, gpc_reg_prob=0.8, superresolution_noise_mode="none",
                sr_antialias=True),
    "shapenet": dict(depth_resolution=64, depth_resolution_importance=64, ray_start=0.1, ray_end=2.6, box_warp=1.6,
                     white_back=True, avg_camera_radius=1.7, avg_camera_pivot=[0.0, 0.0, 0.0], image_resolution=128,
                     c_gen_conditioning_zero=True, gpc_reg_prob=None, superresolution_noise_mode="none",
                     sr_antialias=True),
}
# DATID-3D's data generation pivot (datid3d_data_gen.py --ffhq_pivot / --cat_pivot).
_DATA_PIVOT: dict[str, list[float] | None] = {"ffhq": [0.0, 0.0, 0.2], "cat": [0.0, 0.0, 0.05], "shapenet": None}


@dataclass(frozen=True)
class KnownModelConfig:
    """A known checkpoint: its family (DATID-3D's ``--generator_type``/``--cfg``), the official EG3D model it is or
    was fine-tuned from (``base``, what DATID-3D's ``gen_samples.py --model_is_state_dict`` loads first), and the
    configuration its training command gives. ``neural_rendering_resolution`` None: the file's value is not known
    (a 200-kimg DATID-3D run leaves 77 if it started the resolution schedule at 64)."""

    name: str
    family: Family
    base: str
    superresolution_module: str
    img_resolution: int
    neural_rendering_resolution: int | None
    fov_deg: float
    rendering: dict = field(default_factory=dict)
    verified: bool = True
    """False when a value (the AFHQ super-resolution head) is inferred, not read in a training command."""

    @property
    def data_camera_pivot(self) -> list[float] | None:
        """Where DATID-3D's dataset generation points the cameras for a source of this family (None: no rule)."""
        return _DATA_PIVOT[self.family]

    def generator_config(self) -> TriPlaneGeneratorConfig:
        """The full-size architecture (EG3D's sizes) with these rendering settings."""
        rendering = RenderingConfig(**self.rendering, superresolution_module=self.superresolution_module)
        return TriPlaneGeneratorConfig(img_resolution=self.img_resolution,
                                       neural_rendering_resolution=self.neural_rendering_resolution or 128,
                                       camera_fov_deg=self.fov_deg, rendering=rendering)


def _entry(name: str, family: Family, base: str, sr: str, nrr: int | None, verified: bool = True) -> KnownModelConfig:
    res = 128 if family == "shapenet" else 512
    fov = 49.134 if family == "shapenet" else 18.837
    return KnownModelConfig(name, family, base, sr, res, nrr, fov, dict(_FAMILY_RENDERING[family]), verified)


_DATID3D_FFHQ = ("elf", "greek-statue", "hobbit", "lego", "masquerade", "neanderthal", "orc", "pixar", "skeleton",
                 "stone-golem", "super-mario", "tekken", "yoda", "zombie")
_DATID3D_CAT = ("cat-in-zootopia", "fox-in-zootopia", "golden-aluminum-animal")

KNOWN_MODELS: dict[str, KnownModelConfig] = {
    "ffhq": _entry("ffhq", "ffhq", "ffhq", "SuperresolutionHybrid8XDC", 128),
    "afhq": _entry("afhq", "cat", "afhq", "SuperresolutionHybrid8X", 128, verified=False),
    "shapenet": _entry("shapenet", "shapenet", "shapenet", "SuperresolutionHybrid2X", 64),
    **{f"datid3d-{d}": _entry(f"datid3d-{d}", "ffhq", "ffhq", "SuperresolutionHybrid8XDC", None)
       for d in _DATID3D_FFHQ},
    **{f"datid3d-{d}": _entry(f"datid3d-{d}", "cat", "afhq", "SuperresolutionHybrid8XDC_afhq", None)
       for d in _DATID3D_CAT},
}


def known_model_config(name: str) -> KnownModelConfig:
    """The configuration of a known checkpoint name (``ffhq``, ``datid3d-cat_in_Zootopia``, ...)."""
    try:
        return KNOWN_MODELS[checkpoint_key(name)]
    except KeyError:
        raise ValueError(f"--checkpoint: {name!r} is not a known checkpoint name; known names: "
                         f"{', '.join(sorted(KNOWN_MODELS))}") from None


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-6
    return a == b


def check_known_model(name: str, G) -> list[str]:
    """Where a generator loaded from the known name ``name`` differs from the table (empty list: it matches)."""
    known = known_model_config(name)
    r = G.rendering
    found = {"superresolution_module": r.superresolution_module, "img_resolution": G.img_resolution}
    expected = {"superresolution_module": known.superresolution_module, "img_resolution": known.img_resolution}
    if known.neural_rendering_resolution is not None:
        found["neural_rendering_resolution"] = int(G.neural_rendering_resolution)
        expected["neural_rendering_resolution"] = known.neural_rendering_resolution
    for key, value in known.rendering.items():
        found[key], expected[key] = getattr(r, key), value
    diffs = [f"{k} is {found[k]!r} (expected {expected[k]!r})" for k in expected if not _same(found[k], expected[k])]
    if not diffs:
        return []
    hint = "" if known.verified else " (the expected value is inferred, not verified)"
    return [f"checkpoint {known.name!r}: " + "; ".join(diffs) + hint]


def model_family(rendering: RenderingConfig) -> Family | None:
    """The family whose cameras and volume a generator uses (by radius, pivot and box), or None."""
    for family, rk in _FAMILY_RENDERING.items():
        if all(_same(getattr(rendering, k), rk[k]) for k in ("avg_camera_radius", "avg_camera_pivot", "box_warp")):
            return family  # type: ignore[return-value]
    return None


def datid3d_data_pivot(rendering: RenderingConfig) -> list[float]:
    """Where DATID-3D's dataset generation points the cameras for a source generator with these settings:
    [0, 0, 0.05] for cat (AFHQ) generators, [0, 0, 0.2] for FFHQ ones, else the generator's ``avg_camera_pivot``."""
    family = model_family(rendering)
    pivot = _DATA_PIVOT[family] if family is not None else None
    return list(pivot) if pivot is not None else [float(v) for v in rendering.avg_camera_pivot]
