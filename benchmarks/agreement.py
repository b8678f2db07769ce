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
    """Largest box difference in pixels between two detection dicts, detections paired by label and box.

    Each reference detection, best score first, takes the unpaired detection of ours with the same label whose
    box is nearest (max coordinate difference). Pairing by rank would not do: two runtimes can swap
    detections whose scores agree to 1e-7, which is no disagreement (deploy/parity.py pairs the same way).

    Args:
        ours: a torchvision detection dict (``boxes``, ``labels``, ...).
        theirs: the reference one.

    Returns:
        ``(max |box difference| px over the pairs, "N vs M detections, K paired by label and box[, U without a
        partner of their label], max relative box difference R")``; the relative difference divides by
        ``max(|reference coordinate|, 1 px)``.
    """
    a, b = ours["boxes"].float(), theirs["boxes"].float()
    used = torch.zeros(len(a), dtype=torch.bool)
    diff, relative, paired = 0.0, 0.0, 0
    for i in range(len(b)):
        candidates = (ours["labels"] == theirs["labels"][i]) & ~used
        if not candidates.any():
            continue
        distance = (a - b[i]).abs().amax(dim=1).masked_fill(~candidates, float("inf"))
        j = int(distance.argmin())
        used[j] = True
        paired += 1
        diff = max(diff, float(distance[j]))
        relative = max(relative, float(((a[j] - b[i]).abs() / b[i].abs().clamp_min(1.0)).max()))
    unpaired = len(b) - paired
    return diff, (f"{len(b)} vs {len(a)} detections, {paired} paired by label and box"
                  + (f", {unpaired} without a partner of their label" if unpaired else "")
                  + f", max relative box difference {relative:.1e}")


def max_relative_loss_difference(ours: Mapping[str, float], theirs: Mapping[str, float]) -> float:
    """Largest ``|ours - theirs| / |theirs|`` over the loss terms (torchvision's names).

    Raises:
        ValueError: the loss names differ.
    """
    if sorted(ours) != sorted(theirs):
        raise ValueError(f"loss names differ: {sorted(ours)} vs {sorted(theirs)}")
    return max(abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in theirs)
