"""``adapt3d generate``: a prompt + seeds -> 3D-aware portraits from a distilled text-conditioned generator, ONE
forward pass per sample (no per-prompt optimisation).

    from adapt3d.pipelines.generate import GenerateConfig, run
    result = run(GenerateConfig(checkpoint="runs/dp/final", prompt="a portrait of an elf with silver hair",
                                seeds="0-7", video="orbit", mesh="ply", out=Path("runs/elf")))

Per sample: z = RandomState(seed).randn(1, z_dim) (EG3D's scripts), ws = adapters(mapping(z, frontal camera),
prompt), planes = synthesis network(ws) + gated cross-attention(planes, prompt): that is the one forward pass. The
still image, the orbit video frames and the mesh are all rendered from these planes (rendering more views of the
same 3D representation never recomputes it). Prompt embeddings come from the text encoder of the diffusion model
recorded in the checkpoint (or --diffusion). Outputs: seedNNNN.png, grid.png, orbit.mp4 (a grid of all seeds),
seedNNNN.ply, generate.json (files, timings: seconds per sample of the forward pass, prompt encoding).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapt3d.cameras import video_trajectory
from adapt3d.export.images import make_grid, save_image, to_uint8
from adapt3d.export.mesh import generator_mesh, save_mesh
from adapt3d.export.options import MediaOptions, ViewOptions
from adapt3d.export.video import write_video
from adapt3d.models.latents import default_cameras, frontal_cameras, seed_latents
from adapt3d.utils.io import atomic_write_json, check_output_folder, to_jsonable
from adapt3d.utils.parsing import check_text, parse_seeds, resolve_device

__all__ = ["GenerateConfig", "GenerateResult", "run", "generate_samples", "GeneratedSamples", "write_outputs"]


@dataclass(kw_only=True)
class GenerateConfig(MediaOptions, ViewOptions):
    """Generate 3D-aware images, orbit videos and meshes for a prompt with a distilled text-conditioned generator
    (one forward pass per sample)."""

    checkpoint: str
    """Text-conditioned checkpoint folder written by `adapt3d distill` (e.g. runs/dp/final)."""
    prompt: str
    """Text prompt, e.g. "a portrait of an elf with silver hair"."""
    out: Path = Path("runs/generate")
    """Output folder (created if missing)."""
    seeds: str = "0-7"
    diffusion: str | None = None
    """Text encoder source (a Stable Diffusion folder or id); default: the one recorded in the checkpoint."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    progress: bool = True


@dataclass
class GenerateResult:
    out: Path
    seeds: list[int]
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds_per_sample: float = 0.0
    """Wall time of the forward pass (mapping + adapters + tri-planes + cross-attention + one render) per sample."""
    seconds: float = 0.0


@dataclass
class GeneratedSamples:
    """The forward pass's outputs for S seeds: ws (S, num_ws, w_dim), planes (S, 3, C, P, P), images (S, 3, R, R)
    in [-1, 1] on the CPU, and the seconds it took."""

    ws: torch.Tensor
    planes: torch.Tensor
    images: torch.Tensor
    seconds: float


def validate(cfg: GenerateConfig) -> list[int]:
    seeds = parse_seeds(cfg.seeds)
    if not isinstance(cfg.prompt, str) or not cfg.prompt.strip():
        raise ValueError("--prompt: empty; describe the portrait, e.g. 'a portrait of an elf with silver hair'")
    check_text(cfg.prompt, "--prompt", "prompt")
    ck = Path(cfg.checkpoint).expanduser()
    if not (ck / "checkpoint.json").is_file():
        raise ValueError(f"--checkpoint: {ck} is not a checkpoint folder (no checkpoint.json); pass the final/ or a "
                         "snapshots/snapshot-XXXXXX folder of an `adapt3d distill` run")
    cfg.check_views()
    cfg.check_media()
    resolve_device(cfg.device)
    check_output_folder(cfg.out)
    return seeds


@torch.no_grad()
def generate_samples(model, text: torch.Tensor | None, seeds: list[int], cameras: torch.Tensor, trunc: float = 0.7,
                     trunc_cutoff: int | None = None, batch_size: int = 4) -> GeneratedSamples:
    """The forward pass for each seed: ws, planes and one image at ``cameras`` (S, 25). ``model`` is a
    :class:`adapt3d.models.text_conditioned.TextConditionedGenerator`, ``text`` (1, L, D) or None."""
    device = next(model.parameters()).device
    z = seed_latents(seeds, model.z_dim).to(device)
    ws_all, planes_all, images = [], [], []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(0, len(seeds), batch_size):
        zb = z[i:i + batch_size]
        c_cond = frontal_cameras(model, zb.shape[0]).to(device)
        ws = model.mapping(zb, c_cond, text, truncation_psi=trunc, truncation_cutoff=trunc_cutoff)
        planes = model.planes(ws, text, noise_mode="const")
        out = model.synthesis(ws, cameras[i:i + batch_size].to(device), planes=planes, noise_mode="const",
                              sampling="deterministic")
        ws_all.append(ws)
        planes_all.append(planes)
        images.append(out.image.cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return GeneratedSamples(torch.cat(ws_all), torch.cat(planes_all), torch.cat(images), time.perf_counter() - t0)


def write_outputs(model, samples: GeneratedSamples, seeds: list[int], out: Path, *, video: str = "none",
                  video_format: str = "mp4", video_frames: int = 48, fps: int = 24, mesh: str = "none",
                  mesh_resolution: int = 128, mesh_level: float | None = None, batch_size: int = 4,
                  progress: bool = False, notes: list[str] | None = None,
                  mesh_seeds: list[int] | None = None) -> dict[str, list[str]]:
    """Save per-seed images, the grid, a video and meshes (of ``mesh_seeds``, default all), all rendered from
    ``samples.planes``."""
    notes = notes if notes is not None else []
    files: dict[str, list[str]] = {}
    u8 = to_uint8(samples.images)
    for k, s in enumerate(seeds):
        files.setdefault("images", []).append(str(save_image(out / f"seed{s:04d}.png", u8[k])))
    files["grid"] = [str(save_image(out / "grid.png", make_grid(u8)))]
    n = len(seeds)
    if video != "none":
        poses = video_trajectory(video, video_frames)

        @torch.no_grad()
        def frames():
            for t in range(len(poses)):
                cam = default_cameras(model, poses.yaw[t:t + 1].expand(n), poses.pitch[t:t + 1].expand(n))
                imgs = []
                for i in range(0, n, batch_size):
                    sl = slice(i, i + batch_size)
                    imgs.append(model.base.synthesis(samples.ws[sl], cam[sl].to(samples.ws.device),
                                                     planes=samples.planes[sl], noise_mode="const",
                                                     sampling="deterministic").image.cpu())
                yield make_grid(to_uint8(torch.cat(imgs)))

        path = out / f"{video}.{video_format}"
        write_video(path, frames(), fps=fps, progress=progress, total=len(poses))
        files["video"] = [str(path)]
    if mesh != "none":
        for k, s in enumerate(seeds):
            if mesh_seeds is not None and s not in mesh_seeds:
                continue
            m = generator_mesh(model.base, samples.planes[k:k + 1], mesh_resolution, mesh_level, notes, f"seed {s}: ")
            files.setdefault("mesh", []).append(str(save_mesh(out / f"seed{s:04d}.{mesh}", m)))
    return files


def load_prompt_encoder(diffusion: str, device: torch.device, flag: str = "--diffusion"):
    """A ScoreDistillation holding only the text encoder + tokenizer of ``diffusion`` (no UNet, no VAE)."""
    from adapt3d.diffusion.sds import ScoreDistillation
    return ScoreDistillation.from_pretrained(diffusion, device=device, flag=flag, load_unet=False, load_vae=False,
                                             torch_dtype=torch.float32)


def run(cfg: GenerateConfig) -> GenerateResult:
    """Run the generate job (see the module docstring). Arguments are checked before any model is loaded."""
    from adapt3d.models.text_conditioned import load_text_conditioned
    t_start = time.time()
    seeds = validate(cfg)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    model, _, meta = load_text_conditioned(Path(cfg.checkpoint).expanduser())
    model = model.to(device).eval().requires_grad_(False)
    info = meta["text_conditioning"].get("text_encoder", {})
    diffusion = cfg.diffusion or info.get("diffusion")
    if not diffusion:
        raise ValueError(f"--diffusion: {cfg.checkpoint} does not record its text encoder; pass --diffusion (the "
                         "Stable Diffusion model used by `adapt3d distill`)")
    t0 = time.perf_counter()
    encoder = load_prompt_encoder(diffusion, device)
    text = encoder.encode_prompt([cfg.prompt]).to(device)  # (1, L, D)
    encode_s = time.perf_counter() - t0
    if text.shape[-1] != model.cond_config.text_dim:
        raise ValueError(f"--diffusion: {diffusion}'s text encoder gives {text.shape[-1]}-dim embeddings, the "
                         f"checkpoint was trained with {model.cond_config.text_dim}; use the distillation's model")
    del encoder
    yaw = torch.full((len(seeds),), math.pi / 2 + math.radians(cfg.yaw_deg))
    pitch = torch.full((len(seeds),), math.pi / 2 + math.radians(cfg.pitch_deg))
    cams = default_cameras(model, yaw, pitch)
    samples = generate_samples(model, text, seeds, cams, cfg.trunc, cfg.trunc_cutoff, cfg.batch_size)
    result = GenerateResult(out=out, seeds=seeds, seconds_per_sample=samples.seconds / len(seeds))
    result.files = write_outputs(model, samples, seeds, out, video=cfg.video, video_format=cfg.video_format,
                                 video_frames=cfg.video_frames, fps=cfg.fps, mesh=cfg.mesh,
                                 mesh_resolution=cfg.mesh_resolution, mesh_level=cfg.mesh_level,
                                 batch_size=cfg.batch_size, progress=cfg.progress, notes=result.notes)
    result.seconds = time.time() - t_start
    summary = {"config": to_jsonable(asdict(cfg)),
               "diffusion": diffusion, "prompt": cfg.prompt, "seeds": seeds, "files": result.files,
               "notes": result.notes, "device": str(device),
               "timing": {"forward_s_per_sample": samples.seconds / len(seeds), "prompt_encoding_s": encode_s,
                          "total_s": round(result.seconds, 3)}}
    atomic_write_json(out / "generate.json", summary)
    return result
