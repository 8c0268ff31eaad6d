"""Pretrained KCF backbones from local files: a torchvision-layout ResNet state dict (checked against a reference
ResNet written here in the torchvision layout) and a transformers ResNet folder; and KCF running with one."""

import pytest
import torch
from torch import nn

from adapt3d.dst.kcf_backbones import PretrainedResNetPose, load_resnet_backbone
from adapt3d.pipelines.kcf import KcfConfig, kcf


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: stride in the 3 x 3 convolution), written from its description."""

    def __init__(self, cin, width, stride):
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchvisionLayoutResNet(nn.Module):
    def __init__(self, blocks=(1, 2, 1, 1), widths=(4, 8, 16, 32), stem=8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = stem
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for b in range(n):
                layers.append(Bottleneck(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = 4 * w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(cin, 10)

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


def _randomised(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so a mis-mapped buffer shows
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_state_dict_becomes_the_same_network(tmp_path, suffix):
    ref = _randomised(TorchvisionLayoutResNet())
    path = tmp_path / f"resnet{suffix}"
    if suffix == ".pth":
        torch.save(ref.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    backbone = load_resnet_backbone(path).eval()
    assert backbone.config.depths == [1, 2, 1, 1] and backbone.config.hidden_sizes == [16, 32, 64, 128]
    pose = PretrainedResNetPose(backbone, 12).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1  # KCF's [-1, 1] input
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.features(((x + 1) / 2 - mean) / std)
        assert torch.allclose(pose.features(x), expected, atol=1e-5)
        assert pose(x).shape == (2, 12)


def test_transformers_folder_and_errors(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                     layer_type="basic")).eval()
    model.save_pretrained(tmp_path / "hf")
    loaded = load_resnet_backbone(tmp_path / "hf").eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).pooler_output, model(pixel_values=x).pooler_output, atol=1e-6)
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="--backbone.*not a torchvision-layout ResNet"):
        load_resnet_backbone(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="--backbone"):
        load_resnet_backbone(tmp_path / "missing.pt")


def test_kcf_with_a_resnet_backbone(tmp_path):
    import json
    import math

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "car" / "m"
    (folder / "annotation").mkdir(parents=True)
    (folder / "image").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "image" / f"{i:03d}_00.png")
        (folder / "annotation" / f"{i:03d}_00.json").write_text(json.dumps(
            {"class": "car", "mesh_id": "m", "image": f"car/m/image/{i:03d}_00.png", "azimuth": i * math.pi / 4,
             "elevation": 0.2, "inplane_rotation": 0.0, "distance": 1.5, "files": {}}))
    torch.save(_randomised(TorchvisionLayoutResNet()).state_dict(), tmp_path / "r.pth")
    base = dict(dataset=tmp_path, folds=2, epochs=1, image_size=32, num_bins=4, device="cpu", progress=False)
    result = kcf(KcfConfig(model="resnet", backbone=tmp_path / "r.pth", **base))
    assert len(result.losses) == 8 and all(np.isfinite(list(result.losses.values())))
    with pytest.raises(ValueError, match="--model resnet: give --backbone"):
        kcf(KcfConfig(model="resnet", **base))
    with pytest.raises(ValueError, match="--backbone: only used with --model resnet"):
        kcf(KcfConfig(backbone=tmp_path / "r.pth", **base))
