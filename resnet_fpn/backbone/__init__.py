"""Multi-scale backbones: ResNet (or timm) features c2..c5 -> FPN, declared shapes, a registry of names."""
from .features import STAGES, ResNetFeatures
from .fpn import TOP_BLOCKS, BackboneWithFPN
from .norms import NORMS, convert_frozen_batchnorm
from .registry import build_backbone, list_backbones, register_backbone
from .shape import ShapeSpec
from .timm_features import TimmFeatures

__all__ = [
    "STAGES", "ResNetFeatures", "TOP_BLOCKS", "BackboneWithFPN", "NORMS", "convert_frozen_batchnorm",
    "build_backbone", "list_backbones", "register_backbone", "ShapeSpec", "TimmFeatures",
]
