"""The K-fold consistency filter over a 3D-DST run (``adapt3d kcf runs/dst --folds 5 --drop 0.1``).

Python API::

    from adapt3d.pipelines.kcf import KcfConfig, kcf
    result = kcf(KcfConfig(dataset="runs/dst", folds=5, drop=0.1))

Writes ``<dataset>/kcf/``: ``losses.json`` ({image annotation: loss}), ``kept.txt`` / ``removed.txt`` (annotation
paths, one per line), ``kcf.json`` (options, counts, per-fold sizes) and ``fold<k>.json`` (resume: finished folds
are not trained again while the options are unchanged). Each annotation JSON gets a ``kcf`` entry
``{loss, fold, kept}``; no image or annotation is deleted. The method is described in :mod:`adapt3d.dst.kcf`.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import tyro
from torch import nn
from tqdm.auto import tqdm

from adapt3d.dst.dataset import load_annotations
from adapt3d.dst.kcf import PoseTrainConfig, SmallPoseCNN, angle_bins, kfold_split, score_pose_model, select_kept, \
    train_pose_model
from adapt3d.utils.io import atomic_write_json, atomic_write_text, check_output_folder, to_jsonable
from adapt3d.utils.parsing import check_at_least, resolve_device
from adapt3d.utils.torch_load import OldTorchError, load_weights_only


@dataclass
class KcfConfig:
    """K-fold consistency filter: train a pose estimator on K-1 folds, score the held-out fold, mark the images
    whose annotation disagrees most. Nothing is deleted."""

    dataset: tyro.conf.Positional[Path]
    """Output folder of adapt3d synth."""
    folds: int = 5
    """K: number of folds (3D-DST: 5)."""
    drop: float = 0.1
    """Fraction of images to remove (the highest losses), per class unless --no-per-class."""
    threshold: float | None = None
    """Remove images with loss above this instead of a fraction."""
    per_class: bool = True
    """Apply --drop within each class (else over all images)."""
    epochs: int = 30
    """Training epochs per fold."""
    batch_size: int = 32
    lr: float = 1e-3
    """AdamW learning rate (cosine decay)."""
    image_size: int = 64
    """Images are resized to this square size for the pose estimator."""
    num_bins: int = 41
    """Bins per angle (3D-DST: 41)."""
    model: str = "small-cnn"
    """'small-cnn' (from scratch, offline), 'resnet' (a pretrained ResNet from --backbone, as 3D-DST's ResNet-50) or
    'module:function' returning an nn.Module (called with num_outputs=3*bins)."""
    backbone: Path | None = None
    """With --model resnet: a transformers ResNet folder (config.json + weights) or a torchvision-layout ResNet state
    dict (.safetensors/.pt/.pth); see adapt3d.dst.kcf_backbones. 3D-DST uses ResNet-50 at --image-size 256."""
    width: int = 32
    """Channel width of small-cnn (its blocks have width, 2x, 4x, 4x channels)."""
    init_weights: Path | None = None
    """State dict (.safetensors, or .pt/.pth read with weights_only) loaded into the model before each fold."""
    seed: int = 42
    """Seed of the fold split and of training."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class KcfResult:
    out: Path
    losses: dict[str, float] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _load_state(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"--init-weights: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        state = load_weights_only(path, f"--init-weights {path}")
    except OldTorchError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling refusal or corrupt file
        raise ValueError(f"--init-weights: {path} is not a plain state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise ValueError(f"--init-weights: {path} holds a {type(state).__name__}, expected a state dict")
    return state


def model_factory(cfg: KcfConfig) -> Callable[[], nn.Module]:
    """A function building a fresh pose model per fold (validated once here)."""
    n_out = 3 * cfg.num_bins
    if cfg.backbone is not None and cfg.model != "resnet":
        raise ValueError(f"--backbone: only used with --model resnet (got --model {cfg.model})")
    if cfg.model == "small-cnn":
        build = lambda: SmallPoseCNN(cfg.num_bins, width=cfg.width)  # noqa: E731
    elif cfg.model == "resnet":
        import copy

        from adapt3d.dst.kcf_backbones import PretrainedResNetPose, load_resnet_backbone
        if cfg.backbone is None:
            raise ValueError("--model resnet: give --backbone, a transformers ResNet folder or a torchvision-layout "
                             "ResNet state dict (no weights are downloaded)")
        pretrained = load_resnet_backbone(cfg.backbone)
        build = lambda: PretrainedResNetPose(copy.deepcopy(pretrained), n_out)  # noqa: E731
    elif ":" in cfg.model:
        module_name, fn_name = cfg.model.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--model: cannot import {cfg.model!r} ({e})") from e
        build = lambda: fn(num_outputs=n_out)  # noqa: E731
    else:
        raise ValueError(f"--model: {cfg.model!r} must be 'small-cnn', 'resnet' or 'module:function'")
    state = _load_state(cfg.init_weights) if cfg.init_weights else None

    def make() -> nn.Module:
        try:
            m = build()
        except TypeError as e:
            raise ValueError(f"--model: {cfg.model!r} cannot be called as f(num_outputs={n_out}) ({e})") from e
        if not isinstance(m, nn.Module):
            raise ValueError(f"--model: {cfg.model!r} returned {type(m).__name__}, expected an nn.Module")
        if state is not None:
            try:
                m.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"--init-weights: {cfg.init_weights} does not fit --model {cfg.model}: {e}") from e
        return m

    with torch.no_grad():
        probe = make().eval()(torch.zeros(2, 3, cfg.image_size, cfg.image_size))
    if tuple(probe.shape) != (2, n_out):
        raise ValueError(f"--model: output shape {tuple(probe.shape)} for 2 images; expected (2, {n_out}) = "
                         f"3 angles x --num-bins {cfg.num_bins}")
    return make


def validate(cfg: KcfConfig) -> list[dict]:
    check_at_least(cfg, ("epochs", "batch_size", "image_size", "width"))
    if cfg.num_bins < 2:
        raise ValueError(f"--num-bins: must be >= 2, got {cfg.num_bins}")
    if cfg.threshold is None and not 0 <= cfg.drop < 1:
        raise ValueError(f"--drop: must be in [0, 1), got {cfg.drop}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr: must be > 0, got {cfg.lr}")
    resolve_device(cfg.device)
    records = load_annotations(cfg.dataset)
    if not 2 <= cfg.folds <= len(records):
        raise ValueError(f"--folds: need 2 <= folds <= number of images ({len(records)}), got {cfg.folds}")
    check_output_folder(Path(cfg.dataset) / "kcf", arg="DATASET")
    return records


def _load_images(root: Path, records: list[dict], size: int, bar) -> torch.Tensor:
    from PIL import Image

    out = torch.empty(len(records), 3, size, size, dtype=torch.uint8)
    for i, r in enumerate(bar(records, desc="load", unit="image")):
        path = root / r["image"]
        try:
            with Image.open(path) as img:
                arr = np.array(img.convert("RGB").resize((size, size), Image.BILINEAR))
        except OSError as e:
            raise ValueError(f"DATASET: image {path} of {r['_file']} could not be read ({e})") from e
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out  # (N, 3, S, S) uint8


def kcf(cfg: KcfConfig) -> KcfResult:
    t0 = time.time()
    records = validate(cfg)
    make_model = model_factory(cfg)
    root, out = Path(cfg.dataset), Path(cfg.dataset) / "kcf"
    device = resolve_device(cfg.device)
    bar = lambda it, **kw: tqdm(it, disable=not cfg.progress, **kw)  # noqa: E731
    images = _load_images(root, records, cfg.image_size, bar)
    bins = angle_bins([r["azimuth"] for r in records], [r["elevation"] for r in records],
                      [r.get("inplane_rotation", r.get("theta", 0.0)) for r in records], cfg.num_bins)
    files = [r["image"] if r.get("format") == "dst3d" else r["_file"] for r in records]  # one key per image
    folds = kfold_split(len(records), cfg.folds, cfg.seed)
    train_cfg = PoseTrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, num_bins=cfg.num_bins)
    signature = {k: v for k, v in to_jsonable(asdict(cfg)).items()
                 if k not in ("dataset", "progress", "device", "drop", "threshold", "per_class")}
    losses = np.full(len(records), np.nan)
    fold_of = np.zeros(len(records), dtype=int)
    result = KcfResult(out=out)
    for k, idx in enumerate(folds):
        fold_of[idx] = k
        fold_file = out / f"fold{k}.json"
        if fold_file.is_file():
            saved = json.loads(fold_file.read_text())
            if saved.get("signature") == signature and saved.get("files") == [files[i] for i in idx]:
                losses[idx] = saved["losses"]
                result.notes.append(f"fold {k}: reused {fold_file.name}")
                continue
        train_idx = np.concatenate([f for j, f in enumerate(folds) if j != k])
        torch.manual_seed(cfg.seed + k)
        pbar = tqdm(total=cfg.epochs, desc=f"fold {k + 1}/{cfg.folds}", unit="epoch", disable=not cfg.progress)
        model = train_pose_model(make_model(), images, bins, train_idx, train_cfg, seed=cfg.seed + k, device=device,
                                 progress=lambda: pbar.update(1))
        pbar.close()
        losses[idx] = score_pose_model(model, images, bins, idx, cfg.batch_size, device).numpy()
        atomic_write_json(fold_file, {"signature": signature, "files": [files[i] for i in idx],
                                      "losses": losses[idx].tolist()})

    keep = select_kept(losses, [r["class"] for r in records], cfg.drop, cfg.threshold, cfg.per_class)
    result.losses = {f: float(v) for f, v in zip(files, losses)}
    result.kept = [f for f, k in zip(files, keep) if k]
    result.removed = [f for f, k in zip(files, keep) if not k]
    atomic_write_json(out / "losses.json", result.losses)
    atomic_write_text(out / "kept.txt", "".join(f"{f}\n" for f in result.kept))
    atomic_write_text(out / "removed.txt", "".join(f"{f}\n" for f in result.removed))
    for r, loss, k, fold in zip(records, losses, keep, fold_of):
        if r.get("format") == "dst3d":  # 3D-DST's .npy annotations stay untouched; kcf/ holds the result
            continue
        data = json.loads((root / r["_file"]).read_text())
        data["kcf"] = {"loss": float(loss), "fold": int(fold), "kept": bool(k)}
        atomic_write_json(root / r["_file"], data)
    result.seconds = time.time() - t0
    atomic_write_json(out / "kcf.json", {
        "config": to_jsonable(asdict(cfg)),
        "images": len(records), "kept": len(result.kept), "removed": len(result.removed),
        "fold_sizes": [len(f) for f in folds], "loss": "CE(azimuth) + CE(elevation) + CE(theta), eval mode",
        "notes": result.notes, "seconds": round(result.seconds, 3)})
    return result


def run(cfg: KcfConfig) -> KcfResult:
    return kcf(cfg)
