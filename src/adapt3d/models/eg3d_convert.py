"""Build adapt3d modules from the records of an official EG3D pickle (read by ``eg3d_pickle``, nothing executed).

Official constructor kwargs map one to one onto ``TriPlaneGeneratorConfig`` and ``DualDiscriminatorConfig``; the
state dicts load with ``strict=True`` and no renaming. Anything we do not support is refused with its name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adapt3d.models.checkpoint import load_state_strict
from adapt3d.models.eg3d_pickle import EG3DCheckpointError, load_eg3d_pickle
from adapt3d.models.superresolution import SR_HEADS
from adapt3d.models.triplane import TriPlaneGenerator, TriPlaneGeneratorConfig
from adapt3d.rendering.renderer import RenderingConfig

_GENERATOR_KEYS = {"z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "mapping_kwargs", "channel_base",
                   "channel_max", "fused_modconv_default", "num_fp16_res", "conv_clamp", "sr_num_fp16_res",
                   "sr_kwargs", "rendering_kwargs"}
_FOV_BY_RADIUS = {2.7: 18.837, 1.7: 49.134}  # FFHQ/AFHQ and ShapeNet dataset cameras (EG3D's scripts)


def check_superresolution_module(value, where: str = "checkpoint") -> str:
    """The SR class name of an official ``rendering_kwargs['superresolution_module']`` (a dotted path in the module
    ``training.superresolution``, or a bare class name); a clear error naming the value for anything else."""
    text = str(value) if value is not None else ""
    module, _, name = text.rpartition(".")
    if name not in SR_HEADS or module not in ("", "training.superresolution"):
        known = ", ".join(f"training.superresolution.{n}" for n in sorted(SR_HEADS))
        raise EG3DCheckpointError(f"{where}: rendering_kwargs['superresolution_module'] = {value!r} is not supported "
                                  f"(adapt3d implements {known})")
    return name


def generator_config_from_official(init_kwargs: dict, attributes: dict | None = None,
                                   where: str = "checkpoint") -> TriPlaneGeneratorConfig:
    """Map an official ``TriPlaneGenerator`` init kwargs (+ pickled attributes) to our config."""
    attributes = attributes or {}
    unknown = sorted(set(init_kwargs) - _GENERATOR_KEYS)
    if unknown:
        raise EG3DCheckpointError(f"{where}: unsupported generator options {unknown} (adapt3d knows "
                                  f"{sorted(_GENERATOR_KEYS)})")
    rk = dict(attributes.get("rendering_kwargs") or init_kwargs.get("rendering_kwargs") or {})
    check_superresolution_module(rk.get("superresolution_module"), where)
    if rk.get("clamp_mode", "softplus") != "softplus":
        raise EG3DCheckpointError(f"{where}: unsupported clamp_mode {rk['clamp_mode']!r} (EG3D supports softplus)")
    sr_kwargs = dict(init_kwargs.get("sr_kwargs") or {})
    sr_fused = sr_kwargs.pop("fused_modconv_default", init_kwargs.get("fused_modconv_default", "inference_only"))
    if sr_fused != init_kwargs.get("fused_modconv_default", "inference_only"):
        raise EG3DCheckpointError(f"{where}: sr_kwargs.fused_modconv_default={sr_fused!r} differs from the "
                                  "backbone's; adapt3d uses one setting for both")
    extra_sr = sorted(set(sr_kwargs) - {"channel_base", "channel_max"})  # EG3D's SR heads ignore these two
    if extra_sr:
        raise EG3DCheckpointError(f"{where}: unsupported sr_kwargs {extra_sr}")
    radius = float(rk.get("avg_camera_radius", 2.7))
    try:
        rendering = RenderingConfig.from_dict(rk)
        return TriPlaneGeneratorConfig(
            z_dim=int(init_kwargs["z_dim"]), w_dim=int(init_kwargs["w_dim"]), c_dim=int(init_kwargs["c_dim"]),
            img_resolution=int(init_kwargs["img_resolution"]), img_channels=int(init_kwargs.get("img_channels", 3)),
            mapping_kwargs=dict(init_kwargs.get("mapping_kwargs") or {}),
            channel_base=int(init_kwargs.get("channel_base", 32768)),
            channel_max=int(init_kwargs.get("channel_max", 512)),
            num_fp16_res=int(init_kwargs.get("num_fp16_res", 0)), conv_clamp=init_kwargs.get("conv_clamp"),
            fused_modconv_default=init_kwargs.get("fused_modconv_default", "inference_only"),
            sr_num_fp16_res=int(init_kwargs.get("sr_num_fp16_res", 0)),
            neural_rendering_resolution=int(attributes.get("neural_rendering_resolution", 64)),
            camera_fov_deg=_FOV_BY_RADIUS.get(radius, 18.837), rendering=rendering)
    except KeyError as e:
        raise EG3DCheckpointError(f"{where}: generator options lack {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise EG3DCheckpointError(f"{where}: unsupported generator options ({e})") from e


def generator_from_record(record, where: str = "checkpoint") -> TriPlaneGenerator:
    """Our generator with the record's weights (strict), in eval mode."""
    if record.init_args:
        raise EG3DCheckpointError(f"{where}: positional generator arguments {record.init_args!r} are not supported")
    config = generator_config_from_official(record.init_kwargs, record.attributes, where)
    sr_class = record.children_classes.get("superresolution")
    if sr_class is not None and sr_class != config.rendering.superresolution_module:
        raise EG3DCheckpointError(f"{where}: the pickled superresolution module is a {sr_class!r}, but "
                                  "rendering_kwargs['superresolution_module'] names "
                                  f"{config.rendering.superresolution_module!r}")
    with torch.device("meta"):
        G = TriPlaneGenerator(config)  # given memory by load_state_strict once the weights are known to fit
    state = dict(record.state_dict)
    if "dataset_label_std" not in state:  # snapshots have it; hand-made pickles may not
        state["dataset_label_std"] = torch.ones(max(config.c_dim, 1))
    load_state_strict(G, state, where)
    return G.eval()


def discriminator_from_record(record, where: str = "checkpoint"):
    from adapt3d.models.discriminator import build_discriminator, discriminator_config_from_official
    config = discriminator_config_from_official(record.init_kwargs)
    with torch.device("meta"):
        D = build_discriminator(config)
    load_state_strict(D, dict(record.state_dict), where)
    return D.eval()


def load_official_pickle(path: str | Path, use_ema: bool = True, load_discriminator: bool = True):
    """Read an official EG3D pickle safely and return (generator, discriminator or None, notes)."""
    path = Path(path)
    pkl = load_eg3d_pickle(path)
    notes = list(pkl.notes)
    record = pkl.G_ema if use_ema and pkl.G_ema is not None else pkl.G
    if record is None:
        raise EG3DCheckpointError(f"{path}: holds neither G_ema nor G")
    if use_ema and pkl.G_ema is None:
        notes.append(f"{path.name}: no G_ema; using G")
    which = "G_ema" if record is pkl.G_ema else "G"
    G = generator_from_record(record, where=f"{path} ({which})")
    D = None
    if load_discriminator and pkl.D is not None:
        D = discriminator_from_record(pkl.D, where=f"{path} (D)")
    elif load_discriminator:
        notes.append(f"{path.name}: no discriminator D in the file")
    return G, D, notes
