"""``adapt3d distill``: turn a tri-plane generator into a text-conditioned one by score distillation over a
distribution (DreamPortrait); then ``adapt3d generate`` makes a portrait for a prompt in one forward pass.

    from adapt3d.pipelines.distill import DistillConfig, run
    result = run(DistillConfig(prompts="prompts.txt", generator="ffhq", out=Path("runs/dp")))
    run(DistillConfig(prompts="a zombie;an elf", preset="tiny", out=Path("runs/demo-dp")))   # offline demo

Run folder::

    <out>/options.json, log.txt, stats.jsonl     options; status lines; one JSON record per tick (losses, SDS
                                                 gradient norm, t range, gates, diversity on the fixed set,
                                                 view-suffix shares, direction/source_distance)
    <out>/gan_reals.pt, samples/gan_reals.png    --gan-real teacher: the discriminator's real images (made once)
    <out>/samples/source.png                     the source generator on the sample seeds (3 yaws per row)
    <out>/samples/promptKK-<step>.png            prompt KK over training (rows = sample seeds, columns = yaws)
    <out>/snapshots/snapshot-<step>/             checkpoint (base + conditioning.safetensors + D) + training_state.pt
    <out>/final/                                 the text-conditioned checkpoint (``generate --checkpoint``)
    <out>/eval/metrics.json, report.html         per prompt: CLIP score, diversity (vs source), view consistency
    <out>/eval/promptKK/                         grid.png, orbit.mp4 (eval seeds), seedNNNN.ply

Everything a user can get wrong is checked before the first step; rerunning the same command resumes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from adapt3d.clip.model import DEFAULT_CLIP_MODEL
from adapt3d.diffusion.loading import DEFAULT_DIFFUSION
from adapt3d.models.loading import check_generator_source, load_generator
from adapt3d.models.text_conditioned import TextConditionedGenerator, TextConditioningConfig
from adapt3d.training.distill import DistillResult, DistillTrainer
from adapt3d.training.distill_config import (DistillConfig, distill_identity, resolved_gan_options,
                                             validate_distill_config)
from adapt3d.training.run_folder import RunFolder
from adapt3d.utils.io import atomic_write_json, check_output_folder, to_jsonable
from adapt3d.utils.parsing import parse_seeds, resolve_device

__all__ = ["DistillConfig", "DistillResult", "run", "resolve_models", "evaluate_prompts"]


def resolve_models(cfg: DistillConfig) -> tuple[str, str | None]:
    """(diffusion name, CLIP name or None) after the tiny-demo defaults."""
    tiny = cfg.preset == "tiny"
    diffusion = cfg.diffusion or ("tiny" if tiny else DEFAULT_DIFFUSION)
    clip = cfg.clip_model or ("tiny" if tiny else DEFAULT_CLIP_MODEL)
    return diffusion, None if clip == "none" else clip


def _slug(i: int) -> str:
    return f"prompt{i:02d}"


def evaluate_prompts(model: TextConditionedGenerator, texts: torch.Tensor, prompts: list[str], folder: Path,
                     seeds: list[int], scorer=None, video: str = "orbit", video_frames: int = 48,
                     mesh: str = "ply", mesh_resolution: int = 128, notes: list[str] | None = None) -> dict:
    """Per-prompt outputs (grid, orbit video, mesh) and metrics (CLIP score, diversity, view consistency) into
    ``folder``: metrics.json + report.html. Returns the metrics dict."""
    from adapt3d.export.images import make_grid, save_image, to_uint8
    from adapt3d.metrics.diversity import mean_pairwise_distance
    from adapt3d.metrics.report import ReportFigure, ReportTable, write_report_html
    from adapt3d.pipelines.generate import generate_samples, write_outputs
    from adapt3d.models.latents import default_cameras
    from adapt3d.training.distill_eval import image_features, prompt_metrics, render_fixed

    notes = notes if notes is not None else []
    model.eval()
    src_images = render_fixed(model, None, seeds, 0.7)
    src_div = mean_pairwise_distance(image_features(src_images, scorer)) if len(seeds) > 1 else None
    save_image(folder / "source.png", make_grid(to_uint8(src_images)))
    metrics = {"source": {"diversity": src_div}, "prompts": [], "seeds": seeds, "truncation_psi": 0.7,
               "clip_model": getattr(scorer, "source", None), "notes": notes}
    rows, figures = [], [ReportFigure("source generator", image="source.png", caption="unconditional path")]
    front = torch.full((len(seeds),), math.pi / 2)
    for k, prompt in enumerate(prompts):
        sub = folder / _slug(k)
        text = texts[k:k + 1]
        m, _ = prompt_metrics(model, text, prompt, seeds, 0.7, scorer, source_diversity=src_div)
        samples = generate_samples(model, text, seeds, default_cameras(model, front, front), trunc=0.7)
        m["files"] = write_outputs(model, samples, seeds, sub, video=video, video_frames=video_frames, mesh=mesh,
                                   mesh_resolution=mesh_resolution, mesh_level=None, notes=notes,
                                   mesh_seeds=seeds[:1])
        m["forward_s_per_sample"] = samples.seconds / len(seeds)
        metrics["prompts"].append(m)
        clip = m.get("clip_score", {}).get("mean") if m.get("clip_score") else None
        rows.append([prompt, clip, m["diversity"], m.get("diversity_ratio_to_source"),
                     m["view_consistency"]["final"]["mean_abs"], m["view_consistency"]["final"]["psnr"]])
        figures.append(ReportFigure(prompt, image=f"{_slug(k)}/grid.png", caption=f"seeds {seeds}"))
    atomic_write_json(folder / "metrics.json", metrics)
    write_report_html(folder / "report.html", title="adapt3d distill: per-prompt evaluation", notes=notes,
                      tables=[ReportTable("Per prompt", ["prompt", "CLIP score", "diversity", "diversity / source",
                                                         "reprojection |err|", "reprojection PSNR"], rows,
                                          caption=f"source diversity {src_div}; frontal renders, psi 0.7")],
                      figures=[("Samples", figures)])
    return metrics


def run(cfg: DistillConfig, callbacks: Sequence[Callable[[DistillTrainer], None]] = ()) -> DistillResult:
    """Distil as configured (see the module docstring). Raises ValueError naming the flag on bad input."""
    from adapt3d.diffusion.sds import ScoreDistillation
    t0 = time.time()
    prompts = validate_distill_config(cfg)
    check_generator_source(cfg.preset, cfg.generator, flag="--generator")
    device = resolve_device(cfg.device)
    out = check_output_folder(Path(cfg.out))
    run_folder = RunFolder(out, echo=cfg.progress)
    identity = distill_identity(cfg, prompts)
    resume_from = run_folder.resume_point(cfg.resume, identity)
    diffusion, clip_name = resolve_models(cfg)
    if cfg.diversity_features == "clip" and clip_name is None:
        raise ValueError("--diversity-features clip needs a CLIP model; pass --clip-model or --diversity-features "
                         "pixels")
    gan = resolved_gan_options(cfg)
    dataset = None
    if gan["gan_real"] == "dataset":
        from adapt3d.data.eg3d_dataset import EG3DDataset
        dataset = EG3DDataset(cfg.dataset)

    loaded = load_generator(preset=cfg.preset, checkpoint=cfg.generator, load_discriminator=cfg.lambda_gan > 0)
    G = loaded.generator
    notes = list(loaded.notes)
    if dataset is not None:
        from adapt3d.data.eg3d_dataset import EG3DDataset
        from adapt3d.pipelines.finetune import check_dataset_for_generator
        if dataset.image_resolution != G.img_resolution:
            dataset = EG3DDataset(cfg.dataset, resolution=G.img_resolution)
            notes.append(f"dataset images resized to {G.img_resolution} px on load")
        notes += check_dataset_for_generator(dataset, G)
    sds = ScoreDistillation.from_pretrained(diffusion, device=device)
    cond_cfg = TextConditioningConfig.for_generator(
        G, sds.text_dim, num_groups=min(cfg.num_groups, G.num_ws), adapter_hidden=cfg.adapter_hidden,
        attn_dim=cfg.attn_dim, attn_heads=cfg.attn_heads, attn_resolution=cfg.attn_resolution)
    if cfg.train_base:
        from adapt3d.training.freeze import freeze_prefixes
        try:
            freeze_prefixes(G, cfg.train_base)
        except ValueError as e:
            raise ValueError(str(e).replace("--freeze", "--train-base")) from None
    source = None
    if cfg.train_base:  # keep an untouched copy of the source for the GAN's real samples
        import copy
        source = copy.deepcopy(G)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = TextConditionedGenerator(G, cond_cfg)
    D = None
    if cfg.lambda_gan > 0:
        from adapt3d.pipelines.finetune import default_discriminator
        D = loaded.discriminator if loaded.discriminator is not None else default_discriminator(G, seed=cfg.seed)
        notes.append("discriminator from the source checkpoint" if loaded.discriminator is not None
                     else "discriminator initialised at random (the source has no D)")
        group = D.b4.mbstd.group_size if D.b4.mbstd is not None else None
        if group is not None and cfg.batch % min(group, cfg.batch):
            raise ValueError(f"--batch: the discriminator's minibatch-std groups of {group} need a batch divisible "
                             f"by {min(group, cfg.batch)}, got {cfg.batch}")
    teacher_reals = None
    if gan["gan_real"] == "teacher":
        from adapt3d.training.distill import make_training_pose_sampler
        from adapt3d.training.distill_reals import build_teacher_reals, load_or_build_reals
        pool_source = (source if source is not None else G).to(device).eval()
        sampler = make_training_pose_sampler(cfg.pose_sampler, cfg.yaw_spread, cfg.pitch_spread, cfg)
        r = G.rendering

        def c_cond(n):
            from adapt3d.cameras import frontal_label
            return frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg,
                                 batch_size=n).to(device)

        made_with = {"num_images": gan["gan_real_images"], "strength": cfg.gan_real_strength,
                     "guidance_scale": cfg.gan_real_guidance, "num_inference_steps": gan["gan_real_steps"],
                     "trunc": cfg.trunc, "seed": cfg.seed, "prompts": list(prompts), "view_prompts": cfg.view_prompts,
                     "teacher": sds.source, "generator": loaded.source,
                     "cameras": {k: getattr(cfg, k) for k in ("pose_sampler", "view_shares", "side_max_deg",
                                                              "view_front_deg", "view_back_deg", "yaw_spread",
                                                              "pitch_spread")}}
        made_with = to_jsonable(made_with)  # plain values, compared with what gan_reals.pt holds
        teacher_reals = load_or_build_reals(out, made_with, lambda: build_teacher_reals(
            pool_source, sds, prompts, gan["gan_real_images"], strength=cfg.gan_real_strength,
            guidance_scale=cfg.gan_real_guidance, num_inference_steps=gan["gan_real_steps"], pose_sampler=sampler,
            trunc=cfg.trunc, seed=cfg.seed, view_prompts=cfg.view_prompts, view_front_deg=cfg.view_front_deg,
            view_back_deg=cfg.view_back_deg, c_cond=c_cond, device=device, progress=cfg.progress),
            samples_dir=run_folder.samples)
        pool_source.train(pool_source is G)  # the base trains in train mode (see DistillTrainer)
        notes.append(f"GAN reals: {len(teacher_reals)} teacher img2img translations of source samples "
                     f"({run_folder.out / 'gan_reals.pt'})")
    scorer = None
    if clip_name is not None:
        from adapt3d.clip import CLIPScorer
        scorer = CLIPScorer.from_pretrained(clip_name, device=device)
    if resume_from is not None and resume_from.parent == run_folder.snapshots_dir:
        run_folder.truncate_stats(int(resume_from.name.split("-", 1)[1]))
    options = {"identity": identity,
               "options": to_jsonable(vars(cfg)),
               "gan": {**gan, "why": {"teacher": "D's reals are the teacher's translations of source samples: "
                                                 "diversity kept, pulled toward the text",
                                      "source": "D's reals are source samples: D learns styled vs source and "
                                                "pulls renders back to the source",
                                      "dataset": "D's reals are --dataset images", "none": "--lambda-gan 0"}
                       [gan["gan_real"]]},
               "resolved": {"diffusion": diffusion, "clip_model": clip_name, "device": str(device),
                            "generator": loaded.source, "prompts": prompts, "conditioning": cond_cfg.to_dict(),
                            "conditioning_parameters": sum(p.numel() for p in model.conditioning_parameters()),
                            "resume_from": str(resume_from) if resume_from else None},
               "notes": notes}
    run_folder.write_options(options)
    run_folder.log(f"adapt3d distill: {len(prompts)} prompt(s), teacher {diffusion}, device {device}, "
                   + (f"resuming from {resume_from}" if resume_from else "starting from the source generator"))
    trainer = DistillTrainer(cfg, model, sds, prompts, D=D, source=source, dataset=dataset, scorer=scorer,
                             device=device, run_folder=run_folder, resume_from=resume_from, teacher_reals=teacher_reals,
                             text_encoder_info={"diffusion": diffusion, "text_dim": sds.text_dim},
                             callbacks=callbacks, notes=notes)
    result = trainer.run_training()
    trainer.model.requires_grad_(False)
    if cfg.evaluate:
        seeds = parse_seeds(cfg.eval_seeds, "--eval-seeds")
        evaluate_prompts(trainer.model, trainer.texts, prompts, out / "eval", seeds, scorer, video=cfg.video,
                         video_frames=cfg.video_frames, mesh=cfg.mesh, mesh_resolution=cfg.mesh_resolution,
                         notes=result.notes)
        run_folder.log(f"evaluation written to {out / 'eval'}")
    result.seconds = time.time() - t0
    return result
