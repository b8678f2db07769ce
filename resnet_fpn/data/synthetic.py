"""An embedded synthetic detection data set, so that a demo run needs no download.

:func:`make_synthetic_coco` draws coloured shapes (circle, rectangle, triangle, ...) on textured gradient
backgrounds and writes them in the same layout as the real data sets (``<root>/images/*.png`` and
``<root>/annotations/instances_{train,val}.json``), so training and COCO evaluation run through exactly the
code that real data uses.

Every object's pixels are painted from its ground-truth mask as pycocotools decodes the polygon, so the image,
the polygon, the ``bbox`` (tight on the polygon) and the ``area`` (the mask's pixel count) agree exactly.
Objects may overlap a little; a later object may hide at most ``_MAX_OCCLUSION`` of an earlier one, so each
stays mostly visible (the polygons are amodal: they include the hidden sliver).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..files import atomic_path, atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["SHAPES", "make_synthetic_coco"]

PathLike = Union[str, "os.PathLike[str]"]

# Category i + 1 is SHAPES[i]; num_classes takes the first num_classes of them.
SHAPES: Tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "cross", "hexagon")
# Bump when the drawing changes, so that caches made by an older version are regenerated.
GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"
_MAX_OCCLUSION = 0.15  # share of an object's mask that later objects may cover
_MIN_OBJECTS, _MAX_OBJECTS = 1, 6
# Object size (side of its square extent) as a share of min(H, W): at 160 px this is 19-61 px, which the
# P2-P5 levels of an FPN see well once GeneralizedRCNNTransform rescales the image.
_SIZE_RANGE = (0.12, 0.38)
_PLACEMENT_TRIES = 30
_FILE_RE = re.compile(r"^(train|val)_\d{6}\.png$")


def _unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (K, 2) of ``shape`` centred on 0 with a radius/half-extent of about 1."""
    if shape == "circle":
        # A 32-gon is indistinguishable from a circle at these sizes and is an ordinary COCO polygon.
        t = np.arange(32) * (2 * math.pi / 32)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "rectangle":
        aspect = rng.uniform(0.45, 1.0)
        w, h = (1.0, aspect) if rng.random() < 0.5 else (aspect, 1.0)
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
        angle = rng.uniform(-0.3, 0.3)  # a slight tilt, so that rectangles are not all axis-aligned
    elif shape == "triangle":
        t = math.pi / 2 + np.arange(3) * (2 * math.pi / 3)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
        angle = rng.uniform(0, 2 * math.pi)
    elif shape == "star":
        t = math.pi / 2 + np.arange(10) * (math.pi / 5)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        angle = rng.uniform(0, 2 * math.pi)
    elif shape == "cross":
        a = 0.33
        pts = np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]]
        )
        angle = rng.uniform(0, math.pi / 2)
    elif shape == "hexagon":
        t = np.arange(6) * (math.pi / 3)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
        angle = rng.uniform(0, math.pi / 3)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted two-colour linear gradient with low-frequency blotches, float32 (H, W, 3) in 0..255."""
    c0, c1 = rng.uniform(20, 170, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    # Broadcasting a row and a column is several times cheaper than a full coordinate grid.
    proj = (np.arange(width, dtype=np.float32) * math.cos(angle))[None, :] + (
        np.arange(height, dtype=np.float32) * math.sin(angle)
    )[:, None]
    proj -= proj.min()
    proj /= max(float(proj.max()), 1e-6)
    image = c0 + (c1 - c0) * proj[..., None]
    # Upsampling a tiny random field gives smooth texture without the cost of filtering full-size noise.
    blotches = rng.uniform(0, 255, size=(5, 5, 3)).astype(np.uint8)
    blotches = np.asarray(Image.fromarray(blotches).resize((width, height), Image.BILINEAR), dtype=np.float32)
    image += (blotches - 127.5) * 0.25
    return image


def _draw_image(
    rng: np.random.Generator, height: int, width: int, num_classes: int
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw one image; returns it as uint8 (H, W, 3) and its objects (category, polygon, bbox, area)."""
    image = _background(rng, height, width)
    objects: List[Dict[str, Any]] = []
    masks: List[np.ndarray] = []
    hidden: List[int] = []  # pixels of each placed object already covered by later ones
    short = min(height, width)
    for _ in range(int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))):
        category = int(rng.integers(num_classes))
        for _try in range(_PLACEMENT_TRIES):
            half = 0.5 * short * rng.uniform(*_SIZE_RANGE)
            pts = _unit_polygon(SHAPES[category], rng) * half
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            # Keep the whole shape inside the image (1 px margin), so no box needs clipping.
            if hi[0] - lo[0] > width - 2 or hi[1] - lo[1] > height - 2:
                continue
            cx = rng.uniform(1 - lo[0], width - 1 - hi[0])
            cy = rng.uniform(1 - lo[1], height - 1 - hi[1])
            poly = np.round(pts + [cx, cy], 2).reshape(-1).tolist()
            rle = mask_utils.frPyObjects([poly], height, width)[0]
            mask = mask_utils.decode(rle).astype(bool)
            area = int(mask.sum())
            if area < 16:
                continue
            overlaps = [int(np.count_nonzero(mask & m)) for m in masks]
            if any(o > _MAX_OCCLUSION * area for o in overlaps) or any(
                h + o > _MAX_OCCLUSION * objects[i]["area"] for i, (h, o) in enumerate(zip(hidden, overlaps))
            ):
                continue
            hidden = [h + o for h, o in zip(hidden, overlaps)]
            break
        else:
            continue  # no free spot for this object; the image simply gets one object fewer
        # Work on the object's extent only: the full-image arrays are mostly background.
        xs_p, ys_p = poly[0::2], poly[1::2]
        x0i, y0i = max(int(min(xs_p)) - 1, 0), max(int(min(ys_p)) - 1, 0)
        x1i, y1i = min(int(max(xs_p)) + 2, width), min(int(max(ys_p)) + 2, height)
        region = image[y0i:y1i, x0i:x1i]
        ys, xs = np.nonzero(mask[y0i:y1i, x0i:x1i])
        # A saturated colour far from the background under the object, so every object is clearly visible.
        under = region[ys, xs].mean(axis=0)
        for _c in range(10):
            colour = rng.uniform(0, 255, size=3).astype(np.float32)
            colour[rng.integers(3)] = rng.uniform(0, 40) if rng.random() < 0.5 else rng.uniform(215, 255)
            if np.abs(colour - under).sum() > 150:
                break
        # A gentle shading across the object, so the detector cannot rely on a flat colour alone.
        shade = (xs - xs.mean()) * rng.uniform(-0.6, 0.6) + (ys - ys.mean()) * rng.uniform(-0.6, 0.6)
        region[ys, xs] = colour + shade[:, None].astype(np.float32)
        x0, y0 = min(xs_p), min(ys_p)
        objects.append(
            {
                "category_id": category + 1,
                "segmentation": [poly],
                "area": area,
                "bbox": [x0, y0, round(max(xs_p) - x0, 2), round(max(ys_p) - y0, 2)],
            }
        )
        masks.append(mask)
        hidden.append(0)
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * 6.0
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _save_png(path: Path, image: np.ndarray) -> None:
    # Atomic: two processes generating the same set at once (DDP ranks) each replace a file with identical
    # bytes. compress_level=1: noisy images barely compress anyway, and level 6 takes several times longer.
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)


def _read_manifest(root: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _is_complete(root: Path, params: Dict[str, Any]) -> bool:
    manifest = _read_manifest(root)
    if manifest is None or manifest.get("params") != params or not manifest.get("complete"):
        return False
    for split in ("train", "val"):
        if not (root / "annotations" / f"instances_{split}.json").is_file():
            return False
    try:
        present = set(os.listdir(root / "images"))
    except FileNotFoundError:
        return False
    expected = {f"train_{i:06d}.png" for i in range(params["num_train"])}
    expected |= {f"val_{i:06d}.png" for i in range(params["num_val"])}
    return expected <= present


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def make_synthetic_coco(
    root: PathLike,
    *,
    num_train: int = 400,
    num_val: int = 100,
    image_size: Sequence[int] = (160, 160),
    num_classes: int = 3,
    seed: int = 0,
) -> Path:
    """Write (or reuse) a synthetic COCO-format detection and instance-segmentation data set.

    Layout: ``root/images/{train,val}_NNNNNN.png``, ``root/annotations/instances_{train,val}.json`` (polygon
    segmentations, ``bbox`` tight on the polygon, ``area`` = pixel count of the decoded mask, ``iscrowd`` 0,
    image ids 1..num_train then num_train+1..num_train+num_val, categories 1..num_classes named after
    :data:`SHAPES`) and ``root/synthetic.json``, the manifest of the arguments.

    The output is a pure function of the arguments: the same arguments give byte-identical JSON and PNG
    files (each image has its own generator seeded by ``(seed, split, index)``). When ``root`` already holds a
    complete set made with the same arguments by the same generator version, it is returned at once without
    writing anything; a set made with other arguments is replaced (its image files are removed first).

    Args:
        root: output folder (created if needed). It must be empty, absent, or a folder this function wrote.
        num_train: training images (>= 1).
        num_val: validation images (>= 1).
        image_size: ``(height, width)`` in pixels, each >= 32.
        num_classes: number of shape classes, 1..len(SHAPES).
        seed: seed of the whole set.

    Returns:
        ``root`` as a ``Path``.

    Raises:
        ValueError: an argument is out of range, or ``root`` holds files but no manifest of this generator
            (refusing to write into someone else's data).
    """
    _check_int("num_train", num_train, 1)
    _check_int("num_val", num_val, 1)
    _check_int("seed", seed, 0)
    if not 1 <= _check_int("num_classes", num_classes, 1) <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)} (shapes {list(SHAPES)}), got {num_classes}")
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 32 for v in image_size)
    ):
        raise ValueError(f"image_size must be (height, width) with ints >= 32, got {image_size!r}")
    height, width = int(image_size[0]), int(image_size[1])
    root = Path(root)
    params = {
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": [height, width],
        "num_classes": num_classes,
        "seed": seed,
    }
    if _is_complete(root, params):
        return root

    manifest = _read_manifest(root)
    if manifest is None and root.exists() and any(root.iterdir()):
        raise ValueError(
            f"{root} is not empty and has no {MANIFEST}; make_synthetic_coco only writes into an empty folder "
            "or one it wrote before"
        )
    images_dir = root / "images"
    ann_dir = root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        # A set made with other arguments: remove its images so that no stale file lingers beside the new set.
        for name in os.listdir(images_dir):
            if _FILE_RE.match(name):
                (images_dir / name).unlink()
    # Marked incomplete until the last file is written, so an interrupted run is redone next time.
    atomic_write_bytes(root / MANIFEST, json.dumps({"params": params, "complete": False}, indent=2).encode())

    categories = [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"} for i in range(num_classes)]
    next_image_id = 1
    for split_code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        images: List[Dict[str, Any]] = []
        annotations: List[Dict[str, Any]] = []
        for index in range(count):
            rng = np.random.default_rng([seed, split_code, index])
            pixels, objects = _draw_image(rng, height, width, num_classes)
            file_name = f"{split}_{index:06d}.png"
            _save_png(images_dir / file_name, pixels)
            images.append({"id": next_image_id, "file_name": file_name, "width": width, "height": height})
            for obj in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": next_image_id, "iscrowd": 0, **obj})
            next_image_id += 1
        data = {
            "info": {
                "description": "resnet_fpn synthetic shapes",
                "version": str(GENERATOR_VERSION),
                "params": params,
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        atomic_write_bytes(ann_dir / f"instances_{split}.json", json.dumps(data, separators=(",", ":")).encode())
        logger.info("synthetic %s: %d images, %d objects -> %s", split, count, len(annotations), root)
    atomic_write_bytes(root / MANIFEST, json.dumps({"params": params, "complete": True}, indent=2).encode())
    return root
