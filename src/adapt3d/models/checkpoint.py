"""adapt3d's own checkpoint format: a folder with safetensors weights and a JSON config. No pickle anywhere.

    <folder>/generator.safetensors       every tensor of the generator's state dict (EG3D names)
    <folder>/discriminator.safetensors   optional
    <folder>/checkpoint.json             format tag, configs, sha256 of each weights file, free-form metadata

``checkpoint.json`` is written last and names the sha256 of every weights file, so a folder whose writing was
interrupted (or whose files were swapped) is detected at load time instead of loading half a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adapt3d.models.triplane import TriPlaneGenerator, TriPlaneGeneratorConfig
from adapt3d.utils.io import atomic_path, atomic_write_json, sha256_file

FORMAT = "adapt3d-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not match the model."""


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, loaded. ``discriminator`` is None when the folder has none."""

    path: Path
    generator: TriPlaneGenerator
    discriminator: torch.nn.Module | None = None
    metadata: dict = field(default_factory=dict)


def _save_tensors(path: Path, module: torch.nn.Module) -> str:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    return sha256_file(path)


def save_checkpoint(folder: str | Path, generator: TriPlaneGenerator, discriminator: torch.nn.Module | None = None,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write ``generator`` (and ``discriminator``) to ``folder``; returns the folder path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = generator.config.to_dict()
    cfg["neural_rendering_resolution"] = int(generator.neural_rendering_resolution)
    doc: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "generator": {
        "config": cfg, "weights": "generator.safetensors",
        "sha256": _save_tensors(folder / "generator.safetensors", generator)}}
    if discriminator is not None:
        doc["discriminator"] = {"config": discriminator.config.to_dict(), "weights": "discriminator.safetensors",
                                "sha256": _save_tensors(folder / "discriminator.safetensors", discriminator)}
    doc["metadata"] = dict(metadata or {})
    atomic_write_json(folder / CONFIG_NAME, doc)
    return folder


def is_checkpoint_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG_NAME).is_file() or (p.name == CONFIG_NAME and p.is_file())


def read_checkpoint_json(path: str | Path) -> tuple[Path, dict]:
    """Return (folder, parsed checkpoint.json) after validating the format tag."""
    p = Path(path)
    folder = p.parent if p.name == CONFIG_NAME else p
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"--checkpoint {path}: no {CONFIG_NAME} in {folder} (expected an adapt3d checkpoint "
                              "folder, an official EG3D .pkl, or a known checkpoint name)")
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise CheckpointError(f"--checkpoint {path}: {cfg_path} is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise CheckpointError(f"--checkpoint {path}: {cfg_path} holds a JSON {type(doc).__name__}, expected an "
                              "object with 'format', 'generator', ...")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"--checkpoint {path}: {cfg_path} has format {doc.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(doc.get("version", 0), int) or doc.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"--checkpoint {path}: format version {doc['version']} is newer than this adapt3d "
                              f"supports ({FORMAT_VERSION}); upgrade adapt3d")
    return folder, doc


def _entry(folder: Path, doc: dict, what: str) -> dict:
    """The ``generator``/``discriminator`` entry of checkpoint.json, checked: config (object), weights (a plain
    file name in the folder), sha256 (optional hex string)."""
    entry = doc.get(what)
    where = f"checkpoint {folder}: {CONFIG_NAME} entry {what!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} is missing or not an object")
    weights, sha = entry.get("weights"), entry.get("sha256")
    if not isinstance(entry.get("config"), dict):
        raise CheckpointError(f"{where} has no 'config' object")
    if not isinstance(weights, str) or not weights or Path(weights).name != weights or weights in (".", ".."):
        raise CheckpointError(f"{where}: 'weights' must be a file name in the folder, got {str(weights)[:80]!r}")
    if sha is not None and not isinstance(sha, str):
        raise CheckpointError(f"{where}: 'sha256' must be a hex string")
    return entry


def _load_tensors(folder: Path, entry: dict, what: str) -> dict[str, torch.Tensor]:
    path = folder / entry["weights"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {folder}: {what} weights file {path.name} is missing")
    digest = sha256_file(path)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise CheckpointError(f"checkpoint {folder}: {path.name} has sha256 {digest[:12]}..., but {CONFIG_NAME} "
                              f"records {entry['sha256'][:12]}... (incomplete write or a swapped file)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    header = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < header <= size - 8:  # refused before safetensors allocates anything for it
        raise CheckpointError(f"checkpoint {folder}: {path} is not a safetensors file ({size} bytes, header length "
                              f"{header if header >= 0 else 'missing'})")
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError, ...: a corrupt file, named
        raise CheckpointError(f"checkpoint {folder}: {path} is a corrupt safetensors file "
                              f"({type(e).__name__}: {str(e)[:160]})") from None


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what is missing, unexpected or mis-shaped."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:  # checked before a meta-device module is given memory
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:3]})")
        raise CheckpointError(f"{where}: weights do not match the architecture: " + "; ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{where}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[:3]}); "
                              "the model would render black images. Use an earlier snapshot of the run")
    if any(t.is_meta for t in own.values()):
        module.to_empty(device="cpu")  # memory only now that the file is known to fill it exactly
    module.load_state_dict(state, strict=True)


def generator_from_config_dict(cfg: dict, materialize: bool = True) -> TriPlaneGenerator:
    """Our generator for a checkpoint.json config; with ``materialize=False`` it stays on the meta device (no
    memory) until ``load_state_strict`` has checked the weights against it."""
    cfg = dict(cfg)
    nrr = cfg.pop("neural_rendering_resolution", None)
    config = TriPlaneGeneratorConfig.from_dict(cfg)
    if nrr is not None:
        config.neural_rendering_resolution = int(nrr)
    with torch.device("meta"):  # no point initialising weights that the file overwrites
        G = TriPlaneGenerator(config)
    return G.to_empty(device="cpu") if materialize else G


def load_checkpoint(path: str | Path, load_discriminator: bool = True) -> Checkpoint:
    """Load an adapt3d checkpoint folder (or its checkpoint.json). The generator is returned in eval mode."""
    folder, doc = read_checkpoint_json(path)
    entry = _entry(folder, doc, "generator")
    try:
        G = generator_from_config_dict(entry["config"], materialize=False)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {folder}: unsupported generator config ({e})") from e
    load_state_strict(G, _load_tensors(folder, entry, "generator"), f"checkpoint {folder} (generator)")
    D = None
    if load_discriminator and "discriminator" in doc:
        from adapt3d.models.discriminator import DualDiscriminatorConfig, build_discriminator
        d_entry = _entry(folder, doc, "discriminator")
        try:
            with torch.device("meta"):
                D = build_discriminator(DualDiscriminatorConfig.from_dict(d_entry["config"]))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {folder}: unsupported discriminator config ({e})") from e
        load_state_strict(D, _load_tensors(folder, d_entry, "discriminator"), f"checkpoint {folder} (discriminator)")
        D.eval()
    return Checkpoint(path=folder, generator=G.eval(), discriminator=D, metadata=doc.get("metadata", {}))
