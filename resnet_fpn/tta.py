"""Test-time augmentation (TTA) of a torchvision detector: several scales and a horizontal flip, merged per class.

The default set is detectron2's (``TEST.AUG``: min sizes 400 to 1200 in steps of 100, max size 4000, flip): the
detector runs once per (scale, flip), each result is mapped back to the original image (a flipped image's boxes
and masks flipped back), and the detections of all runs are merged per class by NMS (detectron2's
``GeneralizedRCNNWithTTA`` merges its boxes by NMS at the box head's test threshold, 0.5).

Masks are averaged before thresholding: the soft mask (torchvision's per-pixel probabilities) of each merged
detection is the mean of the soft masks of the detections it absorbed (same class, IoU above the NMS threshold),
so the evaluator's 0.5 threshold applies to the averaged probabilities. detectron2 instead re-runs its mask head
on the merged boxes under every augmentation and averages those; the two agree where every augmentation found
the object, and here an augmentation that missed it does not dilute the mask.

    from resnet_fpn.tta import TTADetector, DETECTRON2_TTA
    tta = TTADetector(detector.eval(), **DETECTRON2_TTA)
    outputs = tta(images)   # the list of dicts model(images) returns
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

__all__ = ["TTADetector", "DETECTRON2_TTA", "merge_detections"]

# detectron2's TEST.AUG defaults (detectron2/config/defaults.py): MIN_SIZES (400, 500, ..., 1200), MAX_SIZE 4000, FLIP.
DETECTRON2_TTA: Dict[str, Any] = {"min_sizes": tuple(range(400, 1201, 100)), "max_size": 4000, "flip": True}


def _flip_boxes(boxes: Tensor, width: int) -> Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def _crop(mask: Tensor) -> Tuple[Tensor, int, int]:
    """The part of a soft (H, W) mask holding its nonzero pixels, as float16, with its top-left corner."""
    rows, cols = torch.where(mask.any(dim=1))[0], torch.where(mask.any(dim=0))[0]
    if len(rows) == 0:
        return mask[:0, :0].half(), 0, 0
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return mask[y0:y1, x0:x1].half(), y0, x0


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, *, nms_thresh: float, limit: int,
                     masks: Optional[List[Tuple[Tensor, int, int]]] = None,
                     image_size: Optional[Tuple[int, int]] = None) -> Dict[str, Tensor]:
    """Merge the detections of several augmentations of one image: per-class NMS, soft masks averaged.

    Args:
        boxes, scores, labels: all augmentations' detections, concatenated (original image coordinates).
        nms_thresh: the NMS IoU threshold (also the IoU above which a detection's mask joins a kept one's).
        limit: at most this many detections, best first.
        masks: each detection's soft mask as ``(crop, y0, x0)`` (see `_crop`), or None for a box-only detector.
        image_size: ``(H, W)``, needed with masks.

    Returns:
        ``{"boxes", "scores", "labels"}`` (and ``"masks"`` ``(K, 1, H, W)`` float probabilities with masks).
    """
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:limit]
    out = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    if masks is not None:
        height, width = image_size
        merged = torch.zeros((len(keep), 1, height, width), dtype=torch.float32)
        if len(keep):
            iou = box_iou(boxes[keep], boxes)
            same = (labels[keep][:, None] == labels[None, :]) & (iou > nms_thresh)
            same[torch.arange(len(keep)), keep] = True
            for k in range(len(keep)):
                members = torch.where(same[k])[0].tolist()
                for j in members:
                    crop, y0, x0 = masks[j]
                    merged[k, 0, y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] += crop.float()
                merged[k] /= len(members)
        out["masks"] = merged
    return out


class TTADetector(nn.Module):
    """A torchvision detector (Faster/Mask R-CNN, RetinaNet, FCOS) run under test-time augmentation.

    Calls the detector once per min size (its ``transform.min_size``/``max_size`` set for the call, restored
    after) and flip, on the whole batch, and merges each image's detections (`merge_detections`). Eval mode
    only; returns what the detector returns in eval mode.

    Args:
        detector: the detector (eval mode; it keeps its weights, this module holds no others).
        min_sizes: the shorter-side sizes to run at.
        max_size: the longer-side limit at every scale.
        flip: also run each scale on the horizontally flipped images.
        nms_thresh: IoU of the per-class NMS that merges the runs' detections.
        detections_per_img: detections kept per image (None: the detector's own limit).

    Raises:
        ValueError: no min size, a size < 1, a threshold outside [0, 1], or a detector without a
            ``GeneralizedRCNNTransform`` (``.transform``).
    """

    def __init__(self, detector: nn.Module, *, min_sizes: Sequence[int] = DETECTRON2_TTA["min_sizes"],
                 max_size: int = DETECTRON2_TTA["max_size"], flip: bool = True, nms_thresh: float = 0.5,
                 detections_per_img: Optional[int] = None) -> None:
        super().__init__()
        if not hasattr(detector, "transform") or not hasattr(detector.transform, "min_size"):
            raise ValueError(f"TTADetector needs a torchvision detector with a GeneralizedRCNNTransform (.transform), "
                             f"got {type(detector).__name__}")
        sizes = list(min_sizes)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes + [max_size]):
            raise ValueError(f"TTADetector: min_sizes must be a non-empty list of positive ints and max_size a "
                             f"positive int, got min_sizes={min_sizes!r}, max_size={max_size!r}")
        if not 0 <= nms_thresh <= 1:
            raise ValueError(f"TTADetector: nms_thresh must be in [0, 1], got {nms_thresh!r}")
        self.detector = detector
        self.min_sizes = sizes
        self.max_size = int(max_size)
        self.flip = bool(flip)
        self.nms_thresh = float(nms_thresh)
        if detections_per_img is None:
            heads = getattr(detector, "roi_heads", detector)
            detections_per_img = int(getattr(heads, "detections_per_img", 100))
        self.detections_per_img = detections_per_img

    def augmentations(self) -> List[Tuple[int, bool]]:
        """The (min size, flipped) pairs run, in order."""
        return [(size, flipped) for size in self.min_sizes for flipped in ((False, True) if self.flip else (False,))]

    @torch.no_grad()
    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        if self.detector.training:
            raise ValueError("TTADetector runs in eval mode only (call .eval())")
        transform = self.detector.transform
        saved = (transform.min_size, transform.max_size)
        collected: List[Dict[str, list]] = [{"boxes": [], "scores": [], "labels": [], "masks": []} for _ in images]
        has_masks = False
        try:
            for size, flipped in self.augmentations():
                transform.min_size, transform.max_size = (size,), self.max_size
                outputs = self.detector([image.flip(-1) if flipped else image for image in images])
                for image, output, into in zip(images, outputs, collected):
                    width = int(image.shape[-1])
                    boxes = _flip_boxes(output["boxes"], width) if flipped else output["boxes"]
                    into["boxes"].append(boxes.float().cpu())
                    into["scores"].append(output["scores"].float().cpu())
                    into["labels"].append(output["labels"].cpu())
                    if "masks" in output:
                        has_masks = True
                        masks = output["masks"][:, 0].float().cpu()
                        if flipped:
                            masks = masks.flip(-1)
                        into["masks"].extend(_crop(m) for m in masks)
        finally:
            transform.min_size, transform.max_size = saved
        results = []
        for image, into in zip(images, collected):
            merged = merge_detections(torch.cat(into["boxes"]), torch.cat(into["scores"]), torch.cat(into["labels"]),
                                      nms_thresh=self.nms_thresh, limit=self.detections_per_img,
                                      masks=into["masks"] if has_masks else None,
                                      image_size=(int(image.shape[-2]), int(image.shape[-1])))
            results.append({k: v.to(image.device) for k, v in merged.items()})
        return results
