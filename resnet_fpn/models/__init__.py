"""The ResNet family: one variant table, the blocks, and the network built from them."""
from .blocks import SHORTCUTS, BasicBlock, BlockOptions, Bottleneck, PreActBasicBlock, PreActBottleneck, SqueezeExcite
from .resnet import ResNet, ResNetOptions, build_resnet
from .variants import VARIANTS, ResNetVariant, get_variant, list_models

__all__ = [
    "SHORTCUTS", "BasicBlock", "BlockOptions", "Bottleneck", "PreActBasicBlock", "PreActBottleneck",
    "SqueezeExcite", "ResNet", "ResNetOptions", "build_resnet", "VARIANTS", "ResNetVariant", "get_variant", "list_models",
]
