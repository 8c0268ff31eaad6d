"""EG3DDataset: folders and zips (including EG3D dataset_tool layouts), x-flip, resizing, and clear errors."""

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.cameras import camera_label, mirror_label
from adapt3d.data.eg3d_dataset import DatasetError, EG3DDataset, check_camera_labels, read_dataset_json


def _labels(n):
    yaw = torch.linspace(1.3, 1.8, n)
    return camera_label(yaw, torch.full((n,), 1.5), radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837)


def _images(n, size=16, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def write_folder(root, images, labels, names=None):
    root.mkdir(parents=True, exist_ok=True)
    names = names or [f"img{i:03d}.png" for i in range(len(images))]
    for name, im in zip(names, images):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / name)
    (root / "dataset.json").write_text(json.dumps({"labels": [[n, lab.tolist()] for n, lab in zip(names, labels)]}))
    return root


def test_folder_items_order_and_values(tmp_path):
    imgs, labels = _images(3), _labels(3)
    root = write_folder(tmp_path / "ds", imgs, labels, names=["c.png", "a.png", "b.png"])
    ds = EG3DDataset(root)
    assert len(ds) == 3 and ds.native_resolution == 16 and ds.files == ["a.png", "b.png", "c.png"]
    image, label = ds[0]  # a.png is the second written image
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and label.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(imgs[1]).permute(2, 0, 1))
    torch.testing.assert_close(label, labels[1])
    torch.testing.assert_close(ds.labels, labels[[1, 2, 0]])


def test_zip_in_eg3d_tool_layout_with_backslashes(tmp_path):
    imgs, labels = _images(2, seed=1), _labels(2)
    path = tmp_path / "ds.zip"
    with zipfile.ZipFile(path, "w") as zf:
        names = []
        for i, im in enumerate(imgs):
            name = f"00000/img{i:08d}.png"
            import io
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="png")
            zf.writestr(name, buf.getvalue())
            names.append(name.replace("/", "\\"))  # EG3D's reader accepts Windows separators
        zf.writestr("dataset.json", json.dumps({"labels": [[n, lab.tolist()] for n, lab in zip(names, labels)]}))
    ds = EG3DDataset(path)
    assert ds.is_zip and len(ds) == 2 and ds.files[0] == "00000/img00000000.png"
    assert torch.equal(ds[1][0], torch.from_numpy(imgs[1]).permute(2, 0, 1))
    assert len(read_dataset_json(path)) == 2


def test_xflip_mirrors_image_and_camera(tmp_path):
    imgs, labels = _images(2), _labels(2)
    ds = EG3DDataset(write_folder(tmp_path / "ds", imgs, labels), xflip=True)
    assert len(ds) == 4 and ds.labels.shape == (4, 25)
    img, lab = ds[3]
    assert torch.equal(img, ds[1][0].flip(-1))
    torch.testing.assert_close(lab, mirror_label(labels[1]))
    assert check_camera_labels(ds.labels) == []


def test_resize_and_grey_images(tmp_path):
    root = tmp_path / "ds"
    write_folder(root, [np.full((32, 32, 3), 200, np.uint8)], _labels(1))
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(root / "img000.png")  # greyscale file
    ds = EG3DDataset(root, resolution=8)
    img, _ = ds[0]
    assert img.shape == (3, 8, 8) and int(img.min()) == 90 and int(img.max()) == 90
    assert ds.native_resolution == 32 and ds.image_resolution == 8


def test_errors_are_clear(tmp_path):
    labels = _labels(2)
    with pytest.raises(DatasetError, match="does not exist"):
        EG3DDataset(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset.json").write_text(json.dumps({"labels": []}))
    with pytest.raises(DatasetError, match="is empty"):
        EG3DDataset(empty)
    nojson = tmp_path / "nojson"
    nojson.mkdir()
    with pytest.raises(DatasetError, match="no dataset.json"):
        EG3DDataset(nojson)
    root = write_folder(tmp_path / "short", _images(2), labels)
    doc = json.loads((root / "dataset.json").read_text())
    doc["labels"][1][1] = doc["labels"][1][1][:16]
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"img001.png.*must be 25 numbers.*got 16 values"):
        EG3DDataset(root)
    doc["labels"] = None
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="unconditional"):
        EG3DDataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        EG3DDataset(root)
    root = write_folder(tmp_path / "missingimg", _images(2), labels)
    (root / "img001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) listed in dataset.json are missing.*img001.png"):
        EG3DDataset(root)
    rect = write_folder(tmp_path / "rect", [np.zeros((8, 12, 3), np.uint8)], labels[:1])
    with pytest.raises(DatasetError, match="square"):
        EG3DDataset(rect)
    mixed = write_folder(tmp_path / "mixed", [np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)],
                         labels)
    with pytest.raises(DatasetError, match="--resize"):
        EG3DDataset(mixed)[1]


def test_camera_label_checks():
    good = _labels(3)
    assert check_camera_labels(good) == []
    pixels = good.clone()
    pixels[:, 16] = 1100.0  # intrinsics in pixels instead of normalised
    assert any("focal" in p for p in check_camera_labels(pixels))
    garbage = torch.rand(3, 25)
    problems = check_camera_labels(garbage)
    assert any("last row" in p for p in problems) and any("orthonormal" in p for p in problems)
