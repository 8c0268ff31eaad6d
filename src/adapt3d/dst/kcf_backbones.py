"""Pretrained backbones for the KCF pose estimator, from a local weights file (no download, no torchvision).

3D-DST's KCF fine-tunes an ImageNet-pretrained ResNet-50 at 256 px (its ``resnet_pose.py``: torchvision's
``resnet50(pretrained=True)``, a new fc with 3 x 41 outputs). adapt3d's default stays the small CNN trained from
scratch (offline anywhere); ``adapt3d kcf --model resnet --backbone PATH`` plugs in a pretrained ResNet given as

* a **transformers folder** (``config.json`` + weights, e.g. a local copy of ``microsoft/resnet-50``, saved by
  ``ResNetModel``/``ResNetForImageClassification.save_pretrained``), read with ``ResNetModel.from_pretrained``; or
* a **plain state dict** (``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only``) in **torchvision's ResNet
  layout** (``conv1``, ``bn1``, ``layer1``-``layer4`` of BasicBlock or Bottleneck blocks with ``downsample.0/1``,
  ``fc``), as torchvision's ImageNet checkpoints (``resnet50-0676ba61.pth``, ...) are stored. Depth, block type and
  widths are read from the tensors (ResNet-18/34/50/101/152 and narrower variants); the weights are renamed into
  transformers' ``ResNetModel`` (stride in the 3 x 3 convolution, torchvision's "v1.5"), ``fc`` is dropped.

The pose head is a new linear layer on the globally pooled features. Inputs arrive in [-1, 1] (the KCF loader's
range) and are normalised with the ImageNet mean and std, which such backbones were trained with.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

__all__ = ["PretrainedResNetPose", "load_resnet_backbone", "resnet_config_from_torchvision",
           "torchvision_to_transformers_resnet", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")


def _read_state(path: Path, flag: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    from adapt3d.utils.torch_load import OldTorchError, load_weights_only

    try:
        state = load_weights_only(path, f"{flag} {path}")
    except OldTorchError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling refusal or corrupt file
        raise ValueError(f"{flag}: {path} is not a plain state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{flag}: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def resnet_config_from_torchvision(state: dict[str, torch.Tensor], flag: str = "--backbone"):
    """transformers ``ResNetConfig`` of a torchvision-layout ResNet state dict (depths, block type, widths)."""
    from transformers import ResNetConfig

    if "conv1.weight" not in state or "layer1.0.conv1.weight" not in state:
        raise ValueError(f"{flag}: not a torchvision-layout ResNet state dict (no conv1.weight / "
                         f"layer1.0.conv1.weight; keys start with {sorted(state)[:3]})")
    bottleneck = "layer1.0.conv3.weight" in state
    depths, widths = [], []
    for stage in range(1, 5):
        blocks = {int(m.group(2)) for k in state for m in [_BLOCK.match(k)] if m and int(m.group(1)) == stage}
        if not blocks:
            raise ValueError(f"{flag}: the ResNet state dict has no layer{stage}")
        depths.append(max(blocks) + 1)
        last = "conv3" if bottleneck else "conv2"
        widths.append(int(state[f"layer{stage}.0.{last}.weight"].shape[0]))
    return ResNetConfig(embedding_size=int(state["conv1.weight"].shape[0]), hidden_sizes=widths, depths=depths,
                        layer_type="bottleneck" if bottleneck else "basic", downsample_in_bottleneck=False,
                        downsample_in_first_stage=False)


def torchvision_to_transformers_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state dict to transformers ``ResNetModel`` keys (``fc`` dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key.startswith("conv1."):
            new = "embedder.embedder.convolution." + key[len("conv1."):]
        elif key.startswith("bn1."):
            new = "embedder.embedder.normalization." + key[len("bn1."):]
        else:
            m = re.match(r"^layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)$", key)
            d = re.match(r"^layer(\d)\.(\d+)\.downsample\.([01])\.(.+)$", key)
            if m:
                stage, block, kind, j, rest = m.groups()
                part = "convolution" if kind == "conv" else "normalization"
                new = f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(j) - 1}.{part}.{rest}"
            elif d:
                stage, block, j, rest = d.groups()
                part = "convolution" if j == "0" else "normalization"
                new = f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{part}.{rest}"
            else:
                raise ValueError(f"--backbone: unexpected key {key!r} in a torchvision ResNet state dict")
        out[new] = value
    return out


def load_resnet_backbone(path: str | Path, flag: str = "--backbone"):
    """A transformers ``ResNetModel`` with the weights at ``path`` (a transformers folder or a torchvision-layout
    state dict file; see the module docstring)."""
    from transformers import ResNetModel

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{flag}: {path} has no config.json (expected a transformers ResNet folder)")
        try:
            model = ResNetModel.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise ValueError(f"{flag}: {path} is not a transformers ResNet ({e})") from e
        return model
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: {path} does not exist")
    state = _read_state(path, flag)
    model = ResNetModel(resnet_config_from_torchvision(state, flag))
    mapped = torchvision_to_transformers_resnet(state)
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{flag}: {path} does not fit the ResNet its shapes describe: {e}") from e
    return model


class PretrainedResNetPose(nn.Module):
    """ResNet backbone (transformers ``ResNetModel``) + linear pose head; (N, 3, S, S) in [-1, 1] ->
    (N, num_outputs)."""

    def __init__(self, backbone: nn.Module, num_outputs: int):
        super().__init__()
        self.backbone = backbone
        features = int(backbone.config.hidden_sizes[-1])
        self.head = nn.Linear(features, num_outputs)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, C) of images in [-1, 1]."""
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.backbone(pixel_values=x).pooler_output.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, num_outputs)
        return self.head(self.features(x))
