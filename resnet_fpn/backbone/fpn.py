"""The FPN neck (Lin et al., 2017) on torchvision's FeaturePyramidNetwork, and its top blocks."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Tuple, Type, Union

from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..models.recompute import needs_checkpoint, run_checkpointed
from .base import Backbone
from .norms import norm_layer_for
from .shape import ShapeSpec

__all__ = ["TOP_BLOCKS", "FPN_NORMS", "FPNBackbone", "MaxPoolTopBlock", "P6P7TopBlock", "P6P7FromC5TopBlock"]

FPN_NORMS = (None, "bn", "gn")


class MaxPoolTopBlock(LastLevelMaxPool):
    """P6 as a stride-2 max pool of P5 (Faster/Mask R-CNN: anchors on P2-P6, RoIs pooled from P2-P5).

    torchvision's ``LastLevelMaxPool`` (no parameters) declaring the names it adds.
    """

    names: Tuple[str, ...] = ("pool",)

    def __init__(self, channels: int, *, in_channels: int = 0) -> None:  # a max pool keeps the channels
        super().__init__()


class P6P7TopBlock(LastLevelP6P7):
    """P6 and P7 from two stride-2 3x3 convs on P5 (RetinaNet/FCOS on P3-P7).

    torchvision's ``LastLevelP6P7`` with equal in/out channels, so it reads P5 as torchvision's FCOS and
    RetinaNet v2 do (detectron2's RetinaNet reads C5 instead); parameter names ``p6``/``p7`` are torchvision's.
    """

    names: Tuple[str, ...] = ("p6", "p7")

    def __init__(self, channels: int, *, in_channels: int = 0) -> None:  # reads P5: in_channels unused
        super().__init__(channels, channels)


class P6P7FromC5TopBlock(LastLevelP6P7):
    """P6 and P7 from two stride-2 3x3 convs, the first on C5 (the body's last output) rather than P5.

    RetinaNet as published (Lin et al., 2017b, section 4: "P6 is obtained via a 3x3 stride-2 conv on C5"),
    detectron2's RetinaNet and torchvision's ``retinanet_resnet50_fpn_v2`` (``LastLevelP6P7(2048, 256)``).

    Args:
        channels: the pyramid's channels (P6 and P7 outputs).
        in_channels: C5's channels (2048 for a ResNet-50).
    """

    names: Tuple[str, ...] = ("p6", "p7")

    def __init__(self, channels: int, *, in_channels: int) -> None:
        # torchvision decides P5 vs C5 by comparing channels: equal channels would silently read P5.
        if in_channels == channels:
            raise ValueError(f"p6p7_c5 needs C5 channels different from the FPN's ({channels}); use 'p6p7' "
                             f"(identical when they are equal reads P5)")
        super().__init__(in_channels, channels)


# The names YAML and the CLI use for the top blocks. Each is built as cls(fpn_channels, in_channels=C5's).
TOP_BLOCKS: Dict[str, Type[ExtraFPNBlock]] = {
    "maxpool": MaxPoolTopBlock, "p6p7": P6P7TopBlock, "p6p7_c5": P6P7FromC5TopBlock,
}


def check_top_block(top_block: object) -> Type[ExtraFPNBlock]:
    """The top-block class for a name of ``TOP_BLOCKS``.

    Raises:
        ValueError: an unknown name (the valid ones are listed).
    """
    if top_block not in TOP_BLOCKS:
        raise ValueError(f"top_block must be one of {list(TOP_BLOCKS)}, got {top_block!r}")
    return TOP_BLOCKS[top_block]  # type: ignore[index]


class FPNBackbone(Backbone):
    """A feature producer (`body`) followed by torchvision's FPN (`fpn`); drops into torchvision's detectors.

    The attribute names ``body`` and ``fpn`` and the output keys (``"0".."3"``, ``"pool"``; or ``"0".."2"``,
    ``"p6"``, ``"p7"``) are torchvision's, so its detection checkpoints load unchanged and its default
    ``MultiScaleRoIAlign(["0", "1", "2", "3"])`` and anchor generators work as they are. (torchvision's own
    ``BackboneWithFPN`` takes a classifier and layer names; this one takes a declared body.)

    Args:
        body: a ``Backbone`` (declares its outputs with ``output_shape()``).
        top_block: "maxpool", "p6p7" or "p6p7_c5" (see ``TOP_BLOCKS``), or a top-block module with a ``names`` tuple
            (each added level has twice the stride of the one before).
        fpn_channels: channels of every pyramid level (``out_channels``).
        norm: None (plain convs, as torchvision and detectron2's default), "bn" or "gn" in the FPN convs.
        grad_checkpointing: in training with grad enabled, the FPN's forward (lateral and output convs, top
            block) is recomputed in backward instead of keeping its intermediate activations (Chen et al.
            2016; ``torch.utils.checkpoint``, non-reentrant). The body checkpoints its own blocks through
            ``ResNetOptions.grad_checkpointing``, which ``build_backbone`` also passes here.

    Example:
        >>> fpn = FPNBackbone(ResNetFeatures(get_variant("resnet18")))
        >>> {k: (s.channels, s.stride) for k, s in fpn.output_shape().items()}
        {'0': (256, 4), '1': (256, 8), '2': (256, 16), '3': (256, 32), 'pool': (256, 64)}
    """

    def __init__(self, body: nn.Module, *, top_block: Union[str, ExtraFPNBlock] = "maxpool",
                 fpn_channels: int = 256, norm: Optional[str] = None, grad_checkpointing: bool = False) -> None:
        super().__init__()
        if not isinstance(grad_checkpointing, bool):
            raise TypeError(f"grad_checkpointing must be a bool, got {grad_checkpointing!r}")
        if isinstance(fpn_channels, bool) or not isinstance(fpn_channels, int) or fpn_channels < 1:
            raise ValueError(f"fpn_channels must be a positive int, got {fpn_channels!r}")
        if norm not in FPN_NORMS:
            raise ValueError(f"FPN norm must be one of {FPN_NORMS}, got {norm!r}")
        if not callable(getattr(body, "output_shape", None)):
            raise TypeError(
                f"the FPN body {type(body).__name__} must declare its outputs with output_shape() -> "
                f"{{name: ShapeSpec(channels, stride)}} (subclass resnet_fpn.backbone.Backbone)"
            )
        in_shapes = body.output_shape()
        last_channels = list(in_shapes.values())[-1].channels
        extra = (check_top_block(top_block)(fpn_channels, in_channels=last_channels) if isinstance(top_block, str)
                 else top_block)
        if not isinstance(extra, ExtraFPNBlock) or not isinstance(getattr(extra, "names", None), tuple):
            raise TypeError(f"top_block must be a name of {list(TOP_BLOCKS)} or an ExtraFPNBlock with a `names` "
                            f"tuple, got {top_block!r}")
        self.grad_checkpointing = grad_checkpointing
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [shape.channels for shape in in_shapes.values()],
            fpn_channels,
            extra_blocks=extra,
            norm_layer=None if norm is None else norm_layer_for(norm),
        )
        shapes = OrderedDict(
            (str(i), ShapeSpec(fpn_channels, shape.stride)) for i, shape in enumerate(in_shapes.values())
        )
        stride = list(in_shapes.values())[-1].stride
        for name in extra.names:
            stride *= 2
            shapes[name] = ShapeSpec(fpn_channels, stride)
        self.set_output_shape(shapes)

    @property
    def top_block(self) -> ExtraFPNBlock:
        """The top-block module (``fpn.extra_blocks``)."""
        return self.fpn.extra_blocks

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.body(x)
        # torchvision's FPN names its outputs after its inputs: number them as torchvision's extractor does.
        levels = OrderedDict((str(i), f) for i, f in enumerate(features.values()))
        if self.grad_checkpointing and needs_checkpoint(self.fpn, levels):
            return run_checkpointed(self.fpn, levels)
        return self.fpn(levels)
