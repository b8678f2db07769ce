"""Training: config checks, schedule, parameter groups, and end-to-end runs (slow) on real and synthetic data."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from resnet_fpn.checkpoint import detector_from_checkpoint
from resnet_fpn.evaluation import evaluate_results
from resnet_fpn import evaluate_checkpoint
from resnet_fpn.training import config_from_dict, load_config, train
from resnet_fpn.training.module import DetectionModule, lr_lambda, parameter_groups

from conftest import REPO

STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
TRAIN = [sys.executable, str(REPO / "tools" / "train_det.py")]


# ----------------------------------------------------------------------------------------------- config
def test_recipes_in_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.model["model"] in ("faster_rcnn", "mask_rcnn", "retinanet", "fcos"), path


def test_reference_recipe_matches_detectron2_1x():
    config = load_config(REPO / "configs" / "faster_rcnn_R50_FPN_1x.yaml")
    assert (config.data.batch_size, config.optim.lr, config.trainer.max_steps) == (2, 0.02, 90000)
    assert config.optim.steps == [60000, 80000] and config.trainer.devices == 8
    assert (config.model["min_size"], config.model["max_size"]) == ([640, 672, 704, 736, 768, 800], 1333)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"optim": {"lr": 0.1, "moment": 0.9}}, r"config\.optim: unknown key\(s\) \['moment'\]; valid keys are"),
        ({"trainr": {}}, r"config: unknown key\(s\) \['trainr'\]"),
        ({"model": {"backbone_weight": "x"}}, r"config\.model: unknown key\(s\) \['backbone_weight'\]; valid keys are build_detector's"),
        ({"data": {"synthetic": {"size": 3}}}, r"config\.data\.synthetic: unknown key\(s\) \['size'\]"),
        ({"optim": {"name": "adam"}}, r"optim\.name must be one of \('sgd', 'adamw'\), got 'adam'"),
        ({"trainer": {"precision": "fp8"}}, r"trainer\.precision must be one of .* got 'fp8'"),
        ({"data": 3}, r"config\.data: expected a mapping of options, got int 3"),
        ({"trainer": {"channels_last": "yes"}}, r"trainer\.channels_last must be true or false, got 'yes'"),
    ],
)
def test_config_errors_name_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(data)


def test_overrides_and_yaml_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer: {max_steps: 10}\nmodel: {backbone: resnet18-fpn}\n")
    config = load_config(path, overrides={"trainer.max_steps": 3, "optim.lr": 0.5, "data.root": None})
    assert config.trainer.max_steps == 3 and config.optim.lr == 0.5 and config.model["backbone"] == "resnet18-fpn"
    assert config.model["model"] == "faster_rcnn"  # defaults fill what the recipe leaves out
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {max_steps: [1,\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match=r"config file not found: .*missing\.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_profile_step_times_data_and_steps_and_lists_operators(tmp_path):
    from resnet_fpn.training.profile import format_step_profile, profile_train_step

    result = profile_train_step(config_from_dict(tiny_config(tmp_path)), steps=2, top=3,
                                model_overrides={"box_head_dim": 64})
    assert result["data_ms"] > 0 and result["step_s"] > 0 and len(result["ops"]) == 3
    # Operators are listed by self CPU time, largest first.
    assert [ms for _, ms in result["ops"]] == sorted((ms for _, ms in result["ops"]), reverse=True)
    table = format_step_profile(result)
    assert table.splitlines()[2] == "| operator | self CPU ms |" and len(table.splitlines()) == 7


def test_channels_last_training_converts_the_detector(tmp_path):
    config = tiny_config(tmp_path)
    config["trainer"].update({"max_steps": 1, "val_every_n_steps": None, "channels_last": True})
    parsed = config_from_dict(config)
    module = DetectionModule(model={**parsed.model, "num_classes": 4}, optim=vars(parsed.optim),
                             categories=[{"label": i, "id": i, "name": str(i)} for i in (1, 2, 3)], max_steps=1,
                             channels_last=True)
    weights = [m.weight for m in module.model.modules() if isinstance(m, nn.Conv2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    result = train(parsed)  # one step, then the final evaluation, in NHWC
    assert set(result["metrics"]) == {"bbox", "per_category"}
    assert math.isfinite(result["metrics"]["bbox"]["AP"])


# --------------------------------------------------------------------------------------- schedule, optim
def test_lr_schedule_warmup_multistep_cosine():
    common = dict(warmup_steps=100, warmup_factor=0.001, milestones=[60000, 80000], gamma=0.1, max_steps=90000)
    assert lr_lambda(0, schedule="multistep", **common) == pytest.approx(0.001)
    assert lr_lambda(50, schedule="multistep", **common) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_lambda(100, schedule="multistep", **common) == 1.0
    assert lr_lambda(60000, schedule="multistep", **common) == pytest.approx(0.1)
    assert lr_lambda(85000, schedule="multistep", **common) == pytest.approx(0.01)
    assert lr_lambda(45000, schedule="cosine", **common) == pytest.approx(0.5)
    assert lr_lambda(90000, schedule="cosine", **common) == pytest.approx(0.0)
    assert lr_lambda(5000, schedule="constant", **common) == 1.0


def test_norm_parameters_get_their_own_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1, bias=True), nn.GroupNorm(2, 8))
    model[0].weight.requires_grad_(False)
    groups = parameter_groups(model, weight_decay=1e-4, weight_decay_norm=0.0)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert sum(p.numel() for p in groups[0]["params"]) == 8 + 8 * 8 + 8  # conv0 bias (weight frozen), conv2 weight and bias
    assert sum(p.numel() for p in groups[1]["params"]) == 4 * 8  # BN and GN weight and bias


# ------------------------------------------------------------------------------------------- end to end
def tiny_config(tmp_path: Path, **data) -> dict:
    return {
        "model": {"model": "faster_rcnn", "backbone": "resnet18-fpn", "norm": "bn", "min_size": 96, "max_size": 96,
                  "anchor_sizes": [8, 16, 32, 64, 128], "box_batch_size_per_image": 32, "box_head_dim": 64,
                  "rpn_pre_nms_top_n_train": 200, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 100,
                  "rpn_post_nms_top_n_test": 50},
        "data": {"synthetic": {"num_train": 12, "num_val": 6, "image_size": [96, 96]}, "batch_size": 4,
                 "val_batch_size": 6, "num_workers": 0, "cache_dir": str(tmp_path / "cache"), **data},
        "optim": {"name": "adamw", "lr": 0.001, "warmup_steps": 2, "schedule": "cosine"},
        "trainer": {"max_steps": 4, "val_every_n_steps": 2, "checkpoint_every_n_steps": 2, "accelerator": "cpu",
                    "devices": 1, "log_every_n_steps": 1},
        "output_dir": str(tmp_path / "run"),
        "num_pictures": 2,
    }


def check_metrics_layout(metrics: dict, iou_types, names):
    assert set(metrics) == set(iou_types) | {"per_category"}
    for iou_type in iou_types:
        assert list(metrics[iou_type]) == STATS
        assert all(-1.0 <= v <= 1.0 for v in metrics[iou_type].values())
        assert set(metrics["per_category"][iou_type]) == set(names)


def test_tiny_synthetic_run_writes_metrics_checkpoints_and_pictures(tmp_path):
    result = train(config_from_dict(tiny_config(tmp_path)))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == result["metrics"]
    check_metrics_layout(metrics, ["bbox"], ["circle", "rectangle", "triangle"])
    assert {"last.ckpt", "best.ckpt"} <= {p.name for p in (run / "checkpoints").iterdir()}
    assert len(list((run / "predictions").glob("*.png"))) == 2
    history = json.loads((run / "history.json").read_text())
    assert [row["step"] for row in history] == [2, 4] and (run / "ap_vs_time.png").stat().st_size > 0
    # The checkpoint rebuilds the detector that was trained, and it scores the same on the val set.
    loaded = detector_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert [c.name for c in loaded.categories] == ["circle", "rectangle", "triangle"]
    assert loaded.options["num_classes"] == 4 and loaded.iou_types == ("bbox",)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    # tools/eval_det.py --checkpoint: the same numbers as training's final evaluation, and its results file
    # scores the same through the results mode.
    out = tmp_path / "eval"
    data_root = next((tmp_path / "cache").iterdir())
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "eval_det.py"), "--checkpoint",
                           str(run / "checkpoints" / "last.ckpt"), "--data-root", str(data_root), "--out",
                           str(out / "m.json"), "--results-out", str(out / "r.json"), "--plots", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "m.json").read_text()) == metrics
    rescored = evaluate_results(data_root / "annotations" / "instances_val.json", out / "r.json", iou_types=["bbox"])
    assert rescored["bbox"] == metrics["bbox"]
    assert (out / "pr_bbox_iou50.png").is_file()
    # The inference-optimised detector (folded BN, channels_last) detects the same boxes.
    ann, images = data_root / "annotations" / "instances_val.json", data_root / "images"
    fast = evaluate_checkpoint(run / "checkpoints" / "last.ckpt", ann_file=ann, images_dir=images, optimize=True)
    assert len(fast.results) == len(json.loads((out / "r.json").read_text()))
    assert abs(fast.metrics["bbox"]["AP"] - metrics["bbox"]["AP"]) <= 1e-3
    with pytest.raises(ValueError, match=r"dtype=torch\.bfloat16 needs optimize=True"):
        evaluate_checkpoint(run / "checkpoints" / "last.ckpt", ann_file=ann, images_dir=images,
                            dtype=torch.bfloat16)


def boxes_only_copy(shared_data: Path, tmp_path: Path) -> Path:
    """fruits_nuts' 4 val images as a boxes-only data set (segmentation removed), used as train and val."""
    ann = json.loads((shared_data / "fruits_nuts" / "annotations" / "instances_val.json").read_text())
    for a in ann["annotations"]:
        a.pop("segmentation", None)
    root = tmp_path / "boxes_only"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(ann))
    (root / "images").symlink_to(shared_data / "fruits_nuts" / "images")
    return root


def test_mask_rcnn_on_boxes_only_data_stops_before_training(tmp_path, shared_data):
    root = boxes_only_copy(shared_data, tmp_path)
    config = tiny_config(tmp_path, root=str(root))
    config["model"]["model"] = "mask_rcnn"
    with pytest.raises(ValueError, match=r"instances_train\.json: with_masks=True but the annotations have no segmentation masks: "
                       r"annotation id \d+ \(and 30 more\) has none"):
        train(config_from_dict(config))
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
    out = subprocess.run(TRAIN + ["--data-root", str(root), "--model", "mask_rcnn", "--max-steps", "1",
                                  "--output-dir", str(tmp_path / "cli")], capture_output=True, text=True)
    assert out.returncode == 2 and "the annotations have no segmentation masks" in out.stderr


@pytest.mark.slow
def test_faster_rcnn_on_boxes_only_data_trains_and_evaluates(tmp_path, shared_data):
    root = boxes_only_copy(shared_data, tmp_path)
    config = tiny_config(tmp_path, root=str(root))
    config["model"]["min_size"] = config["model"]["max_size"] = 128
    result = train(config_from_dict(config))
    assert set(result["metrics"]) == {"bbox", "per_category"}
    assert set(result["metrics"]["per_category"]["bbox"]) == {"date", "fig", "hazelnut"}


@pytest.mark.slow
def test_faster_rcnn_on_coco128(tmp_path, shared_data):
    out = tmp_path / "coco128"
    proc = subprocess.run(TRAIN + ["--data-root", str(shared_data / "coco128"), "--backbone", "resnet18-fpn",
                                   "--max-steps", "3", "--val-every", "3", "--checkpoint-every", "3",
                                   "--batch-size", "2", "--num-workers", "0", "--output-dir", str(out),
                                   "--config", str(REPO / "configs" / "coco128_cpu.yaml")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["bbox"]) == STATS
    # coco128's val split holds 40 of the 80 classes: the others have no ground truth and read -1.
    per_category = metrics["per_category"]["bbox"]
    assert len(per_category) == 80 and sum(v == -1 for v in per_category.values()) == 40
    categories = detector_from_checkpoint(out / "checkpoints" / "last.ckpt").categories
    assert len(categories) == 80 and categories[-1].id == 90  # original COCO ids, with their gaps


@pytest.mark.slow
def test_mask_rcnn_on_fruits_nuts(tmp_path, shared_data):
    config = tiny_config(tmp_path, root=str(shared_data / "fruits_nuts"))
    config["model"].update(model="mask_rcnn", min_size=160, max_size=224, mask_head_dim=64)
    result = train(config_from_dict(config))
    check_metrics_layout(result["metrics"], ["bbox", "segm"], ["date", "fig", "hazelnut"])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_two_process_cpu_ddp_runs_and_its_checkpoint_loads(tmp_path):
    out = tmp_path / "ddp"
    cfg = tmp_path / "tiny.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    proc = subprocess.run(TRAIN + ["--config", str(cfg), "--devices", "2", "--strategy", "ddp", "--accelerator",
                                   "cpu", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    detector_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert list(json.loads((out / "metrics.json").read_text())["bbox"]) == STATS


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_last_checkpoint(tmp_path):
    import yaml

    config = tiny_config(tmp_path)
    config["trainer"].update(max_steps=12, val_every_n_steps=100, checkpoint_every_n_steps=2)
    config["num_pictures"] = 0
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(TRAIN + ["--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let it train past the checkpoint, so the kill lands mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= killed_step < 12
    leftovers = [p.name for p in last.parent.iterdir() if p.name.endswith((".tmp", ".part"))]
    assert leftovers == []  # no torn checkpoint file (Lightning writes through an fsspec transaction)
    resumed = subprocess.run(TRAIN + ["--config", str(cfg), "--resume"], capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last} at step {killed_step}" in resumed.stdout
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 12
    # ...and the resumed run ends with its evaluation, like an uninterrupted one.
    assert math.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["bbox"]["AP"])
