"""``adapt3d adapt --method itportrait`` (also ``adapt3d itportrait``): ITportrait end to end in one run folder.

    OUT/reference/       the reference inverted with adapt3d invert: input.png, reconstruction.png, latent.pt, ...
                         (skipped with --latent, --paired-latent; with --paired-photo the *paired photo* is
                         inverted here: APT's pairing, see prepare_reference)
    OUT/train/           run folder (options.json, log.txt, stats.jsonl with the branch taken, samples/,
                         snapshots/ holding both trained generators, final/ = the output generator)
    OUT/render/          grid, per-seed images, orbit video, meshes of the adapted generator;
    OUT/render/reference/  the reference latent through the adapted generator: reference.png, its three views,
                         comparison.png (input | source reconstruction | adapted)
    OUT/compare.png      source vs adapted at the same seeds and cameras
    OUT/eval/            metrics.json + report.html
    OUT/itportrait.json  summary

Stages and the schedule are described in :mod:`adapt3d.training.itportrait`. Python API::

    from adapt3d.pipelines.itportrait import ITportraitConfig, run
    run(ITportraitConfig(preset="tiny", style_image="any.png", prompt="a zombie", out="runs/demo-itp"))
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from adapt3d.pipelines.clip_adaptation import output_stages, preflight, train_stage, write_summary
from adapt3d.pipelines.stages import AdaptResult
from adapt3d.training.itp_config import ITportraitConfig, validate_itportrait
from adapt3d.training.nada_config import resolved

__all__ = ["ITportraitConfig", "run", "prepare_reference"]


def _invert_config(cfg: ITportraitConfig, image: Path | None = None):
    from adapt3d.pipelines.invert import InvertConfig

    tiny = cfg.preset == "tiny"
    small = dict(search_yaw_steps=3, search_pitch_steps=1, search_keep=1, search_steps=3, w_avg_samples=100) \
        if tiny else {}
    return InvertConfig(image=Path(image or cfg.style_image), out=Path(cfg.out) / "reference", preset=cfg.preset,
                        generator=cfg.generator, camera=cfg.style_camera, num_steps=resolved(cfg, "invert_steps"),
                        loss=cfg.invert_loss, clip_model="none", optimize_noise=False, video="none", mesh="none",
                        seed=cfg.seed, device=cfg.device, progress=cfg.progress, align=cfg.align, **small)


def prepare_reference(cfg: ITportraitConfig, G, device: torch.device, notes: list[str]):
    """(Reference for training, the LatentCode, the pairing used): the reference's latent (the pivot stage 1 maps
    to the artistic image), its camera and its target image.

    APT (ITportrait's stage 1) pairs the artistic reference with a photo-realistic portrait to get its pose: a photo
    generator reconstructs a painting poorly, and so the camera found with that reconstruction, while a photo of
    the same pose inverts in-domain. With --paired-photo that photo is inverted (adapt3d invert, resumable) and its camera
    and latent are used for the artistic image; --paired-latent gives them directly. Without a pair, the artistic
    image itself is inverted (--latent: read instead). The target image is --style-image cropped and resized (or
    aligned with --align; or the latent's reconstruction)."""
    from adapt3d.inversion.images import load_target_image, prepare_target
    from adapt3d.inversion.latent_file import check_architecture, load_latent
    from adapt3d.pipelines import invert
    from adapt3d.training.itportrait import Reference

    if cfg.paired_photo is not None or cfg.paired_latent is not None:
        if cfg.paired_latent is not None:
            code = load_latent(cfg.paired_latent, flag="--paired-latent")
            check_architecture(G, code, "--paired-latent")
            pairing = {"kind": "latent", "path": str(code.path)}
        else:
            inv = invert.run(_invert_config(cfg, image=Path(cfg.paired_photo)))
            notes += [f"paired photo: {n}" for n in inv.notes if "random weights" not in n]
            code = load_latent(inv.latent)
            pairing = {"kind": "photo", "path": str(cfg.paired_photo), "psnr": inv.psnr}
        yaw, pitch = math.degrees(code.yaw - math.pi / 2), math.degrees(code.pitch - math.pi / 2)
        pairing.update({"yaw_deg": yaw, "pitch_deg": pitch})
        notes.append(f"APT pairing ({pairing['kind']}): the reference takes the paired portrait's camera (yaw "
                     f"{yaw:+.1f} deg, pitch {pitch:+.1f} deg) and latent")
        target = prepare_target(cfg.style_image, G.img_resolution, align=cfg.align, arg="--style-image").target
        return Reference(ws=code.ws, camera=code.camera, image=target), code, pairing
    if cfg.latent is not None:
        code = load_latent(cfg.latent, flag="--latent")
        check_architecture(G, code, "--latent")
        image_path = Path(cfg.style_image) if cfg.style_image is not None else None
        if image_path is None and code.folder() is not None and code.reconstruction:
            image_path = code.folder() / code.reconstruction
            notes.append(f"no --style-image: stage 1 fits the latent's reconstruction {image_path}")
        if image_path is None or not image_path.is_file():
            raise ValueError(f"--style-image: needed with --latent {cfg.latent} (its folder has no reconstruction)")
        pairing = {"kind": "none", "latent": str(code.path)}
    else:
        inv = invert.run(_invert_config(cfg))
        notes += [f"reference: {n}" for n in inv.notes if "random weights" not in n]
        notes.append(f"reference inverted: PSNR {inv.psnr:.1f} dB, camera yaw {inv.yaw_deg:+.1f} deg, pitch "
                     f"{inv.pitch_deg:+.1f} deg ({inv.loss_kind} loss)")
        code = load_latent(inv.latent)
        image_path = inv.out / "input.png"  # exactly what was inverted (aligned with --align, else centre-cropped)
        pairing = {"kind": "none", "note": "no paired portrait: the camera was estimated on the artistic image"}
    target, _, _ = load_target_image(image_path, G.img_resolution, arg="--style-image")
    return Reference(ws=code.ws, camera=code.camera, image=target), code, pairing


def run(cfg: ITportraitConfig) -> AdaptResult:
    """Run (or resume) ITportrait; see the module docstring. Every option is checked before a model loads."""
    from adapt3d.inversion.losses import make_reconstruction_loss
    from adapt3d.inversion.render_latent import RenderLatentConfig, render_latent
    from adapt3d.models.checkpoint import load_checkpoint
    from adapt3d.models.loading import load_generator
    from adapt3d.training.itportrait import ITportraitTrainer

    t0 = time.time()
    validate_itportrait(cfg)
    device = preflight(cfg)
    result = AdaptResult(out=Path(cfg.out))
    source = load_generator(preset=cfg.preset, checkpoint=cfg.generator, progress=cfg.progress).generator
    reference, code, pairing = prepare_reference(cfg, source.to(device).eval(), device, result.notes)
    result.stages["reference"] = {"pairing": pairing, "camera": code.camera.reshape(-1).tolist()}
    choice = make_reconstruction_loss(cfg.invert_loss, resolution=source.img_resolution, device=device)
    result.notes.append(f"stage 1 loss: {choice.loss.describe()}")
    result.notes += [f"stage 1: {n}" for n in choice.notes if not any(m.endswith(n) for m in result.notes)]
    recon = choice.loss

    def make(G, clip_loss, run_folder, resume_from):
        return ITportraitTrainer(cfg, G, clip_loss, reference, recon, device=device, run_folder=run_folder,
                                 resume_from=resume_from)

    extra = {"reference": {"latent": str(code.path) if code.path else None, "camera": code.camera.reshape(-1).tolist(),
                           "stage1_loss": choice.loss.describe(), "pairing": pairing}}
    result.final = train_stage(cfg, device, make, result, extra_options=extra)
    output_stages(cfg, result.final, device, result)
    adapted = load_checkpoint(result.final, load_discriminator=False).generator.to(device)
    rl = render_latent(adapted, code, Path(cfg.out) / "render" / "reference",
                       RenderLatentConfig(name="reference"), flag="--latent")
    result.files["reference"] = rl.files
    result.files["final"] = str(result.final)
    result.notes.append(f"adapted generator {result.final}; reference through it "
                        f"{Path(cfg.out) / 'render' / 'reference'}; source vs adapted {result.files['compare']}")
    write_summary(cfg, result, "itportrait", t0)
    return result
