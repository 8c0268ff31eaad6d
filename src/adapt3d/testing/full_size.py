"""Full-size models with seeded random weights, saved in the released models' layouts (``full-size-random``).

Speed and memory do not depend on weight values, so the real architectures with random weights measure what
users' workloads cost. Any config of :mod:`adapt3d.configs` (SD 1.5, SD 2.1-base, SDXL base, the SD 1.5
ControlNets, CLIP ViT-B/32, B/16, L/14, EG3D ffhq512 / afhq512 / shapenet128) is built with seeded random weights
and written in the layout its release uses, so that adapt3d's normal loaders read it back exactly as they read
real weights:

- stable-diffusion(-xl): a diffusers pipeline folder (``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder[_2]/``, ``tokenizer[_2]/``, ``scheduler/``), read by ``Img2ImgTranslator``,
  ``ScoreDistillation`` and ``ControlNetGenerator.from_pretrained``;
- controlnet: a ``ControlNetModel`` folder, read by ``ControlNetGenerator.from_pretrained``;
- clip: a ``CLIPModel`` + ``CLIPProcessor`` folder, read by ``CLIPScorer.from_pretrained``;
- eg3d: an official-format ``network-snapshot-000000.pkl`` (G, D, G_ema), read by
  ``load_generator(checkpoint=...)`` (the safe pickle reader).

Weights are stored in the dtype the release ships (``disk_dtype``: float16 for the SD pipelines, half the disk),
as safetensors. Parameters get PyTorch's default initialisation per layer (``reset_parameters``), drawn from a
seed per component; models are created on the meta device and materialised one layer at a time, so building
never holds more than the finished model plus one float32 layer (SDXL's UNet: 5.1 GB in float16, not 10 GB).
Tokenizers get CLIP's real vocabulary when :func:`adapt3d.testing.clip_vocab.find_clip_bpe` finds it, else a
byte-level vocabulary with the same layout (maximum length 77, same special tokens; the text encoders keep their
real 49,408-row embedding); the marker file records which.

Everything is cached under ``$ADAPT3D_CACHE/full-size-random/<name>`` (default ``~/.cache/adapt3d``), built
once into a temporary sibling folder and renamed into place, marker written last.

    path = ensure_full_size_model("sd21-base")      # builds once (about 2.6 GB), then returns at once
    Img2ImgTranslator.from_pretrained(str(path))
    parameter_counts("sd15")["unet"]                  # 859520964, counted on the meta device (no memory)
"""

from __future__ import annotations

import gc
import json
import os
import zlib
from pathlib import Path

import torch
from torch import nn

from adapt3d.configs import model_config, model_names
from adapt3d.diffusion.tiny_models import _cached_build, is_tiny_model, tiny_clip_tokenizer

__all__ = ["FULL_SIZE_PRESET", "EG3D_SNAPSHOT", "default_full_size_dir", "empty_components", "parameter_counts",
           "random_component", "build_random_model", "ensure_full_size_model", "full_size_location",
           "is_full_size_model"]

FULL_SIZE_PRESET = "full-size-random"
MARKER = "adapt3d-full-size.json"
FORMAT_VERSION = 1
EG3D_SNAPSHOT = "network-snapshot-000000.pkl"
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def default_full_size_dir() -> Path:
    """``$ADAPT3D_CACHE/full-size-random`` or ``~/.cache/adapt3d/full-size-random``."""
    root = os.environ.get("ADAPT3D_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "adapt3d") / FULL_SIZE_PRESET


def _construct(spec: dict) -> nn.Module:
    """The module a component spec describes, built with whatever device / init context is active."""
    lib, cls, cfg = spec.get("library"), spec["class"], spec.get("config")
    if lib == "diffusers":
        import diffusers
        return getattr(diffusers, cls).from_config(cfg)
    if lib == "transformers":
        import transformers
        if cls == "CLIPModel":
            return transformers.CLIPModel(transformers.CLIPConfig(**cfg))
        if cls in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            return getattr(transformers, cls)(transformers.CLIPTextConfig(**cfg))
    if cls == "TriPlaneGenerator":
        from adapt3d.models.eg3d_convert import generator_config_from_official
        from adapt3d.models.triplane import TriPlaneGenerator
        return TriPlaneGenerator(generator_config_from_official(spec["init_kwargs"], spec.get("attributes")))
    if cls == "DualDiscriminator":
        from adapt3d.models.discriminator import build_discriminator, discriminator_config_from_official
        return build_discriminator(discriminator_config_from_official(spec["init_kwargs"]))
    raise ValueError(f"cannot build component class {cls!r} (library {lib!r})")


def _weight_specs(config: dict) -> dict[str, dict]:
    """The components that hold weights (not tokenizers, schedulers or image processors)."""
    return {k: v for k, v in config["components"].items()
            if "init_kwargs" in v or v.get("class") in ("UNet2DConditionModel", "AutoencoderKL", "ControlNetModel",
                                                        "CLIPModel", "CLIPTextModel", "CLIPTextModelWithProjection")}


def empty_components(name_or_config: str | dict) -> dict[str, nn.Module]:
    """Component name -> module with every parameter on the meta device (no memory; buffers are real)."""
    from accelerate import init_empty_weights

    config = model_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    out = {}
    for comp, spec in _weight_specs(config).items():
        with init_empty_weights(include_buffers=False):
            out[comp] = _construct(spec)
    return out


def parameter_counts(name_or_config: str | dict) -> dict[str, int]:
    """Component name -> number of parameters (``sum(p.numel())``), counted without allocating weights."""
    return {comp: sum(p.numel() for p in m.parameters()) for comp, m in empty_components(name_or_config).items()}


def _default_init(name: str, p: torch.Tensor) -> None:
    """Initialisation of a parameter whose module has no ``reset_parameters`` (embeddings held as parameters,
    scales): ones for 1-D weights, zeros for biases and scalars, N(0, 0.02) otherwise."""
    with torch.no_grad():
        if p.ndim == 0 or name.endswith("bias"):
            p.zero_()
        elif p.ndim == 1 and name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02)


def random_component(spec: dict, seed: int, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> nn.Module:
    """Build a component with seeded random weights in ``dtype``, one layer at a time (see the module docstring).
    ``device``: where the weights are drawn and kept (a GPU draws them much faster; the values then come from that
    device's generator, so they differ from a CPU build with the same seed)."""
    from accelerate import init_empty_weights

    device = torch.device(device)
    with init_empty_weights(include_buffers=False):
        model = _construct(spec)
    if device.type != "cpu":  # the (real) buffers; the meta parameters are materialised below
        for module in model.modules():
            for n, b in module._buffers.items():
                if b is not None:
                    module._buffers[n] = b.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for module in model.modules():
            own = [(n, p) for n, p in module._parameters.items() if p is not None and p.device.type == "meta"]
            if not own:
                continue
            for n, p in own:
                module._parameters[n] = nn.Parameter(torch.empty(p.shape, dtype=torch.float32, device=device),
                                                     requires_grad=p.requires_grad)
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and type(module).__module__.startswith("torch.nn."):  # built-in layers: own params
                reset()
            else:
                for n, _ in own:
                    _default_init(n, module._parameters[n])
            for n, _ in own:
                module._parameters[n].data = module._parameters[n].data.to(dtype)
    return model.eval()


def _component_seed(seed: int, component: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(component.encode())) % 2 ** 31


_TOKENIZERS: dict = {}  # (bpe file, max length, pad token) -> tokenizer: building one takes seconds


def _tokenizer(layout: dict):
    """(tokenizer, description): CLIP's real vocabulary when available, else the byte-level fallback."""
    from adapt3d.testing.clip_vocab import clip_bpe_tokenizer, find_clip_bpe

    bpe = find_clip_bpe()
    if bpe is not None:
        key = (str(bpe), layout["model_max_length"], layout["pad_token"])
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = clip_bpe_tokenizer(bpe, model_max_length=key[1], pad_token=key[2])
        tok = _TOKENIZERS[key]
        return tok, f"CLIP BPE vocabulary ({len(tok)} tokens) from {bpe.name}"
    tok = tiny_clip_tokenizer()
    tok.model_max_length = layout["model_max_length"]
    tok.pad_token = layout["pad_token"]
    return tok, (f"byte-level fallback ({len(tok)} tokens; CLIP's BPE vocabulary was not found: set "
                 "ADAPT3D_CLIP_BPE to open_clip's bpe_simple_vocab_16e6.txt.gz or an open_clip_torch wheel)")


def _save_pipeline(config: dict, folder: Path, seed: int, device: str = "cpu") -> dict:
    import diffusers

    info: dict = {"parameters": {}, "tokenizer": None}
    index = {"_class_name": config["pipeline"], "_diffusers_version": diffusers.__version__}
    dtype = _DTYPES[config["disk_dtype"]]
    for comp, spec in config["components"].items():
        index[comp] = [spec["library"], spec["class"]]
        if "layout" in spec:
            tok, info["tokenizer"] = _tokenizer(spec["layout"])
            tok.save_pretrained(folder / comp)
        elif comp == "scheduler":
            getattr(diffusers, spec["class"]).from_config(spec["config"]).save_pretrained(folder / comp)
        else:
            model = random_component(spec, _component_seed(seed, comp), dtype, device)
            info["parameters"][comp] = sum(p.numel() for p in model.parameters())
            model.save_pretrained(folder / comp)
            del model
            gc.collect()
    if config["kind"] == "stable-diffusion":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    else:
        index.update(force_zeros_for_empty_prompt=True)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return info


def _save_single(config: dict, folder: Path, seed: int, device: str = "cpu") -> dict:
    (comp, spec), = _weight_specs(config).items()
    model = random_component(spec, _component_seed(seed, comp), _DTYPES[config["disk_dtype"]], device)
    info: dict = {"parameters": {comp: sum(p.numel() for p in model.parameters())}, "tokenizer": None}
    model.save_pretrained(folder)
    if config["kind"] == "clip":
        from transformers import CLIPImageProcessorPil, CLIPProcessor
        tok, info["tokenizer"] = _tokenizer(config["components"]["tokenizer"]["layout"])
        ip = config["components"]["image_processor"]["config"]
        CLIPProcessor(image_processor=CLIPImageProcessorPil(**ip), tokenizer=tok).save_pretrained(folder)
    return info


def _save_eg3d(config: dict, folder: Path, seed: int, device: str = "cpu") -> dict:
    from adapt3d.testing.official_pickle import write_eg3d_snapshot

    specs = config["components"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_component_seed(seed, "G"))
        G = _construct(specs["G"]).eval()
        torch.manual_seed(_component_seed(seed, "D"))
        D = _construct(specs["D"]).eval()
    write_eg3d_snapshot(folder / EG3D_SNAPSHOT, G, specs["G"]["init_kwargs"], D, specs["D"]["init_kwargs"])
    return {"parameters": {"G": sum(p.numel() for p in G.parameters()), "D": sum(p.numel() for p in D.parameters())},
            "tokenizer": None}


def build_random_model(config: dict, folder: str | os.PathLike, seed: int = 0, device: str = "cpu") -> dict:
    """Write ``config`` (a :func:`adapt3d.configs.model_config` dict, possibly scaled down for tests) with seeded
    random weights into the existing empty ``folder`` in its release layout; returns what was built (parameter
    counts, tokenizer). ``device``: where diffusion / CLIP weights are drawn (EG3D's always on the CPU). Prefer
    :func:`ensure_full_size_model`, which caches and writes atomically."""
    folder = Path(folder)
    kind = config["kind"]
    if kind in ("stable-diffusion", "stable-diffusion-xl"):
        info = _save_pipeline(config, folder, seed, device)
    elif kind in ("controlnet", "clip"):
        info = _save_single(config, folder, seed, device)
    elif kind == "eg3d":
        info = _save_eg3d(config, folder, seed)
    else:
        raise ValueError(f"config kind {kind!r} cannot be built")
    info.update(name=config["name"], disk_dtype=config["disk_dtype"], build_device=str(device))
    return info


def full_size_location(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where :func:`ensure_full_size_model` puts ``name``: the folder, or for EG3D the snapshot inside it."""
    folder = (Path(root).expanduser() if root is not None else default_full_size_dir()) / name
    return folder / EG3D_SNAPSHOT if model_config(name)["kind"] == "eg3d" else folder


def is_full_size_model(folder: str | os.PathLike, name: str | None = None) -> bool:
    """True if ``folder`` holds a complete model built by :func:`ensure_full_size_model` (``name`` if given)."""
    return is_tiny_model(folder, name, marker=MARKER, version=FORMAT_VERSION)


def ensure_full_size_model(name: str, root: str | os.PathLike | None = None, seed: int = 0,
                           device: str = "cpu") -> Path:
    """Build ``name`` once under ``root`` (default :func:`default_full_size_dir`); returns what the loaders take
    (:func:`full_size_location`). A cached model built with another seed is refused, naming both seeds.
    ``device``: see :func:`build_random_model`."""
    if name not in model_names():
        raise ValueError(f"unknown full-size model {name!r}; choose one of {model_names()}")
    location = full_size_location(name, root)
    folder = location.parent if location.suffix == ".pkl" else location
    if is_full_size_model(folder, name):
        built = json.loads((folder / MARKER).read_text()).get("seed")
        if built != seed:
            raise ValueError(f"{folder} holds {name} built with seed {built}, not {seed}; remove it or pick another "
                             "root")
        return location
    _cached_build(folder, name, seed, lambda tmp: build_random_model(model_config(name), tmp, seed, device),
                  marker=MARKER, version=FORMAT_VERSION)
    return location


def main(argv: list[str] | None = None) -> int:
    """``python -m adapt3d.testing.full_size [NAME ...] [--root DIR] [--device cuda] [--seed N]``: build (once)
    and print where each model is; with no name, list the names and their parameter counts."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m adapt3d.testing.full_size", description=main.__doc__)
    p.add_argument("names", nargs="*", help=f"models to build: {', '.join(model_names())} or 'all'")
    p.add_argument("--root", default=None, help="cache root (default $ADAPT3D_CACHE/full-size-random)")
    p.add_argument("--device", default="cpu", help="where the diffusion / CLIP weights are drawn (cpu or cuda)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = model_names() if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in model_names()]
    if unknown:
        raise SystemExit(f"NAME: unknown model(s) {unknown}; choose from {', '.join(model_names())} or 'all'")
    try:
        device_type = torch.device(args.device).type
    except RuntimeError:
        device_type = None
    if device_type not in ("cpu", "cuda"):
        raise SystemExit(f"--device: {args.device!r} is not supported; expected cpu or cuda")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if not names:
        for n in model_names():
            print(f"{n:<24} {sum(parameter_counts(n).values()):>14,} parameters  {model_config(n)['title']}")
        return 0
    for n in names:
        print(f"{n}: {ensure_full_size_model(n, args.root, seed=args.seed, device=args.device)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
