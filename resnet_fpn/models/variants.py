"""THE table of ResNet variants. Nothing else in the project lists depths, widths or groups.

Each entry says how to build one architecture and which public checkpoint layout it matches, so
that `state_dict()` files from torchvision or timm load with no conversion by the user.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, List, Tuple

__all__ = ["ResNetVariant", "VARIANTS", "get_variant", "list_models", "suggest_names"]


@dataclass(frozen=True)
class ResNetVariant:
    """One ResNet architecture.

    Attributes:
        block: ``"basic"`` (two 3x3 convs, expansion 1) or ``"bottleneck"`` (1x1-3x3-1x1, expansion 4).
        layers: blocks per stage (layer1..layer4).
        groups: groups of the 3x3 conv (ResNeXt cardinality; 1 for plain ResNet).
        width_per_group: channels per group of the 3x3 conv at stage 1 (64 for ResNet, 128 for
            wide ResNet, 4 or 8 for ResNeXt).
        se: squeeze-excitation after the last conv of each block (Hu et al., 2018).
        deep_stem: three 3x3 convs (32, 32, 64 channels) instead of one 7x7 (ResNet-C, He et al., 2019).
        avg_down: average-pool then 1x1 conv in strided projections (ResNet-D, He et al., 2019).
        preact: pre-activation blocks (ResNet v2, He et al., 2016b).
        source: the library whose checkpoints of this architecture it loads (``"torchvision"``
            or ``"timm:<model name>"``).
    """

    block: str
    layers: Tuple[int, int, int, int]
    groups: int = 1
    width_per_group: int = 64
    se: bool = False
    deep_stem: bool = False
    avg_down: bool = False
    preact: bool = False
    source: str = "torchvision"

    @property
    def expansion(self) -> int:
        """Output channels of a block over its `planes` (1 for basic, 4 for bottleneck)."""
        return 1 if self.block == "basic" else 4

    @property
    def stage_channels(self) -> Tuple[int, int, int, int]:
        """Output channels of layer1..layer4 (C2..C5)."""
        return tuple(planes * self.expansion for planes in (64, 128, 256, 512))  # type: ignore[return-value]


_B, _BN = "basic", "bottleneck"
_D18, _D34, _D50, _D101, _D152 = (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)

VARIANTS: Dict[str, ResNetVariant] = {
    # He et al., 2016: "Deep Residual Learning for Image Recognition" (torchvision's v1.5 layout).
    "resnet18": ResNetVariant(_B, _D18),
    "resnet34": ResNetVariant(_B, _D34),
    "resnet50": ResNetVariant(_BN, _D50),
    "resnet101": ResNetVariant(_BN, _D101),
    "resnet152": ResNetVariant(_BN, _D152),
    # Xie et al., 2017: ResNeXt, grouped 3x3 convs.
    "resnext50_32x4d": ResNetVariant(_BN, _D50, groups=32, width_per_group=4),
    "resnext101_32x4d": ResNetVariant(_BN, _D101, groups=32, width_per_group=4, source="timm:resnext101_32x4d"),
    "resnext101_32x8d": ResNetVariant(_BN, _D101, groups=32, width_per_group=8),
    "resnext101_64x4d": ResNetVariant(_BN, _D101, groups=64, width_per_group=4),
    # Zagoruyko & Komodakis, 2016: wide bottlenecks (twice the 3x3 width).
    "wide_resnet50_2": ResNetVariant(_BN, _D50, width_per_group=128),
    "wide_resnet101_2": ResNetVariant(_BN, _D101, width_per_group=128),
    # Hu et al., 2018: squeeze-and-excitation, timm's layout (se.fc1 / se.fc2).
    "se_resnet50": ResNetVariant(_BN, _D50, se=True, source="timm:seresnet50"),
    "se_resnet101": ResNetVariant(_BN, _D101, se=True, source="timm:seresnet101"),
    "se_resnext50_32x4d": ResNetVariant(_BN, _D50, groups=32, width_per_group=4, se=True,
                                        source="timm:seresnext50_32x4d"),
    "se_resnext101_32x4d": ResNetVariant(_BN, _D101, groups=32, width_per_group=4, se=True,
                                         source="timm:seresnext101_32x4d"),
    # He et al., 2019 "Bag of Tricks": ResNet-D = deep stem + average-pool downsampling (timm's layout).
    "resnet18d": ResNetVariant(_B, _D18, deep_stem=True, avg_down=True, source="timm:resnet18d"),
    "resnet34d": ResNetVariant(_B, _D34, deep_stem=True, avg_down=True, source="timm:resnet34d"),
    "resnet50d": ResNetVariant(_BN, _D50, deep_stem=True, avg_down=True, source="timm:resnet50d"),
    "resnet101d": ResNetVariant(_BN, _D101, deep_stem=True, avg_down=True, source="timm:resnet101d"),
    # He et al., 2016b "Identity Mappings in Deep Residual Networks": pre-activation (ResNet v2).
    "preact_resnet18": ResNetVariant(_B, _D18, preact=True, source="timm:resnetv2_18"),
    "preact_resnet34": ResNetVariant(_B, _D34, preact=True, source="timm:resnetv2_34"),
    "preact_resnet50": ResNetVariant(_BN, _D50, preact=True, source="timm:resnetv2_50"),
    "preact_resnet101": ResNetVariant(_BN, _D101, preact=True, source="timm:resnetv2_101"),
    "preact_resnet152": ResNetVariant(_BN, _D152, preact=True, source="timm:resnetv2_152"),
}


def list_models() -> List[str]:
    """Names of every ResNet variant, in table order.

    Returns:
        A list such as ``["resnet18", "resnet34", ...]``.
    """
    return list(VARIANTS)


def suggest_names(name: str, valid: List[str], *, n: int = 3) -> str:
    """A ' Did you mean ...?' phrase for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name).lower(), valid, n=n, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def get_variant(name: str) -> ResNetVariant:
    """Look a variant up by name.

    Raises:
        TypeError: `name` is not a string.
        ValueError: `name` is unknown; the message suggests the closest names and lists all.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__} {name!r}")
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}.{suggest_names(name, list(VARIANTS))} "
            f"Valid names: {', '.join(VARIANTS)}"
        ) from None
