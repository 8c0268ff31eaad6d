"""The stages of ``bench/full_size.py``: each runs one adapt3d workload through its real code path and returns what
it measured (one dict per measured configuration). See ``bench/full_size.py`` for the command line.

Every stage loads its models through adapt3d's loaders from the paths :meth:`Context.model` gives (full-size
random-weight models in the released layouts, or the tiny test models), times only the work (models loaded,
warm-up done, CUDA synchronised), and reports ``items`` (what ``seconds`` produced), ``batch``, ``params`` (of the
models the stage ran) and stage-specific fields.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = ("render", "make-dataset", "finetune", "nada", "distill", "synth", "invert", "eval")

# Counts per profile: "quick" (this 2-core CPU: full-size models, a few items), "device" (a GPU device check that
# must fit in minutes), "full" (realistic counts on a GPU). ``nrr``: neural rendering resolution of the NADA and
# distillation stages when not the generator's 128 (quick uses 64 to fit the CPU budget). Fine-tuning uses
# DATID-3D's schedule (64 px at the start for official weights).
COUNTS = {
    "render": dict(quick=dict(batches=(1, 4), warmup=1, runs=1), device=dict(batches=(1, 4), warmup=2, runs=5),
                   full=dict(batches=(1, 4), warmup=2, runs=10)),
    "make-dataset": dict(quick=dict(images=2, batch=2, steps=2), device=dict(images=8, batch=8, steps=50),
                         full=dict(images=32, batch=8, steps=50)),
    "finetune": dict(quick=dict(batch=2, warmup=0, steps=1), device=dict(batch=4, warmup=2, steps=5),
                     full=dict(batch=4, warmup=2, steps=10)),
    "nada": dict(quick=dict(batch=1, views=4, warmup=0, steps=1, nrr=64),
                 device=dict(batch=1, views=4, warmup=1, steps=3), full=dict(batch=2, views=4, warmup=1, steps=5)),
    "distill": dict(quick=dict(batch=1, warmup=0, steps=1, nrr=64), device=dict(batch=4, warmup=1, steps=3),
                    full=dict(batch=4, warmup=1, steps=5)),
    "synth": dict(quick=dict(images=1, batch=1, steps=2), device=dict(images=8, batch=4, steps=20),
                  full=dict(images=16, batch=4, steps=20)),
    "invert": dict(quick=dict(steps=2), device=dict(steps=50), full=dict(steps=100)),
    "eval": dict(quick=dict(latents=2, views=3), device=dict(latents=8, views=5), full=dict(latents=16, views=5)),
}
PROFILES = ("quick", "device", "full")
PROMPTS = ("a 3D render of a face in Pixar style", "a zombie")


def _bench_module(name: str):
    """Another bench script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype | None  # diffusion / CLIP models (None: the loaders' default, fp16 on CUDA, fp32 on CPU)
    profile: str  # "quick", "device" or "full" (see COUNTS)
    preset: str  # "full-size-random" or "tiny"
    root: Path | None = None
    seed: int = 0
    compile: bool = False
    built: dict = field(default_factory=dict)  # model name -> seconds spent building it (first use only)

    @property
    def quick(self) -> bool:
        return self.profile == "quick"

    def counts(self, stage: str) -> dict:
        return COUNTS[stage][self.profile]

    def model(self, name: str) -> str:
        """What the loaders take for ``name`` (an adapt3d.configs name): a folder or an EG3D snapshot."""
        if self.preset == "tiny":
            from adapt3d.testing import ensure_tiny_models
            if name.startswith("eg3d-"):
                return "tiny"  # a preset: official kwargs cannot express the tiny tri-planes (64 px, not 256)
            kind = ("controlnet" if name.startswith("controlnet") else "clip" if name.startswith("clip")
                    else "stable-diffusion")
            return str(ensure_tiny_models(names=(kind,))[kind])
        from adapt3d.testing.full_size import ensure_full_size_model, full_size_location, is_full_size_model
        location = full_size_location(name, self.root)
        folder = location.parent if location.suffix == ".pkl" else location
        if not is_full_size_model(folder, name):
            t0 = time.perf_counter()
            ensure_full_size_model(name, self.root, seed=self.seed,
                                   device=str(self.device) if self.device.type == "cuda" else "cpu")
            self.built[name] = round(time.perf_counter() - t0, 1)
        return str(location)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn, *args, **kwargs):
        """(result, seconds) of ``fn(*args, **kwargs)``, CUDA synchronised."""
        self.sync()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        return out, time.perf_counter() - t0


def _params(*modules) -> int:
    return int(sum(p.numel() for m in modules if m is not None for p in m.parameters()))


def _load_eg3d(ctx: Context, name: str = "eg3d-ffhq512", discriminator: bool = False):
    """(G, D or None) from the official-format snapshot (full size), or the tiny preset with a fresh D."""
    from adapt3d.models.loading import load_generator
    source = ctx.model(name)
    if source == "tiny":
        from adapt3d.pipelines.finetune import default_discriminator
        G = load_generator(preset="tiny", seed=ctx.seed).generator
        return G, default_discriminator(G, seed=ctx.seed) if discriminator else None
    loaded = load_generator(checkpoint=source, load_discriminator=discriminator, progress=False)
    return loaded.generator, loaded.discriminator


def _cameras(G, n: int, yaw_offsets=None):
    from adapt3d.cameras import camera_label, frontal_label
    r = G.rendering
    yaw = torch.tensor(yaw_offsets if yaw_offsets is not None else [0.3] * n) + math.pi / 2
    c = camera_label(yaw, torch.full_like(yaw, math.pi / 2 - 0.1), radius=r.avg_camera_radius,
                     pivot=r.avg_camera_pivot, fov_deg=G.config.camera_fov_deg)
    return frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg, batch_size=n), c


# ------------------------------------------------------------------------------------------------------ stages
def stage_render(ctx: Context) -> list[dict]:
    """EG3D ffhq512 inference: mapping + synthesis (deterministic sampling, const noise), batch 1 and 4."""
    k = ctx.counts("render")
    G, _ = _load_eg3d(ctx)
    G = G.to(ctx.device).eval().requires_grad_(False)
    if ctx.compile:
        from adapt3d.utils.fast import compile_module
        compile_module(G.backbone.synthesis)
    results = []
    for batch in k["batches"]:
        gen = torch.Generator().manual_seed(ctx.seed)
        z = torch.randn(batch, G.z_dim, generator=gen).to(ctx.device)
        c_cond, c = (t.to(ctx.device) for t in _cameras(G, batch))

        def forward():
            ws = G.mapping(z, c_cond, truncation_psi=0.7)
            return G.synthesis(ws, c, noise_mode="const", sampling="deterministic").image

        times = []
        with torch.no_grad():
            for i in range(k["warmup"] + k["runs"]):
                _, s = ctx.timed(forward)
                if i >= k["warmup"]:
                    times.append(s)
        results.append({"batch": batch, "params": _params(G), "items": batch, "seconds": statistics.median(times),
                        "runs": k["runs"], "warmup": k["warmup"], "times_s": [round(t, 4) for t in times],
                        "notes": [f"median of {k['runs']} runs after {k['warmup']} warm-up"]})
    return results


def stage_make_dataset(ctx: Context) -> list[dict]:
    """make-dataset's generation (render sources, SD 2.1-base img2img at 512 px, write PNGs): batched vs one image
    at a time, same seeds; the saved images are compared."""
    from PIL import Image

    from adapt3d.pipelines import make_dataset as md

    k = ctx.counts("make-dataset")
    diffusion = ctx.model("sd21-base")
    source = ctx.model("eg3d-ffhq512")
    generator = {"preset": "tiny"} if source == "tiny" else {"generator": source}

    def config(out: Path, batch_size: int) -> md.MakeDatasetConfig:
        return md.MakeDatasetConfig(out=out, **generator, prompt=PROMPTS, num_images=k["images"],
                                    batch_size=batch_size, num_inference_steps=k["steps"], strength=0.7,
                                    diffusion=diffusion, clip_model="none", pose_filter=False,
                                    device=str(ctx.device), seed=ctx.seed, progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = config(tmp / "batched", k["batch"])
        job = md.validate(cfg)
        models = md.load_models(cfg, job, need_generation=True)
        translator = models["translator"]
        if ctx.dtype is not None:
            translator.pipe.to(dtype=ctx.dtype)
        runs = {}
        for name, bs in (("batched", k["batch"]), ("loop", 1)):
            c = config(tmp / name, bs)
            j = md.validate(c)
            (tmp / name).mkdir(exist_ok=True)
            made, runs[name] = ctx.timed(md.generate, c, j, tmp / name, models)
            assert made == k["images"], (made, k["images"])
        diffs = []
        for i in range(k["images"]):
            a = np.asarray(Image.open(tmp / "batched" / f"images/img{i:08d}.png"), dtype=np.int16)
            b = np.asarray(Image.open(tmp / "loop" / f"images/img{i:08d}.png"), dtype=np.int16)
            diffs.append(int(np.abs(a - b).max()))
        pipe = translator.pipe
        overhead = None
        if not ctx.quick:  # adapt3d's call against a plain diffusers pipeline call at the same settings
            x = torch.rand(k["batch"], 3, translator.resolution, translator.resolution)
            prompts = [PROMPTS[i % 2] for i in range(k["batch"])]
            gens = lambda: [torch.Generator("cpu").manual_seed(i) for i in range(k["batch"])]  # noqa: E731
            _, ours = ctx.timed(translator, x * 2 - 1, prompts, strength=0.7, guidance_scale=8.0,
                                num_inference_steps=k["steps"], seeds=list(range(k["batch"])))
            _, plain = ctx.timed(pipe, prompt=prompts, image=x.to(ctx.device, translator.dtype), strength=0.7,
                                 guidance_scale=8.0, num_inference_steps=k["steps"], generator=gens(),
                                 output_type="pt")
            overhead = round(ours / plain, 3)
    params = _params(models["G"], pipe.unet, pipe.vae, pipe.text_encoder)
    steps_run = int(k["steps"] * 0.7)
    notes = [f"{k['images']} images, strength 0.7 x {k['steps']} steps = {steps_run} denoising step(s), CFG 8, "
             f"{translator.resolution} px; loop = batch_size 1 (DATID-3D's loop)",
             "adapt3d/diffusers time ratio " + (str(overhead) if overhead is not None else "not measured (--quick)")]
    return [{"batch": k["batch"], "params": params, "items": k["images"], "seconds": runs["batched"],
             "loop_seconds": runs["loop"], "loop_items_per_s": k["images"] / runs["loop"],
             "batched_speedup": runs["loop"] / runs["batched"], "max_abs_diff_u8": max(diffs),
             "adapt3d_over_diffusers": overhead, "notes": notes}]


def stage_finetune(ctx: Context) -> list[dict]:
    """DATID-3D fine-tuning step of ffhq512: G and D phases, R1 (gamma 5) and density regularisation, ADA."""
    from adapt3d.training.config import FinetuneConfig
    from adapt3d.training.loop import Trainer

    bench_ft = _bench_module("finetune")
    k = ctx.counts("finetune")
    G, D = _load_eg3d(ctx, discriminator=True)
    dataset = bench_ft.memory_dataset(G, max(4 * k["batch"], 16))
    cfg = FinetuneConfig(dataset=Path("."), generator="bench", batch=k["batch"], kimg=1e6, density_reg_interval=1,
                         d_reg_interval=1, augment="fixed", augment_p=0.2, neural_rendering_resolution=k.get("nrr"),
                         progress=False)
    trainer = Trainer(cfg, G, D, dataset, device=ctx.device)
    notes = []
    if ctx.compile:  # after the trainer made its copies (G_ema)
        from adapt3d.utils.fast import compile_module, compile_status
        compile_module(trainer.G.backbone.synthesis)
        compile_module(trainer.D)
    timing = bench_ft.time_training_steps(trainer, k["warmup"], k["steps"], 4, 16)
    step = timing["sec_per_step"]
    return [{"batch": k["batch"], "params": _params(G, D), "items": k["batch"], "seconds": step,
             "phase_seconds": {n: round(v, 4) for n, v in timing["phase_seconds"].items()},
             "kimg_per_hour": 3600 / (step / k["batch"] * 1000), "steps": k["steps"], "warmup": k["warmup"],
             "neural_rendering_resolution": trainer.nrr_schedule.at(0),
             "notes": ["seconds = amortised step: every phase timed, Greg every 4 steps, R1 every 16 (DATID-3D); "
                       "R1 gamma 5, density reg 0.25, ADA p 0.2, DATID-3D's neural rendering schedule at its start; "
                       "in-memory dataset"] + notes + (
                 [f"torch.compile: G synthesis {compile_status(trainer.G.backbone.synthesis)}, D "
                  f"{compile_status(trainer.D)}"] if ctx.compile else [])}]


def stage_nada(ctx: Context) -> list[dict]:
    """3D StyleGAN-NADA step: 2 CLIP models (ViT-B/32 + B/16), 4 views per latent, backbone + SR trained."""
    from adapt3d.pipelines.nada import build_clip_loss
    from adapt3d.training.nada import NadaTrainer
    from adapt3d.training.nada_config import NadaConfig

    k = ctx.counts("nada")
    clips = (ctx.model("clip-vit-b-32"), ctx.model("clip-vit-b-16"))
    cfg = NadaConfig(prompt="a zombie", source_text="a photo", generator="bench", clip_models=clips, templates="none",
                     batch=k["batch"], num_views=k["views"], steps=k["warmup"] + k["steps"], device=str(ctx.device),
                     neural_rendering_resolution=k.get("nrr"), progress=False)
    G, _ = _load_eg3d(ctx)
    clip_loss = build_clip_loss(cfg, ctx.device)
    if ctx.dtype is not None:
        for scorer in clip_loss.scorers:
            scorer.model.to(ctx.dtype)
    trainer = NadaTrainer(cfg, G, clip_loss, device=ctx.device)
    times = []
    for i in range(k["warmup"] + k["steps"]):
        _, s = ctx.timed(trainer.train_step)
        if i >= k["warmup"]:
            times.append(s)
    views = k["batch"] * k["views"]
    clip_params = sum(_params(s.model) for s in clip_loss.scorers)
    return [{"batch": views, "params": _params(trainer.G) + clip_params, "items": views,
             "seconds": statistics.median(times), "steps": k["steps"], "warmup": k["warmup"],
             "neural_rendering_resolution": trainer.nrr,
             "notes": [f"{k['batch']} latent(s) x {k['views']} views per step, trainable and frozen G rendered, "
                       "2 CLIP models; items = views"]}]


def stage_distill(ctx: Context) -> list[dict]:
    """DreamPortrait step: text-conditioned ffhq512 (adapters) rendered, SDS through SD 2.1-base, GAN loss vs D."""
    from adapt3d.diffusion.sds import ScoreDistillation
    from adapt3d.models.text_conditioned import TextConditionedGenerator, TextConditioningConfig
    from adapt3d.training.distill import DistillTrainer
    from adapt3d.training.distill_config import DistillConfig

    k = ctx.counts("distill")
    G, D = _load_eg3d(ctx, discriminator=True)
    sds = ScoreDistillation.from_pretrained(ctx.model("sd21-base"), device=ctx.device, **(
        {"torch_dtype": ctx.dtype} if ctx.dtype is not None else {}))
    cfg = DistillConfig(prompts=";".join(PROMPTS), generator="bench", batch=k["batch"],
                        steps=k["warmup"] + k["steps"], diversity_features="pixels", evaluate=False,
                        neural_rendering_resolution=k.get("nrr"), device=str(ctx.device), progress=False)
    cond = TextConditioningConfig.for_generator(G, sds.text_dim, num_groups=min(cfg.num_groups, G.num_ws),
                                                adapter_hidden=cfg.adapter_hidden, attn_dim=cfg.attn_dim,
                                                attn_heads=cfg.attn_heads, attn_resolution=cfg.attn_resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        model = TextConditionedGenerator(G, cond)
    trainer = DistillTrainer(cfg, model, sds, list(PROMPTS), D=D, device=ctx.device)
    times = []
    for i in range(k["warmup"] + k["steps"]):
        _, s = ctx.timed(trainer.train_step)
        if i >= k["warmup"]:
            times.append(s)
    teacher = [getattr(sds, n, None) for n in ("unet", "vae", "text_encoder")]
    return [{"batch": k["batch"], "params": _params(model, D, *teacher), "items": k["batch"],
             "seconds": statistics.median(times), "steps": k["steps"], "warmup": k["warmup"],
             "conditioning_params": sum(p.numel() for p in model.conditioning_parameters()),
             "neural_rendering_resolution": trainer.nrr,
             "notes": [f"SDS (guidance 100) at {sds.resolution} px through the VAE encoder, GAN loss 0.05 with a "
                       "D step (R1 every 16)"]}]


def stage_synth(ctx: Context) -> list[dict]:
    """3D-DST generation: mesh renders -> Canny -> ControlNet SD 1.5 at 512 px (DDIM, CFG 9)."""
    from PIL import Image

    from adapt3d.data.cad_procedural import write_demo_meshes
    from adapt3d.diffusion.controlnet import ControlNetGenerator
    from adapt3d.pipelines.synth import SynthConfig, synth

    k = ctx.counts("synth")
    res = 64 if ctx.preset == "tiny" else 512
    base, cn = ctx.model("sd15"), ctx.model("controlnet-sd15-canny")
    with tempfile.TemporaryDirectory() as tmp:
        meshes = write_demo_meshes(Path(tmp) / "meshes")
        synth(SynthConfig(out=Path(tmp) / "out", meshes=str(meshes), classes="car", per_mesh=k["batch"],
                          resolution=res, render_only=True, device=str(ctx.device), progress=False))
        files = sorted((Path(tmp) / "out").rglob("control/*.png"))[:k["batch"]]
        control = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255)
                               for f in files])[:, None]  # (B, 1, res, res)
    gen = ControlNetGenerator.from_pretrained(base, cn, device=ctx.device,
                                              **({"torch_dtype": ctx.dtype} if ctx.dtype is not None else {}))
    prompts = ["a photo of a car, best quality"] * control.shape[0]
    if not ctx.quick:
        gen(control, prompts, num_inference_steps=1)  # warm-up
    total, done = 0.0, 0
    while done < k["images"]:
        seeds = list(range(done, done + len(prompts)))
        _, s = ctx.timed(gen, control, prompts, num_inference_steps=k["steps"], seeds=seeds)
        total, done = total + s, done + len(prompts)
    overhead = None
    if not ctx.quick:
        x = control.expand(-1, 3, -1, -1).to(ctx.device, gen.dtype)
        _, ours = ctx.timed(gen, control, prompts, num_inference_steps=k["steps"])
        _, plain = ctx.timed(gen.pipe, prompt=prompts, image=x, height=res, width=res, guidance_scale=9.0,
                             num_inference_steps=k["steps"], eta=1.0,
                             generator=[torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))],
                             output_type="pt")
        overhead = round(ours / plain, 3)
    pipe = gen.pipe
    return [{"batch": len(prompts), "params": _params(pipe.unet, pipe.controlnet, pipe.vae, pipe.text_encoder),
             "items": done, "seconds": total, "adapt3d_over_diffusers": overhead,
             "notes": [f"{k['steps']} DDIM steps, CFG 9, {res} px, Canny of procedural car renders",
                       "adapt3d/diffusers time ratio " + (str(overhead) if overhead is not None else
                                                          "not measured (--quick)")]}]


def stage_invert(ctx: Context) -> list[dict]:
    """W+ inversion of an ffhq512 render: Adam steps with the LPIPS (VGG16) loss at 256 px (random weights)."""
    from adapt3d.inversion import ProjectorConfig, ReconstructionLoss, project, w_statistics
    from adapt3d.metrics.lpips import LPIPS

    k = ctx.counts("invert")
    G, _ = _load_eg3d(ctx)
    G = G.to(ctx.device).eval().requires_grad_(False)
    c_cond, c = (t.to(ctx.device) for t in _cameras(G, 1))
    with torch.no_grad():
        z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(7)).to(ctx.device)
        target = G.synthesis(G.mapping(z, c_cond, truncation_psi=0.7), c, noise_mode="const",
                             sampling="deterministic").image.clamp(-1, 1)
    lpips = LPIPS.random(0, resolution=min(256, G.img_resolution)).to(ctx.device)
    loss = ReconstructionLoss(lpips=lpips)
    stats = w_statistics(G, 1000, 0, ctx.device)
    project(G, target, c, loss, ProjectorConfig(num_steps=1, w_avg_samples=10), stats=stats)  # warm-up
    cfg = ProjectorConfig(space="w+", num_steps=k["steps"], w_noise=0.0, w_avg_samples=1000)
    res, s = ctx.timed(project, G, target, c, loss, cfg, stats=stats)
    return [{"batch": 1, "params": _params(G, lpips), "items": k["steps"], "seconds": s, "psnr_db": float(res.psnr),
             "notes": [f"{k['steps']} W+ steps at the true camera, LPIPS VGG16 at 256 px; items = steps"]}]


def stage_eval(ctx: Context) -> list[dict]:
    """Evaluation: CLIP score (ViT-B/32) of renders + view consistency (reprojection across views)."""
    from adapt3d.clip import CLIPScorer
    from adapt3d.metrics.clip_metrics import clip_score
    from adapt3d.metrics.view_consistency import evaluate_view_consistency

    k = ctx.counts("eval")
    G, _ = _load_eg3d(ctx)
    G = G.to(ctx.device).eval().requires_grad_(False)
    scorer = CLIPScorer.from_pretrained(ctx.model("clip-vit-b-32"), device=ctx.device,
                                        **({"dtype": ctx.dtype} if ctx.dtype is not None else {}))
    yaws = torch.linspace(-0.4, 0.4, k["views"]).tolist()
    _, labels = _cameras(G, k["views"], yaws)

    def run():
        with torch.no_grad():
            z = torch.randn(k["latents"], G.z_dim, generator=torch.Generator().manual_seed(ctx.seed)).to(ctx.device)
            c_cond, c = (t.to(ctx.device) for t in _cameras(G, k["latents"]))
            ws = G.mapping(z, c_cond, truncation_psi=0.7)
            images = G.synthesis(ws, c, noise_mode="const", sampling="deterministic").image
            score = clip_score(scorer, images, PROMPTS[0])
            view = evaluate_view_consistency(G, ws, labels.to(ctx.device))
        return score, view

    (score, view), s = ctx.timed(run)
    items = k["latents"] * (k["views"] + 1)
    return [{"batch": k["latents"], "params": _params(G, scorer.model), "items": items, "seconds": s,
             "notes": [f"{k['latents']} latents: 1 render each for the CLIP score + {k['views']} views each for "
                       "view consistency; items = renders"]}]


STAGE_FUNCTIONS = {"render": stage_render, "make-dataset": stage_make_dataset, "finetune": stage_finetune,
                   "nada": stage_nada, "distill": stage_distill, "synth": stage_synth, "invert": stage_invert,
                   "eval": stage_eval}
STAGE_MODELS = {"render": ("eg3d-ffhq512",), "make-dataset": ("eg3d-ffhq512", "sd21-base"),
                "finetune": ("eg3d-ffhq512",), "nada": ("eg3d-ffhq512", "clip-vit-b-32", "clip-vit-b-16"),
                "distill": ("eg3d-ffhq512", "sd21-base"), "synth": ("sd15", "controlnet-sd15-canny"),
                "invert": ("eg3d-ffhq512",), "eval": ("eg3d-ffhq512", "clip-vit-b-32")}
