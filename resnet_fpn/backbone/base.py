"""The backbone contract: what every feature producer declares, and what the detectors read.

A backbone is an ``nn.Module`` whose ``forward(images)`` returns an ordered dict of feature maps and which
declares, per output name, the channels and stride of each map (detectron2's ``Backbone.output_shape()``,
timm's ``feature_info``). Heads are built from the declaration; nothing probes shapes with a dummy input.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping

from torch import nn

from .shape import ShapeSpec

__all__ = ["Backbone", "is_pyramid"]


class Backbone(nn.Module):
    """Base class of every feature producer of the project (ResNet and timm bodies, the FPN).

    Subclasses call ``self.set_output_shape(shapes)`` once in ``__init__`` and return, from ``forward``, an
    ``OrderedDict`` with exactly those keys in that order.

    Attributes:
        out_channels: the channels shared by every output, set only when they are all equal (a pyramid, or a
            single map): torchvision's detectors read it to size their heads.

    Example:
        >>> body = build_backbone("resnet18")
        >>> body.feature_names, body.output_shape()["c5"]
        (['c2', 'c3', 'c4', 'c5'], ShapeSpec(channels=512, stride=32))
    """

    _shapes: Dict[str, ShapeSpec]

    def set_output_shape(self, shapes: Mapping[str, ShapeSpec]) -> None:
        """Declare the outputs (name -> ShapeSpec, in forward order); sets ``out_channels`` when uniform."""
        assert shapes and all(isinstance(s, ShapeSpec) for s in shapes.values()), shapes
        self._shapes = OrderedDict(shapes)
        channels = {s.channels for s in shapes.values()}
        if len(channels) == 1:
            self.out_channels = channels.pop()

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Channels and stride of each output, by name, in the order ``forward`` returns them."""
        return OrderedDict(self._shapes)

    @property
    def feature_names(self) -> List[str]:
        """The output names, in order (``["c2", ..., "c5"]`` for a body, ``["0", ..., "pool"]`` for an FPN)."""
        return list(self._shapes)


def is_pyramid(backbone: nn.Module) -> bool:
    """Whether `backbone` declares outputs that all share one channel count (what torchvision's RPN and
    one-stage heads need: one head applied to every level)."""
    shape_of = getattr(backbone, "output_shape", None)
    if not callable(shape_of):
        return False
    shapes = shape_of()
    return len(shapes) > 1 and len({s.channels for s in shapes.values()}) == 1
