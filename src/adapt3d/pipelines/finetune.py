"""``adapt3d finetune``: adversarial fine-tuning of a tri-plane generator on a pose-labelled dataset (DATID-3D).

Python API mirroring the command::

    from adapt3d.pipelines.finetune import FinetuneConfig, run
    result = run(FinetuneConfig(dataset="runs/pixar/dataset", generator="ffhq", kimg=200, out="runs/pixar/train"))
    result.final          # checkpoint folder of the EMA generator + D, loadable with --generator / --checkpoint

Everything a user can get wrong (options, generator source, dataset format, labels, resolution, run folder) is
checked before any training step. Multi-process: ``torchrun --nproc_per_node N -m adapt3d finetune ...``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from adapt3d.cameras import intrinsics_to_fov
from adapt3d.data.eg3d_dataset import DatasetError, EG3DDataset, check_camera_labels
from adapt3d.models.discriminator import DualDiscriminator, DualDiscriminatorConfig, build_discriminator
from adapt3d.models.loading import check_generator_source, load_generator
from adapt3d.models.triplane import TriPlaneGenerator
from adapt3d.training.config import FinetuneConfig, options_for_identity, validate_finetune_config
from adapt3d.training.distributed import barrier, init_distributed, world_info
from adapt3d.training.loop import FinetuneResult, Trainer, TrainingDiverged
from adapt3d.training.run_folder import RunFolder
from adapt3d.training.schedules import resolve_rendering_schedule, uses_official_weights
from adapt3d.utils.io import check_output_folder, to_jsonable
from adapt3d.utils.parsing import resolve_device

__all__ = ["FinetuneConfig", "FinetuneResult", "TrainingDiverged", "run", "default_discriminator",
           "check_dataset_for_generator", "prepare_dataset"]


def default_discriminator(G: TriPlaneGenerator, seed: int = 0) -> DualDiscriminator:
    """A fresh EG3D dual discriminator sized for ``G`` (same channel budget, camera-conditioned, mbstd 4)."""
    cfg = DualDiscriminatorConfig(c_dim=25, img_resolution=G.img_resolution, img_channels=3,
                                  channel_base=G.config.channel_base, channel_max=G.config.channel_max,
                                  epilogue_kwargs={"mbstd_group_size": 4})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_discriminator(cfg)


def check_dataset_for_generator(dataset: EG3DDataset, G: TriPlaneGenerator) -> list[str]:
    """Raise DatasetError when the labels are not EG3D cameras at the generator's distance; returns notes."""
    labels = dataset.labels
    problems = check_camera_labels(labels)
    if problems:
        raise DatasetError(f"--dataset: the labels of {dataset.path} are not EG3D camera labels (4x4 cam2world + "
                           "normalised intrinsics): " + "; ".join(problems[:3]))
    r = G.rendering
    centres = labels[:, :16].reshape(-1, 4, 4)[:, :3, 3]
    radius = float((centres - torch.tensor(r.avg_camera_pivot)).norm(dim=-1).mean())
    if abs(radius / r.avg_camera_radius - 1) > 0.25:
        raise DatasetError(f"--dataset: cameras are on average {radius:.3f} from the pivot {r.avg_camera_pivot}, but "
                           f"the generator's cameras are at radius {r.avg_camera_radius}; the labels were made for "
                           "another generator (e.g. ShapeNet vs FFHQ) or use other units")
    notes = []
    fov = float(intrinsics_to_fov(labels[:, 16:25].reshape(-1, 3, 3)).mean())
    if abs(fov / G.config.camera_fov_deg - 1) > 0.1:
        notes.append(f"dataset cameras have a field of view of about {fov:.2f} deg, the generator's is "
                     f"{G.config.camera_fov_deg} deg")
    return notes


def prepare_dataset(cfg: FinetuneConfig, G: TriPlaneGenerator) -> tuple[EG3DDataset, list[str]]:
    """Open the dataset at the generator's resolution (resizing only with --resize) and check its labels."""
    ds = EG3DDataset(cfg.dataset, xflip=cfg.xflip)
    notes = []
    if ds.native_resolution != G.img_resolution:
        if not cfg.resize:
            raise DatasetError(f"--dataset: images are {ds.native_resolution}x{ds.native_resolution} but the "
                               f"generator makes {G.img_resolution}x{G.img_resolution}; pass --resize to resize "
                               "them on load, or export the dataset at the generator's resolution")
        ds = EG3DDataset(cfg.dataset, resolution=G.img_resolution, xflip=cfg.xflip)
        notes.append(f"dataset images resized from {ds.native_resolution} to {G.img_resolution} on load")
    notes += check_dataset_for_generator(ds, G)
    return ds, notes


def _components(cfg: FinetuneConfig, info, batch_gpu: int):
    """Load G (rank 0 first: a named checkpoint is downloaded once), D and the checked dataset."""
    if not info.is_main:
        barrier()
    loaded = load_generator(preset=cfg.preset, checkpoint=cfg.generator, load_discriminator=True,
                            progress=cfg.progress and info.is_main)
    if info.is_main:
        barrier()
    G = loaded.generator
    dataset, notes = prepare_dataset(cfg, G)
    notes = list(loaded.notes) + notes
    if loaded.discriminator is not None and not cfg.fresh_discriminator:
        D = loaded.discriminator
        notes.append("discriminator initialised from the checkpoint's D")
    else:
        D = default_discriminator(G, seed=cfg.seed)
        notes.append("discriminator initialised at random (the source has no D)" if loaded.discriminator is None
                     else "discriminator initialised at random (--fresh-discriminator)")
    if D.img_resolution != G.img_resolution:
        raise ValueError(f"--generator: its discriminator is for {D.img_resolution} px images, the generator makes "
                         f"{G.img_resolution} px; use --fresh-discriminator")
    group = D.b4.mbstd.group_size if D.b4.mbstd is not None else None
    if group is not None and batch_gpu % min(group, batch_gpu) != 0:
        raise ValueError(f"--batch-gpu: the discriminator's minibatch-std groups of {group} need a micro-batch "
                         f"divisible by {min(group, batch_gpu)}, got {batch_gpu}")
    return G, D, dataset, loaded.source, notes


def run(cfg: FinetuneConfig, callbacks: Sequence[Callable[[Trainer], None]] = ()) -> FinetuneResult:
    """Fine-tune as configured; see the module docstring. Raises ValueError (naming the flag) on bad input."""
    t0 = time.time()
    info = world_info()
    batch_gpu = validate_finetune_config(cfg, info.world_size)
    check_generator_source(cfg.preset, cfg.generator, flag="--generator")
    device = resolve_device(cfg.device)
    out = check_output_folder(Path(cfg.out))
    EG3DDataset(cfg.dataset)  # format, emptiness, missing files: before loading a (possibly large) generator
    run_folder = RunFolder(out, is_main=info.is_main, echo=cfg.progress)
    identity = options_for_identity(cfg)
    resume_from = run_folder.resume_point(cfg.resume, identity)  # read by every rank before rank 0 writes below
    info, device = init_distributed(device)
    G, D, dataset, source, notes = _components(cfg, info, batch_gpu)
    if resume_from is not None and resume_from.parent == run_folder.snapshots_dir:
        run_folder.truncate_stats(int(resume_from.name.split("-", 1)[1]))
    schedule = resolve_rendering_schedule(
        cfg.neural_rendering_schedule, cfg.neural_rendering_resolution, cfg.neural_rendering_resolution_final,
        cfg.neural_rendering_resolution_fade_kimg, int(G.neural_rendering_resolution),
        official=uses_official_weights(G, from_checkpoint=cfg.generator is not None))
    notes.append(f"neural rendering resolution: {schedule.mode} schedule, " + (
        f"{schedule.initial} px rising to {schedule.final} px over {schedule.fade_kimg:g} kimg (this run: "
        f"{schedule.at(0)}-{schedule.at((max(1, math.ceil(cfg.kimg * 1000 / cfg.batch)) - 1) * cfg.batch)} px)"
        if schedule.final is not None else f"{schedule.initial} px throughout"))
    run_folder.write_options({
        "identity": identity,
        "options": to_jsonable(vars(cfg)),
        "resolved": {"world_size": info.world_size, "batch_gpu": batch_gpu, "device": str(device),
                     "neural_rendering": schedule.to_dict(),
                     "generator": source, "dataset_images": dataset.num_images, "dataset_items": len(dataset),
                     "resume_from": str(resume_from) if resume_from else None},
        "notes": notes})
    run_folder.log(f"adapt3d finetune: {len(dataset)} images, {info.world_size} process(es), device {device}, "
                   + (f"resuming from {resume_from}" if resume_from else "starting from the source generator"))
    for note in notes:
        run_folder.log(f"note: {note}")
    barrier()
    trainer = Trainer(cfg, G, D, dataset, device=device, dist=info, run_folder=run_folder, callbacks=callbacks,
                      resume_from=resume_from, notes=notes)
    if info.is_main and not (run_folder.samples / "reals.png").is_file():
        _save_reals(run_folder, dataset)
    result = trainer.run_training()
    result.seconds = time.time() - t0
    return result


def _save_reals(run_folder: RunFolder, dataset: EG3DDataset, count: int = 16) -> None:
    from adapt3d.export.images import make_grid, save_image
    images = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])  # (n, 3, R, R) uint8
    save_image(run_folder.samples / "reals.png", make_grid(images.permute(0, 2, 3, 1).numpy()))


def finetune_done(fcfg: FinetuneConfig) -> bool:
    """True if ``fcfg.out`` holds a finished run of exactly these options (final/ at the last step)."""
    out = Path(fcfg.out)
    ck, opts = out / "final" / "checkpoint.json", out / "options.json"
    if not (ck.is_file() and opts.is_file()):
        return False
    if json.loads(opts.read_text()).get("identity") != json.loads(json.dumps(options_for_identity(fcfg))):
        return False
    steps = max(1, math.ceil(fcfg.kimg * 1000 / fcfg.batch))
    return json.loads(ck.read_text()).get("metadata", {}).get("step") == steps
