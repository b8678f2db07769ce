"""What the validation loss costs: a whole validation (the model over the val split + COCO scoring) with and
without ``trainer.val_loss``, as DetectionModule.validation_step runs it, alternating, on trained checkpoints.

    python -m benchmarks.val_cost --checkpoint outputs/ablation/runs/fruits_nuts_baseline_seed1/checkpoints/last.ckpt \
        --data-root ../shared/data/fruits_nuts --repeats 5

Prints the median seconds of each and their ratio (the issue's bound: at most 1.2x).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader


def validation_seconds(detector, loader, dataset, iou_types, *, with_loss: bool) -> float:
    """One validation: every batch through the detector (plain, or detections and losses from one pass), then
    COCO scoring; float32, as DetectionModule.validation_step runs it."""
    from resnet_fpn.evaluation import COCOEvaluator
    from resnet_fpn.training.val_loss import detections_and_losses

    start = time.perf_counter()
    evaluator = COCOEvaluator(dataset.annotations, iou_types=iou_types)
    with torch.no_grad():
        for batch_idx, (images, targets) in enumerate(loader):
            if with_loss:
                outputs, _ = detections_and_losses(detector, images, targets, seed=batch_idx)
            else:
                outputs = detector(images)
            evaluator.update(outputs, [int(t["image_id"]) for t in targets])
    evaluator.compute()
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> int:
    from resnet_fpn.checkpoint import detector_from_checkpoint
    from resnet_fpn.data import CocoDetection, collate_fn, resolve_data_paths

    parser = argparse.ArgumentParser(prog="python -m benchmarks.val_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    loaded = detector_from_checkpoint(args.checkpoint)
    detector = loaded.detector.eval()
    paths = resolve_data_paths(args.data_root, splits=("val",))
    with_masks = "segm" in loaded.iou_types
    dataset = CocoDetection(paths.val_images, paths.val_ann, with_masks=with_masks)
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_fn)
    validation_seconds(detector, loader, dataset, loaded.iou_types, with_loss=True)  # warm-up (kernels, caches)
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for with_loss in (False, True):
            times[with_loss].append(validation_seconds(detector, loader, dataset, loaded.iou_types,
                                                       with_loss=with_loss))
    plain, with_loss = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.checkpoint} on {paths.val_ann} ({len(dataset)} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {args.repeats} alternating repeats)")
    print(f"validation without the loss: median {plain:.3f} s {['%.3f' % t for t in times[False]]}")
    print(f"validation with the loss:    median {with_loss:.3f} s {['%.3f' % t for t in times[True]]}")
    print(f"ratio: {with_loss / plain:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
