"""The data doctor: every problem of a COCO-format data set, collected in one report instead of the first error.

:class:`resnet_fpn.coco_format.CocoAnnotations` stops at the first structural error, which is what training
needs; a person fixing a data set needs the whole list. :func:`check_dataset` reads the raw JSON itself and
applies the same rules (``coco_format``'s ``*_entry_problem``, ``segmentation_problem``, ``box_is_degenerate``
and this package's ``box_outside_image``: one definition each) to every entry, records each problem as a
:class:`Finding` and keeps going. ``resnet-fpn check-data`` prints and writes the :class:`DataReport`; training
runs :func:`quick_check` at its start and logs :meth:`DataReport.summary`.

Two passes:

- quick (``decode=False``): the JSON checks and a header check of every image (``PIL.Image.open`` +
  ``verify()``: the file exists, is an image, and its size, after the EXIF orientation, is the JSON's). No
  pixel is decoded, so a truncated JPEG passes; seconds for COCO train2017.
- full (``decode=True``): also decodes every image (the pixels training will read), in worker processes
  with a progress bar.

Thresholds (module constants, documented in docs/data.md "Checking a data set"):

- ``TINY_BOX_SIDE`` = 4 px: a box with a side under it (but above 0) is ``tiny_box``; the smallest anchor of
  torchvision's detectors is 32 px and a 4 px object is below the stride of the finest pyramid level.
- ``MASK_BOX_MIN_IOU`` = 0.5: a mask whose tight box has IoU under 0.5 with the annotation's ``bbox`` is
  ``mask_box_mismatch`` (one of the two belongs to another object, or is in another frame). Boxes with a side
  under ``TINY_BOX_SIDE`` are not compared: their rasterised mask cannot match them within a pixel.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ..coco_format import (
    INSTANCES_KEYS,
    MIN_POLYGON_COORDS,
    annotation_entry_problem,
    box_is_degenerate,
    category_entry_problem,
    image_entry_problem,
    list_some,
    load_json,
    segmentation_problem,
)
from .coco import MIN_BOX_SIDE, _segmentation_to_rle, box_outside_image

__all__ = [
    "CODES",
    "DEFAULT_ANCHOR_SIZES",
    "DataReport",
    "Finding",
    "MASK_BOX_MIN_IOU",
    "TINY_BOX_SIDE",
    "check_dataset",
    "quick_check",
]

PathLike = Union[str, "os.PathLike[str]"]

#: A box with a side shorter than this (px), but not degenerate, is reported as ``tiny_box``.
TINY_BOX_SIDE = 4.0
#: A mask whose tight box overlaps the annotation's ``bbox`` with an IoU below this is ``mask_box_mismatch``.
MASK_BOX_MIN_IOU = 0.5
#: torchvision's anchor sizes for the R-CNNs (one per pyramid level P2..P6), drawn when no config is given.
DEFAULT_ANCHOR_SIZES: Tuple[int, ...] = (32, 64, 128, 256, 512)

#: Every finding code -> its severity and what it means. ``error``: training or evaluation would fail or
#: learn from wrong data (``resnet-fpn check-data`` exits 1); ``warning``: training copes (clips, drops,
#: ignores) but the data is probably not what was meant; ``info``: legitimate, worth knowing.
CODES: Dict[str, Tuple[str, str]] = {
    "invalid_file": ("error", "the annotation file is not JSON, or its top level is not a COCO instances object"),
    "invalid_entry": ("error", "an image, category or annotation entry is malformed (missing key, wrong type)"),
    "duplicate_image_id": ("error", "two entries of 'images' share an id"),
    "duplicate_category_id": ("error", "two entries of 'categories' share an id"),
    "duplicate_annotation_id": ("error", "two entries of 'annotations' share an id"),
    "unknown_image": ("error", "an annotation refers to an image id not in 'images'"),
    "unknown_category": ("error", "an annotation refers to a category id not in 'categories'"),
    "no_categories": ("error", "'categories' is empty"),
    "missing_image": ("error", "an image file listed in the JSON does not exist"),
    "bad_image": ("error", "an image file cannot be opened or decoded"),
    "size_mismatch": ("error", "the JSON's width/height differ from the image's (after EXIF rotation)"),
    "degenerate_box": ("error", "a non-crowd box has a width or height <= 0"),
    "invalid_segmentation": ("error", "a segmentation is malformed (types, odd polygon, RLE size or counts)"),
    "box_out_of_bounds": ("warning", "a box reaches outside its image (training clips it)"),
    "tiny_box": ("warning", f"a box side is under {TINY_BOX_SIDE:g} px"),
    "mask_box_mismatch": ("warning", f"the mask's tight box has IoU < {MASK_BOX_MIN_IOU} with the bbox"),
    "short_polygon": ("warning", "a polygon has fewer than 3 points (ignored when masks are decoded)"),
    "empty_mask": ("warning", "a segmentation is present but covers no pixel"),
    "exif_unrotated": ("warning", "the JSON's size is the stored one, not the EXIF-upright one (annotated unrotated)"),
    "duplicate_file_name": ("warning", "two images list the same file"),
    "duplicate_category_name": ("warning", "two categories share a name"),
    "unused_category": ("info", "a category has no (non-crowd) instance in this file"),
    "image_without_annotations": ("info", "an image has no annotation (a negative example)"),
    "crowd": ("info", "an iscrowd=1 region (ignored by training, by COCOeval when matching)"),
}
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One problem of a data set.

    Attributes:
        severity: ``"error"``, ``"warning"`` or ``"info"`` (from :data:`CODES`).
        code: what kind of problem (a key of :data:`CODES`).
        message: one sentence naming the entry and what was expected.
        image_id: the image concerned, if any.
        annotation_id: the annotation concerned, if any.
        category_id: the category concerned, if any.
        file: the image file concerned, if any (as listed in the JSON).
        index: the entry's position in its JSON list, when the entry has no usable id.
    """

    severity: str
    code: str
    message: str
    image_id: Any = None
    annotation_id: Any = None
    category_id: Any = None
    file: Optional[str] = None
    index: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        """The finding as a JSON-ready dict (fields that are None left out; ids kept as found)."""
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        for key in ("image_id", "annotation_id", "category_id"):
            if key in out and not isinstance(out[key], (int, float, str, bool)):
                out[key] = repr(out[key])  # a malformed id (a list, a dict) stays readable in report.json
        return out


@dataclass
class DataReport:
    """What :func:`check_dataset` found in one annotation file and its images.

    Attributes:
        ann_file: the annotation file.
        images_dir: the image folder.
        decoded: whether every image was decoded (the full pass) or only its header read (the quick pass).
        findings: every finding, in the order found.
        num_images, num_annotations, num_categories: entries in the file (valid or not).
        category_names: category id -> name (valid categories).
        instances_per_category: category id -> number of non-crowd, well-formed annotations.
        box_sides: sqrt(w * h) of every non-crowd, non-degenerate box (px), for the size histogram.
        box_aspects: h / w of the same boxes.
        image_sizes: (width, height) of every valid image entry, from the JSON.
        anchor_sizes: the anchor sizes the box statistics are compared with.
    """

    ann_file: str
    images_dir: str
    decoded: bool
    findings: List[Finding] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    category_names: Dict[int, str] = field(default_factory=dict)
    instances_per_category: Dict[int, int] = field(default_factory=dict)
    box_sides: List[float] = field(default_factory=list)
    box_aspects: List[float] = field(default_factory=list)
    image_sizes: List[Tuple[int, int]] = field(default_factory=list)
    anchor_sizes: Tuple[int, ...] = DEFAULT_ANCHOR_SIZES

    def add(self, code: str, message: str, **ids: Any) -> None:
        """Record a finding of ``code`` (its severity from :data:`CODES`).

        Args:
            code: a key of :data:`CODES`.
            message: what is wrong, naming the entry.
            **ids: ``image_id``, ``annotation_id``, ``category_id``, ``file``, ``index``.

        Raises:
            KeyError: an unknown code (a bug of this module, not of the data).
        """
        self.findings.append(Finding(CODES[code][0], code, message, **ids))

    def of(self, *, severity: Optional[str] = None, code: Optional[str] = None) -> List[Finding]:
        """The findings of one severity and/or code.

        Args:
            severity: ``"error"``, ``"warning"`` or ``"info"``; None for all.
            code: a key of :data:`CODES`; None for all.

        Returns:
            The matching findings, in the order found.
        """
        return [f for f in self.findings if (severity is None or f.severity == severity)
                and (code is None or f.code == code)]

    @property
    def errors(self) -> List[Finding]:
        """The findings of severity ``error``."""
        return self.of(severity="error")

    @property
    def warnings(self) -> List[Finding]:
        """The findings of severity ``warning``."""
        return self.of(severity="warning")

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings and infos allowed)."""
        return not self.errors

    @property
    def bad_image_ids(self) -> List[Any]:
        """Ids of the images that cannot be used as they are: missing, undecodable, or of another size."""
        codes = ("missing_image", "bad_image", "size_mismatch")
        return sorted({f.image_id for f in self.findings if f.code in codes}, key=repr)

    def counts(self) -> Dict[str, int]:
        """Code -> number of findings, most severe codes first."""
        counter = Counter(f.code for f in self.findings)
        return dict(sorted(counter.items(), key=lambda kv: (_SEVERITY_ORDER[CODES[kv[0]][0]], kv[0])))

    def summary(self) -> str:
        """One paragraph: what was checked, the counts per code, the first ids of each error, the box sizes.

        Returns:
            Plain text, one paragraph (no line breaks), for a log or the console.
        """
        kind = "decoded" if self.decoded else "header-checked"
        head = (f"{self.ann_file}: {self.num_images} images ({kind} in {self.images_dir}), "
                f"{self.num_annotations} annotations, {self.num_categories} categories")
        if not self.findings:
            parts = [f"{head}: no problem found."]
        else:
            verdict = f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
            details = []
            for code, n in self.counts().items():
                text = f"{n} {code} ({CODES[code][0]})"
                if CODES[code][0] == "error":
                    text += f" e.g. {list_some([_where(f) for f in self.of(code=code)], limit=3)}"
                details.append(text)
            parts = [f"{head}: {verdict}: " + "; ".join(details) + "."]
        if self.box_sides:
            sides = np.asarray(self.box_sides)
            smallest = min(self.anchor_sizes)
            parts.append(
                f"Box sides (sqrt area) median {np.median(sides):.0f} px, "
                f"{100.0 * np.mean(sides < smallest / 2):.0f}% under half the smallest anchor ({smallest} px)."
            )
        return " ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        """The report as a JSON-ready dict (``report.json``): counts, findings and statistics."""
        return {
            "ann_file": self.ann_file,
            "images_dir": self.images_dir,
            "decoded": self.decoded,
            "ok": self.ok,
            "num_images": self.num_images,
            "num_annotations": self.num_annotations,
            "num_categories": self.num_categories,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "thresholds": {"tiny_box_side": TINY_BOX_SIDE, "mask_box_min_iou": MASK_BOX_MIN_IOU},
            "anchor_sizes": list(self.anchor_sizes),
            "instances_per_category": {
                self.category_names.get(c, str(c)): n for c, n in sorted(self.instances_per_category.items())
            },
            "box_sides": {"count": len(self.box_sides), **_quantiles(self.box_sides)},
            "box_aspects": {"count": len(self.box_aspects), **_quantiles(self.box_aspects)},
            "image_sizes": {f"{w}x{h}": n for (w, h), n in Counter(self.image_sizes).most_common()},
        }


def _where(f: Finding) -> str:
    for key, label in (("annotation_id", "annotation"), ("image_id", "image"), ("category_id", "category")):
        value = getattr(f, key)
        if value is not None:
            return f"{label} {value!r}"
    return f"entry {f.index}" if f.index is not None else f.message


def _quantiles(values: Sequence[float]) -> Dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, dtype=np.float64), [0.0, 0.05, 0.5, 0.95, 1.0])
    return {name: round(float(v), 3) for name, v in zip(("min", "p5", "median", "p95", "max"), q)}


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------
# EXIF orientations 5..8 turn the picture by 90 degrees: the upright size is the stored one transposed
# (what PIL.ImageOps.exif_transpose, and so read_image, produce).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def _inspect_image(job: Tuple[str, bool]) -> Tuple[str, Any, Optional[str]]:
    """Open one image file: ``(status, size, reason)``, status ``ok``/``missing``/``bad``; never raises.

    ``size`` is ``((w, h) stored, (w, h) upright)`` when the file opened. Runs in worker processes.
    """
    path, decode = job
    try:
        if not decode:
            # A header and structure check, no decode (PNG: the chunk CRCs). PIL allows verify() only right
            # after open (PNG raises otherwise) and leaves the image unusable, so the size is read anew below.
            with Image.open(path) as img:
                img.verify()
        with Image.open(path) as img:
            stored = img.size
            orientation = img.getexif().get(0x0112, 1)
            if decode:
                img.load()  # the pixels: a truncated or corrupt file fails here
    except FileNotFoundError:
        return "missing", None, None
    except IsADirectoryError:
        return "bad", None, "it is a folder"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return "bad", None, f"{type(err).__name__}: {err}"
    upright = stored[::-1] if orientation in _TRANSPOSING_ORIENTATIONS else stored
    return "ok", (stored, upright), None


def _inspect_images(jobs: List[Tuple[str, bool]], *, workers: int, progress: bool) -> List[Tuple[str, Any, Optional[str]]]:
    if not jobs:
        return []
    from tqdm.auto import tqdm

    desc = "decoding images" if jobs[0][1] else "checking image headers"
    bar = dict(total=len(jobs), desc=desc, unit="img", disable=not progress, leave=False)
    if workers <= 0:
        return [_inspect_image(job) for job in tqdm(jobs, **bar)]
    chunk = max(1, min(64, len(jobs) // (workers * 8)))
    with multiprocessing.get_context().Pool(workers) as pool:
        return list(tqdm(pool.imap(_inspect_image, jobs, chunksize=chunk), **bar))


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------
def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xywh boxes with positive sides."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _top_level(data: Any, report: DataReport) -> Dict[str, List[Any]]:
    """The three lists of the file; a missing or wrong one is an ``invalid_file`` finding and counts as empty."""
    if not isinstance(data, dict):
        report.add("invalid_file", f"{report.ann_file}: expected a COCO instances JSON object at the top "
                                   f"level, got {type(data).__name__}")
        return {key: [] for key in INSTANCES_KEYS}
    lists = {}
    for key in INSTANCES_KEYS:
        value = data.get(key)
        if not isinstance(value, list):
            got = "no such key" if key not in data else f"a {type(value).__name__}"
            report.add("invalid_file", f"{report.ann_file}: top-level {key!r} must be a list, got {got}")
            value = []
        lists[key] = value
    return lists


def _check_images(entries: List[Any], report: DataReport) -> Dict[int, Dict[str, Any]]:
    images: Dict[int, Dict[str, Any]] = {}
    files: Dict[str, int] = {}
    for index, img in enumerate(entries):
        problem = image_entry_problem(index, img)
        if problem:
            image_id = img.get("id") if isinstance(img, dict) else None
            report.add("invalid_entry", problem, image_id=image_id if _hashable(image_id) else None, index=index)
            continue
        image_id = img["id"]
        if image_id in images:
            report.add("duplicate_image_id", f"image id {image_id} appears twice in 'images' (entries "
                                             f"{images[image_id]['_index']} and {index})", image_id=image_id, index=index)
            continue
        name = img["file_name"]
        if name in files:
            report.add("duplicate_file_name", f"images {files[name]} and {image_id} both list the file {name!r}",
                       image_id=image_id, file=name)
        files.setdefault(name, image_id)
        images[image_id] = {**img, "_index": index}
        report.image_sizes.append((int(img["width"]), int(img["height"])))
    return images


def _check_categories(entries: List[Any], report: DataReport) -> Dict[int, str]:
    names: Dict[int, str] = {}
    for index, cat in enumerate(entries):
        problem = category_entry_problem(index, cat)
        if problem:
            report.add("invalid_entry", problem, index=index)
            continue
        cat_id = cat["id"]
        if cat_id in names:
            report.add("duplicate_category_id", f"category id {cat_id} appears twice in 'categories'",
                       category_id=cat_id, index=index)
            continue
        name = str(cat["name"])
        if name in names.values():
            report.add("duplicate_category_name", f"categories {list(names)[list(names.values()).index(name)]} and "
                                                  f"{cat_id} are both named {name!r}", category_id=cat_id)
        names[cat_id] = name
    if not names and not report.of(code="invalid_file"):
        report.add("no_categories", f"{report.ann_file}: 'categories' has no valid entry; a detector needs at "
                                    "least one class")
    return names


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _check_segmentation(ann: Dict[str, Any], img: Dict[str, Any], report: DataReport) -> None:
    seg = ann["segmentation"]
    ann_id, image_id = ann["id"], ann["image_id"]
    height, width = int(img["height"]), int(img["width"])
    problem = segmentation_problem(seg, height=height, width=width)
    if problem:
        report.add("invalid_segmentation", f"annotation id {ann_id} {problem}", annotation_id=ann_id, image_id=image_id)
        return
    if isinstance(seg, list):
        short = [k for k, poly in enumerate(seg) if len(poly) < MIN_POLYGON_COORDS]
        if short:
            report.add("short_polygon", f"annotation id {ann_id} has polygon(s) {short} of fewer than 3 points, "
                                        "ignored when its mask is decoded", annotation_id=ann_id, image_id=image_id)
        if len(short) == len(seg):
            return  # nothing to compare with the box; an empty list is "no mask", not an empty mask
    rle = _segmentation_to_rle(seg, height, width)
    if int(mask_utils.area(rle)) == 0:
        report.add("empty_mask", f"annotation id {ann_id} has a segmentation that covers no pixel",
                   annotation_id=ann_id, image_id=image_id)
        return
    bbox = [float(v) for v in ann["bbox"]]
    if box_is_degenerate(bbox) or min(bbox[2], bbox[3]) < TINY_BOX_SIDE:
        return  # an error of its own; or a box so small that the mask's whole pixels cannot match it
    mask_box = [float(v) for v in mask_utils.toBbox(rle)]
    iou = _box_iou(mask_box, bbox)
    if iou < MASK_BOX_MIN_IOU:
        report.add("mask_box_mismatch", f"annotation id {ann_id}: its mask's box "
                                        f"{[round(v, 1) for v in mask_box]} and its bbox {[round(v, 1) for v in bbox]} "
                                        f"overlap with IoU {iou:.2f} < {MASK_BOX_MIN_IOU}",
                   annotation_id=ann_id, image_id=image_id)


def _check_annotations(entries: List[Any], images: Dict[int, Dict[str, Any]], categories: Dict[int, str],
                       report: DataReport) -> Dict[int, int]:
    """The per-annotation checks; returns image id -> number of annotations (crowd included)."""
    seen: Dict[Any, int] = {}
    per_image: Dict[int, int] = Counter()
    used: Dict[int, int] = Counter()
    for index, ann in enumerate(entries):
        problem = annotation_entry_problem(index, ann)
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        ann_id = ann_id if _hashable(ann_id) else None
        if problem:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            report.add("invalid_entry", problem, annotation_id=ann_id, index=index,
                       image_id=image_id if _hashable(image_id) and image_id in images else None)
            continue
        if ann_id in seen:
            report.add("duplicate_annotation_id", f"annotation id {ann_id} appears twice in 'annotations' (entries "
                                                  f"{seen[ann_id]} and {index})", annotation_id=ann_id, index=index,
                       image_id=ann["image_id"])
            continue
        seen[ann_id] = index
        image_id, category_id = ann["image_id"], ann["category_id"]
        if image_id not in images:
            report.add("unknown_image", f"annotation id {ann_id} refers to image_id {image_id!r}, which is not in "
                                        "'images'", annotation_id=ann_id, image_id=image_id)
            continue
        per_image[image_id] += 1
        if category_id not in categories:
            report.add("unknown_category", f"annotation id {ann_id} has category_id {category_id!r}, which is not in "
                                           f"'categories' (known ids: {list_some(sorted(categories), limit=10)})",
                       annotation_id=ann_id, image_id=image_id, category_id=category_id)
            continue
        img = images[image_id]
        crowd = bool(ann.get("iscrowd", 0))
        bbox = [float(v) for v in ann["bbox"]]
        ids = dict(annotation_id=ann_id, image_id=image_id)
        if crowd:
            report.add("crowd", f"annotation id {ann_id} (image {image_id}) is a crowd region", **ids)
        elif box_is_degenerate(bbox):
            report.add("degenerate_box", f"annotation id {ann_id} has bbox {ann['bbox']} with width or height <= 0",
                       **ids)
        else:
            used[category_id] += 1
            w, h = bbox[2], bbox[3]
            report.box_sides.append(math.sqrt(w * h))
            report.box_aspects.append(h / w)
            if box_outside_image(bbox, width=img["width"], height=img["height"]):
                report.add("box_out_of_bounds", f"annotation id {ann_id} has bbox {ann['bbox']} reaching outside its "
                                                f"{int(img['width'])}x{int(img['height'])} image", **ids)
            if min(w, h) < TINY_BOX_SIDE:
                dropped = " (under 1 px: training drops it)" if min(w, h) < MIN_BOX_SIDE else ""
                report.add("tiny_box", f"annotation id {ann_id} has a {w:g}x{h:g} px box, a side under "
                                       f"{TINY_BOX_SIDE:g} px{dropped}", **ids)
        if ann.get("segmentation") is not None:
            _check_segmentation(ann, img, report)
    report.instances_per_category = {c: used.get(c, 0) for c in sorted(categories)}
    for c in sorted(categories):
        if not used.get(c):
            report.add("unused_category", f"category {c} ({categories[c]!r}) has no non-crowd instance",
                       category_id=c)
    return per_image


def _check_image_files(images: Dict[int, Dict[str, Any]], images_dir: Path, report: DataReport, *,
                       decode: bool, workers: int, progress: bool) -> None:
    ids = list(images)
    results = _inspect_images([(str(images_dir / images[i]["file_name"]), decode) for i in ids],
                              workers=workers, progress=progress)
    for image_id, (status, sizes, reason) in zip(ids, results):
        img = images[image_id]
        name = img["file_name"]
        ids_ = dict(image_id=image_id, file=name)
        if status == "missing":
            report.add("missing_image", f"image id {image_id}: file not found: {images_dir / name}", **ids_)
        elif status == "bad":
            report.add("bad_image", f"image id {image_id}: cannot read {images_dir / name}: {reason}", **ids_)
        else:
            stored, upright = sizes
            wanted = (int(img["width"]), int(img["height"]))
            if upright == wanted:
                continue
            if stored == wanted:
                report.add("exif_unrotated", f"image id {image_id} ({name}) is {upright[0]}x{upright[1]} upright "
                                             f"but the JSON gives the stored size {wanted[0]}x{wanted[1]}: its "
                                             "boxes are read in the stored (unrotated) frame", **ids_)
            else:
                report.add("size_mismatch", f"image id {image_id} ({name}) is {upright[0]}x{upright[1]} (width x "
                                            f"height, EXIF-upright) but the JSON says {wanted[0]}x{wanted[1]}", **ids_)


def check_dataset(
    ann_file: PathLike,
    images_dir: PathLike,
    *,
    decode: bool = True,
    workers: int = 0,
    anchor_sizes: Optional[Iterable[int]] = None,
    check_images: bool = True,
    progress: bool = False,
) -> DataReport:
    """Check a COCO instances file and its images; collect every problem instead of stopping at the first.

    Checked (codes and severities in :data:`CODES`): the file parses and has the three lists; every image,
    category and annotation entry is well formed (the rules of :mod:`resnet_fpn.coco_format`); ids are unique;
    annotations refer to known images and categories; boxes are not degenerate, tiny or outside the image;
    segmentations are well formed, not empty, and their box agrees with the ``bbox``; categories are used;
    images have annotations; crowd regions are listed; every image file exists, opens (header, or decoded
    with ``decode``), and has the JSON's size after the EXIF rotation.

    Args:
        ann_file: the COCO instances JSON.
        images_dir: the folder its ``file_name`` entries are relative to.
        decode: decode every image (the full pass); False reads headers only (the quick pass).
        workers: processes for the image pass; 0 works in this process.
        anchor_sizes: the anchor sizes of the detector to train (summary and plots); default torchvision's
            :data:`DEFAULT_ANCHOR_SIZES`.
        check_images: False skips the image files (JSON checks only).
        progress: show a tqdm progress bar for the image pass.

    Returns:
        The :class:`DataReport`. Problems of the data are findings in it, never exceptions; an unparsable
        file or a wrong top level is an ``invalid_file`` finding.

    Raises:
        FileNotFoundError: ``ann_file`` does not exist, or ``images_dir`` is not a folder while
            ``check_images``.
        ValueError: ``workers`` is negative or ``anchor_sizes`` holds a non-positive size.
        TypeError: ``anchor_sizes`` is not a sequence of integers.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0 (0: no worker process), got {workers!r}")
    anchors = _check_anchor_sizes(anchor_sizes)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    if check_images and not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir} (for {ann_file})")
    report = DataReport(ann_file=str(ann_file), images_dir=str(images_dir), decoded=bool(decode and check_images),
                        anchor_sizes=anchors)
    try:
        data = load_json(ann_file, kind="annotation file")
    except ValueError as err:
        report.add("invalid_file", str(err))
        return report
    lists = _top_level(data, report)
    report.num_images = len(lists["images"])
    report.num_annotations = len(lists["annotations"])
    report.num_categories = len(lists["categories"])
    images = _check_images(lists["images"], report)
    categories = _check_categories(lists["categories"], report)
    report.category_names = dict(categories)
    per_image = _check_annotations(lists["annotations"], images, categories, report)
    for image_id, img in images.items():
        if not per_image.get(image_id):
            report.add("image_without_annotations", f"image id {image_id} ({img['file_name']}) has no annotation",
                       image_id=image_id, file=img["file_name"])
    if check_images:
        _check_image_files(images, images_dir, report, decode=decode, workers=workers, progress=progress)
    return report


def quick_check(ann_file: PathLike, images_dir: PathLike, *, anchor_sizes: Optional[Iterable[int]] = None) -> DataReport:
    """The start-of-training pass: the JSON checks and a header check of every image, in this process.

    Args:
        ann_file: the COCO instances JSON.
        images_dir: the folder its ``file_name`` entries are relative to.
        anchor_sizes: the detector's anchor sizes (for the summary), default torchvision's.

    Returns:
        The :class:`DataReport` (``decoded`` False); log :meth:`DataReport.summary`, and refuse to start on
        ``report.errors`` or, with ``data.bad_images: skip``, leave out ``report.bad_image_ids``.

    Raises:
        FileNotFoundError: ``ann_file`` or ``images_dir`` does not exist.
    """
    return check_dataset(ann_file, images_dir, decode=False, workers=0, anchor_sizes=anchor_sizes)


def _check_anchor_sizes(anchor_sizes: Optional[Iterable[int]]) -> Tuple[int, ...]:
    if anchor_sizes is None:
        return DEFAULT_ANCHOR_SIZES
    if isinstance(anchor_sizes, (str, bytes)) or not isinstance(anchor_sizes, Iterable):
        raise TypeError(f"anchor_sizes must be a sequence of positive integers, got {anchor_sizes!r}")
    sizes = tuple(anchor_sizes)
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        raise TypeError(f"anchor_sizes must be a non-empty sequence of integers, got {list(sizes)!r}")
    if any(s <= 0 for s in sizes):
        raise ValueError(f"anchor_sizes must be positive, got {list(sizes)}")
    return sizes
