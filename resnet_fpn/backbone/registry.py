"""Backbone names -> factories; `build_backbone` and `list_backbones`."""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Union

from torch import nn

from ..models.variants import VARIANTS, get_variant, suggest_names
from ..weights import WeightsSource, load_weights
from .features import STAGES, ResNetFeatures
from .fpn import FPNBackbone, check_top_block
from .norms import resolve_norm_and_freeze
from .timm_features import TimmFeatures

__all__ = ["build_backbone", "list_backbones", "register_backbone", "BackboneFactory"]

log = logging.getLogger(__name__)

# A factory receives every option already resolved (no "auto", no None) and returns a module that has
# `output_shape()` (and `out_channels` where torchvision's detectors need it). Weights are loaded and
# stages frozen by the factory, since only it knows its module layout.
BackboneFactory = Callable[..., nn.Module]
_REGISTRY: Dict[str, BackboneFactory] = {}


def register_backbone(name: str, factory: Optional[BackboneFactory] = None):
    """Register a backbone factory under `name` (usable as a decorator).

    The factory is called as ``factory(*, weights, norm, freeze_at, out_features, top_block, fpn_channels)``
    with resolved values (see `build_backbone`).

    Raises:
        ValueError: `name` is already registered or starts with the reserved ``timm:`` prefix.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"backbone name must be a non-empty str, got {name!r}")
    if name.startswith("timm:"):
        raise ValueError(f"backbone names starting with 'timm:' are reserved for timm models, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"backbone {name!r} is already registered")

    def add(fn: BackboneFactory) -> BackboneFactory:
        _REGISTRY[name] = fn
        return fn

    return add if factory is None else add(factory)


def list_backbones() -> List[str]:
    """Registered backbone names: every ResNet of the table, body only (``resnet50``) and with FPN
    (``resnet50-fpn``), then user registrations. Any ``timm:<model>`` / ``timm:<model>-fpn`` also works."""
    return list(_REGISTRY)


def _load_into_backbone(model: nn.Module, weights: WeightsSource) -> None:
    """Load weights, requiring every body tensor; the FPN may stay at its init (ImageNet checkpoints)."""
    report = load_weights(model, weights, strict=False)
    body_missing = [k for k in report.missing if not k.startswith("fpn.")]
    if body_missing:
        raise ValueError(
            f"weights {report.source} leave {len(body_missing)} backbone tensors unset, e.g. {body_missing[:5]}; "
            f"is the checkpoint for another architecture?"
        )
    fpn_missing = len(report.missing) - len(body_missing)
    if fpn_missing:
        log.info("weights %s: FPN left at its initialisation (%d tensors not in the checkpoint)", report.source,
                 fpn_missing)
    if report.unexpected:
        log.info("weights %s: %d checkpoint tensors not used by the backbone (e.g. %s)", report.source,
                 len(report.unexpected), report.unexpected[:3])


def _resnet_factory(variant_name: str, *, with_fpn: bool, weights, norm, freeze_at, out_features, top_block,
                    fpn_channels) -> nn.Module:
    body = ResNetFeatures(get_variant(variant_name), out_features=out_features, norm=norm)
    model = FPNBackbone(body, top_block=top_block, fpn_channels=fpn_channels) if with_fpn else body
    if weights is not None:
        _load_into_backbone(model, weights)
    body.freeze(freeze_at)  # after loading, so frozen BN copies the loaded statistics
    return model


for _name in VARIANTS:
    register_backbone(_name, partial(_resnet_factory, _name, with_fpn=False))
    register_backbone(f"{_name}-fpn", partial(_resnet_factory, _name, with_fpn=True))


def _timm_factory(model_name: str, *, with_fpn: bool, weights, norm, freeze_at, out_features, top_block,
                  fpn_channels) -> nn.Module:
    body = TimmFeatures(model_name, out_features=out_features, norm=norm)
    model = FPNBackbone(body, top_block=top_block, fpn_channels=fpn_channels) if with_fpn else body
    if weights is not None:
        _load_into_backbone(model, weights)
    body.freeze(freeze_at)
    return model


def build_backbone(
    name: str,
    *,
    weights: Union[WeightsSource, None] = None,
    norm: str = "auto",
    freeze_at: Optional[int] = None,
    out_features: Optional[Sequence[str]] = None,
    top_block: str = "maxpool",
    fpn_channels: int = 256,
) -> nn.Module:
    """Build a backbone by name, ready for torchvision's detectors.

    Args:
        name: one of ``list_backbones()`` (e.g. ``"resnet50-fpn"``, ``"resnext101_32x8d-fpn"``, ``"resnet50"``
            for the body alone), or ``"timm:<model>"`` / ``"timm:<model>-fpn"`` for any timm features model.
        weights: a path, URL or state dict: an ImageNet classifier (torchvision or timm layout; the FPN stays
            at its init), a torchvision detection checkpoint (``backbone.body.*``/``backbone.fpn.*``), or this
            project's checkpoints. What was and was not loaded is logged.
        norm: "auto" (frozen BN when `weights` are given, BN when training from scratch), "frozen_bn", "bn",
            "sync_bn" or "gn".
        freeze_at: detectron2's meaning: 0 nothing frozen, 1 the stem, 2 stem + c2, ..., 5 everything.
            None means 2 with weights (torchvision's ``trainable_layers=3``) and 0 from scratch.
        out_features: body outputs (default c2-c5, or c3-c5 with ``top_block="p6p7"``).
        top_block: "maxpool" (P2-P6, Faster/Mask R-CNN) or "p6p7" (P3-P7, RetinaNet/FCOS).
        fpn_channels: channels of each pyramid level.

    Returns:
        A module with ``output_shape()`` and, with FPN, ``out_channels`` (what torchvision's detectors read).

    Raises:
        ValueError: unknown name (the closest valid names are suggested), bad option values, or weights
            that leave backbone tensors unset (named).
        TypeError: options of the wrong type.

    Example:
        >>> from torchvision.models.detection import FasterRCNN
        >>> model = FasterRCNN(build_backbone("resnet50-fpn"), num_classes=91)
    """
    if not isinstance(name, str):
        raise TypeError(f"backbone name must be a str, got {type(name).__name__} {name!r}")
    resolved_norm, resolved_freeze = resolve_norm_and_freeze(norm, freeze_at, pretrained=weights is not None)
    check_top_block(top_block)
    if out_features is None:
        out_features = list(STAGES)[1:] if top_block == "p6p7" else list(STAGES)
    options = dict(weights=weights, norm=resolved_norm, freeze_at=resolved_freeze, out_features=out_features,
                   top_block=top_block, fpn_channels=fpn_channels)
    if name.startswith("timm:"):
        model_name = name[len("timm:"):]
        with_fpn = model_name.endswith("-fpn")
        return _timm_factory(model_name[: -len("-fpn")] if with_fpn else model_name, with_fpn=with_fpn, **options)
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown backbone {name!r}.{suggest_names(name, list(_REGISTRY))} "
            f"Valid names: {', '.join(_REGISTRY)}, or 'timm:<model>' / 'timm:<model>-fpn'"
        )
    return _REGISTRY[name](**options)
