"""ResNet stages as named multi-scale features c2..c5 (strides 4..32), with norm choice and freeze_at."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Sequence, Union

from torch import Tensor

from ..models.resnet import ResNet, ResNetOptions
from ..models.variants import ResNetVariant
from .base import Backbone
from .norms import check_freeze_at, freeze_module, norm_layer_for
from .shape import ShapeSpec

# ResNetOptions is re-exported: the backbone layer is what the training config may import (docs/architecture.md).
__all__ = ["STAGES", "ResNetFeatures", "ResNetOptions", "check_out_features"]

# Feature name -> (module, stride). `c<i>` has stride 2**i (Lin et al., 2017 name the stage outputs C2..C5).
STAGES = OrderedDict(c2=("layer1", 4), c3=("layer2", 8), c4=("layer3", 16), c5=("layer4", 32))


def check_out_features(out_features: object, allowed: Sequence[str]) -> List[str]:
    """Validate a subset of feature names; returns them in stride order."""
    if isinstance(out_features, str) or not isinstance(out_features, (list, tuple)) or not out_features:
        raise TypeError(f"out_features must be a non-empty list of names from {list(allowed)}, got {out_features!r}")
    unknown = [f for f in out_features if f not in allowed]
    if unknown:
        raise ValueError(f"unknown out_features {unknown}; valid names are {list(allowed)}")
    return [name for name in allowed if name in out_features]


class ResNetFeatures(ResNet, Backbone):
    """A ResNet body that returns its stage outputs as ``OrderedDict(c2=..., c5=...)``.

    Parameter names are the classifier's (``conv1``, ``layer3``...) minus the head, so ImageNet checkpoints
    and torchvision detection checkpoints (``backbone.body.*``) load unchanged. Stages after the last
    requested feature are not built.

    Args:
        variant: the architecture (a row of the variant table).
        out_features: subset of ``c2, c3, c4, c5``.
        norm: "frozen_bn", "bn", "sync_bn" or "gn".
        freeze_at: detectron2's meaning: 0 nothing frozen, 1 the stem, 2 stem + c2, ..., 5 everything.
            Frozen means no gradient, and BN turned into FrozenBatchNorm2d (statistics never move).
        options: architecture options (``ResNetOptions`` or a mapping of its fields): shortcut, stride
            placement, dilation, weight-standardised or deformable convs, gradient checkpointing of the blocks.

    Example:
        >>> body = ResNetFeatures(get_variant("resnet50"), out_features=["c3", "c5"])
        >>> {k: tuple(v.shape) for k, v in body(torch.zeros(1, 3, 65, 97)).items()}
        {'c3': (1, 512, 9, 13), 'c5': (1, 2048, 3, 4)}
    """

    def __init__(
        self,
        variant: ResNetVariant,
        *,
        out_features: Sequence[str] = tuple(STAGES),
        norm: str = "bn",
        freeze_at: int = 0,
        options: Union[ResNetOptions, Mapping[str, object], None] = None,
    ) -> None:
        super().__init__(variant, num_classes=None, options=options, norm_layer=norm_layer_for(norm))
        self.out_features = check_out_features(out_features, list(STAGES))
        last = list(STAGES).index(self.out_features[-1])
        for name in list(STAGES)[last + 1:]:
            delattr(self, STAGES[name][0])
        if hasattr(self, "norm") and self.out_features[-1] != "c5":
            del self.norm  # the final BN-ReLU of a pre-activation net only serves c5
        dilation_factor = 1
        shapes: Dict[str, ShapeSpec] = {}
        for index, (name, (_, stride)) in enumerate(STAGES.items()):
            if index > 0 and self.options.replace_stride_with_dilation[index - 1]:
                dilation_factor *= 2
            if name in self.out_features:
                shapes[name] = ShapeSpec(variant.stage_channels[index], stride // dilation_factor)
        self.set_output_shape(shapes)
        self.freeze_at = 0
        self.freeze(freeze_at)

    def stage_members(self) -> List[List[str]]:
        """Attribute names of the freezable units in order: the stem, then layer1..layer4 (those built).

        A pre-activation net's final BN-ReLU (``norm``) belongs to the last unit, since it only serves c5.
        """
        units = [["conv1"] + (["bn1"] if hasattr(self, "bn1") else [])]
        units += [[module] for module, _ in STAGES.values() if hasattr(self, module)]
        if hasattr(self, "norm"):
            units[-1].append("norm")
        return units

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and layer1..layer{freeze_at - 1}; see the class docstring."""
        check_freeze_at(freeze_at)
        for unit in self.stage_members()[:freeze_at]:
            for attr in unit:
                setattr(self, attr, freeze_module(getattr(self, attr)))
        self.freeze_at = max(self.freeze_at, freeze_at)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = self.stem(x)
        out: "OrderedDict[str, Tensor]" = OrderedDict()
        for name, (module, _) in STAGES.items():
            x = self.run_stage(module, x)  # blocks checkpointed with options.grad_checkpointing
            if name == "c5" and hasattr(self, "norm"):
                x = self.relu(self.norm(x))
            if name in self._shapes:
                out[name] = x
            if name == self.out_features[-1]:
                break
        return out
