"""Pictures of predictions: boxes labelled "name 0.87" and translucent masks, on torchvision's drawing utilities.

    >>> picture = draw_predictions(image_uint8_chw, predictor(image))
    >>> save_image(picture, "out/photo.jpg")

`draw_predictions` takes a `resnet_fpn.predictor.Prediction` or a raw torchvision output dict (what a detector
returns in eval mode, e.g. in a validation step), so training can write the same pictures.
"""
from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from .coco_format import MASK_THRESHOLD

__all__ = ["label_color", "draw_predictions", "save_image"]

_GOLDEN_RATIO = 0.618033988749895


def label_color(label: int) -> Tuple[int, int, int]:
    """A distinct, stable RGB color per label (hues spaced by the golden ratio, so neighbours differ).

    Args:
        label: a training label (any int).

    Returns:
        ``(r, g, b)`` in 0..255.
    """
    hue = (int(label) * _GOLDEN_RATIO) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _as_uint8_image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"image must be a (3, H, W) tensor (uint8, or float in [0, 1]), got "
            f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}"
        )
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        if not image.is_floating_point():
            raise ValueError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _fields(prediction: Any) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Optional[List[str]]]:
    """(boxes, scores, labels, masks (N, H, W) bool or None, names or None) of a Prediction or a dict."""
    if isinstance(prediction, Mapping):
        get = prediction.get
    else:
        def get(key: str, default: Any = None) -> Any:
            return getattr(prediction, key, default)
    missing = [k for k in ("boxes", "scores", "labels") if get(k) is None]
    if missing:
        raise ValueError(f"prediction lacks {missing}; expected a Prediction or a torchvision output dict")
    boxes = torch.as_tensor(get("boxes")).detach().cpu().float().reshape(-1, 4)
    scores = torch.as_tensor(get("scores")).detach().cpu().float().reshape(-1)
    labels = torch.as_tensor(get("labels")).detach().cpu().reshape(-1)
    masks = get("masks")
    if masks is not None:
        masks = torch.as_tensor(masks).detach().cpu()
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dtype != torch.bool:
            masks = masks > MASK_THRESHOLD
    names = get("names")
    return boxes, scores, labels, masks, (list(names) if names is not None else None)


def draw_predictions(
    image: Tensor,
    prediction: Any,
    *,
    score_threshold: float = 0.0,
    label_names: Optional[Mapping[int, str]] = None,
    mask_alpha: float = 0.5,
    box_width: int = 2,
    font: Optional[str] = None,
    font_size: Optional[int] = None,
) -> Tensor:
    """Draw boxes (labelled "name 0.87") and masks of one image's predictions.

    Args:
        image: ``(3, H, W)`` uint8 tensor (or float in [0, 1]) of the image the prediction is for.
        prediction: a ``Prediction`` (names from its ``names``) or a dict with ``boxes`` (N, 4) xyxy,
            ``scores``, ``labels`` and optionally ``masks`` ((N, 1, H, W) probabilities or (N, H, W) bool).
        score_threshold: draw detections scoring at least this.
        label_names: label -> name for dict predictions (the label number is written when absent).
        mask_alpha: opacity of the masks (0 transparent, 1 opaque).
        box_width: box line width in pixels.
        font: a TrueType font file for the labels (Pillow's default font when None).
        font_size: the label size in points, with `font`.

    Returns:
        A new ``(3, H, W)`` uint8 tensor on the CPU (the input is not changed).

    Raises:
        ValueError: a wrong image shape/dtype, a prediction without boxes/scores/labels, masks of another
            size than the image, or `mask_alpha` outside [0, 1].
    """
    if not 0.0 <= mask_alpha <= 1.0:
        raise ValueError(f"mask_alpha must be in [0, 1], got {mask_alpha!r}")
    canvas = _as_uint8_image(image).clone()
    boxes, scores, labels, masks, names = _fields(prediction)
    keep = scores >= score_threshold
    if not bool(keep.any()):
        return canvas
    index = torch.nonzero(keep).flatten()
    colors = [label_color(int(labels[i])) for i in index]
    if masks is not None:
        if tuple(masks.shape[-2:]) != tuple(canvas.shape[-2:]):
            raise ValueError(
                f"masks are {tuple(masks.shape[-2:])} but the image is {tuple(canvas.shape[-2:])} (height, width)"
            )
        canvas = draw_segmentation_masks(canvas, masks[index], alpha=mask_alpha, colors=colors)
    texts = []
    for i in index.tolist():
        if names is not None:
            name = names[i]
        elif label_names is not None:
            name = label_names.get(int(labels[i]), str(int(labels[i])))
        else:
            name = str(int(labels[i]))
        texts.append(f"{name} {float(scores[i]):.2f}")
    # torchvision ignores (and warns about) a size without a font file: pass it only with one.
    return draw_bounding_boxes(
        canvas, boxes[index], labels=texts, colors=colors, width=box_width, fill_labels=True,
        label_colors="white", font=font, font_size=font_size if font is not None else None,
    )


def save_image(image: Tensor, path: Union[str, "os.PathLike[str]"], *, quality: int = 90) -> Path:
    """Write a ``(3, H, W)`` image (uint8, or float in [0, 1]) to a file; the format follows the suffix.

    Args:
        image: the picture, e.g. from `draw_predictions`.
        path: ``.png``, ``.jpg``... (parent folders are created).
        quality: JPEG quality (ignored by lossless formats).

    Returns:
        The path written.

    Raises:
        ValueError: a wrong image shape/dtype, or a suffix Pillow has no writer for.
    """
    path = Path(path)
    array = np.ascontiguousarray(_as_uint8_image(image).permute(1, 2, 0).numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        Image.fromarray(array).save(path, quality=quality)
    except (KeyError, ValueError) as exc:  # Pillow raises these for an unknown extension
        raise ValueError(f"cannot write {path}: unknown image format {path.suffix!r} ({exc})") from exc
    return path


def picture_grid(pictures: Sequence[Tensor], *, columns: int = 4, padding: int = 4) -> Tensor:
    """Tile ``(3, H, W)`` uint8 pictures of any sizes into one, row by row, on a white background.

    Each picture keeps its size (smaller ones are padded at the bottom-right), as a README figure wants.

    Raises:
        ValueError: no pictures, or `columns` < 1.
    """
    if not pictures:
        raise ValueError("picture_grid needs at least one picture")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    height = max(int(p.shape[1]) for p in pictures)
    width = max(int(p.shape[2]) for p in pictures)
    padded = []
    for picture in pictures:
        canvas = torch.full((3, height, width), 255, dtype=torch.uint8)
        canvas[:, : picture.shape[1], : picture.shape[2]] = _as_uint8_image(picture)
        padded.append(canvas)
    return make_grid(torch.stack(padded), nrow=columns, padding=padding, pad_value=255)
