"""Train a detector with a ResNet-FPN backbone on COCO-format data, then evaluate it on the val split.

    resnet-fpn train --config configs/demo_cpu.yaml
    resnet-fpn train --config configs/faster_rcnn_R50_FPN_1x.yaml --data-root /data/coco --devices 8
    resnet-fpn train --backbone resnet18-fpn --data-root ../shared/data/coco128 --max-steps 200
    resnet-fpn train --config configs/demo_cpu.yaml --backbone-opt deform_stages=[c3,c4,c5] --backbone-opt grad_checkpointing=true

Flags override the YAML recipe. Writes OUTPUT_DIR/metrics.json, OUTPUT_DIR/checkpoints/ (last.ckpt,
best.ckpt), pictures of predictions and the AP-vs-time curve. `--resume` continues from last.ckpt.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, List, Tuple, Union

import yaml

from ..detectors import list_detectors

__all__ = ["add_arguments", "run"]

# Flag dest -> the config key it overrides (the YAML recipe's nesting, see resnet_fpn.training.config).
OVERRIDES = {
    "model": "model.model", "backbone": "model.backbone", "weights": "model.weights",
    "backbone_weights": "model.backbone_weights", "data_root": "data.root", "train_ann": "data.train_ann",
    "train_images": "data.train_images", "val_ann": "data.val_ann", "val_images": "data.val_images",
    "output_dir": "output_dir", "max_steps": "trainer.max_steps", "max_epochs": "trainer.max_epochs",
    "val_every": "trainer.val_every_n_steps", "checkpoint_every": "trainer.checkpoint_every_n_steps",
    "batch_size": "data.batch_size", "lr": "optim.lr", "devices": "trainer.devices",
    "accelerator": "trainer.accelerator", "strategy": "trainer.strategy", "num_nodes": "trainer.num_nodes",
    "precision": "trainer.precision", "channels_last": "trainer.channels_last", "seed": "trainer.seed",
    "num_workers": "data.num_workers",
}


def devices(value: str) -> Union[str, int, List[int]]:
    """``--devices 8``, ``--devices auto``, ``--devices 0,1`` (Lightning's forms)."""
    if value == "auto":
        return value
    try:
        if "," in value:
            return [int(v) for v in value.split(",") if v]
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count, 'auto' or a list like 0,1; got {value!r}") from None


def channels_last(value: str) -> Union[bool, str]:
    """``--channels-last [auto|true|false]``.

    Raises:
        argparse.ArgumentTypeError: another value.
    """
    text = value.strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto, true or false, got {value!r}")


def backbone_opt(text: str) -> Tuple[str, Any]:
    """``--backbone-opt KEY=VALUE``: one ResNet option (a field of ``ResNetOptions``), VALUE read as YAML.

    ``deform_stages=[c4,c5]`` gives ``("deform_stages", ["c4", "c5"])``, ``stride_in_1x1=true`` a bool,
    ``deform_groups=2`` an int. The key and value are checked with the recipe (``model.backbone_options``).

    Raises:
        argparse.ArgumentTypeError: no ``=``, an empty or dotted key, an empty value, or a value that is not YAML.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a ResNet option (e.g. deform_stages=[c3,c4,c5], "
                                         f"stride_in_1x1=true), got {text!r}")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{key}: the value {value!r} is not a YAML scalar or list: "
                                         f"{str(exc).splitlines()[0]}") from None
    if parsed is None:  # no option takes null, and the recipe's overrides would skip it silently
        raise argparse.ArgumentTypeError(f"{key}: no value given ({text!r}); e.g. {key}=true or {key}=[c4,c5]")
    return key, parsed


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The train subcommand's flags (each overrides one key of the YAML recipe)."""
    p.add_argument("--config", type=Path, help="YAML recipe (see configs/)")
    # keypoint_rcnn is loading and inference only (the training data path has no keypoints).
    p.add_argument("--model", choices=list_detectors(trainable=True))
    p.add_argument("--backbone", help="e.g. resnet50-fpn, resnext101_32x8d-fpn, timm:convnext_tiny-fpn")
    p.add_argument("--weights", help="a whole detector checkpoint to start from (path or URL)")
    p.add_argument("--backbone-weights", help="ImageNet (or detection) weights for the backbone (path or URL)")
    p.add_argument("--backbone-opt", type=backbone_opt, action="append", default=[], metavar="KEY=VALUE",
                   help="a ResNet option over the recipe's model.backbone_options (repeatable; VALUE as YAML), "
                        "e.g. deform_stages=[c3,c4,c5], conv=ws, grad_checkpointing=true; see docs/backbones.md")
    p.add_argument("--data-root", help="annotations/instances_{train,val}.json + images/, or COCO 2017's layout")
    p.add_argument("--train-ann")
    p.add_argument("--train-images")
    p.add_argument("--val-ann")
    p.add_argument("--val-images")
    p.add_argument("--output-dir")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--val-every", type=int, help="validate every N training steps")
    p.add_argument("--checkpoint-every", type=int, help="write last.ckpt every N training steps")
    p.add_argument("--batch-size", type=int, help="images per process")
    p.add_argument("--lr", type=float)
    p.add_argument("--devices", type=devices)
    p.add_argument("--accelerator", help="cpu, gpu, auto")
    p.add_argument("--strategy", help="auto, ddp, ddp_spawn, ...")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--precision", choices=["auto", "32", "32-true", "bf16-mixed", "16-mixed"],
                   help="auto: bf16-mixed where bf16 is native (CUDA bf16, AVX512-BF16/AMX CPUs), else 32-true")
    p.add_argument("--channels-last", nargs="?", type=channels_last, const=True, default=None, metavar="auto|true|false",
                   help="NHWC (channels_last) convolutions: faster on AVX-512 CPUs and tensor-core GPUs, slower on AVX2 "
                        "CPUs; alone means true, auto decides from the machine")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from OUTPUT_DIR/checkpoints/last.ckpt, or from the checkpoint given")


def run(args: argparse.Namespace) -> int:
    """Load the recipe with the flags over it (checked as the recipe is), train, evaluate.

    Args:
        args: parsed arguments (see `add_arguments`).

    Returns:
        0 on success.

    Raises:
        ValueError: a bad value in the recipe or a flag (the key or flag named), bad data, weights that do not
            fit, hardware settings Lightning refuses, no readable checkpoint to resume from.
        FileNotFoundError: a missing recipe, data or checkpoint file.
    """
    from ..training import load_config, train  # Lightning is imported only by the commands that need it

    overrides = {key: getattr(args, dest) for dest, key in OVERRIDES.items()}
    # Flags go through the recipe's checks; an error names the flag: "--max-steps (trainer.max_steps) must be ...".
    flags = {key: "--" + dest.replace("_", "-") for dest, key in OVERRIDES.items()}
    # Each --backbone-opt sets one key of model.backbone_options, over the recipe's (the later flag wins).
    for key, value in getattr(args, "backbone_opt", None) or []:
        overrides[f"model.backbone_options.{key}"] = value
        flags[f"model.backbone_options.{key}"] = f"--backbone-opt {key}"
    train(load_config(args.config, overrides=overrides, override_names=flags), resume=args.resume)
    return 0
