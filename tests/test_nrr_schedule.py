"""Fine-tuning renders at DATID-3D's neural rendering resolution schedule for official weights: EG3D's
training/loss.py rint(initial * (1 - a) + final * a), a = min(cur_nimg / (fade_kimg * 1000), 1), with DATID-3D's
initial 64 (train.py default), final 128 (datid3d_train.py) and fade 1000 kimg (train.py default)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adapt3d.models.checkpoint import save_checkpoint
from adapt3d.models.known_models import known_model_config
from adapt3d.models.triplane import TriPlaneGenerator, build_generator, preset_config
from adapt3d.pipelines.adapt import AdaptConfig, stage_configs
from adapt3d.pipelines.finetune import FinetuneConfig, default_discriminator, prepare_dataset, run
from adapt3d.training.loop import Trainer
from adapt3d.training.schedules import resolve_rendering_schedule, uses_official_weights
from test_finetune import make_target_dataset, small_config


def eg3d_resolution(initial, final, fade_kimg, cur_nimg):  # written from EG3D's loss.py, independently
    alpha = min(cur_nimg / (fade_kimg * 1e3), 1)
    return int(np.rint(initial * (1 - alpha) + final * alpha))


def _meta(cfg):
    with torch.device("meta"):
        return TriPlaneGenerator(cfg)


def test_official_weights_get_datid3d_schedule_presets_keep_their_resolution():
    ffhq = _meta(known_model_config("ffhq").generator_config())
    cat = _meta(known_model_config("datid3d-cat_in_Zootopia").generator_config())
    assert uses_official_weights(ffhq, from_checkpoint=True) and uses_official_weights(cat, from_checkpoint=True)
    assert not uses_official_weights(ffhq, from_checkpoint=False)  # --preset ffhq512: random weights
    assert not uses_official_weights(_meta(preset_config("tiny")), from_checkpoint=True)
    assert not uses_official_weights(_meta(preset_config("shapenet128")), from_checkpoint=True)
    s = resolve_rendering_schedule("auto", None, None, 1000.0, 128, official=True)
    assert (s.mode, s.initial, s.final, s.fade_kimg) == ("datid3d", 64, 128, 1000.0)
    s = resolve_rendering_schedule("auto", None, None, 1000.0, 32, official=False)
    assert (s.mode, s.initial, s.final) == ("fixed", 32, None)
    s = resolve_rendering_schedule("fixed", None, None, 1000.0, 128, official=True)
    assert (s.initial, s.final) == (128, None)
    s = resolve_rendering_schedule("datid3d", 48, 96, 10.0, 32, official=False)
    assert (s.mode, s.initial, s.final, s.fade_kimg) == ("datid3d", 48, 96, 10.0)
    with pytest.raises(ValueError, match="--neural-rendering-schedule"):
        resolve_rendering_schedule("linear", None, None, 1000.0, 32, official=False)


@pytest.mark.parametrize("cur_nimg", [0, 20, 7_800, 100_000, 199_980, 200_000, 503_140, 999_980, 1_000_000,
                                      3_000_000])
def test_schedule_follows_eg3d_formula(cur_nimg):
    s = resolve_rendering_schedule("auto", None, None, 1000.0, 128, official=True)
    assert s.at(cur_nimg) == eg3d_resolution(64, 128, 1000, cur_nimg)


def test_datid3d_run_of_200_kimg_stays_between_64_and_77():
    s = resolve_rendering_schedule("datid3d", None, None, 1000.0, 128, official=True)
    used = {s.at(step * 20) for step in range(10_000)}  # batch 20, 200 kimg
    assert min(used) == 64 and max(used) == 77


def test_trainer_renders_each_step_at_the_scheduled_resolution(tmp_path):
    data = make_target_dataset(tmp_path / "ds", n=8)
    cfg = small_config(data, tmp_path / "run", neural_rendering_schedule="datid3d", neural_rendering_resolution=16,
                       neural_rendering_resolution_final=32, neural_rendering_resolution_fade_kimg=0.02,
                       density_reg=0.0, r1_gamma=0.0)
    G = build_generator("tiny")
    ds, _ = prepare_dataset(cfg, G)
    trainer = Trainer(cfg, G, default_discriminator(G), ds)
    loader = iter(trainer.data_loader())
    seen = []
    for _ in range(4):
        reals, c = next(loader)
        before = trainer.cur_nimg
        rec = trainer.train_step(reals, c)
        seen.append((before, rec["neural_rendering_resolution"]))
    assert seen == [(n, eg3d_resolution(16, 32, 0.02, n)) for n, _ in seen]
    assert [r for _, r in seen] == [16, 19, 22, 26]
    assert trainer.G_ema.neural_rendering_resolution == 26  # EG3D copies G's resolution to G_ema


def test_finetune_records_the_schedule_and_adapt_sets_it(tmp_path):
    data = make_target_dataset(tmp_path / "ds", n=8)
    folder = save_checkpoint(tmp_path / "tiny", build_generator("tiny"))
    cfg = small_config(data, tmp_path / "run", preset=None, generator=str(folder), neural_rendering_resolution=None,
                       kimg=0.008)
    result = run(cfg)
    options = json.loads((tmp_path / "run" / "options.json").read_text())
    assert options["resolved"]["neural_rendering"] == {"mode": "fixed", "initial": 32, "final": None,
                                                       "fade_kimg": 1000.0}  # a 64 px model: not official weights
    assert options["options"]["neural_rendering_schedule"] == "auto"
    assert any("32 px throughout" in n for n in result.notes)
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert {s["neural_rendering_resolution"] for s in stats} == {32}
    _, train, _ = stage_configs(AdaptConfig(prompt=("x",), generator="ffhq", neural_rendering_schedule="fixed",
                                            augment_ops=("bgc",)))
    assert train.neural_rendering_schedule == "fixed" and train.augment_ops == ("bgc",)
    _, train, _ = stage_configs(AdaptConfig(prompt=("x",), generator="ffhq"))
    assert train.neural_rendering_schedule == "auto"
    with pytest.raises(ValueError, match="--augment-ops"):
        run(FinetuneConfig(dataset=data, out=tmp_path / "bad", preset="tiny", augment_ops=("shear",)))
