"""How far our outputs are from torchvision's: feature maps, detections, training losses."""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import torch
from torch import Tensor

__all__ = ["max_relative_difference", "compare_detections", "max_relative_loss_difference"]


def max_relative_difference(ours: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """max over levels of ``max |ours - reference| / max |reference|`` (a per-level relative difference).

    Per level, because FPN levels have different ranges: one global scale would let a large level hide an
    error in a small one.

    Args:
        ours: level name -> tensor.
        reference: level name -> tensor, same keys in the same order, same shapes.

    Returns:
        The largest per-level relative difference (0.0 when identical).

    Raises:
        ValueError: the two outputs have different keys or shapes.
    """
    if list(ours) != list(reference):
        raise ValueError(f"outputs differ in keys: {list(ours)} vs {list(reference)}")
    worst = 0.0
    for key, ref in reference.items():
        if ours[key].shape != ref.shape:
            raise ValueError(f"level {key!r}: shape {tuple(ours[key].shape)} vs {tuple(ref.shape)}")
        scale = ref.abs().max().float().clamp_min(1e-30)
        worst = max(worst, ((ours[key].float() - ref.float()).abs().max() / scale).item())
    return worst


def compare_detections(ours: Dict[str, Tensor], theirs: Dict[str, Tensor]) -> Tuple[float, str]:
    """Largest box difference in pixels of two detection dicts matched by rank, and a description.

    Args:
        ours: a torchvision detection dict (``boxes``, ``labels``, ...).
        theirs: the reference one.

    Returns:
        ``(max |box difference| px, "N vs M detections, labels equal|DIFFER, max relative box difference")``
        where the relative difference divides by ``max(|reference coordinate|, 1 px)``.
    """
    n_ours, n_theirs = len(ours["boxes"]), len(theirs["boxes"])
    n = min(n_ours, n_theirs)
    same_labels = torch.equal(ours["labels"][:n], theirs["labels"][:n])
    a, b = ours["boxes"][:n].float(), theirs["boxes"][:n].float()
    diff = (a - b).abs().max().item() if n else 0.0
    relative = ((a - b).abs() / b.abs().clamp_min(1.0)).max().item() if n else 0.0
    return diff, (f"{n_theirs} vs {n_ours} detections, labels {'equal' if same_labels else 'DIFFER'}, "
                  f"max relative box difference {relative:.1e}")


def max_relative_loss_difference(ours: Mapping[str, float], theirs: Mapping[str, float]) -> float:
    """Largest ``|ours - theirs| / |theirs|`` over the loss terms (torchvision's names).

    Raises:
        ValueError: the loss names differ.
    """
    if sorted(ours) != sorted(theirs):
        raise ValueError(f"loss names differ: {sorted(ours)} vs {sorted(theirs)}")
    return max(abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in theirs)
