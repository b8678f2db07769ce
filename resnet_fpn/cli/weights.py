"""List the named pretrained weights (``torchvision://``, ``timm://``, ``detectron2://``): what each is, its
published accuracy, the input normalisation it expects and the options it needs. Nothing is downloaded.

    resnet-fpn weights                              torchvision's and detectron2's names; timm's are counted
    resnet-fpn weights 'torchvision://resnet50*'    a shell-style pattern on the names
    resnet-fpn weights 'timm://seresnet50*' --json  timm's names of our architectures; JSON instead of a table

Any of these names works wherever weights are taken: ``build_backbone(weights=...)``, ``build_detector(weights=...,
backbone_weights=...)``, YAML configs. docs/weights.md says where each comes from and where it is cached.
"""
from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional

from ..hub import NamedWeights, list_weights
from ..preprocessing import IMAGENET, Preprocessing

__all__ = ["add_arguments", "run", "format_weights_table", "describe_accuracy", "describe_preprocessing"]

# The metric that summarises an entry, in the order shown: ImageNet top-1 for classifiers, COCO APs for detectors.
_SHOWN = (("acc@1", "top-1"), ("box AP", "box AP"), ("mask AP", "mask AP"), ("keypoint AP", "kp AP"))


def describe_accuracy(metrics: Dict[str, float]) -> str:
    """``"ImageNet-1K top-1 80.858"`` or ``"COCO-val2017 box AP 37.0, mask AP 34.6"``; ``"not published"`` when
    the source's metadata has no figure."""
    parts: List[str] = []
    dataset = None
    for key, label in _SHOWN:
        for name, value in metrics.items():
            if name.endswith(" " + key):
                prefix = name[: -len(key) - 1]
                parts.append(f"{label} {value:g}" if prefix == dataset else f"{prefix} {label} {value:g}")
                dataset = prefix
    return ", ".join(parts) or "not published"


def describe_preprocessing(preprocessing: Preprocessing) -> str:
    """``"RGB [0,1] ImageNet"`` or ``"BGR [0,255] mean 103.53,116.28,123.675 std 1"`` (the source's terms)."""
    scale = f"[0,{preprocessing.value_range:g}]"
    if preprocessing == IMAGENET:
        return f"RGB {scale} ImageNet"
    mean = ",".join(f"{m:g}" for m in preprocessing.mean)
    std = "1" if preprocessing.std == (1.0, 1.0, 1.0) else ",".join(f"{s:g}" for s in preprocessing.std)
    return f"{preprocessing.channels} {scale} mean {mean} std {std}"


def _row(entry: NamedWeights) -> List[str]:
    architecture = entry.architecture + (f" on {entry.backbone}" if entry.backbone else "")
    size = f"{entry.file_size_mb:.1f}" if entry.file_size_mb is not None else "-"
    options = ", ".join(f"{k}={v}" for k, v in entry.options.items()) or "-"
    accuracy = describe_accuracy(dict(entry.metrics))
    if not entry.metrics and entry.source == "timm":  # timm publishes results tables, not in its pretrained_cfg
        accuracy = "not in timm's metadata"
    return [entry.name, entry.kind, architecture, entry.source, size, accuracy,
            describe_preprocessing(entry.preprocessing), options]


def format_weights_table(entries: List[NamedWeights]) -> str:
    """A plain-text table, one row per entry (aliases are not repeated)."""
    header = ["name", "kind", "architecture", "source", "MB", "published accuracy", "preprocessing", "options"]
    rows = [header] + [_row(e) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _as_json(entry: NamedWeights) -> Dict[str, object]:
    return {
        "name": entry.name, "aliases": list(entry.aliases), "source": entry.source, "kind": entry.kind,
        "architecture": entry.architecture, "backbone": entry.backbone, "url": entry.url,
        "file_name": entry.file_name, "hash_prefix": entry.hash_prefix, "file_size_mb": entry.file_size_mb,
        "num_classes": entry.num_classes, "metrics": dict(entry.metrics), "options": dict(entry.options),
        "preprocessing": {**entry.preprocessing.to_dict(), "image_mean": list(entry.preprocessing.image_mean),
                          "image_std": list(entry.preprocessing.image_std)},
        "hf_hub_id": entry.hf_hub_id,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The weights subcommand's arguments."""
    parser.add_argument("pattern", nargs="?", default=None,
                        help="shell-style pattern on the names (quote it), e.g. 'torchvision://resnet50*'")
    parser.add_argument("--json", action="store_true", help="print JSON (a list of entries) instead of a table")


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON); 1 when the pattern matches nothing."""
    pattern: Optional[str] = args.pattern
    entries = list_weights(pattern)
    hidden = 0
    if pattern is None:  # timm's names are many: counted here, listed with a pattern such as 'timm://*'
        hidden = sum(1 for e in entries if e.source == "timm")
        entries = [e for e in entries if e.source != "timm"]
    if args.json:
        print(json.dumps([_as_json(e) for e in entries], indent=2))
        return 0 if entries else 1
    if not entries:
        print(f"no weights name matches {pattern!r} (names start with torchvision://, timm://, detectron2://)")
        return 1
    print(format_weights_table(entries))
    if hidden:
        print(f"\n{hidden} timm names of our architectures are not shown: resnet-fpn weights 'timm://*' lists them.")
    print("Accuracy: the source's published figure, read from its metadata. Nothing is downloaded to list.")
    return 0
