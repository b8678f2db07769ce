"""Score COCO detection results, or a trained checkpoint, with pycocotools' numbers.

    python tools/eval_det.py --gt instances_val.json --results results.json [more.json ...] \
        --iou-types bbox segm --out metrics.json [--backend faster_coco_eval] [--plots DIR]
    python tools/eval_det.py --checkpoint outputs/demo/checkpoints/last.ckpt --data-root DIR \
        [--ann instances_val.json --images DIR] --out metrics.json [--results-out results.json] [--plots DIR]
        [--optimize [--dtype bfloat16]]

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from resnet_fpn.evaluation import BACKENDS, IOU_TYPES, format_metrics_table, plot_precision_recall, score_results

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface.

    Returns:
        The parser for ``--gt``, ``--results``, ``--iou-types``, ``--out``, ``--backend``, ``--plots``.
    """
    parser = argparse.ArgumentParser(
        prog="eval_det.py",
        description="Score COCO results files against COCO ground truth (pycocotools' statistics).",
    )
    parser.add_argument("--gt", type=Path, help="COCO instances JSON (ground truth) for --results")
    parser.add_argument(
        "--results", nargs="+", type=Path,
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
    ckpt = parser.add_argument_group("checkpoint mode: run a trained detector over a split, then score it")
    ckpt.add_argument("--checkpoint", type=Path, help="a checkpoint written by tools/train_det.py")
    ckpt.add_argument("--data-root", type=Path, help="its val split is evaluated (same layouts as training)")
    ckpt.add_argument("--ann", type=Path, help="instances JSON of the split (overrides --data-root)")
    ckpt.add_argument("--images", type=Path, help="image folder of the split (overrides --data-root)")
    ckpt.add_argument("--results-out", type=Path, help="write the detector's COCO results JSON here")
    ckpt.add_argument("--batch-size", type=int, default=2)
    ckpt.add_argument("--device", default="cpu")
    ckpt.add_argument("--optimize", action="store_true",
                      help="run resnet_fpn.optimize_for_inference(detector) (folded BN, channels_last, fused convs)")
    ckpt.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                      help="with --optimize: bfloat16 (CPU or CUDA) or float16 (CUDA) autocast")
    return parser


def write_outputs(args: argparse.Namespace, metrics: Dict[str, Any], precision, category_names, iou_types) -> None:
    """Print the table; write ``--plots`` and ``--out``."""
    print(format_metrics_table(metrics))
    if args.plots is not None:
        for iou_type in iou_types:
            paths = plot_precision_recall(precision[iou_type], args.plots, iou_type=iou_type,
                                          category_names=category_names)
            print(f"wrote {', '.join(str(p) for p in paths)}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.out}")


def evaluate_checkpoint_mode(args: argparse.Namespace) -> Dict[str, Any]:
    """Checkpoint mode: detect on the split, write ``--results-out``, then as the results mode."""
    from resnet_fpn.data import resolve_data_paths
    from resnet_fpn.evaluation.checkpoint_eval import evaluate_checkpoint

    if args.ann is not None and args.images is not None:
        ann, images = args.ann, args.images
    else:
        paths = resolve_data_paths(args.data_root, val_ann=args.ann, val_images=args.images)
        ann, images = paths.val_ann, paths.val_images
    metrics, results, evaluator = evaluate_checkpoint(
        args.checkpoint, ann_file=ann, images_dir=images,
        iou_types=args.iou_types if args.iou_types_given else None, backend=args.backend,
        batch_size=args.batch_size, device=args.device, optimize=args.optimize,
        dtype=None if args.dtype is None else DTYPES[args.dtype],
    )
    if args.results_out is not None:
        args.results_out.parent.mkdir(parents=True, exist_ok=True)
        args.results_out.write_text(json.dumps(results))
        print(f"wrote {len(results)} detections to {args.results_out}")
    write_outputs(args, metrics, evaluator.precision, evaluator.category_names, evaluator.iou_types)
    return metrics


def score_results_files(args: argparse.Namespace) -> Dict[str, Any]:
    """Results-file mode: score ``--results`` against ``--gt``, print, write ``--out`` and ``--plots``.

    Args:
        args: parsed arguments of :func:`build_parser`.

    Returns:
        The metrics dict.
    """
    result = score_results(args.gt, list(args.results), iou_types=args.iou_types, backend=args.backend)
    write_outputs(args, result.metrics, result.precision, result.category_names, args.iou_types)
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
    args.iou_types_given = "--iou-types" in (sys.argv[1:] if argv is None else argv)
    if (args.checkpoint is None) == (args.results is None):
        parser.error("give either --gt with --results (score results files) or --checkpoint (run a detector)")
    if args.results is not None and args.gt is None:
        parser.error("--results needs --gt")
    if args.dtype is not None and not args.optimize:
        parser.error("--dtype needs --optimize")
    if args.checkpoint is not None and args.data_root is None and (args.ann is None or args.images is None):
        parser.error("--checkpoint needs --data-root, or both --ann and --images")
    try:
        if args.checkpoint is not None:
            evaluate_checkpoint_mode(args)
        else:
            score_results_files(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
