"""K-fold consistency filter: bins, losses, selection, and a constructed set with deliberately wrong labels."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapt3d.data.cad import find_models, load_cad_mesh
from adapt3d.data.cad_procedural import write_demo_meshes
from adapt3d.dst.kcf import SmallPoseCNN, angle_bins, kfold_split, pose_loss, select_kept
from adapt3d.dst.render import render_view
from adapt3d.dst.viewpoints import Viewpoint
from adapt3d.export.images import save_image
from adapt3d.pipelines.kcf import KcfConfig, kcf


def test_angle_bins_wrap_and_clamp():
    b = angle_bins([0.0, 2 * math.pi - 1e-9, -0.1, math.pi], [-math.pi / 2, math.pi / 2, 0.0, 0.1],
                   [-math.pi, math.pi - 1e-9, 0.0, 3 * math.pi], num_bins=4)
    assert b[:, 0].tolist() == [0, 3, 3, 2]  # azimuth wraps: -0.1 is in the last bin
    assert b[:, 1].tolist() == [0, 3, 2, 2]  # elevation clamps at +-pi/2
    assert b[:, 2].tolist() == [0, 3, 2, 0]  # theta in [-pi, pi) wraps


def test_pose_loss_is_the_sum_of_three_cross_entropies():
    logits = torch.randn(5, 3 * 7, generator=torch.Generator().manual_seed(0))
    bins = torch.randint(0, 7, (5, 3), generator=torch.Generator().manual_seed(1))
    expected = sum(F.cross_entropy(logits[:, 7 * k:7 * (k + 1)], bins[:, k], reduction="none") for k in range(3))
    assert torch.allclose(pose_loss(logits, bins), expected)
    assert SmallPoseCNN(7, width=4)(torch.zeros(2, 3, 32, 32)).shape == (2, 21)


def test_kfold_split_and_select_kept():
    folds = kfold_split(23, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23)) and [len(f) for f in folds] == [5, 5, 5, 4, 4]
    assert all(np.array_equal(a, b) for a, b in zip(folds, kfold_split(23, 5, seed=0)))
    with pytest.raises(ValueError, match="--folds"):
        kfold_split(3, 5, 0)
    losses = np.array([1.0, 5.0, 2.0, 9.0, 0.5, 3.0])
    classes = ["a", "a", "a", "b", "b", "b"]
    assert select_kept(losses, classes, drop=1 / 3).tolist() == [True, False, True, False, True, True]
    assert select_kept(losses, classes, drop=1 / 3, per_class=False).tolist() == [True, False, True, False, True,
                                                                                  True]
    assert select_kept(losses, classes, drop=0.5, per_class=False).tolist() == [True, False, True, False, True,
                                                                                False]
    assert select_kept(losses, classes, threshold=2.5).tolist() == [True, False, True, False, True, False]
    with pytest.raises(ValueError, match="--drop"):
        select_kept(losses, classes, drop=1.0)


def wrong_head(num_outputs):
    """A user model with the wrong number of outputs."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_outputs + 1))


N_IMAGES, WRONG_FRACTION = 200, 0.1


@pytest.fixture(scope="module")
def noisy_dataset(tmp_path_factory):
    """200 renders of the box car at known azimuths laid out like a synth run; 10 % get a wrong azimuth label
    (the true one turned by 90-270 degrees), the situation KCF exists for."""
    root = tmp_path_factory.mktemp("kcf-set")
    car = next(m for m in find_models(write_demo_meshes(root / "meshes")) if m.class_name == "car")
    mesh = load_cad_mesh(car.path, car.up_axis)
    rng = np.random.default_rng(1)
    wrong = np.zeros(N_IMAGES, bool)
    wrong[rng.choice(N_IMAGES, int(WRONG_FRACTION * N_IMAGES), replace=False)] = True
    for i in range(N_IMAGES):
        azimuth = (i * 2.399963) % (2 * math.pi)  # golden-angle spread
        view = render_view(mesh, Viewpoint(azimuth, math.radians(60), 0.0, 1.5, 1), 32)
        label = (azimuth + rng.uniform(math.pi / 2, 3 * math.pi / 2)) % (2 * math.pi) if wrong[i] else azimuth
        image = f"car/box_car/image/{i:03d}_00.png"
        save_image(root / image, view.rgb)
        ann = {"class": "car", "mesh_id": "box_car", "image": image, "azimuth": label, "elevation": math.pi / 6,
               "theta": 0.0, "distance": 1.5, "files": {}}
        (root / "car/box_car/annotation").mkdir(parents=True, exist_ok=True)
        (root / f"car/box_car/annotation/{i:03d}_00.json").write_text(json.dumps(ann))
    return root, wrong


def test_kcf_removes_mostly_the_wrong_labels(noisy_dataset):
    root, wrong = noisy_dataset
    cfg = KcfConfig(dataset=root, folds=2, drop=WRONG_FRACTION, epochs=30, batch_size=32, lr=3e-3, image_size=32,
                    num_bins=8, width=8, seed=0, device="cpu", progress=False)
    result = kcf(cfg)
    files = sorted(result.losses)
    removed = np.array([f in set(result.removed) for f in files])
    assert removed.sum() == round(WRONG_FRACTION * N_IMAGES)
    precision = (removed & wrong).sum() / removed.sum()
    losses = np.array([result.losses[f] for f in files])
    print(f"KCF precision {precision:.2f}, mean loss right {losses[~wrong].mean():.2f} "
          f"wrong {losses[wrong].mean():.2f}")
    assert precision >= 0.8, precision  # chance level: 0.1; measured 0.85-1.0 over label-noise seeds
    assert losses[wrong].mean() > 2 * losses[~wrong].mean()

    out = root / "kcf"
    assert json.loads((out / "losses.json").read_text()) == pytest.approx(result.losses)
    assert (out / "removed.txt").read_text().split() == result.removed
    assert len((out / "kept.txt").read_text().split()) == N_IMAGES - removed.sum()
    summary = json.loads((out / "kcf.json").read_text())
    assert summary["fold_sizes"] == [100, 100] and summary["removed"] == removed.sum()
    for f in files[:20]:  # marked, not deleted
        ann = json.loads((root / f).read_text())
        assert ann["kcf"]["kept"] == (f not in result.removed) and (root / ann["image"]).is_file()

    # resume: finished folds are reused; another selection rule needs no training
    again = kcf(KcfConfig(**{**cfg.__dict__, "drop": 0.0, "threshold": float(np.median(losses))}))
    assert [n for n in again.notes if "reused" in n] == ["fold 0: reused fold0.json", "fold 1: reused fold1.json"]
    assert again.losses == pytest.approx(result.losses) and len(again.removed) == (losses > np.median(losses)).sum()


def test_kcf_custom_model_and_errors(noisy_dataset, tmp_path):
    root, _ = noisy_dataset
    base = dict(dataset=root, epochs=1, image_size=16, num_bins=4, width=4, device="cpu", progress=False)
    with pytest.raises(ValueError, match="--folds"):
        kcf(KcfConfig(**base, folds=1))
    with pytest.raises(ValueError, match="--model.*cannot import"):
        kcf(KcfConfig(**base, model="no_such_module_xyz:make"))
    with pytest.raises(ValueError, match="--model.*num_outputs"):
        kcf(KcfConfig(**base, model="torch.nn:Flatten"))
    with pytest.raises(ValueError, match="--model.*output shape"):
        kcf(KcfConfig(**base, model="test_dst_kcf:wrong_head"))
    torch.save(SmallPoseCNN(4, width=8).state_dict(), tmp_path / "w.pt")  # width 8 does not fit width 4
    with pytest.raises(ValueError, match="--init-weights.*does not fit"):
        kcf(KcfConfig(**base, init_weights=tmp_path / "w.pt"))
    with pytest.raises(FileNotFoundError, match="DATASET"):
        kcf(KcfConfig(**{**base, "dataset": tmp_path / "nothing"}))
    with pytest.raises(ValueError, match="no annotations"):
        kcf(KcfConfig(**{**base, "dataset": tmp_path}))
