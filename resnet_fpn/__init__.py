"""resnet_fpn: the ResNet family as detection and instance-segmentation backbones.

Public API (see docs/architecture.md for the map of the package):
    build_resnet, list_models, ResNet, ResNetOptions  the ResNet family (one variant table)
    load_weights, LoadReport                          checkpoints from paths, URLs, names or state dicts, with a report
    list_weights, get_weights, NamedWeights           pretrained weights by name (torchvision://, timm://, detectron2://)
    build_backbone, list_backbones, register_backbone C2-C5 features + FPN for torchvision's detectors
    Backbone, FPNBackbone, ShapeSpec                  the backbone contract: declared outputs per name
    build_detector, list_detectors                    Faster/Mask R-CNN, RetinaNet, FCOS on those backbones
    detector_from_checkpoint, DetectorCheckpoint      trained checkpoints rebuilt, with their categories
    Category                                          a label with its data set's category id and name
    Predictor, Prediction                             predictions on pictures, in original-image pixels
    evaluate_checkpoint, CheckpointEvaluation         COCO mAP of a checkpoint on a COCO-format split
    optimize_for_inference                            folded BN, channels_last, bf16, compile
    resnet_fpn.data, .evaluation, .training, .deploy  data sets, COCO evaluation, Lightning training, export
"""
from .backbone import Backbone, FPNBackbone, ShapeSpec, build_backbone, list_backbones, register_backbone
from .checkpoint import DetectorCheckpoint, detector_from_checkpoint
from .coco_format import Category
from .deploy import optimize_for_inference
from .detectors import build_detector, list_detectors
from .evaluate import CheckpointEvaluation, evaluate_checkpoint
from .hub import NamedWeights, get_weights, list_weights
from .models import ResNet, ResNetOptions, build_resnet, list_models
from .predictor import Prediction, Predictor
from .weights import LoadReport, load_weights

__version__ = "0.1.0"

__all__ = [
    "ResNet", "ResNetOptions", "build_resnet", "list_models", "load_weights", "LoadReport",
    "list_weights", "get_weights", "NamedWeights",
    "Backbone", "FPNBackbone", "ShapeSpec", "build_backbone", "list_backbones", "register_backbone",
    "build_detector", "list_detectors", "detector_from_checkpoint", "DetectorCheckpoint", "Category",
    "Predictor", "Prediction", "evaluate_checkpoint", "CheckpointEvaluation", "optimize_for_inference",
    "__version__",
]
