"""COCO evaluation with pycocotools' numbers: a streaming evaluator, results-file scoring, reports.

Public API:
    COCOEvaluator            update() with torchvision predictions, compute() (DDP-aware) -> metrics
    evaluate_results         score a results list / JSON file(s) -> metrics
    score_results            same, also returning the precision arrays for plots (COCOEvalResult)
    match_categories         a detector's labels -> the ground truth's category ids, refusing differing names
    format_metrics_table     the 12 stats and per-category AP as text
    plot_precision_recall    precision-recall PNGs (IoU 0.50 and 0.50:0.95)
    precision_recall_curves  the mean curves those plots draw
"""
from .coco import (
    BACKENDS,
    CATEGORY_MATCHING,
    IOU_TYPES,
    STAT_NAMES,
    COCOEvalResult,
    COCOEvaluator,
    evaluate_results,
    match_categories,
    score_results,
)
from .report import format_metrics_table, plot_precision_recall, precision_recall_curves

__all__ = [
    "BACKENDS",
    "CATEGORY_MATCHING",
    "IOU_TYPES",
    "STAT_NAMES",
    "COCOEvalResult",
    "COCOEvaluator",
    "evaluate_results",
    "match_categories",
    "score_results",
    "format_metrics_table",
    "plot_precision_recall",
    "precision_recall_curves",
]
