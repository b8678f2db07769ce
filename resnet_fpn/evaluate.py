"""Evaluate a trained detector checkpoint on a COCO-format split (what ``resnet-fpn eval --checkpoint`` runs).

An application of the layers below it: the checkpoint (detectors), the data set (data), the evaluator
(evaluation) and, optionally, the inference copy (deploy).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import detector_from_checkpoint
from .data import CocoDetection, collate_fn
from .deploy import optimize_for_inference
from .evaluation import COCOEvaluator

__all__ = ["CheckpointEvaluation", "evaluate_checkpoint"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class CheckpointEvaluation:
    """What `evaluate_checkpoint` returns.

    Attributes:
        metrics: per IoU type the 12 COCO stats, plus per-category AP (see ``COCOEvaluator.compute``).
        results: the COCO results list (JSON-ready; ``image_id`` and ``category_id`` of the ground truth).
        evaluator: the evaluator, whose ``precision`` arrays feed the precision-recall plots.
    """

    metrics: Dict[str, Any]
    results: List[Dict[str, Any]]
    evaluator: COCOEvaluator


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: PathLike,
    *,
    ann_file: PathLike,
    images_dir: PathLike,
    iou_types: Optional[Sequence[str]] = None,
    backend: str = "pycocotools",
    batch_size: int = 2,
    device: str = "cpu",
    num_workers: int = 0,
    optimize: bool = False,
    dtype: Optional[torch.dtype] = None,
) -> CheckpointEvaluation:
    """Run a checkpoint's detector over every image of a split and score it with COCO mAP.

    Args:
        checkpoint: a checkpoint written by ``resnet-fpn train`` (see ``resnet_fpn.checkpoint``).
        ann_file, images_dir: the split's COCO instances JSON and image folder.
        iou_types: default ``bbox`` (and ``segm`` for Mask R-CNN).
        backend: "pycocotools" or "faster_coco_eval".
        batch_size, device, num_workers: inference settings.
        optimize: run ``optimize_for_inference(detector, dtype=dtype)`` (folded BN, channels_last;
            ``dtype`` bf16/fp16 under autocast), to measure what it costs in AP.
        dtype: the optimised detector's dtype (None: float32); needs ``optimize``.

    Returns:
        A `CheckpointEvaluation` (metrics, results list, evaluator).

    Raises:
        ValueError: the checkpoint's categories are not those of `ann_file` (the ids are named), or a
            `dtype` without `optimize`.
    """
    if dtype is not None and not optimize:
        raise ValueError(f"dtype={dtype} needs optimize=True (the dtype is applied by optimize_for_inference)")
    loaded = detector_from_checkpoint(checkpoint)
    categories = loaded.categories
    detector = loaded.detector.to(device).eval()
    if optimize:
        detector = optimize_for_inference(detector, dtype=dtype)
    dataset = CocoDetection(images_dir, ann_file, with_masks=False)
    missing = sorted({c.id for c in categories} - set(dataset.category_ids))
    if missing:
        raise ValueError(f"{checkpoint} predicts category ids {missing[:10]} that {ann_file} does not define")
    if iou_types is None:
        iou_types = loaded.iou_types
    evaluator = COCOEvaluator(dataset.annotations, iou_types=iou_types, backend=backend,
                              label_to_category_id={c.label: c.id for c in categories})
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)
    for images, targets in tqdm(loader, desc="evaluating", unit="batch"):
        outputs = detector([image.to(device) for image in images])
        evaluator.update(outputs, [int(t["image_id"]) for t in targets])
    metrics = evaluator.compute()
    return CheckpointEvaluation(metrics=metrics, results=evaluator.results(), evaluator=evaluator)
