"""Norm choices for backbones, and freezing: no gradient, and BN statistics that never move."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["NORMS", "norm_layer_for", "convert_frozen_batchnorm", "freeze_module", "check_freeze_at",
           "resolve_norm_and_freeze"]

# "auto" is resolved by build_backbone: frozen BN with pretrained weights, BN from scratch.
NORMS = ("auto", "frozen_bn", "bn", "sync_bn", "gn")


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups (Wu & He, 2018); channel counts of the ResNet family are all multiples of 32.
    return nn.GroupNorm(32, channels)


def norm_layer_for(norm: str) -> Callable[[int], nn.Module]:
    """The `channels -> module` factory for a resolved norm name ("frozen_bn", "bn", "sync_bn", "gn")."""
    layers = {
        "frozen_bn": FrozenBatchNorm2d,
        "bn": nn.BatchNorm2d,
        # Acts as plain BN outside distributed training; synchronises across processes (GPU) in DDP.
        "sync_bn": nn.SyncBatchNorm,
        "gn": _group_norm,
    }
    if norm not in layers:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return layers[norm]


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d/SyncBatchNorm in `module` by a FrozenBatchNorm2d with the same statistics.

    Returns the converted module (a new one if `module` itself is a BN layer), as detectron2's
    ``FrozenBatchNorm2d.convert_frozen_batchnorm``; statistics then stay fixed in ``.train()`` mode.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = convert_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def freeze_module(module: nn.Module) -> nn.Module:
    """No gradients for `module`'s parameters, and its BN layers turned into FrozenBatchNorm2d."""
    for p in module.parameters():
        p.requires_grad_(False)
    return convert_frozen_batchnorm(module)


def check_freeze_at(freeze_at: object, *, num_stages: int = 5) -> int:
    """Validate detectron2's freeze_at: 0 nothing, 1 the stem, 2 stem + c2, ... 5 everything."""
    if isinstance(freeze_at, bool) or not isinstance(freeze_at, int):
        raise TypeError(f"freeze_at must be an int in 0..{num_stages}, got {type(freeze_at).__name__} {freeze_at!r}")
    if not 0 <= freeze_at <= num_stages:
        raise ValueError(
            f"freeze_at must be in 0..{num_stages} (0 nothing frozen, 1 the stem, 2 stem + c2, ..., "
            f"{num_stages} everything), got {freeze_at}"
        )
    return freeze_at


def resolve_norm_and_freeze(norm: str, freeze_at: Optional[int], *, pretrained: bool) -> Tuple[str, int]:
    """THE "auto" rule, in one place: what ``norm="auto"`` and ``freeze_at=None`` mean.

    With pretrained weights (ImageNet, or a whole detector being fine-tuned): frozen BN and ``freeze_at=2``
    (the stem and c2 frozen), as torchvision's ``trainable_layers=3`` and detectron2's ``FREEZE_AT: 2``; the
    statistics of a small detection batch would only damage the ImageNet ones. From scratch: trainable BN
    and nothing frozen (there is nothing to keep).

    Args:
        norm: a name of ``NORMS``; "auto" is resolved, the others returned as they are.
        freeze_at: an int in 0..5 (validated), or None for the default above.
        pretrained: whether weights are loaded into the backbone (or the whole detector).

    Returns:
        (norm, freeze_at), both resolved.

    Raises:
        ValueError, TypeError: an unknown norm or a bad freeze_at.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "auto":
        norm = "frozen_bn" if pretrained else "bn"
    resolved_freeze = (2 if pretrained else 0) if freeze_at is None else check_freeze_at(freeze_at)
    return norm, resolved_freeze
