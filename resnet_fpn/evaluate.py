"""Evaluate a trained detector checkpoint on a COCO-format split (what ``resnet-fpn eval --checkpoint`` runs).

An application of the layers below it: the checkpoint (detectors), the data set (data), the evaluator
(evaluation) and, optionally, the inference copy (deploy).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import detector_from_checkpoint
from .data import CocoDetection, collate_fn
from .deploy import RUNTIMES, check_runtime, optimize_for_inference
from .evaluation import CATEGORY_MATCHING, COCOEvaluator, match_categories
from .tta import TTADetector

__all__ = ["CheckpointEvaluation", "evaluate_checkpoint"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class CheckpointEvaluation:
    """What `evaluate_checkpoint` returns.

    Attributes:
        metrics: per IoU type the 12 COCO stats, plus per-category AP (see ``COCOEvaluator.compute``).
        results: the COCO results list (JSON-ready; ``image_id`` and ``category_id`` of the ground truth).
        evaluator: the evaluator, whose ``precision`` arrays feed the precision-recall plots.
        tta: with `evaluate_checkpoint`'s ``tta``, the same three for the test-time-augmented detector (same
            images, same batches); None without.
    """

    metrics: Dict[str, Any]
    results: List[Dict[str, Any]]
    evaluator: COCOEvaluator
    tta: Optional["CheckpointEvaluation"] = None


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
    runtime: str = "auto",
    map_categories: str = "id",
    tta: Optional[Mapping[str, Any]] = None,
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
        runtime: with ``optimize``: ``optimize_for_inference``'s runtime ("auto": the fastest measured for this
            machine class, parity-checked at its first batch; "torch", "onnxruntime", "openvino"). The choice
            is printed.
        map_categories: how the checkpoint's categories meet `ann_file`'s (``resnet_fpn.evaluation.
            match_categories``): ``"id"`` (default) scores each label as its category id and requires the same
            name for that id in both; ``"name"`` scores each label as the `ann_file` category of its name (the
            same classes numbered differently). Names are compared exactly (case and spaces count).
        tta: also score the detector under test-time augmentation: ``resnet_fpn.tta.TTADetector``'s options
            (``min_sizes``, ``max_size``, ``flip``, ``nms_thresh``; ``resnet_fpn.tta.DETECTRON2_TTA`` is
            detectron2's set), on the same batches as the plain run. Not with ``optimize`` (TTA resizes through the
            torch detector's own transform).

    Returns:
        A `CheckpointEvaluation` (metrics, results list, evaluator; ``.tta`` the same for the TTA run).

    Example:
        >>> from resnet_fpn.tta import DETECTRON2_TTA
        >>> plain = evaluate_checkpoint("last.ckpt", ann_file="val.json", images_dir="images", tta=DETECTRON2_TTA)
        >>> plain.metrics["bbox"]["AP"], plain.tta.metrics["bbox"]["AP"]  # doctest: +SKIP

    Warns:
        UserWarning: `ann_file` has annotations of categories the checkpoint does not predict (named): they
            score AP 0 and lower the mean AP.

    Raises:
        ValueError: the checkpoint's categories do not match `ann_file`'s: with ``"id"``, category ids it
            lacks, or ids whose names differ (every ``id: 'checkpoint name' vs 'ground-truth name'`` pair);
            with ``"name"``, checkpoint names it lacks. Also an unknown `map_categories`, or a `dtype` without
            `optimize`; an unknown `runtime` (the valid ones named), or one that cannot run here; `tta` with
            `optimize`, or TTA options TTADetector refuses (the option named).
    """
    if dtype is not None and not optimize:
        raise ValueError(f"dtype={dtype} needs optimize=True (the dtype is applied by optimize_for_inference)")
    if check_runtime(runtime) != "auto" and not optimize:
        raise ValueError(f"runtime={runtime!r} needs optimize=True (one of {RUNTIMES} is chosen by "
                         "optimize_for_inference)")
    if tta is not None and optimize:
        raise ValueError("tta needs the torch detector (TTA resizes through its GeneralizedRCNNTransform); it "
                         "cannot run with optimize=True: evaluate the two separately")
    if map_categories not in CATEGORY_MATCHING:
        raise ValueError(f"map_categories must be one of {CATEGORY_MATCHING}, got {map_categories!r}")
    loaded = detector_from_checkpoint(checkpoint)
    categories = loaded.categories
    dataset = CocoDetection(images_dir, ann_file, with_masks=False)
    # Before any image is run: a detector of other classes must not be scored as these (COCOeval sees ids only).
    label_to_category_id = match_categories(categories, dataset.annotations, by=map_categories,
                                            source=f"checkpoint {checkpoint}", gt_source=str(ann_file))
    _warn_unpredicted(dataset.annotations, set(label_to_category_id.values()), checkpoint)
    detector = loaded.detector.to(device).eval()
    if optimize:
        detector = optimize_for_inference(detector, dtype=dtype, runtime=runtime)
        print(f"inference runtime: {detector.choice}")
    if iou_types is None:
        iou_types = loaded.iou_types
    evaluator = COCOEvaluator(dataset.annotations, iou_types=iou_types, backend=backend,
                              label_to_category_id=label_to_category_id)
    augmented, evaluator_tta = None, None
    if tta is not None:
        augmented = TTADetector(detector, **dict(tta))
        evaluator_tta = COCOEvaluator(dataset.annotations, iou_types=iou_types, backend=backend,
                                      label_to_category_id=label_to_category_id)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)
    desc = "evaluating" if augmented is None else f"evaluating, plain and TTA x{len(augmented.augmentations())}"
    for images, targets in tqdm(loader, desc=desc, unit="batch"):
        images = [image.to(device) for image in images]
        image_ids = [int(t["image_id"]) for t in targets]
        evaluator.update(detector(images), image_ids)
        if augmented is not None:
            evaluator_tta.update(augmented(images), image_ids)
    evaluation = CheckpointEvaluation(metrics=evaluator.compute(), results=evaluator.results(), evaluator=evaluator)
    if evaluator_tta is not None:
        evaluation.tta = CheckpointEvaluation(metrics=evaluator_tta.compute(), results=evaluator_tta.results(),
                                              evaluator=evaluator_tta)
    return evaluation


def _warn_unpredicted(gt: Any, predicted: set, checkpoint: PathLike) -> None:
    """Name the annotated ground-truth categories the checkpoint cannot predict (each scores AP 0)."""
    annotated = {ann["category_id"] for ann in gt.annotations if not ann["iscrowd"]}
    names = gt.category_name_of
    unpredicted = [f"{names[c]!r} (id {c})" for c in sorted(annotated - predicted)]
    if unpredicted:
        warnings.warn(
            f"{gt.source} has annotations of {len(unpredicted)} categor(ies) that checkpoint {checkpoint} does not "
            f"predict: {', '.join(unpredicted[:5])}{', ...' if len(unpredicted) > 5 else ''}; each scores AP 0 "
            "and lowers the mean AP",
            UserWarning,
            stacklevel=3,
        )
