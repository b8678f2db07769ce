"""Backbone names -> factories; `build_backbone` and `list_backbones`."""
from __future__ import annotations

import inspect
import logging
import re
from dataclasses import fields
from functools import partial
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from torch import nn

from ..models.convs import is_new_when_loading
from ..models.resnet import ResNetOptions
from ..models.variants import VARIANTS, get_variant, suggest_names
from ..hub import with_required_options
from ..weights import WeightsSource, load_weights
from .features import STAGES, ResNetFeatures
from .fpn import FPNBackbone, check_top_block
from .norms import resolve_norm_and_freeze
from .timm_features import TimmFeatures

__all__ = ["build_backbone", "check_backbone_name", "list_backbones", "register_backbone", "BackboneFactory"]

log = logging.getLogger(__name__)

# A factory receives every option already resolved (no "auto", no None; `options` a ResNetOptions) and returns
# a module that has
# `output_shape()` (and `out_channels` where torchvision's detectors need it). Weights are loaded and
# stages frozen by the factory, since only it knows its module layout.
BackboneFactory = Callable[..., nn.Module]
_REGISTRY: Dict[str, BackboneFactory] = {}


def register_backbone(name: str, factory: Optional[BackboneFactory] = None):
    """Register a backbone factory under `name` (usable as a decorator).

    The factory is called as
    ``factory(*, weights, norm, freeze_at, out_features, top_block, fpn_channels, fpn_norm, options)``
    with resolved values (see `build_backbone`; `options` is a ``ResNetOptions``). A factory that does not
    declare ``fpn_norm`` or ``options`` (written before they existed) still works, and refuses only their
    non-default values.

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


def check_backbone_name(name: object) -> str:
    """Check a backbone name without building anything (what a training config does before it starts).

    Args:
        name: a name of ``list_backbones()``, or ``timm:<model>`` / ``timm:<model>-fpn`` (the timm model itself
            is looked up when built).

    Returns:
        `name`.

    Raises:
        TypeError: `name` is not a string.
        ValueError: an unknown name; the message suggests the closest names and lists all.
    """
    if not isinstance(name, str):
        raise TypeError(f"backbone name must be a str, got {type(name).__name__} {name!r}")
    if name.startswith("timm:") or name in _REGISTRY:
        return name
    raise ValueError(
        f"unknown backbone {name!r}.{suggest_names(name, list(_REGISTRY))} "
        f"Valid names: {', '.join(_REGISTRY)}, or 'timm:<model>' / 'timm:<model>-fpn'"
    )


def _natural(key: str) -> list:
    """Sort key that puts ``layer3.10`` after ``layer3.9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _modules_listed(names: Iterable[str], limit: int = 8) -> str:
    shown = sorted(set(names), key=_natural)
    return ", ".join(shown[:limit]) + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def _first_absent(key: str, present: set) -> str:
    """The first module on `key`'s path that is not in `present` (``body.layer3.5`` for
    ``body.layer3.5.conv1.weight`` when ``present`` holds the modules of a ResNet-18), else `key` itself."""
    parts = key.split(".")
    for n in range(1, len(parts)):
        prefix = ".".join(parts[:n])
        if prefix not in present:
            return prefix
    return key


def _prefixes_of(keys) -> set:
    return {".".join(key.split(".")[:n]) for key in keys for n in range(1, key.count(".") + 1)}


def _load_into_backbone(model: nn.Module, weights: WeightsSource, *, name: str, stages: nn.Module) -> None:
    """Load `weights` into a backbone: every body tensor must be found, and no body tensor may be left over.

    The checkpoint's other parts are legitimately unused and logged: an ImageNet classifier's ``fc``/``head``,
    a detection checkpoint's ``rpn``/``roi_heads``/``head``, stages the backbone does not build (``out_features``),
    FPN levels of another top block. The FPN may stay at its init (ImageNet checkpoints have none).

    Args:
        model: the backbone (a body, or an `FPNBackbone` around one).
        weights: a path, URL or state dict (see `load_weights`).
        name: the backbone's name, for messages.
        stages: the module whose children are the body's stem and stages (`ResNetFeatures` itself, the timm
            model inside `TimmFeatures`). A checkpoint tensor that aligns under one of them but that the model
            lacks (``layer3.5.*`` of a ResNet-34 in a ResNet-18, ``layer1.0.se.*`` of an SE-ResNet in a ResNet)
            is a body tensor of another architecture.

    Raises:
        ValueError: body tensors unset by the checkpoint, or checkpoint body tensors the model lacks (the
            modules and an example tensor named); a shape mismatch (from `load_weights`).
    """
    report = load_weights(model, weights, strict=False)
    prefix = next(n for n, m in model.named_modules() if m is stages)
    prefix = f"{prefix}." if prefix else ""
    # A deformable conv's offset predictor is new to a plain checkpoint: zero-initialised, it makes the conv
    # the plain one, so leaving it unset is what loading a plain checkpoint means.
    new = {f"{name}.{p}" for name, m in model.named_modules() if is_new_when_loading(m)
           for p, _ in m.named_parameters(recurse=False)}
    new_missing = [k for k in report.missing if k in new]
    body_missing = [k for k in report.missing if not k.startswith("fpn.") and k not in new]
    if body_missing:
        loaded = _prefixes_of(report.loaded)
        unset = [_first_absent(k, loaded) for k in body_missing]
        raise ValueError(
            f"weights {report.source} leave {len(body_missing)} backbone tensors of {name} unset, in "
            f"{_modules_listed(u[len(prefix):] if u.startswith(prefix) else u for u in unset)} "
            f"(e.g. {next(k for k in model.state_dict() if k in body_missing)}); is the checkpoint for another "
            f"architecture?"
        )
    children = {n for n, _ in stages.named_children()}
    lacking = {key: target for key, target in report.unexpected_targets.items()
               if target.startswith(prefix) and target[len(prefix):].split(".")[0] in children}
    if lacking:
        modules = {n for n, _ in model.named_modules()}
        absent = [_first_absent(target, modules)[len(prefix):] for target in lacking.values()]
        raise ValueError(
            f"weights {report.source} hold {len(lacking)} backbone tensors that {name} does not have, in "
            f"{_modules_listed(absent)} (e.g. {next(iter(lacking))}); is the checkpoint for "
            f"another architecture (a deeper ResNet, SE blocks, another stem)?"
        )
    if new_missing:
        log.info("weights %s: %d deformable-conv offset tensors not in the checkpoint, left at zero (the plain "
                 "conv at initialisation), e.g. %s", report.source, len(new_missing), new_missing[0])
    fpn_missing = len(report.missing) - len(body_missing) - len(new_missing)
    if fpn_missing:
        log.info("weights %s: FPN left at its initialisation (%d tensors not in the checkpoint)", report.source,
                 fpn_missing)
    if report.unexpected:
        log.info("weights %s: %d checkpoint tensors not used by the backbone (e.g. %s)", report.source,
                 len(report.unexpected), report.unexpected[:3])


def _resnet_factory(variant_name: str, *, with_fpn: bool, weights, norm, freeze_at, out_features, top_block,
                    fpn_channels, fpn_norm, options: ResNetOptions) -> nn.Module:
    body = ResNetFeatures(get_variant(variant_name), out_features=out_features, norm=norm, options=options)
    # One switch for the whole backbone: checkpointing the body's blocks and not the FPN would leave the
    # stride-4 FPN level (the largest activations after c2) stored.
    model = FPNBackbone(body, top_block=top_block, fpn_channels=fpn_channels, norm=fpn_norm,
                        grad_checkpointing=options.grad_checkpointing) if with_fpn else body
    if weights is not None:
        _load_into_backbone(model, weights, name=f"{variant_name}-fpn" if with_fpn else variant_name, stages=body)
    body.freeze(freeze_at)  # after loading, so frozen BN copies the loaded statistics
    return model


for _name in VARIANTS:
    register_backbone(_name, partial(_resnet_factory, _name, with_fpn=False))
    register_backbone(f"{_name}-fpn", partial(_resnet_factory, _name, with_fpn=True))


def _timm_factory(model_name: str, *, with_fpn: bool, weights, norm, freeze_at, out_features, top_block,
                  fpn_channels, fpn_norm, options: ResNetOptions) -> nn.Module:
    given = _non_default(options)
    if given:
        raise ValueError(f"backbone 'timm:{model_name}{'-fpn' if with_fpn else ''}' does not take ResNet options: "
                         f"got {given}; they apply to this project's ResNets (list_backbones()) only")
    body = TimmFeatures(model_name, out_features=out_features, norm=norm)
    model = FPNBackbone(body, top_block=top_block, fpn_channels=fpn_channels, norm=fpn_norm) if with_fpn else body
    if weights is not None:
        _load_into_backbone(model, weights, name=f"timm:{model_name}{'-fpn' if with_fpn else ''}",
                            stages=body.model)
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
    fpn_norm: Optional[str] = None,
    options: Union[ResNetOptions, Mapping[str, object], None] = None,
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
        out_features: body outputs (default c2-c5, or c3-c5 with the p6p7 top blocks).
        top_block: "maxpool" (P2-P6, Faster/Mask R-CNN), "p6p7" (P3-P7 with P6 from P5: torchvision's
            RetinaNet v1 and FCOS) or "p6p7_c5" (P6 from C5: RetinaNet as published, torchvision's v2).
        fpn_channels: channels of each pyramid level.
        fpn_norm: None (plain FPN convs), "bn" (torchvision's v2 detectors) or "gn".
        options: ResNet architecture options, a ``ResNetOptions`` or a mapping of its fields (``{"deform_stages":
            ["c3", "c4", "c5"], "grad_checkpointing": True}``): passed to the ResNet body; with
            ``grad_checkpointing`` the FPN is checkpointed too. timm backbones refuse any non-default option.

    Returns:
        A module with ``output_shape()`` and, with FPN, ``out_channels`` (what torchvision's detectors read).

    Raises:
        ValueError: unknown name (the closest valid names are suggested), bad option values (an unknown ResNet
            option is named with the valid ones), ResNet options for a timm backbone, or weights that leave
            backbone tensors unset (named). A deformable conv's offsets are not "unset": a plain checkpoint
            leaves them at zero, which computes the plain network.
        TypeError: options of the wrong type.

    Example:
        >>> from torchvision.models.detection import FasterRCNN
        >>> model = FasterRCNN(build_backbone("resnet50-fpn"), num_classes=91)
        >>> dcn = build_backbone("resnet50-fpn", options={"deform_stages": ["c3", "c4", "c5"]})
        >>> {k: tuple(v.shape) for k, v in dcn(torch.zeros(1, 3, 64, 64)).items()}["0"]
        (1, 256, 16, 16)
    """
    check_backbone_name(name)
    # Named weights bring the architecture they were trained with (detectron2's MSRA nets: stride_in_1x1).
    resnet_options = ResNetOptions.coerce(with_required_options(options, weights) if weights is not None else options)
    resolved_norm, resolved_freeze = resolve_norm_and_freeze(norm, freeze_at, pretrained=weights is not None)
    check_top_block(top_block)
    if out_features is None:
        out_features = list(STAGES)[1:] if top_block.startswith("p6p7") else list(STAGES)
    options = dict(weights=weights, norm=resolved_norm, freeze_at=resolved_freeze, out_features=out_features,
                   top_block=top_block, fpn_channels=fpn_channels, fpn_norm=fpn_norm, options=resnet_options)
    if name.startswith("timm:"):
        model_name = name[len("timm:"):]
        with_fpn = model_name.endswith("-fpn")
        return _timm_factory(model_name[: -len("-fpn")] if with_fpn else model_name, with_fpn=with_fpn, **options)
    return _call_factory(name, _REGISTRY[name], options)


# Options added to the factory protocol after its first version: a factory that does not declare one still
# works, and refuses only a non-default value of it (instead of a TypeError from deep inside).
_LATER_OPTIONS: Dict[str, object] = {"fpn_norm": None, "options": ResNetOptions()}


def _non_default(options: ResNetOptions) -> Dict[str, object]:
    """The fields of `options` that differ from their defaults."""
    default = ResNetOptions()
    return {f.name: getattr(options, f.name) for f in fields(options)
            if getattr(options, f.name) != getattr(default, f.name)}


def _call_factory(name: str, factory: BackboneFactory, options: Dict[str, object]) -> nn.Module:
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**options)
    call = dict(options)
    for key, default in _LATER_OPTIONS.items():
        if key in params:
            continue
        if call.pop(key) != default:
            value = _non_default(options[key]) if isinstance(options[key], ResNetOptions) else options[key]
            raise ValueError(f"backbone {name!r} does not support the option {key}={value!r} (its factory "
                             f"declares only {list(params)})")
    return factory(**call)
