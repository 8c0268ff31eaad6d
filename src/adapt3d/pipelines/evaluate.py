"""``adapt3d eval``: measure an adapted generator against its source and a prompt; write metrics.json and
report.html.

    from adapt3d.pipelines.evaluate import EvalConfig, run
    result = run(EvalConfig(generator="runs/pixar/train/final", source="ffhq",
                            prompt="a 3D render of a face in Pixar style", num_samples=1000,
                            out=Path("runs/pixar/eval")))
    run(EvalConfig(preset="tiny", out=Path("runs/demo/eval")))      # offline demo on tiny random models

Both generators render the same latents (EG3D's z = RandomState(seed).randn) at the same cameras with
deterministic ray marching; rendered samples are cached as PNGs in ``<out>/samples`` and reused by a rerun with
the same settings (``--resume``). Every metric is computed from those uint8 images, and every random choice
(cameras, k-means, pair subsets, KID subsets) is seeded by ``--seed``, so reruns give identical numbers.
Metrics: see :mod:`adapt3d.metrics` (CLIP score, directional CLIP, intra-cluster LPIPS, view consistency,
FID / KID on Inception features (paper-comparable) or CLIP features (FD-CLIP)).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from adapt3d.cameras import make_pose_sampler
from adapt3d.clip.model import DEFAULT_CLIP_MODEL
from adapt3d.export.images import save_image, to_uint8
from adapt3d.metrics import clip_metrics, diversity, fid, inception, lpips as lpips_mod
from adapt3d.metrics.eval_report import write_eval_report
from adapt3d.metrics.view_consistency import evaluate_view_consistency
from adapt3d.models.latents import default_cameras, map_seeds
from adapt3d.pipelines.render import render_views
from adapt3d.utils.io import atomic_write_json, check_output_folder, to_jsonable
from adapt3d.utils.parsing import check_at_least, check_text, check_trunc, flag_name, parse_seeds, resolve_device

__all__ = ["EvalConfig", "EvalResult", "run", "validate", "METRICS", "DEMO_PROMPT"]

METRICS = ("clip", "diversity", "view", "fid")
DEMO_PROMPT = "a 3D render of a face in Pixar style"


@dataclass
class EvalConfig:
    """Evaluate an adapted generator against its source and a prompt: text alignment, diversity, view
    consistency, FID/KID; writes metrics.json and report.html. Give --generator and --source, or --preset for a
    demo."""

    out: Path = Path("runs/eval")
    """Output folder: metrics.json, report.html, images/, samples/ (cached renders)."""
    generator: str | None = None
    """Adapted generator: adapt3d checkpoint folder, official EG3D .pkl, or a known name (e.g. datid3d-pixar)."""
    source: str | None = None
    """Source (unadapted) generator: checkpoint folder, .pkl or known name (e.g. ffhq)."""
    preset: str | None = None
    """Demo: built-in architecture with random weights (tiny, ffhq512, ...), used for --generator/--source when
    they are not given. Numbers from random weights are meaningless."""
    prompt: str | None = None
    """Target text for CLIP score and directional CLIP (required unless --preset)."""
    source_prompt: str = "a photo of a face"
    """Text describing the source domain (the start of the text direction)."""
    clip_model: str | None = None
    """CLIP model (Hugging Face id or local folder); None = openai/clip-vit-base-patch32, or 'tiny' with --preset."""
    num_samples: int = 64
    """Number of latents (seeds 0..N-1) for CLIP, diversity and FID; ignored when --seeds is given."""
    seeds: str | None = None
    """Explicit latent seeds, e.g. '0-999'."""
    trunc: float = 0.7
    """Truncation psi for both generators (1 = none)."""
    trunc_cutoff: int | None = None
    """Number of w layers truncated (None = all)."""
    pose_sampler: Literal["sinusoidal", "gaussian", "uniform", "fixed"] = "sinusoidal"
    """Cameras of the samples (one per seed, seeded by --seed): DATID-3D's sinusoidal poses, or 'fixed' = frontal."""
    metrics: tuple[str, ...] = METRICS
    """Which metric groups to compute: clip, diversity, view, fid."""
    num_clusters: int = 10
    """k for intra-cluster LPIPS (reduced to N // 2 when there are fewer samples)."""
    cluster_features: Literal["clip", "lpips"] = "clip"
    """Embedding clustered by k-means: CLIP image embeddings or pooled LPIPS features."""
    max_pairs_per_cluster: int = 200
    """Pairs per cluster evaluated with LPIPS (a seeded random subset when a cluster has more)."""
    lpips_net: Literal["alex", "vgg"] = "alex"
    """LPIPS backbone for intra-cluster LPIPS: 'alex' (AlexNet, the lpips package's default) or 'vgg' (VGG16, the
    network EG3D's projector, DATID-3D and StyleGAN-NADA use as a loss). Numbers of the two are not comparable."""
    lpips_alex_weights: str | None = None
    """AlexNet ImageNet weights (alexnet-owt-7be5be79.pth) for --lpips-net alex: path, URL or known name; None =
    the cache."""
    lpips_vgg_weights: str | None = None
    """VGG16 ImageNet weights (vgg16-397923af.pth) for --lpips-net vgg: path, URL or known name; None = the cache."""
    lpips_heads_weights: str | None = None
    """LPIPS v0.1 linear heads of --lpips-net (alex.pth or vgg.pth): path, URL or known name; None = the cache."""
    lpips_alex_sha256: str | None = None
    """Expected sha256 (64 hex digits) of --lpips-alex-weights (checked for a path or a URL)."""
    lpips_vgg_sha256: str | None = None
    """Expected sha256 (64 hex digits) of --lpips-vgg-weights (checked for a path or a URL)."""
    lpips_heads_sha256: str | None = None
    """Expected sha256 (64 hex digits) of --lpips-heads-weights (checked for a path or a URL)."""
    lpips_resolution: int | None = None
    """Resize images to this square size before LPIPS (None = native size; e.g. 256 to cut the cost at 512 px)."""
    view_num_samples: int = 8
    """Latents (the first seeds) rendered at every view for view consistency."""
    view_yaws_deg: tuple[float, ...] = (-20.0, 0.0, 20.0)
    """Yaw offsets from frontal (degrees) of the views; every ordered pair is warped."""
    view_pitch_deg: float = 0.0
    """Pitch offset from frontal (degrees) of the views."""
    depth_tolerance: float = 0.02
    """Relative depth agreement for a pixel to count as visible in both views."""
    reference: str | None = None
    """Reference images for FID/KID: a folder or zip (e.g. the target dataset). None = the source samples."""
    fid_feature: Literal["inception", "clip"] | None = None
    """FID/KID features: 'inception' (TensorFlow Inception-v3 pool3, comparable with EG3D/DATID-3D/StyleGAN
    FID; needs pt_inception-2015-12-05-6726825d.pth) or 'clip' (FD-CLIP, not comparable with papers). None =
    inception, or clip with --preset."""
    inception_weights: str | None = None
    """FID Inception weights (pt_inception-2015-12-05-6726825d.pth): path, URL or the known name
    inception-2015-12-05; None = the cache (downloaded when online)."""
    inception_sha256: str | None = None
    """Expected sha256 (64 hex digits) of --inception-weights (checked for a path or a URL)."""
    fid_inception_preprocess: Literal["tensorflow", "pytorch-fid"] = "tensorflow"
    """Inception input resize/scaling: 'tensorflow' (TF1 bilinear, (x-128)/128: TTUR, torch-fidelity, StyleGAN3,
    EG3D) or 'pytorch-fid' (half-pixel bilinear, 2x/255-1). Only numbers of the same mode are comparable."""
    max_reference_images: int | None = None
    """Use at most this many reference images (sorted by name)."""
    kid_subset_size: int = 1000
    """KID subset size (clipped to the smaller set)."""
    kid_subsets: int = 100
    """Number of KID subsets."""
    grid_samples: int = 6
    """Seeds shown in the source-vs-adapted grid."""
    grid_yaws_deg: tuple[float, ...] = (-25.0, 0.0, 25.0)
    """Yaw offsets (degrees) of the grid columns."""
    seed: int = 0
    """Seed of every random choice (cameras, k-means, pair subsets, KID subsets)."""
    batch_size: int = 8
    """Images per forward pass (rendering, CLIP, LPIPS)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda[:i]'."""
    noise_mode: Literal["const", "random", "none"] = "const"
    """StyleGAN noise inputs: 'const' (fixed buffers, reproducible), 'random' or 'none'."""
    resume: bool = True
    """Reuse cached sample renders in <out>/samples when their settings match."""
    progress: bool = True
    """Show progress bars."""


@dataclass
class EvalResult:
    out: Path
    metrics_path: Path
    report_path: Path
    metrics: dict
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _check_generator(flag: str, value: str | None) -> None:
    from adapt3d.models.loading import check_generator_source

    if value is None:
        return
    try:
        check_generator_source(None, value)
    except ValueError as e:
        raise ValueError(str(e).replace("--checkpoint", flag)) from None


def validate(cfg: EvalConfig) -> list[int]:
    """Check every argument before anything heavy; returns the seeds. Raises ValueError naming the flag."""
    if cfg.preset is None and (cfg.generator is None or cfg.source is None):
        raise ValueError("give --generator (the adapted generator) and --source (the generator it was adapted "
                         "from), or --preset for the built-in demo (e.g. --preset tiny)")
    if cfg.preset is not None:
        from adapt3d.models.triplane import PRESETS
        if cfg.preset not in PRESETS:
            raise ValueError(f"--preset: unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    _check_generator("--generator", cfg.generator)
    _check_generator("--source", cfg.source)
    if cfg.preset is None and not (cfg.prompt and cfg.prompt.strip()):
        raise ValueError("--prompt: required (the target text, e.g. 'a 3D render of a face in Pixar style')")
    if not cfg.source_prompt.strip():
        raise ValueError("--source-prompt: must be a non-empty text")
    check_text(cfg.prompt or "", "--prompt", "prompt")
    check_text(cfg.source_prompt, "--source-prompt", "prompt")
    unknown = sorted(set(cfg.metrics) - set(METRICS))
    if unknown or not cfg.metrics:
        raise ValueError(f"--metrics: unknown {unknown or 'empty'}; choose from {', '.join(METRICS)}")
    seeds = parse_seeds(cfg.seeds) if cfg.seeds is not None else list(range(cfg.num_samples))
    if len(seeds) < 2:
        raise ValueError(f"--num-samples/--seeds: need at least 2 samples, got {len(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: seeds must be distinct, got {cfg.seeds!r}")
    check_trunc(cfg.trunc)
    check_at_least(cfg, ("num_clusters", "max_pairs_per_cluster", "view_num_samples", "kid_subsets", "grid_samples",
                         "batch_size"))
    if cfg.kid_subset_size < 2:
        raise ValueError(f"--kid-subset-size: must be >= 2, got {cfg.kid_subset_size}")
    if len(cfg.view_yaws_deg) < 2:
        raise ValueError(f"--view-yaws-deg: need at least 2 views, got {list(cfg.view_yaws_deg)}")
    if not cfg.grid_yaws_deg:
        raise ValueError("--grid-yaws-deg: need at least 1 yaw")
    if not 0 < cfg.depth_tolerance < 1:
        raise ValueError(f"--depth-tolerance: must be in (0, 1) (relative), got {cfg.depth_tolerance}")
    if cfg.lpips_resolution is not None and cfg.lpips_resolution < 16:
        raise ValueError(f"--lpips-resolution: must be >= 16 or None, got {cfg.lpips_resolution}")
    if cfg.max_reference_images is not None and cfg.max_reference_images < 2:
        raise ValueError(f"--max-reference-images: must be >= 2, got {cfg.max_reference_images}")
    _check_weight_options(cfg)
    if "fid" in cfg.metrics:
        if cfg.reference is not None:
            fid.check_reference_images(cfg.reference, cfg.max_reference_images)  # raises naming --reference
        if _fid_feature(cfg) == "inception":  # raises naming the file, its URL and --fid-feature clip; checks sha256
            inception.resolve_inception_weights(cfg.inception_weights, cfg.inception_sha256)
    from adapt3d.diffusion.loading import resolve_pretrained
    resolve_pretrained(_clip_name(cfg), "clip", "--clip-model")  # every metric group uses CLIP embeddings
    backbone, backbone_sha256 = _lpips_backbone(cfg)
    if "diversity" in cfg.metrics and (cfg.preset is None or backbone or cfg.lpips_heads_weights):
        lpips_mod.resolve_lpips_weights(backbone, cfg.lpips_heads_weights, net=cfg.lpips_net,
                                        backbone_sha256=backbone_sha256, heads_sha256=cfg.lpips_heads_sha256)
    resolve_device(cfg.device)
    check_output_folder(cfg.out)
    return seeds


def _check_weight_options(cfg: EvalConfig) -> None:
    """Weight options that do not apply to the chosen --lpips-net / FID features, and malformed checksums."""
    for name in ("lpips_alex_sha256", "lpips_vgg_sha256", "lpips_heads_sha256", "inception_sha256"):
        value = getattr(cfg, name)
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value)):
            raise ValueError(f"{flag_name(name)}: expected 64 hex digits (a sha256), got {value!r}")
    other = "vgg" if cfg.lpips_net == "alex" else "alex"
    for name in (f"lpips_{other}_weights", f"lpips_{other}_sha256"):
        if getattr(cfg, name) is not None:
            raise ValueError(f"{flag_name(name)}: applies to --lpips-net {other}, but --lpips-net is {cfg.lpips_net}; "
                             f"use --lpips-{cfg.lpips_net}-weights / --lpips-{cfg.lpips_net}-sha256 or --lpips-net "
                             f"{other}")
    if cfg.lpips_net == "alex" and cfg.lpips_resolution is not None and cfg.lpips_resolution < 31:
        raise ValueError(f"--lpips-resolution: LPIPS-alex needs >= 31 px, got {cfg.lpips_resolution}")
    if _fid_feature(cfg) == "clip":
        for name in ("inception_weights", "inception_sha256"):
            if getattr(cfg, name) is not None:
                raise ValueError(f"{flag_name(name)}: applies to --fid-feature inception, but the FID features are "
                                 "clip")
        if cfg.fid_inception_preprocess != "tensorflow":
            raise ValueError(f"--fid-inception-preprocess {cfg.fid_inception_preprocess}: applies to --fid-feature "
                             "inception, but the FID features are clip")


def _fid_feature(cfg: EvalConfig) -> str:
    """--fid-feature, or its default: inception, except for a --preset demo without --inception-weights."""
    if cfg.fid_feature is not None:
        return cfg.fid_feature
    return "clip" if cfg.preset is not None and cfg.inception_weights is None else "inception"


def _lpips_backbone(cfg: EvalConfig) -> tuple[str | None, str | None]:
    """The backbone weights spec and its sha256 for --lpips-net."""
    if cfg.lpips_net == "alex":
        return cfg.lpips_alex_weights, cfg.lpips_alex_sha256
    return cfg.lpips_vgg_weights, cfg.lpips_vgg_sha256


def _clip_name(cfg: EvalConfig) -> str:
    return cfg.clip_model or ("tiny" if cfg.preset is not None else DEFAULT_CLIP_MODEL)


def _load_lpips(cfg: EvalConfig, warnings: list[str]) -> lpips_mod.LPIPS:
    backbone, backbone_sha256 = _lpips_backbone(cfg)
    try:
        return lpips_mod.load_lpips(backbone, cfg.lpips_heads_weights, net=cfg.lpips_net,
                                    backbone_sha256=backbone_sha256, heads_sha256=cfg.lpips_heads_sha256,
                                    resolution=cfg.lpips_resolution)
    except lpips_mod.LPIPSWeightsNotFoundError:
        if cfg.preset is None or backbone or cfg.lpips_heads_weights:
            raise
    warnings.append(f"LPIPS uses RANDOM weights (demo with --preset; the LPIPS-{cfg.lpips_net} weight files were "
                    "not found): every LPIPS diversity number in this report is MEANINGLESS.")
    return lpips_mod.LPIPS.random(cfg.seed, resolution=cfg.lpips_resolution, net=cfg.lpips_net)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("adapt3d", "torch", "transformers", "diffusers", "torchmetrics", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _source_id(loaded) -> dict:
    src = dict(loaded.source)
    path = Path(str(src.get("file") or src.get("checkpoint") or ""))
    if path.exists():
        target = path / "checkpoint.json" if path.is_dir() else path
        if target.exists():
            st = target.stat()
            src["file_stat"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return json.loads(json.dumps(src, default=str))


def _load_png(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def _render_samples(G, ws: torch.Tensor, labels: torch.Tensor, seeds: list[int], folder: Path, fingerprint: dict,
                    cfg: EvalConfig, desc: str) -> torch.Tensor:
    """uint8 renders (N, 3, R, R) of ws at labels, cached as PNGs in ``folder`` (reused when the fingerprint
    matches, so an interrupted run resumes)."""
    manifest = folder / "manifest.json"
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    reuse = False
    if cfg.resume and manifest.is_file():
        try:
            reuse = json.loads(manifest.read_text()).get("fingerprint") == key
        except (OSError, ValueError):
            reuse = False
    if not reuse:
        atomic_write_json(manifest, {"fingerprint": key, "settings": fingerprint})
    paths = [folder / f"seed{s:06d}.png" for s in seeds]
    todo = [i for i, p in enumerate(paths) if not (reuse and p.is_file())]
    for start in tqdm(range(0, len(todo), cfg.batch_size), desc=desc, unit="batch", disable=not cfg.progress):
        idx = todo[start:start + cfg.batch_size]
        images, _ = render_views(G, ws[idx], labels[idx].to(ws.device), cfg.batch_size, cfg.noise_mode)
        for i, img in zip(idx, to_uint8(images)):
            save_image(paths[i], img)
    return torch.stack([_load_png(p) for p in paths])  # (N, 3, R, R)


def _diversity(images: torch.Tensor, emb: torch.Tensor, lp, cfg: EvalConfig, k: int) -> dict:
    feats = emb if cfg.cluster_features == "clip" else diversity.lpips_embedding(images, lp, cfg.batch_size)
    km = diversity.kmeans(feats, k, seed=cfg.seed)
    icl = diversity.intra_cluster_lpips(images, km.assignments, lp, max_pairs_per_cluster=cfg.max_pairs_per_cluster,
                                        seed=cfg.seed, batch_size=cfg.batch_size)
    return {"intra_cluster_lpips": icl.to_dict(), "mean_pairwise_clip_distance":
            diversity.mean_pairwise_distance(emb), "num_clusters": k, "kmeans_inertia": km.inertia}


@dataclass
class _State:
    """Everything the metric stages share. ``*_src`` is the very same object as ``*_ad`` when the source and
    the adapted generator are one model (then the source's numbers are copied, not recomputed)."""

    cfg: EvalConfig
    seeds: list[int]
    device: torch.device
    loaded: dict  # 'adapted' / 'source' -> LoadedGenerator
    G: dict  # name -> TriPlaneGenerator
    scorer: object
    clip_name: str
    lp: lpips_mod.LPIPS | None
    warnings: list[str]
    notes: list[str]
    ws: dict = field(default_factory=dict)  # name -> (N, num_ws, w_dim)
    images: dict = field(default_factory=dict)  # name -> uint8 (N, 3, R, R)
    emb: dict = field(default_factory=dict)  # name -> (N, D) normalised CLIP embeddings
    poses: object = None

    @property
    def same(self) -> bool:
        return self.G["source"] is self.G["adapted"]


def _setup(cfg: EvalConfig, seeds: list[int]) -> _State:
    from adapt3d.clip import CLIPScorer
    from adapt3d.models.loading import load_generator

    device = resolve_device(cfg.device)
    warnings: list[str] = []
    notes: list[str] = []

    def load(spec):
        kw = {"preset": cfg.preset} if spec is None else {"checkpoint": spec}
        return load_generator(**kw, progress=cfg.progress)
    loaded = {"adapted": load(cfg.generator)}
    loaded["source"] = loaded["adapted"] if cfg.source == cfg.generator else load(cfg.source)
    if cfg.preset is not None:
        warnings.append(f"Demo run: --preset {cfg.preset} has RANDOM weights; the generator images and every "
                        "number in this report are MEANINGLESS.")
    if loaded["source"] is loaded["adapted"]:
        notes.append("adapted and source are the same generator: directional CLIP similarity is 0 by definition "
                     "(identical images have no direction) and source/adapted columns agree")
    G = {k: v.generator.to(device).eval().requires_grad_(False) for k, v in loaded.items()}
    clip_name = _clip_name(cfg)
    scorer = CLIPScorer.from_pretrained(clip_name, device=device)
    if clip_name == "tiny":
        warnings.append("CLIP is the tiny random-weight test model: CLIP scores, directional CLIP, FD-CLIP and view "
                        "agreement are MEANINGLESS.")
    lp = _load_lpips(cfg, warnings).to(device) if "diversity" in cfg.metrics else None
    return _State(cfg, seeds, device, loaded, G, scorer, clip_name, lp, warnings, notes)


def _render_all(st: _State) -> None:
    """Same latents and cameras (around the source's average camera) for both generators; CLIP embeddings."""
    cfg, seeds = st.cfg, st.seeds
    st.poses = make_pose_sampler(cfg.pose_sampler).sample(len(seeds), torch.Generator().manual_seed(cfg.seed))
    G_src = st.G["source"]
    r = G_src.rendering
    labels = st.poses.labels(r.avg_camera_radius, r.avg_camera_pivot, G_src.config.camera_fov_deg)  # (N, 25)
    base = {"seeds": seeds, "labels": [round(float(v), 6) for v in labels.flatten()], "trunc": cfg.trunc,
            "trunc_cutoff": cfg.trunc_cutoff, "noise_mode": cfg.noise_mode}
    for name in ("adapted", "source"):
        if name == "source" and st.same:
            st.ws[name], st.images[name], st.emb[name] = st.ws["adapted"], st.images["adapted"], st.emb["adapted"]
            continue
        st.ws[name] = map_seeds(st.G[name], seeds, cfg.trunc, cfg.trunc_cutoff, st.device)
        st.images[name] = _render_samples(st.G[name], st.ws[name], labels, seeds, Path(cfg.out) / "samples" / name,
                                          {**base, "generator": _source_id(st.loaded[name])}, cfg, f"render {name}")
        st.emb[name] = clip_metrics.encode_images(st.scorer, st.images[name], cfg.batch_size)


def _text_alignment(st: _State, prompt: str) -> dict:
    texts = clip_metrics.encode_texts(st.scorer, [st.cfg.source_prompt, prompt])
    out = {"clip_score": {"prompt": prompt}}
    for name in ("adapted", "source"):
        cs = clip_metrics.clip_score_from_embeddings(st.emb[name], texts[1])
        out["clip_score"][name] = {**cs.to_dict(), "per_sample": cs.per_image.tolist()}
    directional = clip_metrics.directional_similarity_from_embeddings(st.emb["source"], st.emb["adapted"],
                                                                      texts[0], texts[1])
    out["directional_clip"] = {"source_prompt": st.cfg.source_prompt, "prompt": prompt, **directional.to_dict(),
                               "per_sample": directional.per_sample.tolist()}
    return out


def _view_consistency(st: _State) -> tuple[dict, dict]:
    cfg = st.cfg
    nv = min(cfg.view_num_samples, len(st.seeds))
    yaw = torch.tensor([math.pi / 2 + math.radians(y) for y in cfg.view_yaws_deg])
    pitch = torch.full_like(yaw, math.pi / 2 + math.radians(cfg.view_pitch_deg))
    labels = default_cameras(st.G["source"], yaw, pitch).to(st.device)
    names = [f"yaw {y:+g}" for y in cfg.view_yaws_deg]
    res = {"num_latents": nv, "yaws_deg": list(cfg.view_yaws_deg), "pitch_deg": cfg.view_pitch_deg,
           "depth_tolerance": cfg.depth_tolerance}
    examples = {}
    for name in ("adapted", "source"):
        if name == "source" and st.same:
            res[name], examples[name] = res["adapted"], examples["adapted"]
            continue
        vc = evaluate_view_consistency(st.G[name], st.ws[name][:nv], labels, depth_tolerance=cfg.depth_tolerance,
                                       batch_size=cfg.batch_size, noise_mode=cfg.noise_mode, view_names=names)
        views_u8 = torch.from_numpy(to_uint8(vc.views.flatten(0, 1))).permute(0, 3, 1, 2)  # as the samples
        emb = clip_metrics.encode_images(st.scorer, views_u8, cfg.batch_size).reshape(nv, len(names), -1)
        res[name] = {**vc.to_dict(), "clip_view_agreement": clip_metrics.view_agreement_from_embeddings(emb).to_dict()}
        examples[name] = vc.examples
    return res, examples


def run(cfg: EvalConfig) -> EvalResult:
    """Run the evaluation (see the module docstring). Arguments are checked before any model is built."""
    from adapt3d.metrics.report import write_metrics_json

    t0 = time.time()
    seeds = validate(cfg)
    out = Path(cfg.out)
    st = _setup(cfg, seeds)
    _render_all(st)
    results: dict = {}
    if "clip" in cfg.metrics:
        results.update(_text_alignment(st, cfg.prompt or DEMO_PROMPT))
    if "diversity" in cfg.metrics:
        k = min(cfg.num_clusters, len(seeds) // 2)
        if k < cfg.num_clusters:
            st.notes.append(f"--num-clusters {cfg.num_clusters} reduced to {k} (= N // 2) for {len(seeds)} samples")
        results["diversity"] = {"cluster_features": cfg.cluster_features,
                                "adapted": _diversity(st.images["adapted"], st.emb["adapted"], st.lp, cfg, k)}
        results["diversity"]["source"] = results["diversity"]["adapted"] if st.same else _diversity(
            st.images["source"], st.emb["source"], st.lp, cfg, k)
    view_examples: dict = {}
    if "view" in cfg.metrics:
        results["view_consistency"], view_examples = _view_consistency(st)
    if "fid" in cfg.metrics:  # FD-CLIP reuses the sample embeddings (CLIPImageFeatures == encode_images)
        results["fid"] = _fid(cfg, st.scorer, st.clip_name, st.images["adapted"], st.images["source"],
                              st.emb["adapted"], st.emb["source"], st.notes, st.device)
    lp = st.lp
    metrics = {
        "command": "eval", "versions": _versions(),
        "models": {"adapted": _source_id(st.loaded["adapted"]), "source": _source_id(st.loaded["source"]),
                   "clip": st.clip_name, "lpips": lp.source if lp is not None else None,
                   "lpips_random_weights": bool(lp is not None and lp.random_weights)},
        "settings": to_jsonable(asdict(cfg)),
        "seeds": seeds, "cameras": {"pose_sampler": cfg.pose_sampler, "seed": cfg.seed,
                                    "yaw": st.poses.yaw.tolist(), "pitch": st.poses.pitch.tolist()},
        "metrics": results, "warnings": st.warnings, "notes": st.notes + list(st.loaded["adapted"].notes),
        "seconds": round(time.time() - t0, 3)}
    metrics_path = write_metrics_json(out / "metrics.json", metrics)
    grids = _grid_images(st.G["source"], st.G["adapted"], st.ws["source"], st.ws["adapted"], cfg)
    report_path = write_eval_report(out, metrics, grids=grids, samples=st.images, view_examples=view_examples)
    return EvalResult(out, metrics_path, report_path, metrics, st.warnings + st.notes, time.time() - t0)


def _fid(cfg: EvalConfig, scorer, clip_name: str, imgs_ad, imgs_src, emb_ad, emb_src, notes: list[str],
         device: torch.device) -> dict:
    kw = dict(kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed)
    same = imgs_src is imgs_ad
    feature = _fid_feature(cfg)
    if cfg.reference is None:
        notes.append("no --reference: FID/KID compare the adapted samples with the source samples (distance from "
                     "the source domain), not with a target dataset")
    batches = (lambda: fid.load_reference_images(cfg.reference, imgs_ad.shape[-1], cfg.max_reference_images,
                                                 cfg.batch_size))
    if feature == "inception":
        extractor = inception.load_inception(cfg.inception_weights, sha256=cfg.inception_sha256,
                                             preprocess=cfg.fid_inception_preprocess).to(device)
        if not extractor.source["published_weights"]:
            notes.append(f"the Inception weights {extractor.source['weights']} are not the published file (sha256 "
                         f"{extractor.source['sha256'][:16]}...): FID/KID are not comparable with papers")
        name = "inception" if cfg.fid_inception_preprocess == "tensorflow" else "inception:pytorch-fid"
        info = dict(extractor.source)
        feats_ad = fid.extract_features(extractor, imgs_ad, cfg.batch_size)
        feats_src = feats_ad if same else fid.extract_features(extractor, imgs_src, cfg.batch_size)
        ref_feats = feats_src if cfg.reference is None else fid.extract_features(extractor, batches(),
                                                                                 cfg.batch_size)
    else:
        name, info = f"clip:{clip_name}", {"clip_model": clip_name}
        feats_ad, feats_src = emb_ad, emb_src
        ref_feats = emb_src if cfg.reference is None else clip_metrics.encode_images(scorer, batches(),
                                                                                      cfg.batch_size)
    res = {"adapted": fid.fid_kid_from_features(ref_feats, feats_ad, feature_name=name, **kw)}
    if cfg.reference is not None:
        res["source"] = res["adapted"] if same else fid.fid_kid_from_features(ref_feats, feats_src,
                                                                              feature_name=name, **kw)
    return {"reference": str(cfg.reference) if cfg.reference else "source samples", "feature": feature,
            "extractor": info, **{k: v.to_dict() for k, v in res.items()}}


@torch.no_grad()
def _grid_images(G_src, G_ad, ws_src, ws_ad, cfg: EvalConfig) -> dict:
    """uint8 renders (S, Y, H, W, 3) of the first grid seeds at the grid yaws, for both generators."""
    n = min(cfg.grid_samples, ws_ad.shape[0])
    yaw = torch.tensor([math.pi / 2 + math.radians(y) for y in cfg.grid_yaws_deg])
    out = {"yaws_deg": list(cfg.grid_yaws_deg)}
    for name, G, ws in (("source", G_src, ws_src), ("adapted", G_ad, ws_ad)):
        cols = []
        for y in yaw:
            c = default_cameras(G_src, y.expand(n), torch.full((n,), math.pi / 2)).to(ws.device)
            img, _ = render_views(G, ws[:n], c, cfg.batch_size, cfg.noise_mode)
            cols.append(to_uint8(img))
        out[name] = np.stack(cols, 1)
    return out
