"""torchvision's models and ours with the same weights."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["MODEL_KINDS", "randomize_norm_statistics", "reference_models"]

MODEL_KINDS = ("backbone", "faster_rcnn", "mask_rcnn")


@torch.no_grad()
def randomize_norm_statistics(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Give every BatchNorm2d / FrozenBatchNorm2d random statistics and affine terms, in place.

    Fresh norm layers are identities, so folding them into convolutions would be checked on nothing.
    Weights in [0.5, 1.5], biases and means N(0, 0.1), variances in [0.5, 1.5]: far enough from the identity
    that folding them wrongly shows, close enough that a 50-layer net's activations stay finite.

    Args:
        model: the model to modify.
        seed: seed of the generator.

    Returns:
        `model`.
    """
    from torchvision.ops import FrozenBatchNorm2d

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = module.running_mean.numel()
            module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def reference_models(kind: str, *, size: Optional[int] = None, max_size: Optional[int] = None, arch: str = "resnet50",
                     seed: int = 0) -> Tuple[nn.Module, nn.Module]:
    """(torchvision's model, ours with the same weights) for "backbone", "faster_rcnn" or "mask_rcnn".

    torchvision's model is built the way its ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` build
    it with pretrained weights (FrozenBatchNorm2d, ``trainable_backbone_layers=3``), which is also what
    ``build_detector(weights=...)`` builds (frozen BN, ``freeze_at=2``); weights are random, norm statistics
    randomised, and its ``state_dict()`` is loaded into ours. Detectors get ``min_size = size``, ``max_size``
    (default: `size`) and a score threshold of 0, and their class logits are scaled up (x8) so that random
    weights still give spread-out scores (the top 100 detections are then not decided by near-ties).

    Args:
        kind: "backbone" (ResNet + FPN), "faster_rcnn" or "mask_rcnn" (ResNet-FPN, 91 classes).
        size: detector resize size, the shorter side (required for detectors, ignored for the backbone).
        max_size: the detector's longer-side limit (default: `size`).
        arch: torchvision's ResNet name ("resnet50", or "resnet18" for quick runs); ours is ``f"{arch}-fpn"``.
        seed: seed for weights and statistics.

    Returns:
        ``(torchvision_model, our_model)``, both in eval mode.

    Raises:
        ValueError: unknown `kind`, or a detector without `size`.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    if kind != "backbone" and size is None:
        raise ValueError(f"kind={kind!r} needs a size (the detector's min_size = max_size)")
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    from resnet_fpn import build_backbone, build_detector

    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name=arch, weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    if kind == "backbone":
        theirs: nn.Module = backbone
    else:
        cls = FasterRCNN if kind == "faster_rcnn" else MaskRCNN
        theirs = cls(backbone, num_classes=91, min_size=size, max_size=max_size or size, box_score_thresh=0.0)
        with torch.no_grad():
            theirs.roi_heads.box_predictor.cls_score.weight.mul_(8.0)
    randomize_norm_statistics(theirs, seed=seed)
    theirs.eval()
    state = theirs.state_dict()
    if kind == "backbone":
        ours = build_backbone(f"{arch}-fpn", weights=state)
    else:
        ours = build_detector(kind, num_classes=91, backbone=f"{arch}-fpn", weights=state, min_size=size,
                              max_size=max_size or size, score_thresh=0.0)
    return theirs, ours.eval()
