"""The EG3D tri-plane generator: mapping -> StyleGAN2 tri-plane backbone -> volume rendering -> super-resolution.

Module names, parameter names and shapes are EG3D's, so an official ``G_ema`` state dict loads with no renaming
(``dataset_label_std`` included). Output images are in [-1, 1] (not clamped), depth in world units.

    z (N, z_dim), c (N, 25) --mapping--> ws (N, num_ws, w_dim)
    ws --backbone.synthesis--> planes (N, 3*C, P, P) viewed as (N, 3, C, P, P)
    planes, rays(c) --renderer + decoder--> feature image (N, 32, r, r), depth (N, 1, r, r)
    feature image, ws --superresolution--> image (N, 3, R, R)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from adapt3d.models.stylegan2 import FullyConnectedLayer, StyleGAN2Backbone
from adapt3d.models.superresolution import SuperResolution
from adapt3d.rendering.rays import RaySampler
from adapt3d.rendering.renderer import ImportanceRenderer, RenderingConfig
from adapt3d.rendering.triplane import sample_triplane


class OSGDecoder(nn.Module):
    """Tri-plane features -> (density, 32 colour/feature channels): mean over planes, FC-softplus-FC."""

    def __init__(self, n_features: int, hidden_dim: int = 64, output_dim: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.hidden_dim, self.output_dim = hidden_dim, output_dim
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnectedLayer(hidden_dim, 1 + output_dim, lr_multiplier=lr_multiplier),
        )

    @property
    def averages_planes(self) -> bool:
        """True when ``forward`` only uses the mean over planes, so the renderer may pass that mean directly
        (as (N, 1, M, C)); False for subclasses that override ``forward``."""
        return type(self).forward is OSGDecoder.forward

    def forward(self, sampled_features: torch.Tensor, ray_directions: torch.Tensor | None = None) -> dict:
        """sampled_features (N, 3, M, C) -> {'rgb': (N, M, 32) in [-0.001, 1.001], 'sigma': (N, M, 1) raw}."""
        x = sampled_features.mean(1)  # (N, M, C)
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        rgb = torch.sigmoid(x[..., 1:])  # widened to [-0.001, 1.001] as MipNeRF (in place without autograd)
        rgb = rgb * (1 + 2 * 0.001) - 0.001 if torch.is_grad_enabled() else rgb.mul_(1 + 2 * 0.001).sub_(0.001)
        return {"rgb": rgb, "sigma": x[..., 0:1]}


_CONFIG_LIMITS = {"z_dim": 4096, "w_dim": 4096, "img_resolution": 4096, "triplane_resolution": 2048,
                  "triplane_channels": 1024, "neural_rendering_resolution": 1024, "channel_base": 1 << 20,
                  "channel_max": 4096, "num_layers": 64}


@dataclass
class TriPlaneGeneratorConfig:
    """Architecture + rendering settings. Names follow EG3D's constructor kwargs so official ones map directly.

    ``triplane_resolution``/``triplane_channels`` are fixed to 256/32 in EG3D; smaller values serve tiny models.
    ``camera_fov_deg`` is the field of view (EG3D convention) of the dataset cameras, used for default cameras.
    """

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25
    img_resolution: int = 512
    img_channels: int = 3
    mapping_kwargs: dict = field(default_factory=lambda: {"num_layers": 2})
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    conv_clamp: float | None = None
    fused_modconv_default: Any = "inference_only"
    sr_num_fp16_res: int = 4
    triplane_resolution: int = 256
    triplane_channels: int = 32
    neural_rendering_resolution: int = 128
    camera_fov_deg: float = 18.837
    rendering: RenderingConfig = field(default_factory=RenderingConfig)

    def __post_init__(self):
        if isinstance(self.rendering, dict):
            self.rendering = RenderingConfig.from_dict(self.rendering)
        for name in ("z_dim", "w_dim", "img_resolution", "triplane_resolution", "triplane_channels",
                     "neural_rendering_resolution"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"generator config {name} must be > 0, got {getattr(self, name)}")
        # Upper bounds far above any EG3D model, so that a crafted config cannot ask for terabytes or hours.
        limits = dict(_CONFIG_LIMITS, num_layers=self.mapping_kwargs.get("num_layers", 2)
                      if isinstance(self.mapping_kwargs, dict) else 2)
        for name, high in _CONFIG_LIMITS.items():
            value = limits[name] if name == "num_layers" else getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value > high:
                raise ValueError(f"generator config {name} = {value!r} is not a number <= {high} (EG3D uses far less)")
        if self.c_dim not in (0, 25):
            raise ValueError(f"generator config c_dim must be 25 (EG3D camera label) or 0, got {self.c_dim}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rendering"] = self.rendering.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TriPlaneGeneratorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown generator config keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


@dataclass
class SynthesisOutput:
    """Generator output. ``image`` (N, 3, R, R) and ``image_raw`` (N, 3, r, r) in [-1, 1]; ``image_depth``
    (N, 1, r, r) in world units; ``features`` (N, 32, r, r) the raw feature image; ``weights`` (N, 1, r, r)
    accumulated opacity. Indexable like EG3D's dict: ``out['image']``."""

    image: torch.Tensor
    image_raw: torch.Tensor
    image_depth: torch.Tensor
    features: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


class TriPlaneGenerator(nn.Module):
    """EG3D's generator, pure PyTorch (CPU and CUDA, fp32, autocast-friendly, differentiable)."""

    def __init__(self, config: TriPlaneGeneratorConfig):
        super().__init__()
        self.config = config
        r = config.rendering
        self.z_dim, self.c_dim, self.w_dim = config.z_dim, config.c_dim, config.w_dim
        self.img_resolution, self.img_channels = config.img_resolution, config.img_channels
        self.neural_rendering_resolution = config.neural_rendering_resolution
        self.rendering = r
        self.register_buffer("dataset_label_std", torch.ones([max(config.c_dim, 1)]))
        self.renderer = ImportanceRenderer()
        self.ray_sampler = RaySampler()
        self.backbone = StyleGAN2Backbone(
            config.z_dim, config.c_dim, config.w_dim, img_resolution=config.triplane_resolution,
            img_channels=3 * config.triplane_channels, mapping_kwargs=dict(config.mapping_kwargs),
            channel_base=config.channel_base, channel_max=config.channel_max, num_fp16_res=config.num_fp16_res,
            conv_clamp=config.conv_clamp, fused_modconv_default=config.fused_modconv_default)
        self.superresolution = SuperResolution(
            r.superresolution_module, channels=32, img_resolution=config.img_resolution,
            sr_num_fp16_res=config.sr_num_fp16_res, sr_antialias=r.sr_antialias, w_dim=config.w_dim,
            fused_modconv_default=config.fused_modconv_default)
        self.decoder = OSGDecoder(config.triplane_channels, output_dim=32, lr_multiplier=r.decoder_lr_mul)

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """z (N, z_dim), conditioning camera c (N, 25) -> ws (N, num_ws, w_dim)."""
        self._check_inputs(z=z, c=c)
        if self.rendering.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.rendering.c_scale, truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def planes(self, ws: torch.Tensor, noise_mode: str = "random", update_emas: bool = False,
               **block_kwargs) -> torch.Tensor:
        """ws (N, num_ws, w_dim) -> tri-planes (N, 3, C, P, P)."""
        p = self.backbone.synthesis(ws, noise_mode=noise_mode, update_emas=update_emas, **block_kwargs)
        return p.view(len(p), 3, -1, p.shape[-2], p.shape[-1])

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, neural_rendering_resolution: int | None = None,
                  noise_mode: str = "random", sampling: str | None = None, ray_chunk: int | None = None,
                  planes: torch.Tensor | None = None, update_emas: bool = False, **block_kwargs) -> SynthesisOutput:
        """Render ws from cameras c (N, 25).

        sampling: 'stochastic' (jittered, training), 'deterministic' (no jitter; evaluation, exact comparisons) or
        None = stochastic in train mode, deterministic in eval mode. ``planes`` reuses precomputed tri-planes.
        ``neural_rendering_resolution`` overrides the module's value for this call only.
        """
        self._check_inputs(c=c)
        if sampling not in (None, "stochastic", "deterministic"):
            raise ValueError(f"sampling must be 'stochastic', 'deterministic' or None, got {sampling!r}")
        stochastic = self.training if sampling is None else sampling == "stochastic"
        res = neural_rendering_resolution or self.neural_rendering_resolution
        cam2world, intrinsics = c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3)
        origins, directions = self.ray_sampler(cam2world, intrinsics, res)  # (N, M, 3)
        if planes is None:
            planes = self.planes(ws, noise_mode=noise_mode, update_emas=update_emas, **block_kwargs)
        feats, depth, weight = self.renderer(planes, self.decoder, origins, directions, self.rendering,
                                             stochastic=stochastic, ray_chunk=ray_chunk)
        n = ws.shape[0]
        feature_image = feats.permute(0, 2, 1).reshape(n, feats.shape[-1], res, res).contiguous()
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, res, res)
        image, image_raw = self.superresolution(feature_image[:, :3], feature_image, ws,
                                                noise_mode=self.rendering.superresolution_noise_mode, **block_kwargs)
        return SynthesisOutput(image=image, image_raw=image_raw, image_depth=depth_image, features=feature_image,
                               weights=weight.permute(0, 2, 1).reshape(n, 1, res, res))

    def forward(self, z: torch.Tensor, c: torch.Tensor, c_cond: torch.Tensor | None = None,
                truncation_psi: float = 1.0, truncation_cutoff: int | None = None, **synthesis_kwargs):
        """Map z with ``c_cond`` (default: ``c``) and render from ``c``."""
        ws = self.mapping(z, c if c_cond is None else c_cond, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, c, **synthesis_kwargs)

    def sample_density(self, points: torch.Tensor, ws: torch.Tensor | None = None,
                       planes: torch.Tensor | None = None, noise_mode: str = "const") -> dict:
        """Decoder outputs at world points (N, M, 3): {'rgb': (N, M, 32) in [0, 1], 'sigma': (N, M, 1) raw}."""
        if planes is None:
            planes = self.planes(ws, noise_mode=noise_mode)
        return self.decoder(sample_triplane(planes, points, self.rendering.box_warp))

    def _check_inputs(self, z: torch.Tensor | None = None, c: torch.Tensor | None = None) -> None:
        if z is not None and (z.ndim != 2 or z.shape[1] != self.z_dim):
            raise ValueError(f"z must have shape (N, {self.z_dim}), got {tuple(z.shape)}")
        if c is not None and (c.ndim != 2 or c.shape[1] != 25):
            raise ValueError(f"c must have shape (N, 25) (EG3D camera label), got {tuple(c.shape)}")


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _ffhq(**overrides) -> TriPlaneGeneratorConfig:
    return TriPlaneGeneratorConfig(**overrides)


PRESETS: dict[str, TriPlaneGeneratorConfig] = {
    # train.py --cfg=ffhq --gen_pose_cond=True --gpc_reg_prob=0.8, 512 px output from 128 px neural rendering.
    "ffhq512": _ffhq(rendering=RenderingConfig(gpc_reg_prob=0.8)),
    # --cfg=afhq: cats' average camera pivot; the released AFHQ model has 8X's super-resolution channels (see
    # adapt3d.models.known_models).
    "afhq512": _ffhq(rendering=RenderingConfig(gpc_reg_prob=0.8, avg_camera_pivot=[0.0, 0.0, -0.06],
                                               superresolution_module="SuperresolutionHybrid8X")),
    # --cfg=shapenet: 128 px output from 64 px rendering, white background, larger box, no pose conditioning.
    "shapenet128": TriPlaneGeneratorConfig(
        img_resolution=128, neural_rendering_resolution=64, camera_fov_deg=49.134,
        rendering=RenderingConfig(depth_resolution=64, depth_resolution_importance=64, ray_start=0.1, ray_end=2.6,
                                  box_warp=1.6, white_back=True, avg_camera_radius=1.7,
                                  avg_camera_pivot=[0.0, 0.0, 0.0], image_resolution=128,
                                  superresolution_module="SuperresolutionHybrid2X", c_gen_conditioning_zero=True,
                                  gpc_reg_prob=None)),
    # A few-MB model with FFHQ's cameras for tests and the built-in demo (renders in well under a second on CPU).
    "tiny": TriPlaneGeneratorConfig(
        z_dim=64, w_dim=64, img_resolution=64, channel_base=1024, channel_max=32, triplane_resolution=64,
        neural_rendering_resolution=32, sr_num_fp16_res=0,
        rendering=RenderingConfig(depth_resolution=12, depth_resolution_importance=12, image_resolution=64,
                                  superresolution_module="SuperresolutionHybrid2X", gpc_reg_prob=0.8)),
}


def preset_config(name: str) -> TriPlaneGeneratorConfig:
    """A fresh copy of a named preset (``ffhq512``, ``afhq512``, ``shapenet128``, ``tiny``)."""
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return TriPlaneGeneratorConfig.from_dict(PRESETS[name].to_dict())


def build_generator(config: TriPlaneGeneratorConfig | str, seed: int | None = 0) -> TriPlaneGenerator:
    """Build a generator from a config or preset name, with seeded random weights (``seed=None``: global RNG)."""
    cfg = preset_config(config) if isinstance(config, str) else config
    if seed is None:
        return TriPlaneGenerator(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TriPlaneGenerator(cfg)
