"""Multi-scale backbones: ResNet (or timm) features c2..c5 -> FPN, declared shapes, a registry of names.

Public API:
    Backbone, ShapeSpec, is_pyramid     the contract: output_shape() per output name, out_channels
    ResNetFeatures, TimmFeatures, STAGES bodies: c2..c5 (strides 4..32) from this project's ResNets or timm
    FPNBackbone, TOP_BLOCKS              the FPN neck and its top blocks ("maxpool": P6, "p6p7": P6-P7)
    build_backbone, list_backbones, register_backbone, check_backbone_name   names -> modules
    NORMS, convert_frozen_batchnorm, resolve_norm_and_freeze   norms and the "auto" rule
"""
from .base import Backbone, is_pyramid
from .features import STAGES, ResNetFeatures
from .fpn import TOP_BLOCKS, FPNBackbone, MaxPoolTopBlock, P6P7TopBlock
from .norms import NORMS, convert_frozen_batchnorm, resolve_norm_and_freeze
from .registry import build_backbone, check_backbone_name, list_backbones, register_backbone
from .shape import ShapeSpec
from .timm_features import TimmFeatures

__all__ = [
    "Backbone", "ShapeSpec", "is_pyramid", "STAGES", "ResNetFeatures", "TimmFeatures", "TOP_BLOCKS", "FPNBackbone",
    "MaxPoolTopBlock", "P6P7TopBlock", "build_backbone", "check_backbone_name", "list_backbones",
    "register_backbone", "NORMS", "convert_frozen_batchnorm", "resolve_norm_and_freeze",
]
