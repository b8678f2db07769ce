"""resnet_fpn: the ResNet family as detection and instance-segmentation backbones.

Public API:
    build_resnet, list_models                         the ResNet family (one variant table)
    load_weights                                      checkpoints from paths, URLs or state dicts, with a report
    build_backbone, list_backbones, register_backbone C2-C5 features + FPN for torchvision's detectors
    build_detector                                    Faster/Mask R-CNN, RetinaNet, FCOS on those backbones
    detector_from_checkpoint, Predictor               trained checkpoints: rebuild, and predict on pictures
    optimize_for_inference                            folded BN, channels_last, fused convs, bf16, compile
    resnet_fpn.training, resnet_fpn.evaluation        Lightning training; COCO evaluation (pycocotools)
"""
from .backbone import ShapeSpec, build_backbone, list_backbones, register_backbone
from .checkpoint import detector_from_checkpoint
from .coco_format import Category
from .deploy import optimize_for_inference
from .detectors import build_detector
from .models import ResNet, build_resnet, list_models
from .predictor import Predictor
from .weights import LoadReport, load_weights

__version__ = "0.1.0"

__all__ = [
    "ResNet", "build_resnet", "list_models", "load_weights", "LoadReport",
    "build_backbone", "list_backbones", "register_backbone", "ShapeSpec",
    "build_detector", "detector_from_checkpoint", "Category", "Predictor", "optimize_for_inference",
    "__version__",
]
