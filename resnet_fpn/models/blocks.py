"""Residual blocks, squeeze-excitation and the shortcut options of the ResNet paper.

Parameter names follow torchvision (`conv1`, `bn1`, ..., `downsample.0/1`) and timm where the
architecture is timm's (`se.fc1/se.fc2`; ResNet-D `downsample.1/2` behind an average pool). The convs may be
weight-standardised and the 3x3 of a block (``conv2``) deformable (`resnet_fpn.models.convs`), with the
same names: a deformable ``conv2`` keeps ``conv2.weight`` and adds ``conv2.offset.*``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convs import CONVS, DeformConv2d, make_conv

__all__ = [
    "SHORTCUTS",
    "BlockOptions",
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "SqueezeExcite",
    "ZeroPadShortcut",
    "make_shortcut",
]

NormLayer = Callable[[int], nn.Module]

# The shortcut options of He et al. 2016, section 4.1 ("A", "B", "C"), plus the plain network of its
# degradation experiment ("none").
SHORTCUTS = ("A", "B", "C", "none")


def conv3x3(in_ch: int, out_ch: int, *, stride: int = 1, groups: int = 1, dilation: int = 1,
            conv: str = "plain") -> nn.Conv2d:
    # padding = dilation keeps ceil(H / stride) outputs for every input size.
    return make_conv(conv, in_ch, out_ch, 3, stride=stride, padding=dilation, groups=groups, dilation=dilation)


def conv1x1(in_ch: int, out_ch: int, *, stride: int = 1, conv: str = "plain") -> nn.Conv2d:
    return make_conv(conv, in_ch, out_ch, 1, stride=stride)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never more than 10% below `value` (timm's rule for SE widths)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018) with timm's parameter names.

    Global average pool, 1x1 conv down to ``channels / 16`` (rounded to a multiple of 8), ReLU, 1x1 conv
    back up, sigmoid gate.

    Args:
        channels: input and output channels.

    Example:
        >>> SqueezeExcite(256)(torch.zeros(2, 256, 7, 7)).shape
        torch.Size([2, 256, 7, 7])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = make_divisible(channels / 16)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


class ZeroPadShortcut(nn.Module):
    """Option A: a parameter-free shortcut that subsamples and pads the new channels with zeros."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            # x[::2] keeps ceil(H / 2) rows, the same size as the strided convs of the residual branch.
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def make_shortcut(
    kind: str,
    in_ch: int,
    out_ch: int,
    *,
    stride: int,
    norm_layer: Optional[NormLayer],
    avg_down: bool = False,
    conv: str = "plain",
) -> Optional[nn.Module]:
    """The `downsample` module of a block, or None for an identity (or absent) shortcut.

    Args:
        kind: one of SHORTCUTS. "B" projects only where the shape changes, "C" on every block,
            "A" zero-pads where the shape changes, "none" has no shortcut (the caller skips the add).
        in_ch, out_ch, stride: the block's input channels, output channels and stride.
        norm_layer: the norm after the projection conv; None for pre-activation blocks, whose
            projection reads the already normalised input (He et al., 2016b).
        avg_down: ResNet-D: a 2x2 average pool carries the stride, the 1x1 conv has stride 1.
        conv: the projection conv's kind, "plain" or "ws" (see ``resnet_fpn.models.convs.CONVS``).
    """
    if kind not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {kind!r}")
    shape_changes = stride != 1 or in_ch != out_ch
    if kind == "none" or (kind in ("A", "B") and not shape_changes):
        return None
    if kind == "A":
        if out_ch < in_ch:
            raise ValueError(f"shortcut 'A' cannot shrink channels ({in_ch} -> {out_ch}); use 'B' or 'C'")
        return ZeroPadShortcut(stride, out_ch - in_ch)
    layers = []
    if avg_down:
        # ceil_mode and count_include_pad=False: ceil(H / 2) outputs, edge windows averaged over real pixels.
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        layers += [pool, conv1x1(in_ch, out_ch, conv=conv)]
    else:
        layers.append(conv1x1(in_ch, out_ch, stride=stride, conv=conv))
    if norm_layer is not None:
        layers.append(norm_layer(out_ch))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class BlockOptions:
    """What every block of one network shares (from the variant table and the build options).

    Attributes:
        groups, width_per_group: the 3x3 conv's groups and channels per group at stage 1 (ResNeXt, wide).
        norm_layer: a callable ``channels -> module`` (torchvision's convention).
        se: squeeze-excitation after the last conv.
        stride_in_1x1: bottlenecks put the stride on the first 1x1 conv (MSRA/Caffe) instead of the 3x3.
        conv: "plain" or "ws" (weight standardisation) for every conv of the block.
        deform: the block's 3x3 conv ``conv2`` is deformable (DCN), with `deform_modulated` (DCNv2) and
            `deform_groups` offset groups (see ``resnet_fpn.models.convs.DeformConv2d``).
    """

    groups: int = 1
    width_per_group: int = 64
    norm_layer: NormLayer = nn.BatchNorm2d
    se: bool = False
    stride_in_1x1: bool = False
    conv: str = "plain"
    deform: bool = False
    deform_modulated: bool = True
    deform_groups: int = 1

    def __post_init__(self) -> None:
        if self.conv not in CONVS:
            raise ValueError(f"conv must be one of {CONVS}, got {self.conv!r}")

    def conv3x3(self, in_ch: int, out_ch: int, *, stride: int = 1, groups: int = 1, dilation: int = 1,
                deformable: bool = False) -> nn.Module:
        """A 3x3 conv of the block's kind; deformable when `deformable` and the block is (``deform``)."""
        if deformable and self.deform:
            return DeformConv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups,
                                deform_groups=self.deform_groups, modulated=self.deform_modulated,
                                standardize=self.conv == "ws")
        return conv3x3(in_ch, out_ch, stride=stride, groups=groups, dilation=dilation, conv=self.conv)

    def check_basic(self) -> None:
        if self.groups != 1 or self.width_per_group != 64:
            raise ValueError(
                f"basic blocks take groups=1 and width_per_group=64, got {self.groups} and {self.width_per_group}"
            )

    def bottleneck_width(self, planes: int) -> int:
        # torchvision's rule: width = planes * (width_per_group / 64) * groups.
        return int(planes * (self.width_per_group / 64.0)) * self.groups


class _Residual(nn.Module):
    """What every block shares: the shortcut and the final add."""

    def __init__(self, downsample: Optional[nn.Module], has_shortcut: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.has_shortcut = has_shortcut

    def _add_shortcut(self, out: Tensor, x: Tensor) -> Tensor:
        """ReLU(out + shortcut(x)) for post-activation blocks.

        As torchvision's blocks: the projection runs after the residual branch (so its output is not held
        while the branch runs) and is added in place; the branch's last op (a norm, or SE's product) does not
        save its output for backward, so autograd allows it, and no new activation is allocated.
        """
        if self.has_shortcut:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class BasicBlock(_Residual):
    """Two 3x3 convs (ResNet-18/34). torchvision's names: conv1, bn1, conv2, bn2, downsample.

    With ``options.deform`` the second 3x3 (``conv2``, stride 1) is deformable: the block's "3x3" in the sense
    of detectron2's deformable bottleneck, the one conv named alike in every block kind.
    """

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: Optional[nn.Module] = None,
        has_shortcut: bool = True,
        options: BlockOptions = BlockOptions(),
    ) -> None:
        super().__init__(downsample, has_shortcut)
        norm_layer = options.norm_layer
        options.check_basic()
        self.conv1 = options.conv3x3(in_ch, planes, stride=stride, dilation=first_dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = options.conv3x3(planes, planes, dilation=dilation, deformable=True)
        self.bn2 = norm_layer(planes)
        self.se = SqueezeExcite(planes) if options.se else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self._add_shortcut(out, x)

    def last_norm(self) -> nn.Module:
        return self.bn2


class Bottleneck(_Residual):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4. torchvision's names.

    The stride sits on the 3x3 conv (ResNet v1.5, torchvision) unless ``stride_in_1x1`` (the original
    MSRA/Caffe placement that detectron2's ImageNet weights use). With ``options.deform`` the 3x3 (``conv2``)
    is deformable, with its stride and dilation (detectron2's ``DeformBottleneckBlock``).
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: Optional[nn.Module] = None,
        has_shortcut: bool = True,
        options: BlockOptions = BlockOptions(),
    ) -> None:
        super().__init__(downsample, has_shortcut)
        norm_layer = options.norm_layer
        width, groups = options.bottleneck_width(planes), options.groups
        out_ch = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if options.stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_ch, width, stride=stride_1x1, conv=options.conv)
        self.bn1 = norm_layer(width)
        self.conv2 = options.conv3x3(width, width, stride=stride_3x3, groups=groups, dilation=first_dilation,
                                     deformable=True)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, out_ch, conv=options.conv)
        self.bn3 = norm_layer(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out_ch) if options.se else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self._add_shortcut(out, x)

    def last_norm(self) -> nn.Module:
        return self.bn3


class PreActBasicBlock(_Residual):
    """Pre-activation basic block (He et al., 2016b): BN-ReLU before each conv, a clean identity path.

    The projection shortcut reads the pre-activated input, as in the paper and timm's ResNetV2.
    """

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: Optional[nn.Module] = None,
        has_shortcut: bool = True,
        options: BlockOptions = BlockOptions(),
    ) -> None:
        super().__init__(downsample, has_shortcut)
        norm_layer = options.norm_layer
        options.check_basic()
        self.bn1 = norm_layer(in_ch)
        self.conv1 = options.conv3x3(in_ch, planes, stride=stride, dilation=first_dilation)
        self.bn2 = norm_layer(planes)
        self.conv2 = options.conv3x3(planes, planes, dilation=dilation, deformable=True)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(planes) if options.se else None

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = None
        if self.has_shortcut:
            shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        if self.se is not None:
            out = self.se(out)
        return out if shortcut is None else out + shortcut

    def last_norm(self) -> nn.Module:
        return self.conv2  # zero_init_residual zeroes the last conv of a pre-activation block (timm)


class PreActBottleneck(_Residual):
    """Pre-activation bottleneck (ResNet v2): BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1, no ReLU after the add."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: Optional[nn.Module] = None,
        has_shortcut: bool = True,
        options: BlockOptions = BlockOptions(),
    ) -> None:
        super().__init__(downsample, has_shortcut)
        norm_layer = options.norm_layer
        width, groups = options.bottleneck_width(planes), options.groups
        out_ch = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if options.stride_in_1x1 else (1, stride)
        self.bn1 = norm_layer(in_ch)
        self.conv1 = conv1x1(in_ch, width, stride=stride_1x1, conv=options.conv)
        self.bn2 = norm_layer(width)
        self.conv2 = options.conv3x3(width, width, stride=stride_3x3, groups=groups, dilation=first_dilation,
                                     deformable=True)
        self.bn3 = norm_layer(width)
        self.conv3 = conv1x1(width, out_ch, conv=options.conv)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(out_ch) if options.se else None

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = None
        if self.has_shortcut:
            shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        if self.se is not None:
            out = self.se(out)
        return out if shortcut is None else out + shortcut

    def last_norm(self) -> nn.Module:
        return self.conv3


BLOCKS = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}
