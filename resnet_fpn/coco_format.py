"""The COCO format: reading and validating instances and results files, categories, xywh boxes, RLE masks.

The bottom of the package: the data set, the evaluator, the predictor and the tools all speak COCO through
this module, so a convention (the mask threshold, the box layout, the RLE encoding) and the checks of a COCO
file (with errors naming the file and the entry) are written once. It imports nothing else from resnet_fpn.

- :func:`load_json` / :func:`load_coco_json`: parse a file (errors give file, line, column) and check the top level.
- :class:`CocoAnnotations`: a validated, indexed instances data set (images by id, categories and their
  contiguous labels, annotations per image); the data set and the evaluator both build on it.
- :func:`image_ids_by_file_name`: ``file_name`` -> image id of a COCO JSON (for inference outputs).
- :func:`category_names_by_id`: category id -> name of a COCO JSON (to check a detector's categories).
- :func:`load_results` / :func:`check_results`: COCO results files and their checks against the ground truth
  (ids, fields, and the optional ``file_name`` / ``category_name`` of each entry).
- :func:`same_file_name`: whether a results entry's ``file_name`` names a ground-truth image's file.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools import mask as mask_util

__all__ = [
    "Category",
    "CocoAnnotations",
    "INSTANCES_KEYS",
    "MASK_THRESHOLD",
    "MAX_IMAGE_SIDE",
    "MIN_POLYGON_COORDS",
    "annotation_entry_problem",
    "box_is_degenerate",
    "category_entry_problem",
    "image_entry_problem",
    "segmentation_problem",
    "ResultSources",
    "check_instances_json",
    "category_names_by_id",
    "check_results",
    "encode_masks",
    "encode_masks_with_boxes",
    "image_ids_by_file_name",
    "join_some",
    "list_some",
    "load_coco_json",
    "load_json",
    "load_results",
    "same_file_name",
    "xyxy_to_xywh",
]

PathLike = Union[str, "os.PathLike[str]"]
#: The top-level lists of a COCO instances file.
INSTANCES_KEYS: Tuple[str, ...] = ("images", "annotations", "categories")

# torchvision's Mask R-CNN returns mask probabilities; a pixel is foreground above this value (torchvision's
# own reference evaluation and detectron2 both threshold at 0.5).
MASK_THRESHOLD = 0.5
#: A polygon needs 3 points (6 coordinates) to enclose anything; pycocotools even reads a 4-number "polygon"
#: as a box. Shorter ones are ignored when masks are decoded.
MIN_POLYGON_COORDS = 6
#: The largest image side an instances file may give (2**20 px): beyond, a size is a typo, and pycocotools'
#: masks (C integers, height * width bytes) would overflow.
MAX_IMAGE_SIDE = 1 << 20
# encode_masks computes run boundaries in int32 while the indices stay below this (tests lower it for int64).
_INT32_INDEX_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Category:
    """A training label (1..K, 0 is the background) with the data set's category id and name.

    Example:
        >>> Category(label=1, id=18, name="dog")
        Category(label=1, id=18, name='dog')
    """

    label: int
    id: int
    name: str


def xyxy_to_xywh(boxes: Any) -> List[List[float]]:
    """(N, 4) xyxy boxes -> COCO's [x, y, width, height] lists, computed in float64.

    float64 so that the differences reach JSON without a float32 round trip.
    """
    boxes = torch.as_tensor(boxes).detach().to("cpu", torch.float64).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()


def encode_masks(masks: Any) -> List[Dict[str, Any]]:
    """(N, H, W) boolean masks -> COCO compressed RLEs with ``counts`` as str (JSON-ready).

    The RLEs are byte for byte those of ``pycocotools.mask.encode`` (see :func:`encode_masks_with_boxes`,
    which also gives each mask's area and box). A mask that is not bool is foreground where it is nonzero
    once converted to uint8, as before.

    Example:
        >>> encode_masks(torch.ones(1, 2, 2, dtype=torch.bool))[0]["size"]
        [2, 2]
    """
    return encode_masks_with_boxes(masks)[0]


def encode_masks_with_boxes(masks: Any) -> Tuple[List[Dict[str, Any]], np.ndarray, np.ndarray]:
    """(N, H, W) boolean masks -> their compressed RLEs, areas and boxes, as pycocotools gives them.

    ``pycocotools.mask.encode`` walks every pixel of every full-image mask in one C loop (and needs a Fortran
    copy of the stack first): for 100 detections at 640x480 that is 30 MB per image, most of an evaluation's
    time. Here one vectorised pass finds the rows that hold foreground, the columns are read in that band of
    rows only, and the column-major run boundaries are found in bulk from a transposed copy of each mask's
    crop; pycocotools then only compresses the counts (``frPyObjects`` of an uncompressed RLE). The result is
    identical to ``mask.encode`` (``tests/test_coco_format.py`` compares them byte for byte, empty, full,
    border and one-pixel masks included), and the areas and boxes are what ``mask.area`` / ``mask.toBbox``
    would decode from those RLEs, without decoding them.

    Args:
        masks: (N, H, W) bool (or 0/1 integer) tensor or array, on any device.

    Returns:
        ``(rles, areas, boxes)``: N RLE dicts (``size`` [H, W], ``counts`` str), (N,) int64 foreground pixel
        counts, (N, 4) float64 ``[x, y, width, height]`` of the foreground (zeros for an empty mask).

    Raises:
        ValueError: ``masks`` is not 3-dimensional.
    """
    tensor = torch.as_tensor(masks).detach().to("cpu")
    if tensor.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.bool:
        tensor = tensor.to(torch.uint8) != 0  # what mask.encode read: any nonzero byte after the uint8 cast
    n, height, width = tensor.shape
    # A bool tensor is bytes of 0/1 already: viewed as uint8, not copied (a copy of N * H * W bytes per image
    # lands on glibc's heap once its mmap threshold has risen and fragments it with the RLE strings kept).
    pixels = np.ascontiguousarray(tensor.numpy()).view(np.uint8)
    image_area = height * width
    boxes = np.zeros((n, 4), dtype=np.float64)
    if n == 0:
        return [], np.zeros(0, dtype=np.int64), boxes
    # The rows of each mask that hold foreground: one OR-reduction over contiguous bytes, the only pass over
    # every pixel. The columns are then read in that band of rows only.
    # Read as the widest words a row divides into (8 pixels a word at 640 px): the same OR, 8x fewer elements
    # (measured: 5.3 -> 2.7 ms for 100 masks at 640x480).
    word = next(np.dtype(t) for t in (np.uint64, np.uint32, np.uint16, np.uint8) if width % np.dtype(t).itemsize == 0)
    rows = np.bitwise_or.reduce(pixels.view(word), axis=2) != 0  # (N, H)
    present = rows.any(axis=1)
    y0 = np.where(present, rows.argmax(axis=1), 0)
    y1 = np.where(present, height - rows[:, ::-1].argmax(axis=1), 0)
    x0 = np.zeros(n, dtype=np.int64)
    x1 = np.zeros(n, dtype=np.int64)
    masks_present = np.flatnonzero(present).tolist()
    for i in masks_present:
        columns = np.flatnonzero(np.bitwise_or.reduce(pixels[i, y0[i] : y1[i]], axis=0))
        x0[i], x1[i] = columns[0], columns[-1] + 1
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = x0, y0, x1 - x0, y1 - y0
    # Each crop goes transposed (column-major, as COCO's RLE runs) into one buffer, every column padded with
    # a 0 above and below: a change between neighbours of the buffer is then a run boundary, and none crosses
    # from a column (or a crop) to the next.
    column = y1 - y0 + 2
    sizes = (x1 - x0) * column
    ends = np.cumsum(sizes)
    starts = ends - sizes
    buffer = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
    areas = np.zeros(n, dtype=np.int64)
    for i in masks_present:
        crop = buffer[starts[i] : ends[i]]
        crop.reshape(x1[i] - x0[i], column[i])[:, 1:-1] = pixels[i, y0[i] : y1[i], x0[i] : x1[i]].T
        areas[i] = np.count_nonzero(crop)
    change = np.flatnonzero(buffer[1:] != buffer[:-1])
    first = np.searchsorted(change, np.append(starts, ends[-1]))  # boundaries of mask i: first[i]:first[i + 1]
    per_mask = np.diff(first)
    # 32-bit arithmetic over the (many) boundaries when every index fits: half the memory traffic.
    index = np.int32 if max(int(ends[-1]), image_area) < _INT32_INDEX_LIMIT else np.int64
    change = change.astype(index, copy=False)
    # A change between buffer[k] and buffer[k + 1] is a run boundary before the crop pixel held in k + 1: of
    # crop column col = (k - start) // column, row k - start - col * column (the pad above shifts by one).
    # In the image's linear (column-major) index x * H + y, that is k + col * (H - column) + x0 * H + y0 -
    # start; the end of a run that reaches the bottom of a column is y = H. Each mask's constants are repeated
    # over its boundaries (they are in mask order).
    col = (change - np.repeat(starts.astype(index), per_mask)) // np.repeat(column.astype(index), per_mask)
    col *= np.repeat((height - column).astype(index), per_mask)
    bounds = change + col
    bounds += np.repeat((x0 * height + y0 - starts).astype(index), per_mask)
    # A run that reaches the bottom of a column and goes on at the top of the next (a crop of the full height)
    # gives one index twice, the end of a run and the start of the next: neither is a boundary.
    if ((y0 == 0) & (y1 == height) & (x1 - x0 > 1)).any():
        owner = np.repeat(np.arange(n), per_mask)
        repeated = (bounds[1:] == bounds[:-1]) & (owner[1:] == owner[:-1])
        if repeated.any():
            keep = np.ones(bounds.size, dtype=bool)
            keep[1:] &= ~repeated
            keep[:-1] &= ~repeated
            bounds = bounds[keep]
            first = np.searchsorted(owner[keep], np.arange(n + 1))
    # Runs alternate 0s and 1s from index 0: the count of run j is bounds[j] - bounds[j - 1] (bounds[-1] = 0),
    # then the 0s after the last boundary unless it is the image's end (mask.encode writes no empty run).
    runs = np.empty_like(bounds)
    runs[1:] = bounds[1:] - bounds[:-1]
    mask_firsts = first[:-1][first[:-1] < bounds.size]  # (an empty mask's first is the next one's)
    runs[mask_firsts] = bounds[mask_firsts]
    last = np.zeros(n, dtype=np.int64)
    has = first[1:] > first[:-1]
    last[has] = bounds[first[1:][has] - 1]
    tails = (image_area - last).astype(index)
    counts = np.insert(runs, first[1:], tails)  # each mask's runs, then its tail (dropped where 0)
    cuts = first[1:] + np.arange(1, n + 1)
    empty_tail = tails == 0
    if empty_tail.any():
        counts = np.delete(counts, cuts[empty_tail] - 1)
        cuts = cuts - np.cumsum(empty_tail)
    size = [height, width]
    rles = mask_util.frPyObjects([{"size": size, "counts": c} for c in np.split(counts, cuts[:-1])], height, width)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON (nor cheap to pickle)
    return rles, areas, boxes


# --------------------------------------------------------------------------------------------
# Reading JSON files
# --------------------------------------------------------------------------------------------
def load_json(path: PathLike, *, kind: str = "JSON file") -> Any:
    """Parse a JSON file, with errors that name it.

    Args:
        path: the file.
        kind: what the file is, for the messages (``"annotation file"``, ``"results file"``).

    Returns:
        The parsed JSON value.

    Raises:
        FileNotFoundError: no such file (``"<kind> not found: <path>"``).
        ValueError: not JSON (``"<kind> <path> is not valid JSON: <reason> at line L, column C"``) or not
            UTF-8/16/32 text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} not found: {path}")
    try:
        with path.open("rb") as f:  # bytes: json detects UTF-8/16/32 itself
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{kind} {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{kind} {path} is not valid JSON: it is not UTF-8/16/32 text ({err})") from None


def check_instances_json(
    data: Any, *, source: str, required: Sequence[str] = INSTANCES_KEYS
) -> Dict[str, Any]:
    """Check the top level of a COCO instances JSON: an object whose ``required`` keys hold lists.

    Args:
        data: the parsed JSON (or a pycocotools ``COCO.dataset``).
        source: how messages name where ``data`` came from (a file path).
        required: the top-level keys that must be present, each a list.

    Returns:
        ``data``, unchanged.

    Raises:
        ValueError: ``data`` is not a dict, lacks a required key, or one is not a list (the message names
            ``source`` and the key).
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a COCO instances JSON object at the top level, got {type(data).__name__}"
        )
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(
            f"{source}: missing top-level key(s) {missing}; a COCO instances file needs {list(required)}"
        )
    for key in required:
        if not isinstance(data[key], list):
            raise ValueError(f"{source}: top-level {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def load_coco_json(
    path: PathLike, *, kind: str = "annotation file", required: Sequence[str] = INSTANCES_KEYS
) -> Dict[str, Any]:
    """Read a COCO instances JSON and check its top level (see :func:`check_instances_json`).

    Args:
        path: the JSON file.
        kind: what the file is, for the messages.
        required: the top-level keys that must be lists (an image-info file such as COCO's
            ``image_info_test2017.json`` has no ``annotations``: pass ``("images",)``).

    Returns:
        The parsed dict (not validated below the top level; :class:`CocoAnnotations` does that).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON (file, line and column), or the top level is not what ``required`` asks.
    """
    return check_instances_json(load_json(path, kind=kind), source=str(path), required=required)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    # bool is an int subclass, but an id of True is a mistake, not image 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def list_some(values: Sequence[Any], *, limit: int = 5) -> str:
    """Format the first ``limit`` values and the count, for error messages about many offenders.

    Args:
        values: the offending ids or entries.
        limit: how many to show.

    Returns:
        e.g. ``"[1, 2, 3, 4, 5, ... (7 in all)]"``.
    """
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return f"[{shown}{more}]"


def _segmentation_present(segmentation: Any) -> bool:
    """True if a COCO ``segmentation`` holds an RLE or at least one polygon of 3 points or more."""
    if isinstance(segmentation, dict):
        return "counts" in segmentation and "size" in segmentation
    if isinstance(segmentation, list):
        return any(isinstance(poly, list) and len(poly) >= MIN_POLYGON_COORDS for poly in segmentation)
    return False


def image_entry_problem(index: int, img: Any) -> Optional[str]:
    """What is wrong with ``images[index]`` of an instances file on its own (not its uniqueness), or None.

    The rule :class:`CocoAnnotations` raises on and the data doctor reports: an object with an integer ``id``,
    a non-empty string ``file_name`` and ``width``/``height`` that are positive integers (``640.0`` is accepted)
    up to :data:`MAX_IMAGE_SIDE`.

    Args:
        index: the entry's position in ``images``.
        img: the entry.

    Returns:
        A message naming the entry (``"images[3] has no 'file_name'"``), or None when it is valid.
    """
    if not isinstance(img, dict):
        return f"images[{index}] must be an object, got {img!r}"
    for key in ("id", "file_name", "width", "height"):
        if key not in img:
            return f"images[{index}] (id {img.get('id')!r}) has no {key!r}"
    image_id = img["id"]
    if not _is_int(image_id):
        return f"images[{index}] has a non-integer id {image_id!r}"
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        return f"image id {image_id} has file_name {img['file_name']!r}, expected a non-empty string"
    for key in ("width", "height"):
        value = img[key]
        # Some exporters write sizes as floats (640.0); accept those, refuse fractions and the rest.
        if not _is_real(value) or value <= 0 or float(value) != int(value) or value > MAX_IMAGE_SIDE:
            return f"image id {image_id} has {key}={value!r}, expected a positive integer (at most {MAX_IMAGE_SIDE})"
    return None


def category_entry_problem(index: int, cat: Any) -> Optional[str]:
    """What is wrong with ``categories[index]`` on its own (an object with an integer ``id`` and a ``name``).

    Args:
        index: the entry's position in ``categories``.
        cat: the entry.

    Returns:
        A message naming the entry, or None when it is valid.
    """
    if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
        return f"categories[{index}] needs an 'id' and a 'name', got {cat!r}"
    if not _is_int(cat["id"]):
        return f"categories[{index}] has a non-integer id {cat['id']!r}"
    return None


def annotation_entry_problem(index: int, ann: Any) -> Optional[str]:
    """What is wrong with ``annotations[index]`` on its own (not its references to images and categories).

    An object with an ``id``, integer ``image_id`` and ``category_id``, a ``bbox`` of 4 finite numbers, a
    finite ``area`` when it has one and an ``iscrowd`` of 0 or 1 when it has one (COCOeval reads both).
    The segmentation is checked apart (:func:`segmentation_problem`), since only masks need it.

    Args:
        index: the entry's position in ``annotations``.
        ann: the entry.

    Returns:
        A message naming the entry (by id when it has one), or None when it is valid.
    """
    if not isinstance(ann, dict):
        return f"annotations[{index}] must be an object, got {ann!r}"
    ann_id = ann.get("id")
    if ann_id is None:
        return f"annotations[{index}] has no 'id'"
    if not _is_int(ann_id):
        return f"annotations[{index}] has a non-integer id {ann_id!r}"
    for key in ("image_id", "category_id", "bbox"):
        if key not in ann:
            return f"annotation id {ann_id} has no {key!r}"
    for key in ("image_id", "category_id"):
        if not _is_int(ann[key]):
            return f"annotation id {ann_id} has {key} {ann[key]!r}, expected an integer"
    bbox = ann["bbox"]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_real(v) for v in bbox):
        return f"annotation id {ann_id} has bbox {bbox!r}, expected 4 finite numbers [x, y, w, h]"
    if "area" in ann and not _is_real(ann["area"]):
        return f"annotation id {ann_id} has area {ann['area']!r}, expected a number"
    if "iscrowd" in ann and not (_is_int(ann["iscrowd"]) and ann["iscrowd"] in (0, 1)):
        return f"annotation id {ann_id} has iscrowd {ann['iscrowd']!r}, expected 0 or 1"
    return None


def box_is_degenerate(bbox: Sequence[float]) -> bool:
    """Whether a COCO ``[x, y, w, h]`` box has no area (``w <= 0`` or ``h <= 0``): it overlaps nothing.

    Args:
        bbox: a valid box (see :func:`annotation_entry_problem`).

    Returns:
        True for a zero or negative width or height.
    """
    return bbox[2] <= 0 or bbox[3] <= 0


def segmentation_problem(seg: Any, *, height: int, width: int) -> Optional[str]:
    """What is malformed in a COCO ``segmentation`` of an image of ``height`` x ``width``, or None.

    Accepted: polygons (a list of lists of an even number of finite coordinates; a polygon of fewer than 3
    points is well formed but empty, see :data:`MIN_POLYGON_COORDS`), an uncompressed RLE
    (``{"size": [h, w], "counts": [ints >= 0 summing to h * w]}``) or a compressed one (``counts`` a
    string); an RLE's ``size`` must be the image's. pycocotools would raise a bare TypeError, read past
    the data or decode another picture on anything else.

    Args:
        seg: the annotation's ``segmentation`` (present: a missing one is not malformed).
        height: the image's height in the file.
        width: the image's width in the file.

    Returns:
        A message (to follow ``"annotation id N "``), or None.
    """
    if isinstance(seg, list):
        for k, poly in enumerate(seg):
            if not isinstance(poly, list):
                return f"has segmentation polygon {k} of type {type(poly).__name__}, expected a list of coordinates"
            if len(poly) % 2:
                return f"has segmentation polygon {k} with an odd number ({len(poly)}) of coordinates"
            if not all(_is_real(v) for v in poly):
                return f"has segmentation polygon {k} with a coordinate that is not a finite number"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
            return f"has an RLE segmentation with size {size!r}, expected [height, width]"
        if list(size) != [height, width]:
            return f"has an RLE segmentation of size {list(size)} but its image is {[height, width]} (height, width)"
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                return "has an uncompressed RLE whose counts are not all integers >= 0"
            if sum(counts) != height * width:
                return f"has an uncompressed RLE whose counts sum to {sum(counts)}, not height * width = {height * width}"
            return None
        if not isinstance(counts, (str, bytes)) or not counts:
            return f"has an RLE segmentation with counts of type {type(counts).__name__}, expected a string or a list"
        return None
    return f"has a segmentation of type {type(seg).__name__}, expected polygons (a list) or an RLE (a dict)"


def _index_images(entries: List[Any], source: str) -> Dict[int, Dict[str, Any]]:
    images: Dict[int, Dict[str, Any]] = {}
    for index, img in enumerate(entries):
        problem = image_entry_problem(index, img)
        if problem:
            raise ValueError(f"{source}: {problem}")
        image_id = img["id"]
        if image_id in images:
            raise ValueError(f"{source}: image id {image_id} appears twice in 'images'")
        images[image_id] = img
    return images


def _index_categories(entries: List[Any], source: str) -> Dict[int, str]:
    names: Dict[int, str] = {}
    for index, cat in enumerate(entries):
        problem = category_entry_problem(index, cat)
        if problem:
            raise ValueError(f"{source}: {problem}")
        cat_id = cat["id"]
        if cat_id in names:
            raise ValueError(f"{source}: category id {cat_id} appears twice in 'categories'")
        names[cat_id] = str(cat["name"])
    if not names:
        raise ValueError(f"{source}: 'categories' is empty; a detector needs at least one class")
    return names


def _check_annotation(
    index: int, ann: Any, images: Mapping[int, Any], known_categories: AbstractSet[int], source: str
) -> Dict[str, Any]:
    """Validate one annotation; return it, or a copy with ``iscrowd``/``area`` filled in when absent."""
    problem = annotation_entry_problem(index, ann)
    if problem:
        raise ValueError(f"{source}: {problem}")
    ann_id = ann["id"]
    image_id = ann["image_id"]
    if image_id not in images:
        raise ValueError(f"{source}: annotation id {ann_id} refers to image_id {image_id!r}, which is not in 'images'")
    category_id = ann["category_id"]
    if category_id not in known_categories:
        known = sorted(known_categories)
        raise ValueError(
            f"{source}: annotation id {ann_id} has category_id {category_id!r}, which is not in "
            f"'categories' (known ids: {known[:10]}{'...' if len(known) > 10 else ''})"
        )
    bbox = ann["bbox"]
    if "iscrowd" in ann and "area" in ann:
        return ann
    # COCOeval reads 'area' and 'iscrowd' of every ground-truth annotation; a hand-made file may leave them
    # out. Fill a copy (the caller's dict, perhaps a COCO object's, stays as it was).
    _, _, w, h = (float(v) for v in bbox)
    return {"iscrowd": 0, "area": max(w, 0.0) * max(h, 0.0), **ann}


# --------------------------------------------------------------------------------------------
# The validated, indexed view of an instances file
# --------------------------------------------------------------------------------------------
class CocoAnnotations:
    """A COCO instances data set, validated once and indexed: images by id, categories, annotations per image.

    What is checked (a ``ValueError`` naming ``source`` and the entry index or id): every image has an
    integer ``id`` (unique), a ``file_name`` and positive integer ``width``/``height``; every category an
    integer ``id`` (unique) and a ``name``, and there is at least one; every annotation an ``id``, an
    ``image_id`` and ``category_id`` that exist, a ``bbox`` of 4 finite numbers and a numeric ``area`` when it
    has one. A missing ``area`` (box area) or ``iscrowd`` (0) is filled in a copy of that annotation, so
    COCOeval can score against the file; the input is never modified.

    Example:
        >>> gt = CocoAnnotations.from_file("annotations/instances_val.json")  # doctest: +SKIP
        >>> gt.categories[0], len(gt.annotations_by_image[gt.image_ids[0]])  # doctest: +SKIP
        (Category(label=1, id=1, name='person'), 3)

    Attributes:
        source: how messages name the data (the file path).
        images: image id -> the image's entry, in file order.
        image_ids: the image ids in file order.
        image_sizes: image id -> ``(height, width)`` as ints.
        category_ids: the category ids, sorted (label ``i`` is ``category_ids[i - 1]``).
        category_names: their names, aligned with ``category_ids`` (not necessarily unique).
        annotations: every annotation (crowd included), in file order, ``area``/``iscrowd`` filled in.
        annotations_by_image: image id -> its annotations, in file order (an empty list when none).
        unsegmented_ids: ids of the non-crowd annotations without a decodable segmentation.
        degenerate_box_ids: ids of the non-crowd annotations whose ``bbox`` has a width or height <= 0, in
            file order. Such a box overlaps nothing (IoU 0 with every detection), so COCOeval counts it as a
            miss; the training data set drops it. Crowd regions are left out: COCOeval never counts them.
    """

    def __init__(self, data: Mapping[str, Any], *, source: str) -> None:
        """Validate and index a parsed instances dict.

        Args:
            data: the parsed JSON, or a pycocotools ``COCO.dataset`` (not modified).
            source: how messages name where ``data`` came from.

        Raises:
            ValueError: the first problem found (see the class docstring), naming ``source`` and the entry.
        """
        check_instances_json(data, source=source)
        self.source = source
        self._extra = {k: v for k, v in data.items() if k not in INSTANCES_KEYS}  # info, licenses: kept for to_dict
        self._category_entries: List[Dict[str, Any]] = list(data["categories"])
        self.images = _index_images(data["images"], source)
        self.image_ids: List[int] = list(self.images)
        self.image_sizes: Dict[int, Tuple[int, int]] = {
            image_id: (int(img["height"]), int(img["width"])) for image_id, img in self.images.items()
        }
        names = _index_categories(data["categories"], source)
        self.category_ids: List[int] = sorted(names)
        self.category_names: List[str] = [names[c] for c in self.category_ids]
        self.label_to_category_id: Dict[int, int] = {i + 1: c for i, c in enumerate(self.category_ids)}
        self.category_id_to_label: Dict[int, int] = {c: i + 1 for i, c in enumerate(self.category_ids)}

        known_categories = set(self.category_ids)
        self.annotations: List[Dict[str, Any]] = []
        self.annotations_by_image: Dict[int, List[Dict[str, Any]]] = {image_id: [] for image_id in self.images}
        self.unsegmented_ids: List[Any] = []
        self.degenerate_box_ids: List[Any] = []
        for index, entry in enumerate(data["annotations"]):
            ann = _check_annotation(index, entry, self.images, known_categories, source)
            self.annotations.append(ann)
            self.annotations_by_image[ann["image_id"]].append(ann)
            if not ann["iscrowd"] and not _segmentation_present(ann.get("segmentation")):
                self.unsegmented_ids.append(ann["id"])
            if not ann["iscrowd"] and box_is_degenerate(ann["bbox"]):
                self.degenerate_box_ids.append(ann["id"])

    @classmethod
    def from_file(cls, path: PathLike, *, kind: str = "annotation file") -> "CocoAnnotations":
        """Read, validate and index a COCO instances JSON file.

        Args:
            path: the JSON file.
            kind: what the file is, for the messages (e.g. ``"ground-truth annotation file"``).

        Returns:
            The view, with ``source`` the path.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not JSON (file, line, column), a wrong top level, or an invalid entry (file, entry).
        """
        return cls(load_coco_json(path, kind=kind), source=str(path))

    def check_segmentations(self) -> None:
        """Check every present ``segmentation`` with :func:`segmentation_problem` (masks need it, boxes do not).

        Called by the data set when it decodes masks and by the evaluator for segm, before pycocotools reads
        them, so a malformed mask fails at the start with its file and annotation id instead of mid-run.

        Raises:
            ValueError: the first malformed segmentation (``"<source>: annotation id N has ..."``).
        """
        for ann in self.annotations:
            if "segmentation" in ann:
                height, width = self.image_sizes[ann["image_id"]]
                problem = segmentation_problem(ann["segmentation"], height=height, width=width)
                if problem:
                    raise ValueError(f"{self.source}: annotation id {ann['id']} {problem}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, images={len(self.images)}, "
            f"annotations={len(self.annotations)}, categories={len(self.category_ids)})"
        )

    @property
    def category_name_of(self) -> Dict[int, str]:
        """Category id -> name, sorted by id."""
        return dict(zip(self.category_ids, self.category_names))

    @property
    def categories(self) -> List[Category]:
        """The categories as training labels: ``Category(label=i, id=category_ids[i - 1], name=...)``, i = 1..K."""
        return [
            Category(label=i + 1, id=c, name=n) for i, (c, n) in enumerate(zip(self.category_ids, self.category_names))
        ]

    def to_dict(self) -> Dict[str, Any]:
        """The data set as a COCO instances dict, for pycocotools' ``COCO`` (``coco.dataset = ...``).

        Returns:
            A new top-level dict with new ``images``/``annotations``/``categories`` lists (annotations filled
            in) and the input's other keys (``info``, ``licenses``); the entry dicts are shared, not copied.
        """
        return {
            **self._extra,
            "images": list(self.images.values()),
            "annotations": list(self.annotations),
            "categories": list(self._category_entries),
        }


def image_ids_by_file_name(path: PathLike) -> Dict[str, int]:
    """Read the ``images`` of a COCO JSON: ``file_name`` -> image id (e.g. to give predictions their ids).

    Only ``images`` is required at the top level, so image-info files without annotations (COCO's
    ``image_info_test2017.json``) work too; the image entries are checked as :class:`CocoAnnotations` does.

    Args:
        path: the COCO JSON file.

    Returns:
        ``file_name`` (as written in the file, possibly with sub folders) -> image id, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON (file, line, column); no ``images`` list; an image entry without an integer
            ``id``, a ``file_name`` or a positive ``width``/``height``; a repeated id; two entries with the
            same ``file_name`` (the message names both ids).
    """
    source = str(path)
    data = load_coco_json(path, required=("images",))
    ids: Dict[str, int] = {}
    for image_id, img in _index_images(data["images"], source).items():
        file_name = str(img["file_name"])
        if file_name in ids:
            raise ValueError(
                f"{source}: file_name {file_name!r} is listed twice in 'images' (ids {ids[file_name]} and "
                f"{image_id}); a file cannot map to one image id"
            )
        ids[file_name] = image_id
    return ids


def category_names_by_id(path: PathLike) -> Optional[Dict[int, str]]:
    """Read the ``categories`` of a COCO JSON: category id -> name (e.g. to check a detector against it).

    Only ``images`` is required at the top level (as :func:`image_ids_by_file_name`), so an image-info file
    without ``categories`` gives None rather than an error.

    Args:
        path: the COCO JSON file.

    Returns:
        id -> name sorted by id, or None when the file has no ``categories`` key.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON (file, line, column); no ``images`` list; a ``categories`` that is not a list, is
            empty, or has an entry without an integer ``id`` and a ``name``, or a repeated id.
    """
    source = str(path)
    data = load_coco_json(path, required=("images",))
    if "categories" not in data:
        return None
    check_instances_json(data, source=source, required=("images", "categories"))
    names = _index_categories(data["categories"], source)
    return {cat_id: names[cat_id] for cat_id in sorted(names)}


def same_file_name(result_name: str, gt_name: str) -> bool:
    """Whether a results entry's ``file_name`` names the ground-truth image whose ``file_name`` is `gt_name`.

    Equal after turning ``\\`` into ``/``, or one ends with ``/`` + the other: a bare name (what ``resnet-fpn
    infer`` sees on disk) matches a ground-truth name with folders (``val2017/0001.jpg``) and the reverse, but
    ``a/0001.jpg`` does not match ``b/0001.jpg`` and ``10001.jpg`` does not match ``0001.jpg``. Case counts.

    Args:
        result_name: the ``file_name`` of a results entry.
        gt_name: the ``file_name`` of the ground-truth image of the same id.

    Returns:
        True when they name the same file.

    Example:
        >>> same_file_name("0001.jpg", "val2017/0001.jpg"), same_file_name("10001.jpg", "0001.jpg")
        (True, False)
    """
    a, b = (_normal_file_name(n) for n in (result_name, gt_name))
    short, long = sorted((a, b), key=len)
    return a == b or (bool(short) and long.endswith("/" + short))


def _normal_file_name(name: str) -> str:
    name = str(name).replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


# --------------------------------------------------------------------------------------------
# Results: detections in COCO's results format
# --------------------------------------------------------------------------------------------
#: Where the entries of concatenated results files came from: (file, index of its first entry).
ResultSources = List[Tuple[str, int]]


def load_results(paths: Sequence[PathLike]) -> Tuple[List[Any], ResultSources]:
    """Read COCO results files (each a JSON list of detections) and concatenate them in order.

    Args:
        paths: the results JSON files.

    Returns:
        ``(entries, sources)``; ``sources`` lets :func:`check_results` name the file of a bad entry.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file that is not JSON, or whose top level is not a list (the message names the file).
    """
    entries: List[Any] = []
    sources: ResultSources = []
    for p in paths:
        data = load_json(p, kind="results file")
        if not isinstance(data, list):
            hint = " (it looks like a ground-truth file)" if isinstance(data, dict) and "annotations" in data else ""
            raise ValueError(
                f"results file {p} holds a JSON {type(data).__name__}{hint}; expected a list of detections, "
                "each a dict with image_id, category_id, score and bbox and/or segmentation"
            )
        sources.append((str(p), len(entries)))
        entries.extend(data)
    return entries, sources


def _describe_entry(index: int, sources: Sequence[Tuple[str, int]]) -> str:
    for path, start in reversed(sources):
        if index >= start:
            return f"result entry {index} (entry {index - start} of {path})"
    return f"result entry {index}"


def _segmentation_problem(seg: Any, image_size: Optional[Tuple[int, int]]) -> Optional[str]:
    if not (isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)) and "size" in seg):
        return (
            "has a segmentation that is not a compressed RLE dict {'size': [h, w], 'counts': str}; "
            "encode masks with pycocotools.mask.encode"
        )
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"has segmentation size {size!r}, expected [height, width]"
    if image_size is not None and tuple(size) != image_size:
        return f"has a mask of size {list(size)} but its image is {list(image_size)} (height, width)"
    return None


def _result_problem(entry: Any, iou_types: Sequence[str], gt: CocoAnnotations) -> Optional[str]:
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, expected a dict"
    if not _is_int(entry.get("image_id")):
        return f"has image_id {entry.get('image_id')!r}, expected an integer"
    if not _is_int(entry.get("category_id")):
        return f"has category_id {entry.get('category_id')!r}, expected an integer"
    if not _is_real(entry.get("score")):
        return f"has score {entry.get('score')!r}, expected a finite number"
    for key in ("file_name", "category_name"):
        if key in entry and not isinstance(entry[key], str):
            return f"has {key} {entry[key]!r}, expected a string (or no {key!r} at all)"
    if "bbox" in iou_types:
        if "bbox" not in entry:
            return "has no 'bbox', which bbox evaluation needs"
        box = entry["bbox"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_real(v) for v in box)):
            return f"has bbox {box!r}, expected [x, y, width, height]"
    if "segm" in iou_types:
        if "segmentation" not in entry:
            return "has no 'segmentation', which segm evaluation needs"
        return _segmentation_problem(entry["segmentation"], gt.image_sizes.get(entry["image_id"]))
    return None


def check_results(
    entries: Sequence[Any],
    gt: CocoAnnotations,
    *,
    iou_types: Sequence[str],
    sources: Sequence[Tuple[str, int]] = (),
) -> None:
    """Check COCO results against their ground truth before pycocotools sees them.

    Args:
        entries: the result dicts (``image_id``, ``category_id``, ``score``, ``bbox`` as ``[x, y, w, h]``
            for ``"bbox"``, ``segmentation`` as a compressed RLE of the image's size for ``"segm"``).
        gt: the ground truth.
        iou_types: ``"bbox"`` and/or ``"segm"``: which fields every entry needs.
        sources: from :func:`load_results`, so messages name the file and the index inside it.

    Entries may carry two optional keys that ``resnet-fpn infer`` writes (pycocotools ignores them): a
    ``file_name``, checked with :func:`same_file_name` against the ``file_name`` of the ground-truth image of
    that id, and a ``category_name``, compared exactly (case and spaces count) with the ground truth's name
    for that ``category_id``. A mismatch means the ids belong to another file: scoring would compare one
    image, or one class, with another.

    Raises:
        ValueError: the first malformed entry (named by its index, and file); then image or category ids
            absent from ``gt`` (the first few and their count); then image ids whose results name another
            file than the ground truth (``id: 'results name' vs 'ground-truth name'``, the first few and their
            count); then category ids whose results name another category.
    """
    for i, entry in enumerate(entries):
        problem = _result_problem(entry, iou_types, gt)
        if problem:
            raise ValueError(f"{_describe_entry(i, sources)} {problem}")
    bad_images = sorted({r["image_id"] for r in entries} - set(gt.images))
    if bad_images:
        raise ValueError(f"results refer to image ids not in the ground truth ({gt.source}): {list_some(bad_images)}")
    bad_cats = sorted({r["category_id"] for r in entries} - set(gt.category_ids))
    if bad_cats:
        raise ValueError(
            f"results refer to category ids not in the ground truth ({gt.source}): {list_some(bad_cats)}; "
            f"its category ids are {list_some(gt.category_ids)} (map training labels with label_to_category_id)"
        )
    _check_names(entries, gt)


def _check_names(entries: Sequence[Any], gt: CocoAnnotations) -> None:
    """The ``file_name`` / ``category_name`` checks of :func:`check_results` (ids already known to be in gt)."""
    files: Dict[int, str] = {}  # image id -> the first file name the results give it that gt contradicts
    names: Dict[int, str] = {}
    gt_names = gt.category_name_of
    for entry in entries:
        image_id, category_id = entry["image_id"], entry["category_id"]
        file_name = entry.get("file_name")
        if file_name is not None and image_id not in files:
            if not same_file_name(file_name, str(gt.images[image_id]["file_name"])):
                files[image_id] = file_name
        name = entry.get("category_name")
        if name is not None and category_id not in names and name != gt_names[category_id]:
            names[category_id] = name
    if files:
        pairs = [f"{i}: {files[i]!r} vs {str(gt.images[i]['file_name'])!r}" for i in sorted(files)]
        raise ValueError(
            f"results name other files than the ground truth {gt.source} for the same image ids "
            f"(id: results vs ground truth): {join_some(pairs)}; they were made for another image list "
            "(resnet-fpn infer without --ann numbers images 1..N in file order: run it with --ann set to the "
            "ground truth that lists those images)"
        )
    if names:
        pairs = [f"{c}: {names[c]!r} vs {gt_names[c]!r}" for c in sorted(names)]
        raise ValueError(
            f"results name other categories than the ground truth {gt.source} for the same category ids "
            f"(id: results vs ground truth): {join_some(pairs)}; the detector was trained on another "
            f"category table (resnet-fpn infer --ann FILE --map-categories name maps its labels by name)"
        )


def join_some(items: Sequence[str], *, limit: int = 5) -> str:
    """Join the first ``limit`` preformatted items with ``"; "`` and add the count, like :func:`list_some`.

    Args:
        items: the offending pairs, already formatted (``"1: 'a' vs 'b'"``).
        limit: how many to show.

    Returns:
        e.g. ``"a; b; c; d; e; ... (7 in all)"``.
    """
    more = f"; ... ({len(items)} in all)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more
