"""COCO-sized synthetic annotation files, for the scale benchmark and the scale tests.

:func:`make_coco_scale_file` writes an instances JSON with the structure of COCO train2017 (118,287 images,
826,122 annotations: 6.98 per image, 80 categories with COCO's ids 1..90, about 1% crowd regions stored as
uncompressed RLE, polygons with two decimals) at any size, quickly (numpy draws the geometry, the JSON is
written in chunks, so a 118k-image file needs far less memory than ``json.dump`` of one dict). With
``images_dir``, a small pool of synthetic JPEGs is written and every image entry names one of them (the
files are reused by name), so a data loader can read real files without 118k of them on disk.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["COCO_CATEGORY_IDS", "COCO_TRAIN2017", "POOL_SIZES", "make_coco_scale_file"]

PathLike = Union[str, "os.PathLike[str]"]

#: COCO's 80 category ids (1..90 with 10 gaps: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused).
COCO_CATEGORY_IDS: Tuple[int, ...] = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)
#: COCO train2017's counts: images and annotations (instances_train2017.json).
COCO_TRAIN2017: Dict[str, int] = {"images": 118_287, "annotations": 860_001 - 33_879}
#: The (width, height) of the JPEG pool: COCO's most common sizes (640x480 and 480x640 are most of it).
POOL_SIZES: Tuple[Tuple[int, int], ...] = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (500, 375))
_CHUNK = 5_000  # images per JSON chunk written


def _check_positive(name: str, value: Any, *, integer: bool = True, zero: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a {'non-negative' if zero else 'positive'} "
                         f"{'int' if integer else 'number'}, got {value!r}")


def _polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float, points: int) -> np.ndarray:
    angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, points))
    radius = rng.uniform(0.6, 1.0, points)
    return np.stack([cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)], axis=1)


def _box_rle_counts(x0: int, y0: int, x1: int, y1: int, height: int, width: int) -> List[int]:
    """Uncompressed RLE (column-major runs, starting with zeros) of the box [x0, x1) x [y0, y1)."""
    inner = y1 - y0
    counts = [x0 * height + y0]
    for _ in range(x0, x1 - 1):
        counts += [inner, height - inner]
    counts += [inner, (width - x1 + 1) * height - y1]
    return counts


def make_coco_scale_file(
    path: PathLike,
    *,
    num_images: int,
    annotations_per_image: float = COCO_TRAIN2017["annotations"] / COCO_TRAIN2017["images"],
    polygon_points: int = 16,
    crowd_share: float = 0.01,
    seed: int = 0,
    images_dir: Optional[PathLike] = None,
    pool_size: int = len(POOL_SIZES),
) -> Dict[str, Any]:
    """Write a synthetic COCO instances file of ``num_images`` images.

    Each image has a size from :data:`POOL_SIZES`; annotations are spread over the images at random (some
    images get none, as in COCO); each is a star-shaped polygon of ``polygon_points`` points (coordinates with
    two decimals, inside the image), its ``bbox`` the polygon's bounds and its ``area`` the polygon's area;
    a ``crowd_share`` of them are crowd regions (``iscrowd: 1``) whose segmentation is an uncompressed RLE of
    their box, as COCO stores crowds. Category ids are COCO's 80.

    Args:
        path: the JSON file to write (its folder is created).
        num_images: how many image entries.
        annotations_per_image: the mean number of annotations per image (the total is
            ``round(num_images * annotations_per_image)``); COCO train2017's 6.98 by default.
        polygon_points: points per polygon (>= 3).
        crowd_share: the fraction of annotations that are crowd regions, in [0, 1].
        seed: the random seed; the same arguments give the same file.
        images_dir: when given, ``pool_size`` JPEGs are written there (``pool/000.jpg``...) and each image entry's
            ``file_name`` names one of them, with its size; otherwise no image is written and the names are
            COCO-like (``000000000001.jpg``).
        pool_size: how many distinct JPEGs (sizes cycle through :data:`POOL_SIZES`).

    Returns:
        ``{"path", "images", "annotations", "crowd", "bytes"}``: what was written.

    Raises:
        ValueError: a count that is not a positive int, a share outside [0, 1], fewer than 3 polygon points.
    """
    _check_positive("num_images", num_images)
    _check_positive("annotations_per_image", annotations_per_image, integer=False, zero=True)
    _check_positive("pool_size", pool_size)
    if not isinstance(polygon_points, int) or isinstance(polygon_points, bool) or polygon_points < 3:
        raise ValueError(f"polygon_points must be an int >= 3 (a polygon needs 3 points), got {polygon_points!r}")
    if isinstance(crowd_share, bool) or not isinstance(crowd_share, (int, float)) or not 0.0 <= crowd_share <= 1.0:
        raise ValueError(f"crowd_share must be a number in [0, 1], got {crowd_share!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    pool = [POOL_SIZES[k % len(POOL_SIZES)] for k in range(pool_size)]
    pool_of_image = rng.integers(0, pool_size, num_images)
    if images_dir is not None:
        _write_pool(Path(images_dir), pool, seed)
    num_annotations = int(round(num_images * annotations_per_image))
    image_of_ann = np.sort(rng.integers(0, num_images, num_annotations))
    first_ann = np.searchsorted(image_of_ann, np.arange(num_images + 1))
    crowd = rng.random(num_annotations) < crowd_share
    categories = np.asarray(COCO_CATEGORY_IDS)[rng.integers(0, len(COCO_CATEGORY_IDS), num_annotations)]

    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write('{"info": {"description": "synthetic COCO-sized file (resnet_fpn.data.generate)"}, "licenses": [],\n')
        f.write('"categories": ' + json.dumps([{"id": c, "name": f"class{c}", "supercategory": "thing"}
                                                for c in COCO_CATEGORY_IDS]) + ',\n"images": [')
        for start in range(0, num_images, _CHUNK):
            entries = []
            for i in range(start, min(start + _CHUNK, num_images)):
                width, height = pool[pool_of_image[i]]
                name = f"pool/{pool_of_image[i]:03d}.jpg" if images_dir is not None else f"{i + 1:012d}.jpg"
                entries.append({"id": i + 1, "file_name": name, "width": width, "height": height})
            f.write(("," if start else "") + json.dumps(entries)[1:-1])
        f.write('],\n"annotations": [')
        wrote_any = False
        for start in range(0, num_images, _CHUNK):
            entries = []
            for i in range(start, min(start + _CHUNK, num_images)):
                width, height = pool[pool_of_image[i]]
                for a in range(first_ann[i], first_ann[i + 1]):
                    entries.append(_annotation(rng, a, i, width, height, polygon_points, bool(crowd[a]),
                                               int(categories[a])))
            if entries:
                f.write(("," if wrote_any else "") + json.dumps(entries)[1:-1])
                wrote_any = True
        f.write("]}\n")
    os.replace(tmp, path)
    return {"path": str(path), "images": num_images, "annotations": num_annotations, "crowd": int(crowd.sum()),
            "bytes": path.stat().st_size}


def _annotation(rng: np.random.Generator, ann_index: int, image_index: int, width: int, height: int,
                points: int, crowd: bool, category_id: int) -> Dict[str, Any]:
    bw = rng.uniform(0.05, 0.6) * width
    bh = rng.uniform(0.05, 0.6) * height
    cx = rng.uniform(bw / 2, width - bw / 2)
    cy = rng.uniform(bh / 2, height - bh / 2)
    if crowd:
        x0, y0 = int(cx - bw / 2), int(cy - bh / 2)
        x1, y1 = max(x0 + 1, int(cx + bw / 2)), max(y0 + 1, int(cy + bh / 2))
        segmentation: Any = {"counts": _box_rle_counts(x0, y0, x1, y1, height, width), "size": [height, width]}
        bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        area = float((x1 - x0) * (y1 - y0))
    else:
        poly = np.round(_polygon(rng, cx, cy, bw / 2, bh / 2, points), 2)
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        bbox = [float(v) for v in np.round([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], 2)]
        x, y = poly[:, 0], poly[:, 1]
        area = round(float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))), 2)
        segmentation = [poly.reshape(-1).tolist()]
    return {"id": ann_index + 1, "image_id": image_index + 1, "category_id": category_id, "iscrowd": int(crowd),
            "area": area, "bbox": bbox, "segmentation": segmentation}


def _write_pool(folder: Path, sizes: List[Tuple[int, int]], seed: int) -> None:
    from PIL import Image

    (folder / "pool").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    for k, (width, height) in enumerate(sizes):
        target = folder / "pool" / f"{k:03d}.jpg"
        if target.is_file():
            with Image.open(target) as img:
                if img.size == (width, height):
                    continue
        # Smooth noise (a low-resolution draw scaled up) compresses like a photo, not like white noise.
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.BILINEAR).save(target, quality=90)
