"""Reading image files the one way training, evaluation and inference all see them: upright, RGB, uint8."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["read_image"]


def read_image(
    path: Union[str, "os.PathLike[str]"],
    *,
    size: Optional[Tuple[int, int]] = None,
    context: Optional[str] = None,
) -> np.ndarray:
    """Read an image file upright (EXIF orientation applied), as RGB (grayscale, palette, CMYK converted,
    alpha dropped).

    Args:
        path: the image file (any format Pillow decodes).
        size: ``(width, height)`` the caller's annotations give for it, or None. The image is returned in the
            frame of that size: upright when its upright size matches, else as stored when the stored size
            matches (tools that annotate the stored pixels and ignore the EXIF orientation), else an error.
        context: where the path came from, added to error messages in parentheses (e.g.
            ``"image id 3, listed in instances_val.json"``).

    Returns:
        ``(H, W, 3)`` uint8 array, writable (transforms may work in place).

    Raises:
        FileNotFoundError: no such file (``"image file not found: <path> (<context>)"``).
        ValueError: the file cannot be decoded as an image (the message names it and Pillow's reason), or its
            size matches neither ``size`` nor, before the EXIF rotation, its transpose.
    """
    path = Path(path)
    where = f" ({context})" if context else ""
    wanted = None if size is None else (int(size[0]), int(size[1]))
    try:
        with Image.open(path) as raw:
            upright = ImageOps.exif_transpose(raw)
            if wanted is not None and upright.size != wanted and raw.size == wanted:
                # The annotations' size tells which frame their coordinates are in, so follow it.
                upright = raw
            found = upright.size
            if wanted is None or found == wanted:
                rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
                # np.array decodes the pixels, so a truncated file fails here inside the try, and copies into
                # a writable array (np.asarray of a PIL image is read-only).
                return np.array(rgb)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image file not found: {path}{where}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        # Pillow reports broken files as any of these (ValueError for e.g. a tile outside the image).
        raise ValueError(f"cannot read image {path}{where}: {err}") from err
    assert wanted is not None  # the only way out of the with block without returning
    raise ValueError(
        f"{path}{where} is {found[0]}x{found[1]} (width x height) but its annotations say {wanted[0]}x{wanted[1]}"
    )
