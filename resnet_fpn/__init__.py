"""resnet_fpn: the ResNet family as detection and instance-segmentation backbones.

Public API:
    build_resnet, list_models                         the ResNet family (one variant table)
    load_weights                                      checkpoints from paths, URLs or state dicts, with a report
    build_backbone, list_backbones, register_backbone C2-C5 features + FPN for torchvision's detectors
"""
from .backbone import ShapeSpec, build_backbone, list_backbones, register_backbone
from .models import ResNet, build_resnet, list_models
from .weights import LoadReport, load_weights

__version__ = "0.1.0"

__all__ = [
    "ResNet", "build_resnet", "list_models", "load_weights", "LoadReport",
    "build_backbone", "list_backbones", "register_backbone", "ShapeSpec", "__version__",
]
