"""COCO-format detection data: the dataset, augmentation, batching, data-root layouts and a synthetic set.

See ``docs/data.md`` for the dataset contract (target format, label mapping, crowd/degenerate/clipping rules).
"""

from resnet_fpn.data.coco import CocoDetection
from resnet_fpn.data.images import read_image
from resnet_fpn.data.layout import LAYOUTS, DataPaths, resolve_data_paths
from resnet_fpn.data.samplers import GroupedBatchSampler, aspect_ratio_groups, collate_fn
from resnet_fpn.data.synthetic import SHAPES, make_synthetic_coco
from resnet_fpn.data.transforms import DetectionTransform, build_transforms

__all__ = [
    "CocoDetection",
    "DataPaths",
    "DetectionTransform",
    "GroupedBatchSampler",
    "LAYOUTS",
    "SHAPES",
    "aspect_ratio_groups",
    "build_transforms",
    "collate_fn",
    "make_synthetic_coco",
    "read_image",
    "resolve_data_paths",
]
