"""Score COCO detection results with pycocotools' numbers.

    python tools/eval_det.py --gt instances_val.json --results results.json [more.json ...] \
        --iou-types bbox segm --out metrics.json [--backend faster_coco_eval] [--plots DIR]

Several results files are concatenated in order (e.g. one file per process). The table is printed,
the metrics dict (``resnet_fpn.evaluation.evaluate_results`` layout) is written to ``--out``.
All logic lives in ``resnet_fpn.evaluation``; this file only parses arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from resnet_fpn.evaluation import BACKENDS, IOU_TYPES, format_metrics_table, plot_precision_recall, score_results


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface.

    Returns:
        The parser for ``--gt``, ``--results``, ``--iou-types``, ``--out``, ``--backend``, ``--plots``.
    """
    parser = argparse.ArgumentParser(
        prog="eval_det.py",
        description="Score COCO results files against COCO ground truth (pycocotools' statistics).",
    )
    parser.add_argument("--gt", required=True, type=Path, help="COCO instances JSON (ground truth)")
    parser.add_argument(
        "--results", required=True, nargs="+", type=Path,
        help="COCO results JSON file(s): lists of {image_id, category_id, score, bbox/segmentation}; concatenated",
    )
    parser.add_argument(
        "--iou-types", nargs="+", choices=IOU_TYPES, default=["bbox"], help="what to score (default: bbox)"
    )
    parser.add_argument("--out", type=Path, help="write the metrics JSON here")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="pycocotools", help="evaluation library (default: pycocotools)"
    )
    parser.add_argument("--plots", type=Path, help="write precision-recall PNGs into this folder")
    return parser


def score_results_files(args: argparse.Namespace) -> Dict[str, Any]:
    """Results-file mode: score ``--results`` against ``--gt``, print, write ``--out`` and ``--plots``.

    Args:
        args: parsed arguments of :func:`build_parser`.

    Returns:
        The metrics dict.
    """
    result = score_results(args.gt, list(args.results), iou_types=args.iou_types, backend=args.backend)
    print(format_metrics_table(result.metrics))
    if args.plots is not None:
        for iou_type in args.iou_types:
            paths = plot_precision_recall(
                result.precision[iou_type], args.plots, iou_type=iou_type, category_names=result.category_names
            )
            print(f"wrote {', '.join(str(p) for p in paths)}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.metrics, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result.metrics


def main(argv: Optional[List[str]] = None) -> int:
    """Parse arguments and run; input errors end with exit status 2 and a one-line message.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        score_results_files(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
