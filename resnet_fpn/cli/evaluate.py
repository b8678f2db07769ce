"""Score COCO detection results, or a trained checkpoint, with pycocotools' numbers.

    resnet-fpn eval --gt instances_val.json --results results.json [more.json ...] \
        --iou-types bbox segm --out metrics.json [--backend faster_coco_eval] [--plots DIR]
    resnet-fpn eval --checkpoint outputs/demo/checkpoints/last.ckpt --data-root DIR \
        [--ann instances_val.json --images DIR] --out metrics.json [--results-out results.json] [--plots DIR]
        [--optimize [--dtype bfloat16]] [--map-categories name] [--tta [--tta-min-sizes 400 600 800]]

Several results files are concatenated in order (e.g. one file per process). The table is printed, the
metrics dict (``resnet_fpn.evaluation.evaluate_results`` layout) is written to ``--out``.

Nothing is scored as something else silently: a checkpoint whose category names differ from the ground
truth's for the same ids is refused (``--map-categories name`` pairs them by name instead); results whose
``file_name`` or ``category_name`` contradict the ground truth are refused; results covering only part of
the ground-truth images, and ground-truth boxes with no area, print one ``warning: ...`` line each.

``--tta`` also scores the detector under test-time augmentation (detectron2's TEST.AUG set by default: min sizes
400-1200 step 100, max size 4000, horizontal flip; ``resnet_fpn.tta``) on the same images, and prints both
tables; ``--out``, ``--results-out`` and ``--plots`` write the TTA ones beside the plain ones (``metrics_tta.json``,
``results_tta.json``, ``PLOTS/tta/``).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

from ..evaluation import (
    BACKENDS,
    CATEGORY_MATCHING,
    IOU_TYPES,
    format_metrics_table,
    plot_precision_recall,
    score_results,
)
from ..files import atomic_write_json

__all__ = ["add_arguments", "run"]

DTYPES = ("float32", "bfloat16", "float16")
# resnet_fpn.deploy.RUNTIMES, spelled out so that parsing does not import torch and the models
# (tests/test_runtimes.py checks that the two agree).
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
# resnet_fpn.tta.DETECTRON2_TTA (detectron2's TEST.AUG), spelled out for the same reason (tests check they agree).
TTA_MIN_SIZES = tuple(range(400, 1201, 100))
TTA_MAX_SIZE = 4000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval subcommand's flags: results mode (--gt/--results) or checkpoint mode (--checkpoint)."""
    parser.add_argument("--gt", type=Path, help="COCO instances JSON (ground truth) for --results")
    parser.add_argument(
        "--results", nargs="+", type=Path,
        help="COCO results JSON file(s): lists of {image_id, category_id, score, bbox/segmentation}; concatenated",
    )
    parser.add_argument("--iou-types", nargs="+", choices=IOU_TYPES, default=None,
                        help="what to score (default: bbox; with --checkpoint, what the model predicts)")
    parser.add_argument("--out", type=Path, help="write the metrics JSON here")
    parser.add_argument("--backend", choices=BACKENDS, default="pycocotools",
                        help="evaluation library (default: pycocotools)")
    parser.add_argument("--plots", type=Path, help="write precision-recall PNGs into this folder")
    ckpt = parser.add_argument_group("checkpoint mode: run a trained detector over a split, then score it")
    ckpt.add_argument("--checkpoint", type=Path, help="a checkpoint written by resnet-fpn train")
    ckpt.add_argument("--data-root", type=Path, help="its val split is evaluated (same layouts as training)")
    ckpt.add_argument("--ann", type=Path, help="instances JSON of the split (overrides --data-root)")
    ckpt.add_argument("--images", type=Path, help="image folder of the split (overrides --data-root)")
    ckpt.add_argument("--results-out", type=Path, help="write the detector's COCO results JSON here")
    ckpt.add_argument("--batch-size", type=int, default=2)
    ckpt.add_argument("--device", default="cpu")
    ckpt.add_argument("--optimize", action="store_true",
                      help="run resnet_fpn.optimize_for_inference(detector): folded BN, channels_last, and the "
                           "runtime of --runtime")
    ckpt.add_argument("--runtime", choices=RUNTIMES, default="auto",
                      help="with --optimize: auto (default: the fastest measured for this machine class, "
                           "printed), torch, onnxruntime or openvino")
    ckpt.add_argument("--dtype", choices=DTYPES, default=None,
                      help="with --optimize: bfloat16 (CPU or CUDA) or float16 (CUDA) autocast")
    ckpt.add_argument("--map-categories", choices=CATEGORY_MATCHING, default=None,
                      help="id (default): the checkpoint's category ids must carry the ground truth's names; "
                           "name: score each label as the ground-truth category of the same name (exact match)")
    ckpt.add_argument("--tta", action="store_true",
                      help="also evaluate with test-time augmentation (several scales and a horizontal flip, "
                           "merged per class) and print both tables")
    ckpt.add_argument("--tta-min-sizes", nargs="+", type=int, default=None, metavar="PX",
                      help=f"with --tta: the shorter-side sizes (default: detectron2's {TTA_MIN_SIZES[0]}-"
                           f"{TTA_MIN_SIZES[-1]} step 100)")
    ckpt.add_argument("--tta-max-size", type=int, default=None, metavar="PX",
                      help=f"with --tta: the longer-side limit (default: {TTA_MAX_SIZE})")
    ckpt.add_argument("--tta-no-flip", action="store_true", help="with --tta: no horizontal flip")


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show the package's ``UserWarning``s as one ``warning: ...`` line on stderr; other warnings as usual."""
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):  # warnings.showwarning's signature
        if category is UserWarning:
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores showwarning (and the filters) on the way out
        warnings.showwarning = one_line
        yield


def _tta_path(path: Path) -> Path:
    """Where the TTA twin of an output goes: ``metrics.json`` -> ``metrics_tta.json``."""
    return path.with_name(f"{path.stem}_tta{path.suffix}")


def _write_outputs(args: argparse.Namespace, metrics: Dict[str, Any], precision: Dict[str, Any],
                   category_names: Sequence[str], iou_types: Sequence[str], *, tta: bool = False) -> None:
    """Print the table; write ``--plots`` and ``--out`` (their TTA twins with `tta`)."""
    print(format_metrics_table(metrics))
    if args.plots is not None:
        folder = args.plots / "tta" if tta else args.plots
        for iou_type in iou_types:
            paths = plot_precision_recall(precision[iou_type], folder, iou_type=iou_type,
                                          category_names=category_names)
            print(f"wrote {', '.join(str(p) for p in paths)}")
    if args.out is not None:
        out = _tta_path(args.out) if tta else args.out
        atomic_write_json(out, metrics)
        print(f"wrote {out}")


def _checkpoint_mode(args: argparse.Namespace) -> None:
    """Detect on the split, write ``--results-out``, then report as the results mode does."""
    import torch

    from ..data import resolve_data_paths
    from ..evaluate import evaluate_checkpoint
    from ..tta import DETECTRON2_TTA

    tta_options = _tta_options(args, DETECTRON2_TTA)

    if args.ann is not None and args.images is not None:
        ann, images = args.ann, args.images
    else:
        paths = resolve_data_paths(args.data_root, val_ann=args.ann, val_images=args.images, splits=("val",))
        ann, images = paths.val_ann, paths.val_images
    evaluation = evaluate_checkpoint(
        args.checkpoint, ann_file=ann, images_dir=images, iou_types=args.iou_types, backend=args.backend,
        batch_size=args.batch_size, device=args.device, optimize=args.optimize,
        dtype=None if args.dtype is None else getattr(torch, args.dtype), runtime=args.runtime,
        map_categories=args.map_categories or "id", tta=tta_options,
    )
    runs = [(evaluation, False)] + ([(evaluation.tta, True)] if evaluation.tta is not None else [])
    for run, tta in runs:
        if evaluation.tta is not None:
            print(_tta_heading(tta_options) if tta else "without test-time augmentation:")
        if args.results_out is not None:
            out = _tta_path(args.results_out) if tta else args.results_out
            atomic_write_json(out, run.results, indent=None)
            print(f"wrote {len(run.results)} detections to {out}")
        evaluator = run.evaluator
        _write_outputs(args, run.metrics, evaluator.precision, evaluator.category_names, evaluator.iou_types, tta=tta)


def _tta_options(args: argparse.Namespace, defaults: Dict[str, Any]) -> Any:
    """TTADetector's options from ``--tta*`` (None without ``--tta``)."""
    if not args.tta:
        return None
    return {"min_sizes": tuple(args.tta_min_sizes if args.tta_min_sizes is not None else defaults["min_sizes"]),
            "max_size": args.tta_max_size if args.tta_max_size is not None else defaults["max_size"],
            "flip": not args.tta_no_flip}


def _tta_heading(options: Dict[str, Any]) -> str:
    """The title of the TTA table, from the options it ran with (NMS at TTADetector's default 0.5)."""
    return (f"with test-time augmentation (min sizes {', '.join(map(str, options['min_sizes']))}; max size "
            f"{options['max_size']}; {'horizontal flip' if options['flip'] else 'no flip'}; "
            "merged per class by NMS 0.5):")


def _results_mode(args: argparse.Namespace) -> None:
    """Score ``--results`` against ``--gt``; print, write ``--out`` and ``--plots``."""
    iou_types = args.iou_types or ["bbox"]
    result = score_results(args.gt, list(args.results), iou_types=iou_types, backend=args.backend)
    _write_outputs(args, result.metrics, result.precision, result.category_names, iou_types)


def run(args: argparse.Namespace) -> int:
    """Check the combination of flags, then run the mode they select; 0 on success."""
    parser = args.parser
    if (args.checkpoint is None) == (args.results is None):
        parser.error("give either --gt with --results (score results files) or --checkpoint (run a detector)")
    if args.results is not None and args.gt is None:
        parser.error("--results needs --gt")
    if args.dtype is not None and not args.optimize:
        parser.error("--dtype needs --optimize")
    if args.runtime != "auto" and not args.optimize:
        parser.error("--runtime needs --optimize")
    tta_options = args.tta_min_sizes is not None or args.tta_max_size is not None or args.tta_no_flip
    if tta_options and not args.tta:
        parser.error("--tta-min-sizes, --tta-max-size and --tta-no-flip need --tta")
    if args.tta and args.checkpoint is None:
        parser.error("--tta needs --checkpoint (it runs the detector under test-time augmentation)")
    if args.tta and args.optimize:
        parser.error("--tta runs the torch detector (TTA resizes through its own transform); it cannot be combined "
                     "with --optimize: evaluate the two separately")
    for flag, value in (("--tta-min-sizes", args.tta_min_sizes), ("--tta-max-size", args.tta_max_size)):
        sizes = [] if value is None else value if isinstance(value, list) else [value]
        if any(size < 1 for size in sizes):
            parser.error(f"{flag} takes positive pixel sizes, got {value}")
    if args.checkpoint is not None and args.data_root is None and (args.ann is None or args.images is None):
        parser.error("--checkpoint needs --data-root, or both --ann and --images")
    if args.map_categories is not None and args.checkpoint is None:
        parser.error("--map-categories needs --checkpoint (results files carry category ids; resnet-fpn infer "
                     "--ann FILE --map-categories name writes the ids of FILE)")
    with _warnings_as_lines():
        if args.checkpoint is not None:
            _checkpoint_mode(args)
        else:
            _results_mode(args)
    return 0
