"""resnet_fpn: the ResNet family as detection and instance-segmentation backbones.

Public API:
    build_resnet, list_models      the ResNet family (one variant table)
    load_weights                   checkpoints from paths, URLs or state dicts, with a report
"""
from .models import ResNet, build_resnet, list_models
from .weights import LoadReport, load_weights

__version__ = "0.1.0"

__all__ = ["ResNet", "build_resnet", "list_models", "load_weights", "LoadReport", "__version__"]
