"""A compact training index of a COCO instances file: numpy arrays, shared read-only by loader workers.

Why: a data loader worker is a forked copy of the training process. Python objects (the parsed JSON, a
pycocotools index, per-image records) are reference-counted and walked by the garbage collector, so every
worker that merely reads them writes to their pages, and copy-on-write turns the parent's memory into a
private copy per worker and per GPU process (pytorch/pytorch#13246). detectron2 serialises its data set
into numpy buffers for this reason (``DatasetFromList(serialize=True)``), mmdetection has ``serialize_data``.
Here the file is read, validated (exactly the rules of :class:`resnet_fpn.coco_format.CocoAnnotations`) and
packed once into a few dozen numpy arrays: file names in one byte buffer, boxes, labels and areas in flat
arrays with per-image offsets, polygon coordinates in one float64 array with per-polygon offsets, other
segmentations (RLE) as JSON bytes. A numpy array's data is never touched by reference counting, so the
workers' reads stay shared. Polygons become Python lists again only in ``__getitem__``, for one image.

Validation is vectorised (type sets, numpy range checks); when anything looks wrong, the per-entry rules of
``coco_format`` run over the entries in file order, so the error is the one ``CocoAnnotations`` raises,
naming the file and the first bad entry.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
from dataclasses import dataclass, fields
from itertools import chain
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..coco_format import (
    MAX_IMAGE_SIDE,
    MIN_POLYGON_COORDS,
    _check_annotation,
    _index_categories,
    _index_images,
    check_instances_json,
    load_coco_json,
    segmentation_problem,
)

__all__ = ["SEG_NONE", "SEG_POLYGONS", "SEG_JSON", "TrainingIndex", "build_training_index", "release_free_memory"]

PathLike = Union[str, "os.PathLike[str]"]

#: How a training annotation's segmentation is stored: none kept, polygons in ``coords``, JSON bytes (RLE).
SEG_NONE, SEG_POLYGONS, SEG_JSON = 0, 1, 2
# A box whose side is shorter than this after clipping is dropped (resnet_fpn.data.coco.MIN_BOX_SIDE).
_MIN_BOX_SIDE = 1.0
# Coordinates are floats in COCO files; an overshoot below this is rounding noise (data.coco._CLIP_TOLERANCE).
_CLIP_TOLERANCE = 1e-3
_NUMBER_TYPES = frozenset({int, float})


@dataclass(frozen=True)
class TrainingIndex:
    """The training targets of a COCO instances file, as numpy arrays (see the module docstring).

    Image ``i`` (file order) has annotations ``ann_offsets[i]:ann_offsets[i + 1]`` of the per-annotation
    arrays: the non-crowd annotations whose clipped box is at least 1 px wide and high, in file order.
    Annotation ``a`` has polygons ``poly_offsets[a]:poly_offsets[a + 1]``; polygon ``p`` has the coordinates
    ``coords[coord_offsets[p]:coord_offsets[p + 1]]`` (only when built with ``keep_segmentations``).

    Attributes:
        image_ids, widths, heights: per image (int64, int32, int32).
        name_bytes, name_offsets: the UTF-8 file names, concatenated, and their (I + 1) offsets.
        ann_offsets: (I + 1,) int64.
        boxes: (A, 4) float32 xyxy, clipped to the image. labels: (A,) int64 in 1..K. area: (A,) float32.
        seg_kind: (A,) int8, :data:`SEG_NONE` / :data:`SEG_POLYGONS` / :data:`SEG_JSON`.
        poly_offsets, coord_offsets, coords: the polygons (float64, the file's values exactly).
        json_offsets, json_bytes: the other segmentations as JSON text (RLE dicts).
        category_ids: (K,) int64 sorted (label ``i`` is ``category_ids[i - 1]``).
        num_annotations, num_crowd, num_clipped, num_degenerate: counts of the whole file / the rules.
        unsegmented_ids: ids of the non-crowd annotations without a decodable segmentation, file order.
    """

    image_ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    name_bytes: np.ndarray
    name_offsets: np.ndarray
    ann_offsets: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    area: np.ndarray
    seg_kind: np.ndarray
    poly_offsets: np.ndarray
    coord_offsets: np.ndarray
    coords: np.ndarray
    json_offsets: np.ndarray
    json_bytes: np.ndarray
    category_ids: np.ndarray
    category_names: Tuple[str, ...]
    num_annotations: int
    num_crowd: int
    num_clipped: int
    num_degenerate: int
    unsegmented_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (what a worker shares with its parent)."""
        return sum(getattr(self, f.name).nbytes for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray))

    def file_name(self, i: int) -> str:
        """The ``file_name`` of image ``i`` (file order)."""
        return bytes(self.name_bytes[self.name_offsets[i] : self.name_offsets[i + 1]]).decode("utf-8")

    def annotation_range(self, i: int) -> Tuple[int, int]:
        """``(start, stop)`` of image ``i``'s training annotations in the per-annotation arrays."""
        return int(self.ann_offsets[i]), int(self.ann_offsets[i + 1])

    def segmentation(self, a: int) -> Any:
        """Training annotation ``a``'s segmentation as the file wrote it (polygon lists or an RLE dict), or None."""
        kind = self.seg_kind[a]
        if kind == SEG_POLYGONS:
            p0, p1 = self.poly_offsets[a], self.poly_offsets[a + 1]
            offsets = self.coord_offsets[p0 : p1 + 1]
            return [self.coords[offsets[k] : offsets[k + 1]].tolist() for k in range(len(offsets) - 1)]
        if kind == SEG_JSON:
            return json.loads(bytes(self.json_bytes[self.json_offsets[a] : self.json_offsets[a + 1]]))
        return None


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc's ``malloc_trim``; elsewhere a no-op).

    Parsing a COCO file allocates millions of small objects; once they are freed, glibc keeps the pages of
    its heap unless asked, so the process (and every worker forked from it) would carry them.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    trim(0)


def build_training_index(path: PathLike, *, keep_segmentations: bool) -> TrainingIndex:
    """Read a COCO instances JSON, validate it as :class:`CocoAnnotations` does, and pack the training targets.

    Args:
        path: the JSON file.
        keep_segmentations: pack the segmentations of the training annotations (masks), after checking
            every present segmentation (crowd regions included) as ``CocoAnnotations.check_segmentations``.

    Returns:
        The :class:`TrainingIndex`; the parsed JSON is freed (and the heap trimmed) before returning.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON (file, line, column), a wrong top level, or the first invalid entry (file and
            entry named), the same message as ``CocoAnnotations``; with ``keep_segmentations``, the first
            malformed segmentation.
    """
    source = str(path)
    data = load_coco_json(path)
    try:
        return index_from_dict(data, source=source, keep_segmentations=keep_segmentations)
    finally:
        del data
        release_free_memory()


def index_from_dict(data: Mapping[str, Any], *, source: str, keep_segmentations: bool) -> TrainingIndex:
    """:func:`build_training_index` of a parsed instances dict (not modified).

    Args:
        data: the parsed JSON.
        source: how messages name where ``data`` came from.
        keep_segmentations: as :func:`build_training_index`.

    Returns:
        The :class:`TrainingIndex`.

    Raises:
        ValueError: as :func:`build_training_index`.
    """
    check_instances_json(data, source=source)
    images, categories, anns = data["images"], data["categories"], data["annotations"]

    image_ids, widths, heights, names = _images(images, source)
    category_names = _index_categories(categories, source)
    category_ids = np.array(sorted(category_names), dtype=np.int64)

    a = _annotations(anns, image_ids, category_ids, source)
    segs = [ann.get("segmentation") for ann in anns]
    packed = _Segmentations(segs, anns if keep_segmentations else None)
    if keep_segmentations:
        packed.check(anns, widths, heights, a["image_pos"], source)
    unsegmented = ~a["crowd"] & ~packed.present()

    # The training rules of resnet_fpn.data.coco: crowd left out, boxes clipped, < 1 px boxes dropped.
    pos = a["image_pos"]
    width, height = widths[pos].astype(np.float64), heights[pos].astype(np.float64)
    x1, y1, w, h = a["bbox"].T
    x2, y2 = x1 + w, y1 + h
    cx1, cy1 = np.clip(x1, 0.0, width), np.clip(y1, 0.0, height)
    cx2, cy2 = np.clip(x2, 0.0, width), np.clip(y2, 0.0, height)
    crowd = a["crowd"]
    overshoot = np.maximum.reduce([-x1, -y1, x1 + w - width, y1 + h - height])
    clipped = ~crowd & (w >= 0) & (h >= 0) & (overshoot > _CLIP_TOLERANCE)
    degenerate = ~crowd & ((cx2 - cx1 < _MIN_BOX_SIDE) | (cy2 - cy1 < _MIN_BOX_SIDE))
    kept = np.flatnonzero(~crowd & ~degenerate)
    kept = kept[np.argsort(pos[kept], kind="stable")]  # per image, file order within an image
    ann_offsets = np.searchsorted(pos[kept], np.arange(len(image_ids) + 1)).astype(np.int64)

    boxes = np.stack([cx1, cy1, cx2, cy2], axis=1)[kept].astype(np.float32)
    labels = (np.searchsorted(category_ids, a["category_id"][kept]) + 1).astype(np.int64)
    area = a["area"][kept].astype(np.float32)

    empty_i64 = np.zeros(1, dtype=np.int64)
    seg_kind = np.full(len(kept), SEG_NONE, dtype=np.int8)
    poly_offsets = coord_offsets = json_offsets = empty_i64
    coords = np.zeros(0, dtype=np.float64)
    json_bytes = np.zeros(0, dtype=np.uint8)
    if keep_segmentations:
        seg_kind, poly_offsets, coord_offsets, coords, json_offsets, json_bytes = packed.pack(kept, segs)
    encoded = [n.encode("utf-8") for n in names]
    name_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(n) for n in encoded], out=name_offsets[1:])
    return TrainingIndex(
        image_ids=image_ids,
        widths=widths,
        heights=heights,
        name_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
        name_offsets=name_offsets,
        ann_offsets=ann_offsets,
        boxes=boxes.reshape(-1, 4),
        labels=labels,
        area=area,
        seg_kind=seg_kind,
        poly_offsets=poly_offsets,
        coord_offsets=coord_offsets,
        coords=coords,
        json_offsets=json_offsets,
        json_bytes=json_bytes,
        category_ids=category_ids,
        category_names=tuple(category_names[c] for c in category_ids.tolist()),
        num_annotations=len(anns),
        num_crowd=int(crowd.sum()),
        num_clipped=int(clipped.sum()),
        num_degenerate=int(degenerate.sum()),
        unsegmented_ids=a["id"][unsegmented],
    )


# --------------------------------------------------------------------------------------------
# Vectorised validation; on a suspicion, coco_format's per-entry rules name the first offender
# --------------------------------------------------------------------------------------------
def _only(values: Sequence[Any], allowed: frozenset) -> bool:
    return set(map(type, values)) <= allowed


def _images(images: List[Any], source: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[str]]:
    ok = _only(images, frozenset({dict}))
    if ok:
        ids = [img.get("id") for img in images]
        names = [img.get("file_name") for img in images]
        sizes = [(img.get("width"), img.get("height")) for img in images]
        ok = _only(ids, frozenset({int})) and _only(names, frozenset({str})) and all(names)
        ok = ok and _only(list(chain.from_iterable(sizes)), _NUMBER_TYPES)
    if ok:
        try:
            id_array = np.array(ids, dtype=np.int64).reshape(-1)
            size_array = np.array(sizes, dtype=np.float64).reshape(-1, 2)
        except OverflowError:
            ok = False
    if ok:
        ok = bool(
            np.isfinite(size_array).all() and (size_array > 0).all() and (size_array == np.floor(size_array)).all()
            and (size_array <= MAX_IMAGE_SIDE).all() and len(np.unique(id_array)) == len(id_array)
        )
    if not ok:
        _index_images(images, source)  # raises the first problem, as CocoAnnotations does
        id_array = np.array([img["id"] for img in images], dtype=np.int64).reshape(-1)
        names = [str(img["file_name"]) for img in images]
        size_array = np.array([(img["width"], img["height"]) for img in images], dtype=np.float64).reshape(-1, 2)
    return id_array, size_array[:, 0].astype(np.int32), size_array[:, 1].astype(np.int32), names


def _annotations(anns: List[Any], image_ids: np.ndarray, category_ids: np.ndarray, source: str, *,
                 validated: bool = False) -> Dict[str, np.ndarray]:
    """The annotations' fields as arrays (``area``/``iscrowd`` filled as CocoAnnotations fills them).

    ``validated``: the entries passed coco_format's per-entry rules already (the type gates are skipped).
    """
    missing = object()
    ok = validated or _only(anns, frozenset({dict}))
    if ok:
        ids = [ann.get("id") for ann in anns]
        image_refs = [ann.get("image_id") for ann in anns]
        category_refs = [ann.get("category_id") for ann in anns]
        bboxes = [ann.get("bbox") for ann in anns]
        areas = [ann.get("area", missing) for ann in anns]
        crowds = [ann.get("iscrowd", 0) for ann in anns]
        ints = frozenset({int})
        ok = validated or (_only(ids, ints) and _only(image_refs, ints) and _only(category_refs, ints) and _only(crowds, ints)
              and _only(bboxes, frozenset({list})) and set(map(len, bboxes)) <= {4}
              and _only(list(chain.from_iterable(bboxes)), _NUMBER_TYPES)
              and _only(areas, _NUMBER_TYPES | {object}))
    if ok:
        try:
            out = {
                "id": np.array(ids, dtype=np.int64).reshape(-1),
                "image_id": np.array(image_refs, dtype=np.int64).reshape(-1),
                "category_id": np.array(category_refs, dtype=np.int64).reshape(-1),
                "bbox": np.array(bboxes, dtype=np.float64).reshape(-1, 4),
                "crowd_value": np.array(crowds, dtype=np.int64).reshape(-1),
            }
            has_area = np.array([x is not missing for x in areas], dtype=bool).reshape(-1)
            area = np.array([x if x is not missing else np.nan for x in areas], dtype=np.float64).reshape(-1)
        except OverflowError:
            ok = False
    if ok:
        sorter = np.argsort(image_ids, kind="stable")
        where = np.searchsorted(image_ids, out["image_id"], sorter=sorter)
        where = np.minimum(where, len(image_ids) - 1) if len(image_ids) else where
        ok = bool(
            np.isfinite(out["bbox"]).all() and np.isfinite(area[has_area]).all()
            and np.isin(out["crowd_value"], (0, 1)).all()
            and (len(image_ids) > 0 or not len(anns))
            and np.isin(out["category_id"], category_ids).all()
        )
        if ok and len(anns):
            out["image_pos"] = sorter[where]
            ok = bool((image_ids[out["image_pos"]] == out["image_id"]).all())
    if not ok:
        if validated:  # cannot happen: the per-entry rules accepted what the bulk checks refuse
            raise ValueError(f"{source}: annotations that pass the per-entry checks fail the bulk ones")
        # The per-entry rules, in file order: the first problem is raised exactly as CocoAnnotations raises it.
        known_images = dict.fromkeys(image_ids.tolist())
        known_categories = set(category_ids.tolist())
        checked = [_check_annotation(i, ann, known_images, known_categories, source) for i, ann in enumerate(anns)]
        return _annotations(checked, image_ids, category_ids, source, validated=True)
    # CocoAnnotations fills a missing area with the box area (negative sides as 0) when area or iscrowd is absent.
    w, h = out["bbox"][:, 2], out["bbox"][:, 3]
    area = np.where(has_area, area, np.maximum(w, 0.0) * np.maximum(h, 0.0))
    out["area"] = area
    out["crowd"] = out.pop("crowd_value").astype(bool)
    if not len(anns):
        out["image_pos"] = np.zeros(0, dtype=np.int64)
    return out


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(starts[i], stops[i])`` over i, without a Python loop."""
    lengths = stops - starts
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - ends + lengths, lengths) + np.arange(total, dtype=np.int64)


def _offsets(lengths: Any, count: int) -> np.ndarray:
    out = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.fromiter(lengths, dtype=np.int64, count=count), out=out[1:])
    return out


class _Segmentations:
    """Every annotation's ``segmentation``: polygon lengths in bulk, coordinates when they are to be kept.

    Args:
        segs: ``ann.get("segmentation")`` of every annotation, file order.
        anns: the annotations, when the coordinates are to be checked and packed (``keep_segmentations``).
    """

    def __init__(self, segs: List[Any], anns: Optional[List[Any]]) -> None:
        self.segs = segs
        self.is_list = np.fromiter((type(s) is list for s in segs), dtype=bool, count=len(segs))
        lists = [s for s in segs if type(s) is list]
        self.poly_offsets = _offsets(map(len, lists), len(lists))  # per list segmentation
        self.polygons = list(chain.from_iterable(lists))
        self.well_typed = _only(self.polygons, frozenset({list}))
        self.poly_lengths = (np.fromiter(map(len, self.polygons), dtype=np.int64, count=len(self.polygons))
                             if self.well_typed else None)
        self.coords: Optional[np.ndarray] = None
        if anns is not None and self.well_typed:
            flat = list(chain.from_iterable(self.polygons))
            if _only(flat, _NUMBER_TYPES):
                try:
                    self.coords = np.array(flat, dtype=np.float64)
                except OverflowError:
                    self.coords = None
            del flat

    def present(self) -> np.ndarray:
        """``coco_format._segmentation_present`` of every segmentation, as a bool array."""
        present = np.zeros(len(self.segs), dtype=bool)
        if self.poly_lengths is not None:
            lists = np.flatnonzero(self.is_list)
            starts, stops = self.poly_offsets[:-1], self.poly_offsets[1:]
            long_enough = np.concatenate([[0], np.cumsum(self.poly_lengths >= MIN_POLYGON_COORDS)])
            present[lists] = long_enough[stops] > long_enough[starts]
        else:
            for i in np.flatnonzero(self.is_list).tolist():
                present[i] = any(isinstance(poly, list) and len(poly) >= MIN_POLYGON_COORDS for poly in self.segs[i])
        for i in np.flatnonzero(~self.is_list).tolist():
            seg = self.segs[i]
            if isinstance(seg, dict):
                present[i] = "counts" in seg and "size" in seg
            elif isinstance(seg, list):  # a list subclass: not from JSON, checked one by one
                present[i] = any(isinstance(poly, list) and len(poly) >= MIN_POLYGON_COORDS for poly in seg)
        return present

    def check(self, anns: List[Any], widths: np.ndarray, heights: np.ndarray, image_pos: np.ndarray,
              source: str) -> None:
        """``CocoAnnotations.check_segmentations``: polygons and RLE counts in bulk; the exact rule on a doubt.

        Raises:
            ValueError: the first malformed segmentation in file order (``"<source>: annotation id N ..."``).
        """
        ok = (self.coords is not None and bool(np.isfinite(self.coords).all())
              and not (self.poly_lengths % 2).any())
        others = np.flatnonzero(~self.is_list).tolist()
        if ok:
            ok = self._rles_ok([i for i in others if "segmentation" in anns[i]], widths, heights, image_pos)
        if ok:
            return
        for i, ann in enumerate(anns):  # the exact rule and message, first offender in file order
            if "segmentation" in ann:
                k = image_pos[i]
                problem = segmentation_problem(ann["segmentation"], height=int(heights[k]), width=int(widths[k]))
                if problem:
                    raise ValueError(f"{source}: annotation id {ann['id']} {problem}")

    def _rles_ok(self, indices: List[int], widths: np.ndarray, heights: np.ndarray, image_pos: np.ndarray) -> bool:
        """Whether every RLE among ``indices`` passes :func:`segmentation_problem` (checked in bulk)."""
        ints = frozenset({int})
        for i in indices:
            seg = self.segs[i]
            if type(seg) is not dict:
                return False
            size, counts = seg.get("size"), seg.get("counts")
            k = image_pos[i]
            height, width = int(heights[k]), int(widths[k])
            if type(size) is not list or len(size) != 2 or not _only(size, ints) or size != [height, width]:
                return False
            if type(counts) is list:
                if not _only(counts, ints):
                    return False
                try:
                    array = np.array(counts, dtype=np.int64)
                except OverflowError:
                    return False
                if (array < 0).any() or int(array.sum()) != height * width:
                    return False
            elif not isinstance(counts, (str, bytes)) or not counts:
                return False
        return True

    def pack(self, kept: np.ndarray, segs: List[Any]) -> Tuple[np.ndarray, ...]:
        """The kept annotations' segmentations: polygons as offsets into coordinates, the rest as JSON bytes."""
        assert self.coords is not None and self.poly_lengths is not None  # check() passed
        kinds = np.where(self.is_list[kept], SEG_POLYGONS,
                         np.where([segs[k] is None for k in kept.tolist()], SEG_NONE, SEG_JSON)).astype(np.int8)
        # list segmentation j of the file: polygons poly_offsets[j]:poly_offsets[j + 1]
        list_number = np.cumsum(self.is_list) - 1
        kept_lists = list_number[kept[self.is_list[kept]]]
        p_start, p_stop = self.poly_offsets[kept_lists], self.poly_offsets[kept_lists + 1]
        polys_per_ann = np.zeros(len(kept), dtype=np.int64)
        polys_per_ann[self.is_list[kept]] = p_stop - p_start
        poly_offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(polys_per_ann, out=poly_offsets[1:])
        polygons = _ranges(p_start, p_stop)
        all_coord_offsets = np.zeros(len(self.poly_lengths) + 1, dtype=np.int64)
        np.cumsum(self.poly_lengths, out=all_coord_offsets[1:])
        c_start, c_stop = all_coord_offsets[polygons], all_coord_offsets[polygons + 1]
        coord_offsets = np.zeros(len(polygons) + 1, dtype=np.int64)
        np.cumsum(c_stop - c_start, out=coord_offsets[1:])
        coords = self.coords[_ranges(c_start, c_stop)]
        texts = [json.dumps(segs[k]).encode("utf-8") if kind == SEG_JSON else b""
                 for k, kind in zip(kept.tolist(), kinds.tolist())]
        json_offsets = _offsets(map(len, texts), len(texts))
        json_bytes = np.frombuffer(b"".join(texts), dtype=np.uint8).copy()
        return kinds, poly_offsets, coord_offsets, coords, json_offsets, json_bytes
