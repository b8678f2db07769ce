"""pycocotools against faster-coco-eval, through the public API of ``resnet_fpn.evaluation``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Sequence, Union

from resnet_fpn.evaluation import BACKENDS, IOU_TYPES, STAT_NAMES, evaluate_results

from .results import EvaluatorRow
from .timing import median, time_alternating

__all__ = ["COCO_VAL2014_100", "benchmark_backends", "benchmark_coco_val2014_100"]

# coco_val2014_100's ground truth and pycocotools' own example results, per iou type.
COCO_VAL2014_100 = {
    "gt": "instances_val2014_100.json",
    "bbox": "instances_val2014_fakebbox100_results.json",
    "segm": "instances_val2014_fakesegm100_results.json",
}
PathLike = Union[str, "os.PathLike[str]"]


def benchmark_backends(gt_path: PathLike, results_path: PathLike, *, iou_type: str, repeats: int,
                       num_threads: int, backends: Sequence[str] = BACKENDS) -> List[EvaluatorRow]:
    """Time ``evaluate_results(gt_path, results, iou_types=[iou_type], backend=...)`` per backend.

    The results JSON is parsed once, outside the clock (the same work for every backend); one timed call
    is what a user's call does from there: load the ground truth, check the results, ``loadRes``,
    evaluate, accumulate, summarize. Backends alternate (see ``time_alternating``).

    Args:
        gt_path: COCO instances JSON.
        results_path: a COCO results JSON (a list of result dicts).
        iou_type: "bbox" or "segm".
        repeats: measurements per backend.
        num_threads: torch threads during the measurements.
        backends: which backends, the first being the reference of the speed-up and of the stats difference.

    Returns:
        One row per backend, in `backends` order.

    Raises:
        ValueError: an unknown iou type or backend, or what ``evaluate_results`` raises for bad inputs.
        ImportError: faster-coco-eval is not installed.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(f"backends must be a non-empty subset of {BACKENDS}, got {list(backends)}")
    with open(results_path) as f:
        results = json.load(f)

    stats = {}

    def evaluate(backend: str) -> None:
        metrics = evaluate_results(gt_path, results, iou_types=[iou_type], backend=backend)[iou_type]
        # Kept from the timed calls themselves (a dict store, negligible next to an evaluation), so the stats
        # compared are those of the runs timed and no extra evaluation is needed.
        stats[backend] = [metrics[name] for name in STAT_NAMES]

    times = time_alternating({backend: (lambda b=backend: evaluate(b)) for backend in backends},
                             repeats=repeats, num_threads=num_threads, label=f"COCO evaluation {iou_type}")
    reference = backends[0]
    return [
        EvaluatorRow(iou_type, backend, times[backend], median(times[reference]),
                     max(abs(a - b) for a, b in zip(stats[backend], stats[reference])))
        for backend in backends
    ]


def benchmark_coco_val2014_100(coco_dir: Path, *, repeats: int, num_threads: int) -> List[EvaluatorRow]:
    """``benchmark_backends`` on coco_val2014_100, bbox then segm.

    Args:
        coco_dir: the folder holding the files of ``COCO_VAL2014_100``.
        repeats: measurements per backend.
        num_threads: torch threads during the measurements.

    Returns:
        The rows of both iou types.
    """
    rows: List[EvaluatorRow] = []
    for iou_type in ("bbox", "segm"):
        rows += benchmark_backends(coco_dir / COCO_VAL2014_100["gt"], coco_dir / COCO_VAL2014_100[iou_type],
                                   iou_type=iou_type, repeats=repeats, num_threads=num_threads)
    return rows
