"""``ITportraitConfig``: the options of ITportrait (image + text adaptation of a 3D portrait generator).

Defaults are ITportrait's released code (dengxw66/ITportrait ``ZSSGAN/train.py``, see
shared/docs/upstream-datid3d-itportrait-nada.md §3) except where noted: the reference latent and camera come from our
own inversion (the released code ships them pre-computed), the frozen generator is rendered at the same views as
the trainable one (ITportrait: at the frontal view; ``--frozen-view frontal`` restores that), 4 views per latent
instead of 2, and the two branches of the threshold use different weights (text 1 / image 0 and text 0 / image 1,
the values commented out in the released code, where both branches use 0.5 / 0.5 so the threshold changes nothing;
``--text-branch-weights 0.5 0.5 --image-branch-weights 0.5 0.5`` reproduces the release).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapt3d.training.nada_config import ClipAdaptConfig, _check, resolved, validate_common

__all__ = ["ITportraitConfig", "validate_itportrait"]


@dataclass
class ITportraitConfig(ClipAdaptConfig):
    """ITportrait: adapt a 3D portrait generator to a reference image and a text. Stage 1 (APT) fits the reference
    at its camera through style-mixed latents; stage 2 (ITE) follows a per-step mix of the image and the text CLIP
    directions from several views. Give --preset or --generator, --style-image (or --latent) and --prompt."""

    DEFAULT_STEPS = 401  # ITportrait's README: --iter 401 (class attribute, not an option)

    out: Path = Path("runs/itportrait")
    """Run folder: reference/ (inverted latent + camera), train/, render/, eval/, compare.png, itportrait.json."""
    style_image: Path | None = None
    """Reference portrait (PNG, JPEG, ...): centre-cropped and resized to the generator's resolution, then inverted
    to a latent and a camera."""
    latent: Path | None = None
    """A latent.pt (or its folder) from `adapt3d invert` for the reference: skips the inversion (its camera and
    reconstruction are used; give --style-image too to fit the original picture instead of the reconstruction)."""
    align: bool = False
    """Find the face in --style-image and crop it like EG3D's FFHQ images before inverting (as adapt3d invert
    --align). Off by default: references are often paintings or cartoons, which the photo face detector misses,
    and ITportrait expects an already aligned portrait."""
    style_camera: Path | None = None
    """Camera file of the reference (.json / .npy EG3D label); default: estimated during the inversion."""
    paired_photo: Path | None = None
    """APT pairing: a photo-realistic portrait paired with --style-image (same person, pose and framing, e.g. the
    photo a painting was made from). It is inverted instead of the artistic image: its camera becomes the
    reference's camera and its latent the pivot that stage 1 maps to the artistic image (ITportrait's paired
    photo-realistic portrait; an artistic image inverted into a photo generator gives a poorer pose)."""
    paired_latent: Path | None = None
    """APT pairing: a latent.pt (or its folder) from `adapt3d invert` of the paired photo: its latent and camera are
    used as with --paired-photo, without inverting."""
    invert_steps: int | None = None
    """Inversion steps (W+, camera refined; DATID-3D: 300; tiny: 10)."""
    invert_loss: str = "auto"
    """Reconstruction loss of the inversion and of stage 1: auto (LPIPS when its weights are present, else MSE),
    lpips, mse, lpips+mse."""
    schedule: Literal["fusion", "image", "text"] = "fusion"
    """fusion: alternate stage 1 (even steps) and stage 2 (odd steps), output the stage-2 model; image: stage 1 only
    (image-guided transfer); text: stage 2 with the text direction only."""
    apt_lr: float = 0.002
    """Stage-1 Adam learning rate, betas (0, 0.99) (ITportrait: 2e-3)."""
    apt_batch: int | None = None
    """Style-mixed latents per stage-1 step (ITportrait: 2; tiny: 1)."""
    apt_mix_from: int | None = None
    """Stage 1: w rows from this index on come from random latents, the rest from the reference (ITportrait: 7 of
    14); default num_ws // 2."""
    ite_mix: float = 0.8
    """Stage 2: rows from --ite-mix-from on are (1 - a) * w_ref + a * w_random with a = this (ITportrait: 0.8)."""
    ite_mix_from: int = 1
    """Stage 2: first mixed w row (ITportrait: 1)."""
    direction_threshold: float = 0.65
    """Threshold on the mean |E_I(image model) - E_I(frozen)|: below it (the image model has not moved far) the text
    branch is used (ITportrait: 0.65)."""
    text_probability: float = 0.35
    """Probability of taking the text branch anyway at a step (ITportrait: randint(1, 100) < 35)."""
    text_branch_weights: tuple[float, float] = (1.0, 0.0)
    """(text, image) weights of the target direction in the text branch (released code: 0.5 0.5)."""
    image_branch_weights: tuple[float, float] = (0.0, 1.0)
    """(text, image) weights of the target direction in the image branch (released code: 0.5 0.5)."""
    frozen_view: Literal["same", "frontal"] = "same"
    """Camera of the frozen generator's renders in stage 2: the trainable one's views, or frontal (ITportrait)."""


def validate_itportrait(cfg: ITportraitConfig) -> None:
    """Checks that need no model; ValueError naming the flag."""
    validate_common(cfg)
    if cfg.style_image is None and cfg.latent is None:
        raise ValueError("--style-image: give the reference portrait (or --latent, a latent.pt from adapt3d invert)")
    for name in ("style_image", "style_camera"):
        v = getattr(cfg, name)
        _check(v is None or Path(v).expanduser().is_file(), name.replace("_", "-"), None if v is None else str(v),
               "an existing file")
    _check(cfg.latent is None or Path(cfg.latent).expanduser().exists(), "latent", cfg.latent,
           "an existing latent.pt or its folder")
    _check(cfg.paired_photo is None or Path(cfg.paired_photo).expanduser().is_file(), "paired-photo",
           None if cfg.paired_photo is None else str(cfg.paired_photo), "an existing image file")
    _check(cfg.paired_latent is None or Path(cfg.paired_latent).expanduser().exists(), "paired-latent",
           cfg.paired_latent, "an existing latent.pt or its folder")
    given = [f for f in ("latent", "paired_photo", "paired_latent") if getattr(cfg, f) is not None]
    _check(len(given) <= 1, given[-1].replace("_", "-") if given else "latent", [str(getattr(cfg, f)) for f in given],
           "at most one of --latent, --paired-photo, --paired-latent (each gives the reference's latent and camera)")
    _check(cfg.style_camera is None or not given or given == ["paired_photo"], "style-camera", cfg.style_camera,
           "not together with --latent or --paired-latent (they carry their camera)")
    _check(not (cfg.paired_photo or cfg.paired_latent) or cfg.style_image is not None, "style-image", None,
           "the artistic reference itself, needed with --paired-photo / --paired-latent")
    _check(resolved(cfg, "invert_steps") >= 1, "invert-steps", cfg.invert_steps, "an integer >= 1")
    _check(cfg.invert_loss in ("auto", "lpips", "mse", "lpips+mse"), "invert-loss", cfg.invert_loss,
           "auto, lpips, mse or lpips+mse")
    _check(cfg.schedule in ("fusion", "image", "text"), "schedule", cfg.schedule, "fusion, image or text")
    _check(cfg.apt_lr > 0, "apt-lr", cfg.apt_lr, "a learning rate > 0")
    _check(resolved(cfg, "apt_batch") >= 1, "apt-batch", cfg.apt_batch, "an integer >= 1")
    _check(cfg.apt_mix_from is None or cfg.apt_mix_from >= 0, "apt-mix-from", cfg.apt_mix_from, "None or >= 0")
    _check(0 <= cfg.ite_mix <= 1, "ite-mix", cfg.ite_mix, "a fraction in [0, 1]")
    _check(cfg.ite_mix_from >= 0, "ite-mix-from", cfg.ite_mix_from, "an index >= 0")
    _check(cfg.direction_threshold >= 0, "direction-threshold", cfg.direction_threshold, "a CLIP distance >= 0")
    _check(0 <= cfg.text_probability <= 1, "text-probability", cfg.text_probability, "a probability in [0, 1]")
    for name in ("text_branch_weights", "image_branch_weights"):
        w = getattr(cfg, name)
        _check(len(w) == 2 and all(x >= 0 for x in w) and sum(w) > 0, name.replace("_", "-"), w,
               "(text, image) weights >= 0, not both 0")
    _check(cfg.frozen_view in ("same", "frontal"), "frozen-view", cfg.frozen_view, "same or frontal")
