"""The recipes of issue 16 say what their sources say (checked value by value), and the CPU versions run here."""
import pytest

from resnet_fpn.data.transforms import split_augment
from resnet_fpn.training import load_config
from resnet_fpn.training.datamodule import DetectionDataModule

from conftest import REPO

CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name, model, copy_paste", [("mask_rcnn_R50_FPN_v2_lsj_100ep", "mask_rcnn_v2", True),
                                                     ("faster_rcnn_R50_FPN_v2_lsj_100ep", "faster_rcnn_v2", False)])
def test_lsj_recipes_follow_detectron2_new_baselines_100ep_lsj(name, model, copy_paste):
    # detectron2 configs/new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py: total batch 64, lr 0.1, wd 4e-5, 184375
    # iterations, milestones 163889/177546, warm-up 500 from 0.067, SyncBN, from scratch, LSJ 1024 at 0.1-2.0.
    c = load_config(CONFIGS / f"{name}.yaml")
    assert c.model["model"] == model and c.model["norm"] == "sync_bn" and c.model["freeze_at"] == 0
    assert c.data.batch_size * c.trainer.devices == 64 and c.trainer.strategy == "ddp"
    assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.momentum) == ("sgd", 0.1, 4e-5, 0.9)
    assert (c.trainer.max_steps, c.optim.steps, c.optim.warmup_steps, c.optim.warmup_factor) == (
        184375, [163889, 177546], 500, 0.067)
    per_image, batch = split_augment(c.data.augment)
    assert {"name": "LargeScaleJitter", "size": 1024, "scale": [0.1, 2.0]} in per_image
    assert (c.model["min_size"], c.model["max_size"]) == (1024, 1024)
    assert (batch == {"name": "CopyPaste", "p": 0.5}) if copy_paste else batch is None
    assert c.trainer.ema is not None and c.trainer.ema.decay == 0.9998
    assert c.trainer.precision == "auto"


def test_3x_recipe_is_detectron2s_multi_scale_270k():
    c = load_config(CONFIGS / "faster_rcnn_R50_FPN_3x.yaml")
    assert c.model["min_size"] == list(range(640, 801, 32)) and c.model["max_size"] == 1333
    assert (c.trainer.max_steps, c.optim.steps, c.optim.lr, c.data.batch_size * c.trainer.devices) == (
        270000, [210000, 250000], 0.02, 16)
    assert c.model["norm"] == "frozen_bn"  # the 3x reference keeps frozen BN: no SyncBN


@pytest.mark.parametrize("name", ["mask_rcnn_R18_FPN_fruits_cpu", "mask_rcnn_R18_FPN_lsj_fruits_cpu"])
def test_cpu_recipes_build_their_data_on_the_shared_fruits_nuts(name, shared_data, monkeypatch):
    monkeypatch.chdir(REPO)  # the recipes name ../shared/data relative to the repository
    c = load_config(CONFIGS / f"{name}.yaml")
    assert c.trainer.accelerator == "cpu" and c.trainer.precision == "auto" and c.trainer.channels_last == "auto"
    data = DetectionDataModule(c.data, with_masks=True, seed=0, val_targets_with_masks=True)
    data.setup("fit")
    images, targets = next(iter(data.train_dataloader()))
    assert len(images) == c.data.batch_size and all("masks" in t for t in targets)
    if "lsj" in name:
        size = c.model["min_size"]
        assert all(tuple(i.shape[-2:]) == (size, size) for i in images)
        assert c.trainer.ema is not None and c.evaluation.tta is not None
