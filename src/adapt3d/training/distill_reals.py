"""The real images of DreamPortrait's GAN regulariser (``adapt3d distill --gan-real``).

DreamPortrait adds a GAN loss to score distillation against *mode collapse* (its abstract: SDS on a distribution
"only pursues semantic alignment"). Which images the discriminator calls real decides where that loss pulls:

- ``source``: samples of the source generator. D learns "styled vs source", so its gradient pulls every render
  back toward the source domain, against the text (the previous default).
- ``teacher`` (default): the teacher's own translations of source samples: for a pool of (latent, camera,
  prompt), the source render translated by the teacher with img2img (strength 0.7, guidance 8: DATID-3D's
  pose-aware target generation) with the same view-dependent prompt the SDS uses. The pool is as diverse as the
  source (one latent per image) and lies in the text's domain, so the GAN loss still fights mode collapse while
  pulling toward the prompt, not away from it. D sees, for every fake of prompt k, a real of prompt k.
- ``dataset``: an EG3D dataset of real images (``--dataset``) of the target domain.

The pool is made once per run (``gan_reals.pt`` in the run folder: uint8 images, camera labels, prompt indices,
and the options that made it; a resumed run reuses it, a run with other options refuses it) and shown in
``samples/gan_reals.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from adapt3d.diffusion.sds import view_index, view_prompt
from adapt3d.export.images import make_grid, save_image, to_uint8
from adapt3d.training.loop import derive_seed
from adapt3d.utils.io import atomic_path

__all__ = ["GAN_REAL_KINDS", "TeacherReals", "resolved_gan_real", "build_teacher_reals", "load_or_build_reals",
           "GAN_REALS_FILE"]

GAN_REAL_KINDS = ("auto", "teacher", "source", "dataset")
GAN_REALS_FILE = "gan_reals.pt"


def resolved_gan_real(gan_real: str, dataset) -> str:
    """--gan-real auto -> dataset when --dataset is given, else teacher."""
    if gan_real == "auto":
        return "dataset" if dataset is not None else "teacher"
    return gan_real


@dataclass
class TeacherReals:
    """The pool: ``images`` (N, 3, R, R) uint8, ``cameras`` (N, 25), ``prompts`` (N,) prompt indices."""

    images: torch.Tensor
    cameras: torch.Tensor
    prompts: torch.Tensor
    made_with: dict

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, prompt_ids: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """For each prompt index (B,), a random pool entry of that prompt: images (B, 3, R, R) in [-1, 1] and
        cameras (B, 25)."""
        idx = []
        for k in prompt_ids.tolist():
            pool = torch.nonzero(self.prompts == k).flatten()
            pick = int(torch.randint(len(pool), (1,), generator=gen))
            idx.append(int(pool[pick]))
        ids = torch.tensor(idx)
        return self.images[ids].float() / 127.5 - 1, self.cameras[ids]


@torch.no_grad()
def build_teacher_reals(source, sds, prompts: list[str], num_images: int, *, strength: float, guidance_scale: float,
                        num_inference_steps: int, pose_sampler, trunc: float, seed: int, view_prompts: bool,
                        view_front_deg: float, view_back_deg: float, c_cond, device, batch_size: int = 4,
                        progress: bool = False) -> TeacherReals:
    """Render ``num_images`` source samples (prompt i mod P, latent and camera from ``seed``) and translate each
    with the teacher's img2img. ``c_cond(n)`` gives the mapping's conditioning cameras."""
    from tqdm.auto import tqdm

    from adapt3d.diffusion.img2img import Img2ImgTranslator

    translator = Img2ImgTranslator.from_components(sds.unet, sds.vae, sds.text_encoder, sds.tokenizer,
                                                   sds.scheduler, "pndm", source=sds.source)
    r = source.rendering
    images, cameras, prompt_ids = [], [], []
    for start in tqdm(range(0, num_images, batch_size), desc="GAN reals", disable=not progress):
        n = min(batch_size, num_images - start)
        gen = torch.Generator().manual_seed(derive_seed(seed, "gan_reals", start))
        z = torch.randn((n, source.z_dim), generator=gen).to(device)
        poses = pose_sampler.sample(n, gen)
        c = poses.labels(r.avg_camera_radius, r.avg_camera_pivot, source.config.camera_fov_deg).to(device)
        ks = [(start + i) % len(prompts) for i in range(n)]
        texts = [prompts[k] for k in ks]
        if view_prompts:
            views = view_index(poses.yaw, view_front_deg, view_back_deg).tolist()
            texts = [view_prompt(t, v) for t, v in zip(texts, views)]
        ws = source.mapping(z, c_cond(n), truncation_psi=trunc)
        render = source.synthesis(ws, c, noise_mode="const", sampling="deterministic").image  # (n, 3, R, R)
        out = translator(render, texts, strength=strength, guidance_scale=guidance_scale,
                         num_inference_steps=num_inference_steps,
                         seeds=[derive_seed(seed, "gan_reals_noise", start + i) % (2 ** 31) for i in range(n)],
                         output_size=source.img_resolution).images  # (n, 3, R, R) in [0, 1]
        images.append(torch.from_numpy(to_uint8(out * 2 - 1)).permute(0, 3, 1, 2))
        cameras.append(c.cpu())
        prompt_ids += ks
    made_with = {"num_images": num_images, "strength": strength, "guidance_scale": guidance_scale,
                 "num_inference_steps": num_inference_steps, "trunc": trunc, "seed": seed, "prompts": list(prompts),
                 "view_prompts": view_prompts, "teacher": sds.source}
    return TeacherReals(torch.cat(images), torch.cat(cameras).float(), torch.tensor(prompt_ids), made_with)


def load_or_build_reals(folder: Path, made_with: dict, build, samples_dir: Path | None = None) -> TeacherReals:
    """Reuse ``folder/gan_reals.pt`` when it was made with ``made_with``; otherwise ``build()`` and save it."""
    from adapt3d.utils.torch_load import load_weights_only

    path = Path(folder) / GAN_REALS_FILE
    if path.is_file():
        d = load_weights_only(path, "--gan-real pool")
        if d.get("made_with") == made_with:
            return TeacherReals(d["images"], d["cameras"], d["prompts"], d["made_with"])
    reals = build()
    reals.made_with = dict(made_with)  # what the caller compares next time
    with atomic_path(path) as tmp:
        torch.save({"images": reals.images, "cameras": reals.cameras, "prompts": reals.prompts,
                    "made_with": reals.made_with}, tmp)
    if samples_dir is not None:
        shown = F.interpolate(reals.images[:32].float(), size=min(128, reals.images.shape[-1]), mode="area")
        save_image(Path(samples_dir) / "gan_reals.png", make_grid(shown.round().clamp(0, 255).to(torch.uint8)
                                                                 .permute(0, 2, 3, 1).numpy(), nrow=8))
    return reals
