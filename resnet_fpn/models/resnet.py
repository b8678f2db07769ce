"""The ResNet classifier built from the variant table, with torchvision's parameter names."""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Callable, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..weights import load_weights
from .blocks import BLOCKS, SHORTCUTS, BlockOptions, make_shortcut
from .convs import CONVS, DeformConv2d, is_new_when_loading, make_conv
from .recompute import needs_checkpoint, run_checkpointed
from .variants import ResNetVariant, get_variant

__all__ = ["ResNet", "ResNetOptions", "DEFORM_STAGES", "build_resnet"]

NormLayer = Callable[[int], nn.Module]
log = logging.getLogger(__name__)

# The stages whose blocks may have a deformable 3x3, named as the backbone's outputs (c2 = layer1 ... c5 =
# layer4; detectron2's DEFORM_ON_PER_STAGE covers res2..res5 alike).
DEFORM_STAGES = ("c2", "c3", "c4", "c5")


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
        conv: "plain", or "ws": every conv of the body (stem, blocks, shortcuts) weight-standardised (Qiao et
            al. 2019; mmcv's ``ConvWS2d``, eps 1e-5 on the unbiased std), for use with ``norm="gn"`` as
            mmdetection's GN+WS recipes. Parameter names unchanged.
        deform_stages: stages (subset of ``DEFORM_STAGES``: "c2".."c5") whose blocks get a deformable 3x3
            (``conv2``): Dai et al. 2017 (DCN), Zhu et al. 2019 (DCNv2, on c3-c5 in their detectors).
        deform_modulated: DCNv2 (learned offsets and modulation) rather than DCNv1 (offsets only).
        deform_groups: offset groups of each deformable conv (detectron2's ``DEFORM_NUM_GROUPS``).
        grad_checkpointing: in training with grad enabled, each block's forward is recomputed in backward
            instead of keeping its activations (``torch.utils.checkpoint``, non-reentrant), and an FPN built on
            the body (``build_backbone``) recomputes its forward too: less memory, one more forward of the
            backbone per step. Parameters, outputs and gradients are the plain network's.

    Raises:
        ValueError: a value outside its allowed set (named with the allowed values).
        TypeError: a flag that is not a bool.

    Example:
        >>> ResNetOptions.coerce({"stride_in_1x1": True}).stride_in_1x1
        True
        >>> ResNetOptions.coerce({"deform_stages": ["c5", "c3"]}).deform_stages
        ('c3', 'c5')
    """

    shortcut: str = "B"
    stride_in_1x1: bool = False
    replace_stride_with_dilation: Tuple[bool, bool, bool] = (False, False, False)
    zero_init_residual: bool = False
    conv: str = "plain"
    deform_stages: Tuple[str, ...] = ()
    deform_modulated: bool = True
    deform_groups: int = 1
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        if self.conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {self.conv!r}")
        stages = self.deform_stages
        if isinstance(stages, str) or not isinstance(stages, (tuple, list)):
            raise ValueError(f"deform_stages must be a list of stage names from {DEFORM_STAGES} (e.g. "
                             f"['c3', 'c4', 'c5']), got {stages!r}")
        unknown = [s for s in stages if s not in DEFORM_STAGES]
        if unknown or len(set(stages)) != len(stages):
            raise ValueError(f"deform_stages must be distinct stage names from {DEFORM_STAGES}, got {list(stages)}")
        object.__setattr__(self, "deform_stages", tuple(s for s in DEFORM_STAGES if s in stages))
        groups = self.deform_groups
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"deform_groups must be a positive int, got {groups!r}")
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
        for name in ("stride_in_1x1", "zero_init_residual", "deform_modulated", "grad_checkpointing"):
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
            conv=options.conv,
            deform_modulated=options.deform_modulated,
            deform_groups=options.deform_groups,
        )
        conv = partial(make_conv, options.conv)

        if variant.deep_stem:
            # ResNet-C (Bag of Tricks): three 3x3 convs replace the 7x7; timm names them conv1.0/.3/.6.
            self.conv1 = nn.Sequential(
                conv(in_chans, 32, 3, stride=2, padding=1), norm_layer(32), nn.ReLU(inplace=True),
                conv(32, 32, 3, padding=1), norm_layer(32), nn.ReLU(inplace=True),
                conv(32, 64, 3, padding=1),
            )
        else:
            self.conv1 = conv(in_chans, 64, 7, stride=2, padding=3)
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
            stage_options = replace(block_options, deform=DEFORM_STAGES[index] in options.deform_stages)
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
                        conv=options.conv,
                    ),
                    has_shortcut=shortcut != "none",
                    options=stage_options,
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
        """He et al. 2015 init: Kaiming normal (fan_out, ReLU) for convs; norms start at weight 1, bias 0.

        A deformable conv's weight is a conv's; its offset predictor starts at zero (detectron2's init).
        """
        for m in self.modules():
            if is_new_when_loading(m):
                m.reset_parameters()  # zeros: deformable convs start as plain convs
            elif isinstance(m, (nn.Conv2d, DeformConv2d)):
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

    def run_stage(self, name: str, x: Tensor) -> Tensor:
        """Stage `name` (``"layer1"``..``"layer4"``) on `x`; with ``options.grad_checkpointing``, in training with
        grad enabled, each block under ``run_checkpointed`` (activations recomputed in backward)."""
        stage = getattr(self, name)
        if not self.options.grad_checkpointing:
            return stage(x)
        for block in stage:
            x = run_checkpointed(block, x) if needs_checkpoint(block, x) else block(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """The C5 feature map (after the final BN-ReLU for pre-activation nets)."""
        x = self.stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = self.run_stage(name, x)
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
        load_strictly(model, weights)
    return model


def load_strictly(model: nn.Module, weights: Union[str, dict]) -> None:
    """``load_weights(strict=True)``, except that a deformable conv's offset predictor may be absent from the
    checkpoint (a plain network's): it stays at zero, so the network computes the plain one (logged).

    Raises:
        ValueError: any other missing or left-over tensor (as ``load_weights(strict=True)``), or a shape mismatch.
    """
    new = {f"{name}.{p}" for name, m in model.named_modules() if is_new_when_loading(m)
           for p, _ in m.named_parameters(recurse=False)}
    if not new:
        load_weights(model, weights, strict=True)
        return
    report = load_weights(model, weights, strict=False)
    missing = [k for k in report.missing if k not in new]
    if missing or report.unexpected:
        raise ValueError(
            f"weights {report.source} do not fit: {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(report.unexpected)} left over (e.g. {report.unexpected[:3]})"
        )
    if report.missing:
        log.info("weights %s: %d deformable-conv offset tensors not in the checkpoint, left at zero (the plain "
                 "conv at initialisation)", report.source, len(report.missing))
