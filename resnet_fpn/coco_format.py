"""The COCO format: categories, and detections as COCO results (boxes as xywh, masks as RLE).

The bottom of the package: the data set, the evaluator, the predictor and the tools all speak COCO through
this module, so a convention (the mask threshold, the box layout, the RLE encoding) is decided once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np
import torch
from pycocotools import mask as mask_util

__all__ = ["Category", "MASK_THRESHOLD", "xyxy_to_xywh", "encode_masks"]

# torchvision's Mask R-CNN returns mask probabilities; a pixel is foreground above this value (torchvision's
# own reference evaluation and detectron2 both threshold at 0.5).
MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class Category:
    """A training label (1..K, 0 is the background) with the data set's category id and name.

    Example:
        >>> Category(label=1, id=18, name="dog")
        Category(label=1, id=18, name='dog')
    """

    label: int
    id: int
    name: str


def xyxy_to_xywh(boxes: Any) -> List[List[float]]:
    """(N, 4) xyxy boxes -> COCO's [x, y, width, height] lists, computed in float64.

    float64 so that the differences reach JSON without a float32 round trip.
    """
    boxes = torch.as_tensor(boxes).detach().to("cpu", torch.float64).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()


def encode_masks(masks: Any) -> List[Dict[str, Any]]:
    """(N, H, W) boolean masks -> COCO compressed RLEs with ``counts`` as str (JSON-ready).

    Example:
        >>> encode_masks(torch.ones(1, 2, 2, dtype=torch.bool))[0]["size"]
        [2, 2]
    """
    array = torch.as_tensor(masks).detach().to("cpu", torch.uint8).numpy()
    # (N, H, W) C-order transposed to (H, W, N) is the Fortran layout mask.encode wants: no copy.
    rles = mask_util.encode(np.asfortranarray(array.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON (nor cheap to pickle)
    return rles
