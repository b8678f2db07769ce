"""Detector checkpoints: what a trained model file holds, and how to rebuild the detector from it.

A checkpoint is a Lightning checkpoint (``tools/train_det.py`` writes them) or any dict of the same shape:

    {"state_dict": {"model.<detector key>": tensor, ...},
     "hyper_parameters": {"model": {<build_detector keyword arguments, "model" included>},
                          "categories": [{"label": 1, "id": 18, "name": "dog"}, ...], ...}}

so the detector is rebuilt with the very arguments it was trained with, and predictions map back to the
data set's category ids and names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from .coco_format import Category
from .backbone import resolve_norm_and_freeze
from .detectors import build_detector, iou_types_of, resolve_build_options
from .files import atomic_torch_save
from .weights import load_weights

__all__ = ["DetectorCheckpoint", "detector_from_checkpoint", "read_checkpoint", "save_detector_checkpoint"]


def save_detector_checkpoint(
    path: Union[str, os.PathLike],
    detector: nn.Module,
    *,
    model_options: Mapping[str, object],
    categories: Sequence[Category],
) -> Path:
    """Write a checkpoint that `detector_from_checkpoint` (and Lightning's layout readers) understand.

    Args:
        path: output file (written atomically).
        detector: the detector whose ``state_dict()`` is saved.
        model_options: the ``build_detector`` keyword arguments it was built with (``model`` included).
        categories: label -> category id and name, for labels 1..K.
    """
    payload = {
        "state_dict": {f"model.{k}": v for k, v in detector.state_dict().items()},
        "hyper_parameters": {
            "model": resolve_build_options(model_options),
            "categories": [{"label": c.label, "id": c.id, "name": c.name} for c in categories],
        },
    }
    return atomic_torch_save(payload, path)


def read_checkpoint(
    path: Union[str, os.PathLike], *, map_location: Union[str, torch.device] = "cpu"
) -> Mapping[str, object]:
    """Read a checkpoint file whole (``torch.load(weights_only=True)``), naming the file when it cannot be read.

    Args:
        path: a ``.ckpt``/``.pth`` file.
        map_location: where tensors are loaded.

    Returns:
        The checkpoint's top-level mapping.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated or corrupt (an interrupted copy, a full disk), or holds something
            other than a mapping; the file and torch's reason are named.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError...: the file is what is wrong
        reason = str(exc).split("\n")[0].split(". This is an internal")[0]  # torch's first sentence
        reason = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        raise ValueError(f"could not read checkpoint {path} ({path.stat().st_size} bytes; truncated or corrupt?): "
                         f"{reason}") from exc
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{path}: expected a checkpoint (a mapping), got {type(ckpt).__name__}")
    return ckpt


def read_categories(hparams: Mapping[str, object], where: str) -> List[Category]:
    raw = hparams.get("categories")
    if not isinstance(raw, list):
        raise ValueError(f"{where}: hyper_parameters has no 'categories' list (label, id, name)")
    return [Category(int(c["label"]), int(c["id"]), str(c["name"])) for c in raw]


@dataclass(frozen=True)
class DetectorCheckpoint:
    """A trained detector rebuilt from its checkpoint.

    Attributes:
        detector: the torchvision detector, in eval mode, with the checkpoint's tensors.
        categories: label (1..K) -> the data set's category id and name.
        options: the ``build_detector`` keyword arguments it was trained with (``model`` included).
        path: the checkpoint file.
    """

    detector: nn.Module
    categories: List[Category]
    options: Dict[str, object]
    path: Path

    @property
    def model_name(self) -> str:
        """The detector name, e.g. "mask_rcnn"."""
        return str(self.options["model"])

    @property
    def iou_types(self) -> Tuple[str, ...]:
        """The COCO IoU types this detector is evaluated with."""
        return iou_types_of(self.model_name)


def detector_from_checkpoint(
    path: Union[str, os.PathLike], *, map_location: Union[str, torch.device] = "cpu"
) -> DetectorCheckpoint:
    """Rebuild a trained detector from a checkpoint written by training (or `save_detector_checkpoint`).

    Args:
        path: the checkpoint file (``.ckpt`` from ``resnet-fpn train``).
        map_location: where tensors are loaded.

    Returns:
        A `DetectorCheckpoint`: the detector in eval mode, its categories and its build options.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a detector checkpoint of this project (names what is missing), or its
            tensors do not fit the model its options describe.

    Example:
        >>> ckpt = detector_from_checkpoint("outputs/demo/checkpoints/last.ckpt")
        >>> ckpt.detector([torch.rand(3, 160, 160)])[0].keys()
        dict_keys(['boxes', 'labels', 'scores'])
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location=map_location)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("model"), Mapping):
        raise ValueError(
            f"{path} is not a detector checkpoint of resnet_fpn: expected hyper_parameters['model'] with the "
            f"build_detector options (a checkpoint written by resnet-fpn train)"
        )
    options = dict(hparams["model"])
    categories = read_categories(hparams, str(path))
    # The checkpoint's own tensors follow: no ImageNet weights are needed (or fetched) to rebuild. The norm and
    # freeze rule is the one the detector was trained with, resolved from whether it had weights then.
    rebuild = {k: v for k, v in options.items() if k not in ("weights", "backbone_weights")}
    rebuild["norm"], rebuild["freeze_at"] = resolve_norm_and_freeze(
        str(options.get("norm", "auto")), options.get("freeze_at"),  # type: ignore[arg-type]
        pretrained=bool(options.get("weights") or options.get("backbone_weights")),
    )
    detector = build_detector(**rebuild)
    load_weights(detector, ckpt, strict=True)
    return DetectorCheckpoint(detector=detector.eval(), categories=categories, options=options, path=path)
