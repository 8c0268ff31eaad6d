"""``adapt3d instance candidates``: diverse target candidates for ONE instance, to pick from (DATID-3D's
instance-selected adaptation, step 1).

The instance (``--instance-seed`` or ``--instance-latent``, as ``adapt --instance-seed``) is rendered at its
reference camera (frontal for a seed; the photo's own camera for an inverted latent) and translated
``--num-candidates`` times with SD img2img, candidate k with its own diffusion seed ``stream_seed(--seed, k, 3)``
and prompt k mod (number of prompts). Outputs::

    OUT/candidates.png            contact sheet: the source render, then every candidate captioned with its index
    OUT/candidates/candKK.png     each candidate
    OUT/candidates.json           index -> diffusion seed, prompt; the options that made them

Pick one and adapt toward it: ``adapt3d adapt <the same instance, prompts, --seed, diffusion options>
--select K``. Every view is then translated with candidate K's diffusion seed and prompt (its noise), and view 0 is
the reference camera, so the selected candidate itself is in the training set (see
:mod:`adapt3d.pipelines.instance`). Python API::

    from adapt3d.pipelines.instance_candidates import InstanceCandidatesConfig, run
    run(InstanceCandidatesConfig(preset="tiny", instance_seed=3, prompt=("a zombie",), out="runs/cands"))
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adapt3d.pipelines.instance import (DEFAULT_NUM_CANDIDATES, InstanceConfig, candidate_prompt, candidate_seed,
                                        _instance_code)
from adapt3d.pipelines.targets import model_names, translate_and_score
from adapt3d.utils.io import check_output_folder, to_jsonable
from adapt3d.utils.parsing import check_trunc, resolve_device

__all__ = ["InstanceCandidatesConfig", "CandidatesResult", "run", "InstanceCommand", "run_instance_command"]


@dataclass
class InstanceCandidatesConfig:
    """Translate ONE instance several times at its reference camera (each with its own diffusion seed) and show the
    candidates with their indices; then `adapt3d adapt --instance-seed S --select K` adapts toward candidate K.
    Give --preset or --generator, --instance-seed or --instance-latent, and --prompt."""

    prompt: tuple[str, ...] = ()
    """Target-domain prompt(s); candidate k gets prompt k mod count."""
    out: Path = Path("runs/candidates")
    """Output folder (candidates.png, candidates/, candidates.json)."""
    preset: str | None = None
    """Built-in generator with random weights (tiny: built-in tiny diffusion, the offline demo)."""
    generator: str | None = None
    """Source generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (ffhq, afhq)."""
    instance_seed: int | None = None
    """The instance: latent seed, z = RandomState(seed) (as adapt3d render --seeds)."""
    instance_latent: Path | None = None
    """The instance: latent.pt (or its folder) from adapt3d invert."""
    num_candidates: int = DEFAULT_NUM_CANDIDATES
    """Candidates to make (1-64); --select takes an index in [0, this)."""
    negative_prompt: str | None = None
    """Negative prompt for the diffusion model."""
    strength: float = 0.7
    """img2img strength in (0, 1] (DATID-3D: 0.7)."""
    guidance_scale: float = 8.0
    """Classifier-free guidance scale (DATID-3D: 8)."""
    num_inference_steps: int | None = None
    """Diffusion steps (default 50; tiny: 10)."""
    diffusion: str = "auto"
    """img2img model: Hugging Face id, local folder, or 'tiny' (auto: tiny with --preset tiny, else SD 2.1-base)."""
    trunc: float = 0.7
    """Truncation psi of --instance-seed."""
    seed: int = 0
    """Job seed: candidate k's diffusion seed derives from it (use the same --seed with adapt --select)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class CandidatesResult:
    out: Path
    sheet: Path
    candidates: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def validate(cfg: InstanceCandidatesConfig) -> dict:
    """Every option before any model loads: the prompts, the model name, the instance's latent file (or None)."""
    from adapt3d.diffusion.img2img import check_img2img_args
    from adapt3d.diffusion.loading import resolve_pretrained
    from adapt3d.inversion.latent_file import load_latent
    from adapt3d.models.loading import check_generator_source
    from adapt3d.utils.parsing import check_int, check_prompts

    check_generator_source(cfg.preset, cfg.generator, flag="--generator")
    if (cfg.instance_seed is None) == (cfg.instance_latent is None):
        raise ValueError("give exactly one of --instance-seed (a latent seed) and --instance-latent (latent.pt from "
                         "adapt3d invert)")
    if cfg.instance_seed is not None and cfg.instance_seed < 0:
        raise ValueError(f"--instance-seed: must be >= 0, got {cfg.instance_seed}")
    check_int(cfg.num_candidates, "--num-candidates", 1, 64, "candidates")
    prompts = [p.strip() for p in check_prompts(cfg.prompt)]
    if not prompts:
        raise ValueError("--prompt: give the target domain, e.g. --prompt 'a 3D render of a face in Pixar style'")
    steps = cfg.num_inference_steps if cfg.num_inference_steps is not None else (10 if cfg.preset == "tiny" else 50)
    check_img2img_args(prompts, cfg.strength, cfg.guidance_scale, steps, "pndm", cfg.negative_prompt)
    check_trunc(cfg.trunc)
    latent = load_latent(cfg.instance_latent, "--instance-latent") if cfg.instance_latent is not None else None
    diffusion, _ = model_names(cfg.preset, cfg.diffusion, "none")
    resolve_device(cfg.device)
    check_output_folder(cfg.out)
    resolve_pretrained(diffusion, "stable-diffusion", "--diffusion")
    return {"prompts": prompts, "diffusion": diffusion, "steps": steps, "latent": latent}


BATCH = 4  # candidates translated together


@torch.no_grad()
def run(cfg: InstanceCandidatesConfig) -> CandidatesResult:
    """Make the candidates and their contact sheet; see the module docstring."""
    from adapt3d.data.target_dataset import TargetItem
    from adapt3d.diffusion.img2img import Img2ImgTranslator
    from adapt3d.export.images import contact_sheet, save_image
    from adapt3d.inversion.projector import use_noise
    from adapt3d.models.loading import load_generator
    from adapt3d.utils.io import atomic_write_json

    t0 = time.time()
    parts = validate(cfg)
    out, device = Path(cfg.out), resolve_device(cfg.device)
    G = load_generator(preset=cfg.preset, checkpoint=cfg.generator, progress=cfg.progress).generator
    G = G.to(device).eval().requires_grad_(False)
    code = _instance_code(InstanceConfig(instance_seed=cfg.instance_seed, instance_latent=cfg.instance_latent,
                                         trunc=cfg.trunc), G, parts["latent"], device)
    translator = Img2ImgTranslator.from_pretrained(parts["diffusion"], device=device)
    n, prompts = cfg.num_candidates, parts["prompts"]
    latent_seed = cfg.instance_seed if cfg.instance_seed is not None else -1
    yaw, pitch = torch.tensor([float(code.yaw)]), torch.tensor([float(code.pitch)])  # (1,): the reference camera
    records, images, src_u8 = [], [], None
    for start in range(0, n, BATCH):  # the translate-and-score loop of make-dataset and adapt --select
        items = [TargetItem(index=k, source=0, sample=k, latent_seed=latent_seed, pose_seed=0,
                            diffusion_seed=candidate_seed(cfg.seed, k), prompt=candidate_prompt(prompts, k))
                 for k in range(start, min(n, start + BATCH))]
        with use_noise(G, code.noise):
            batch = translate_and_score(G, code.ws.to(device), code.camera, yaw, pitch, items, 0, translator, None,
                                        None, negative_prompt=cfg.negative_prompt, strength=cfg.strength,
                                        guidance_scale=cfg.guidance_scale, num_inference_steps=parts["steps"])
        src_u8 = batch.src_u8  # (1, H, W, 3): the instance at its reference camera, as diffusion saw it
        for it, img in zip(items, batch.tgt_u8):
            path = save_image(out / "candidates" / f"cand{it.index:02d}.png", img)
            images.append(img)
            records.append({"index": it.index, "diffusion_seed": it.diffusion_seed, "prompt": it.prompt,
                            "image": str(path.relative_to(out))})
    cols = 4
    rows = [[src_u8[0]]] + [images[i:i + cols] for i in range(0, n, cols)]
    captions = [["source"]] + [[f"K={k}" for k in range(i, min(n, i + cols))] for i in range(0, n, cols)]
    sheet = save_image(out / "candidates.png", contact_sheet(rows, captions))
    instance = f"--instance-seed {cfg.instance_seed}" if cfg.instance_seed is not None \
        else f"--instance-latent {cfg.instance_latent}"
    note = (f"pick K and run: adapt3d adapt {instance} --prompt ... --seed {cfg.seed} --select K "
            f"(--num-candidates {n}, the same prompts, generator and diffusion options)")
    atomic_write_json(out / "candidates.json", {
        "config": to_jsonable(asdict(cfg)), "diffusion": parts["diffusion"], "num_inference_steps": parts["steps"],
        "candidates": records, "camera": code.camera.reshape(-1).tolist(), "next": note})
    return CandidatesResult(out=out, sheet=sheet, candidates=records, notes=[note], seconds=time.time() - t0)


def _instance_command_type():
    """``adapt3d instance candidates|adapt``: a tyro union of the two configs (nested subcommands)."""
    from typing import Annotated, Union

    import tyro

    return Union[
        Annotated[InstanceCandidatesConfig, tyro.conf.subcommand(
            "candidates", description="Translate ONE instance several times at its reference camera and show the "
            "candidates with their indices (then: adapt3d adapt --instance-seed S --select K).")],
        Annotated[InstanceConfig, tyro.conf.subcommand(
            "adapt", description="Instance-selected adaptation (= adapt3d adapt --instance-seed/--instance-latent, "
            "with --select K).")],
    ]


InstanceCommand = _instance_command_type()


def run_instance_command(cfg):
    """Run ``adapt3d instance candidates`` or ``adapt3d instance adapt`` by the config's type."""
    from adapt3d.pipelines import instance
    return run(cfg) if isinstance(cfg, InstanceCandidatesConfig) else instance.run(cfg)
