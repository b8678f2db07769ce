"""The ResNet classifier built from the variant table, with torchvision's parameter names."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..weights import load_weights
from .blocks import BLOCKS, SHORTCUTS, BlockOptions, make_shortcut
from .variants import ResNetVariant, get_variant

__all__ = ["ResNet", "ResNetOptions", "build_resnet"]

NormLayer = Callable[[int], nn.Module]


@dataclass(frozen=True)
class ResNetOptions:
    """The architecture options of a ResNet beyond its variant: THE one declaration of them.

    ``ResNet``, ``build_resnet`` and the backbone's ``ResNetFeatures`` all take an ``options=`` of this type
    (or a mapping of its fields, e.g. read from YAML), so a new option is added here and nowhere else.

    Attributes:
        shortcut: "B" (projection where the shape changes), "A" (zero padding), "C" (projection
            everywhere) or "none" (plain network): He et al. 2016, section 4.1.
        stride_in_1x1: bottleneck stride on the 1x1 conv (MSRA/Caffe, detectron2's ``STRIDE_IN_1X1``) instead
            of the 3x3 (torchvision's ResNet v1.5).
        replace_stride_with_dilation: for layer2..layer4, dilate instead of striding (dilated C5 for
            segmentation, detectron2's DC5), as torchvision's argument of that name.
        zero_init_residual: zero the last norm (or conv, pre-activation) of each block so it starts as
            an identity (Goyal et al., 2017).

    Raises:
        ValueError: a value outside its allowed set (named with the allowed values).

    Example:
        >>> ResNetOptions.coerce({"stride_in_1x1": True}).stride_in_1x1
        True
    """

    shortcut: str = "B"
    stride_in_1x1: bool = False
    replace_stride_with_dilation: Tuple[bool, bool, bool] = (False, False, False)
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        dilation = self.replace_stride_with_dilation
        if (
            not isinstance(dilation, (tuple, list))
            or len(dilation) != 3
            or not all(isinstance(d, bool) for d in dilation)
        ):
            raise ValueError(
                f"replace_stride_with_dilation must be 3 booleans (for layer2, layer3, layer4), got {dilation!r}"
            )
        object.__setattr__(self, "replace_stride_with_dilation", tuple(dilation))
        for name in ("stride_in_1x1", "zero_init_residual"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @classmethod
    def coerce(cls, value: Union["ResNetOptions", Mapping[str, object], None]) -> "ResNetOptions":
        """Options from None (the defaults), an instance, or a mapping of field names (YAML, CLI).

        Raises:
            ValueError: a mapping key that is not an option (the valid names are listed).
            TypeError: `value` is none of the accepted types.
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            valid = [f.name for f in fields(cls)]
            unknown = [k for k in value if k not in valid]
            if unknown:
                raise ValueError(f"unknown ResNet options {unknown}; valid options are {valid}")
            return cls(**value)  # type: ignore[arg-type]
        raise TypeError(f"options must be a ResNetOptions, a mapping of its fields or None, got {value!r}")


class ResNet(nn.Module):
    """A ResNet of the variant table.

    Modules: ``conv1`` (a 7x7 conv, or a ``Sequential`` of three 3x3 convs for the deep stem), ``bn1``
    (absent in pre-activation nets, whose stem has no norm), ``maxpool``, ``layer1..layer4``, ``norm``
    (pre-activation only: the BN-ReLU after the last stage), ``fc`` (absent when ``num_classes`` is None).

    Args:
        variant: the architecture (see ``resnet_fpn.models.variants``).
        num_classes: classifier outputs; None builds no head (avgpool/fc), as backbones need.
        options: architecture options (``ResNetOptions`` or a mapping of its fields).
        norm_layer: callable ``channels -> module``; default ``nn.BatchNorm2d``.
        in_chans: input channels.

    Example:
        >>> net = ResNet(get_variant("resnet18"), num_classes=10)
        >>> net(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        variant: ResNetVariant,
        *,
        num_classes: Optional[int] = 1000,
        options: Union[ResNetOptions, Mapping[str, object], None] = None,
        norm_layer: Optional[NormLayer] = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        options = ResNetOptions.coerce(options)
        _check_head_and_norm(num_classes, norm_layer)
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        self.variant = variant
        self.options = options
        shortcut = options.shortcut
        block = BLOCKS[(variant.block, variant.preact)]
        block_options = BlockOptions(
            groups=variant.groups,
            width_per_group=variant.width_per_group,
            norm_layer=norm_layer,
            se=variant.se,
            stride_in_1x1=options.stride_in_1x1,
        )

        if variant.deep_stem:
            # ResNet-C (Bag of Tricks): three 3x3 convs replace the 7x7; timm names them conv1.0/.3/.6.
            self.conv1 = nn.Sequential(
                nn.Conv2d(in_chans, 32, 3, stride=2, padding=1, bias=False), norm_layer(32), nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, padding=1, bias=False), norm_layer(32), nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 3, padding=1, bias=False),
            )
        else:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        if not variant.preact:
            self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        in_ch, dilation = 64, 1
        dilate = (False, *options.replace_stride_with_dilation)
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), variant.layers)):
            stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if dilate[index]:
                dilation, stride = dilation * stride, 1
            out_ch = planes * block.expansion
            layer: List[nn.Module] = []
            for i in range(blocks):
                block_in, block_stride = (in_ch, stride) if i == 0 else (out_ch, 1)
                layer.append(block(
                    block_in,
                    planes,
                    stride=block_stride,
                    dilation=dilation,
                    # torchvision: the first block of a dilated stage keeps the previous dilation.
                    first_dilation=previous_dilation if i == 0 else dilation,
                    downsample=make_shortcut(
                        shortcut, block_in, out_ch, stride=block_stride,
                        norm_layer=None if variant.preact else norm_layer, avg_down=variant.avg_down,
                    ),
                    has_shortcut=shortcut != "none",
                    options=block_options,
                ))
            self.add_module(f"layer{index + 1}", nn.Sequential(*layer))
            in_ch = out_ch
        self.num_features = in_ch
        if variant.preact:
            # ResNet v2 ends with a BN-ReLU, since no block normalises its own output.
            self.norm = norm_layer(in_ch)
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(in_ch, num_classes)
        self.reset_parameters(zero_init_residual=options.zero_init_residual)

    def reset_parameters(self, *, zero_init_residual: bool = False) -> None:
        """He et al. 2015 init: Kaiming normal (fan_out, ReLU) for convs; norms start at weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "last_norm"):
                    nn.init.zeros_(m.last_norm().weight)

    def stem(self, x: Tensor) -> Tensor:
        """conv1 (+ bn1, ReLU) and the max pool: stride 4."""
        x = self.conv1(x)
        if hasattr(self, "bn1"):
            x = self.relu(self.bn1(x))
        return self.maxpool(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """The C5 feature map (after the final BN-ReLU for pre-activation nets)."""
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if hasattr(self, "norm"):
            x = self.relu(self.norm(x))
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        if not hasattr(self, "fc"):
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _check_head_and_norm(num_classes: object, norm_layer: object) -> None:
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    if norm_layer is not None and not callable(norm_layer):
        raise TypeError(f"norm_layer must be a callable channels -> nn.Module, got {norm_layer!r}")


def build_resnet(
    name: str,
    *,
    num_classes: Optional[int] = 1000,
    weights: Union[str, dict, None] = None,
    options: Union[ResNetOptions, Mapping[str, object], None] = None,
    norm_layer: Optional[NormLayer] = None,
    in_chans: int = 3,
) -> ResNet:
    """Build a ResNet of the variant table by name.

    Args:
        name: a name of ``list_models()``, e.g. ``"resnet50"``, ``"resnext101_32x8d"``, ``"se_resnet50"``.
        num_classes: classifier outputs (1000 for ImageNet); None builds no head.
        weights: optional checkpoint (path, URL or state dict) loaded strictly through ``load_weights``.
        options: architecture options, a ``ResNetOptions`` or a mapping such as ``{"shortcut": "A"}``.
        norm_layer, in_chans: see ``ResNet``.

    Returns:
        The network, parameter names as torchvision's (and timm's for timm architectures).

    Raises:
        ValueError: unknown name (closest names suggested) or a bad option value.

    Example:
        >>> model = build_resnet("resnet50")
        >>> sum(p.numel() for p in model.parameters())
        25557032
    """
    model = ResNet(
        get_variant(name),
        num_classes=num_classes,
        options=options,
        norm_layer=norm_layer,
        in_chans=in_chans,
    )
    if weights is not None:
        load_weights(model, weights, strict=True)
    return model
