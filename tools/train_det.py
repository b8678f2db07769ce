#!/usr/bin/env python
"""Train a detector with a ResNet-FPN backbone on COCO-format data, then evaluate it on the val split.

    python tools/train_det.py --config configs/demo_cpu.yaml
    python tools/train_det.py --config configs/faster_rcnn_R50_FPN_1x.yaml --data-root /data/coco --devices 8
    python tools/train_det.py --backbone resnet18-fpn --data-root ../shared/data/coco128 --max-steps 200

Flags override the YAML recipe. Writes OUTPUT_DIR/metrics.json, OUTPUT_DIR/checkpoints/ (last.ckpt,
best.ckpt), pictures of predictions and the AP-vs-time curve. `--resume` continues from last.ckpt.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask PyPI for updates


def devices(value: str):
    """--devices 8, --devices auto, --devices 0,1."""
    if value == "auto":
        return value
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML recipe (see configs/)")
    p.add_argument("--model", choices=["faster_rcnn", "mask_rcnn", "retinanet", "fcos"])
    p.add_argument("--backbone", help="e.g. resnet50-fpn, resnext101_32x8d-fpn, timm:convnext_tiny-fpn")
    p.add_argument("--weights", help="a whole detector checkpoint to start from (path or URL)")
    p.add_argument("--backbone-weights", help="ImageNet (or detection) weights for the backbone (path or URL)")
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
    p.add_argument("--precision", choices=["32", "32-true", "bf16-mixed", "16-mixed"])
    p.add_argument("--channels-last", action="store_const", const=True, default=None,
                   help="train with NHWC (channels_last) convolutions: faster with oneDNN and cuDNN tensor cores")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from OUTPUT_DIR/checkpoints/last.ckpt, or from the checkpoint given")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from resnet_fpn.training import load_config, train

    overrides = {
        "model.model": args.model, "model.backbone": args.backbone, "model.weights": args.weights,
        "model.backbone_weights": args.backbone_weights, "data.root": args.data_root,
        "data.train_ann": args.train_ann, "data.train_images": args.train_images, "data.val_ann": args.val_ann,
        "data.val_images": args.val_images, "output_dir": args.output_dir, "trainer.max_steps": args.max_steps,
        "trainer.max_epochs": args.max_epochs, "trainer.val_every_n_steps": args.val_every,
        "trainer.checkpoint_every_n_steps": args.checkpoint_every, "data.batch_size": args.batch_size,
        "optim.lr": args.lr, "trainer.devices": args.devices, "trainer.accelerator": args.accelerator,
        "trainer.strategy": args.strategy, "trainer.num_nodes": args.num_nodes, "trainer.precision": args.precision,
        "trainer.channels_last": args.channels_last,
        "trainer.seed": args.seed, "data.num_workers": args.num_workers,
    }
    try:
        config = load_config(args.config, overrides=overrides)
        train(config, resume=args.resume)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
