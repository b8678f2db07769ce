"""Declared feature shapes: every feature producer says what it returns, per output name."""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["ShapeSpec"]


class ShapeSpec(NamedTuple):
    """Channels and stride of one feature map (detectron2's ShapeSpec, without the unknowable H/W).

    For an input of H x W, a feature of stride s is exactly ceil(H / s) x ceil(W / s).
    """

    channels: int
    stride: int
