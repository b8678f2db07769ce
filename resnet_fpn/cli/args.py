"""Argument types the subcommands share."""
from __future__ import annotations

import argparse
from typing import Tuple

__all__ = ["image_size"]


def image_size(text: str) -> Tuple[int, int]:
    """Parse ``HxW`` (e.g. ``320x480``).

    Args:
        text: the argument.

    Returns:
        (height, width).

    Raises:
        argparse.ArgumentTypeError: not two positive integers joined by ``x``.
    """
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 800x1216, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"sizes must be at least 32x32, got {text!r}")
    return h, w
