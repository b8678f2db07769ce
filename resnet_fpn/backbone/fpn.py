"""The FPN neck (Lin et al., 2017) on torchvision's FeaturePyramidNetwork and its extra blocks."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional

from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from .norms import norm_layer_for
from .shape import ShapeSpec

__all__ = ["TOP_BLOCKS", "FPN_NORMS", "BackboneWithFPN"]

# "maxpool": P2-P6 with P6 a stride-2 max pool of P5 (Faster/Mask R-CNN). "p6p7": P3-P7 with two stride-2
# 3x3 convs on P5 (RetinaNet/FCOS; torchvision's FCOS and RetinaNet v2 read P5, not C5).
TOP_BLOCKS = {"maxpool": ("pool",), "p6p7": ("p6", "p7")}
FPN_NORMS = (None, "bn", "gn")


class BackboneWithFPN(nn.Module):
    """A feature producer (`body`) followed by torchvision's FPN (`fpn`); drops into torchvision's detectors.

    The attribute names ``body`` and ``fpn`` and the output keys (``"0".."3"``, ``"pool"``; or ``"0".."2"``,
    ``"p6"``, ``"p7"``) are torchvision's, so its detection checkpoints load unchanged and its default
    ``MultiScaleRoIAlign(["0", "1", "2", "3"])`` and anchor generators work as they are.

    Args:
        body: a module returning an ordered dict of feature maps and declaring them with ``output_shape()``.
        top_block: "maxpool" or "p6p7" (see TOP_BLOCKS).
        fpn_channels: channels of every pyramid level (``out_channels``).
        norm: None (plain convs, as torchvision and detectron2's default), "bn" or "gn" in the FPN convs.

    Example:
        >>> fpn = BackboneWithFPN(ResNetFeatures(get_variant("resnet18")))
        >>> {k: (s.channels, s.stride) for k, s in fpn.output_shape().items()}
        {'0': (256, 4), '1': (256, 8), '2': (256, 16), '3': (256, 32), 'pool': (256, 64)}
    """

    def __init__(self, body: nn.Module, *, top_block: str = "maxpool", fpn_channels: int = 256,
                 norm: Optional[str] = None) -> None:
        super().__init__()
        if top_block not in TOP_BLOCKS:
            raise ValueError(f"top_block must be one of {list(TOP_BLOCKS)}, got {top_block!r}")
        if isinstance(fpn_channels, bool) or not isinstance(fpn_channels, int) or fpn_channels < 1:
            raise ValueError(f"fpn_channels must be a positive int, got {fpn_channels!r}")
        if norm not in FPN_NORMS:
            raise ValueError(f"FPN norm must be one of {FPN_NORMS}, got {norm!r}")
        self.body = body
        in_shapes = body.output_shape()
        extra = LastLevelMaxPool() if top_block == "maxpool" else LastLevelP6P7(fpn_channels, fpn_channels)
        self.fpn = FeaturePyramidNetwork(
            [shape.channels for shape in in_shapes.values()],
            fpn_channels,
            extra_blocks=extra,
            norm_layer=None if norm is None else norm_layer_for(norm),
        )
        self.out_channels = fpn_channels
        self.top_block = top_block
        self._shapes: Dict[str, ShapeSpec] = {
            str(i): ShapeSpec(fpn_channels, shape.stride) for i, shape in enumerate(in_shapes.values())
        }
        last_stride = list(in_shapes.values())[-1].stride
        for name in TOP_BLOCKS[top_block]:
            last_stride *= 2
            self._shapes[name] = ShapeSpec(fpn_channels, last_stride)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Channels and stride per output key, e.g. ``{"0": (256, 4), ..., "pool": (256, 64)}``."""
        return dict(self._shapes)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.body(x)
        # torchvision's FPN names its outputs after its inputs: number them as torchvision's extractor does.
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features.values())))
