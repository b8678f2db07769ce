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

Validation is vectorised (type sets and C-level sums over whole columns, numpy range checks; no Python code
per annotation or coordinate); when anything looks wrong, the per-entry rules of ``coco_format`` run over the
entries in file order, so the error is the one ``CocoAnnotations`` raises, naming the file and the first bad
entry. The cyclic garbage collector is off while a file is read and packed (see :func:`build_training_index`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import json
import os
from dataclasses import dataclass, fields
from itertools import chain, compress, repeat
from operator import is_, itemgetter
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

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

__all__ = ["SEG_NONE", "SEG_POLYGONS", "SEG_JSON", "TrainingIndex", "build_training_index", "fix_mmap_threshold",
           "release_free_memory", "trim_heap"]

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
    trim_heap()


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's ``malloc_trim``, looked up once; None elsewhere (musl, macOS, Windows).

    First among the symbols already loaded (``dlopen(NULL)``: libc is one of them on Linux), since
    ``find_library`` runs ``ldconfig`` in a subprocess (a fork of the whole process, milliseconds).
    """
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        pass
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


#: glibc's ``mallopt`` parameter number of the mmap threshold (``M_MMAP_THRESHOLD`` in malloc.h).
_M_MMAP_THRESHOLD = -3
#: The threshold a loader worker keeps: glibc's initial value, 128 KiB.
WORKER_MMAP_THRESHOLD = 128 * 1024


@functools.lru_cache(maxsize=None)
def _mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's ``mallopt``, looked up once among the loaded symbols; None elsewhere (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return None


def fix_mmap_threshold(threshold: int = WORKER_MMAP_THRESHOLD) -> bool:
    """Make glibc map every allocation above ``threshold`` bytes on its own and unmap it when freed.

    glibc's mmap threshold is dynamic: it starts at 128 KiB, and each time a block that was mapped on its own
    is freed, the threshold rises to that block's size (up to 32 MiB). After a data loader worker's first
    items, the buffers of an item (the decoded image, its float32 copy, the masks: a few MB each) are then
    carved out of the heap, which gives freed memory back to the system only from its top: the worker keeps
    its high-water mark of freed buffers, a few dozen MB that grow with the largest images seen. Setting the
    threshold (``mallopt(M_MMAP_THRESHOLD)``) turns the adjustment off (mallopt(3)); small objects stay on
    the heap as before.

    Args:
        threshold: bytes; glibc's initial value by default.

    Returns:
        Whether it was set (False without glibc).
    """
    mallopt = _mallopt()
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (no garbage collection: see :func:`build_training_index`)."""
    trim = _malloc_trim()
    if trim is not None:
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
    # A JSON parse makes millions of containers and not one reference cycle; with the cyclic collector on, its
    # passes walk them again and again while they are made and while they are packed (a third of the parse of a
    # 10k-image file), freeing nothing. It is off for the build: the parse is freed by reference counting when
    # ``data`` goes, so no collection is needed after it either (a full one walks every object of the process).
    collecting = gc.isenabled()
    gc.disable()
    try:
        data = load_coco_json(path)
        try:
            return index_from_dict(data, source=source, keep_segmentations=keep_segmentations)
        finally:
            del data
    finally:
        if collecting:
            gc.enable()
        trim_heap()


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
    packed = _Segmentations(_segmentation_column(anns))
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
    if keep_segmentations:  # checks every present segmentation first (CocoAnnotations.check_segmentations)
        seg_kind, poly_offsets, coord_offsets, coords, json_offsets, json_bytes = packed.check_and_pack(
            anns, kept, widths, heights, pos, source)
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
def _segmentation_column(anns: List[Any]) -> List[Any]:
    """``[ann.get("segmentation") for ann in anns]``, by a C-level map when every entry has one."""
    try:
        return list(map(itemgetter("segmentation"), anns))
    except (KeyError, TypeError, IndexError):
        return [ann.get("segmentation") for ann in anns]


def _is_each(values: List[Any], what: Any) -> np.ndarray:
    """``[v is what for v in values]`` as a bool array, without Python code per value."""
    return np.fromiter(map(is_, values, repeat(what)), dtype=bool, count=len(values))


def _only(values: Iterable[Any], allowed: frozenset) -> bool:
    """Whether every value's exact type is in ``allowed`` (bool is not int, a dict subclass is not dict)."""
    return set(map(type, values)) <= allowed


def _distinct(values: np.ndarray) -> bool:
    """Whether no value repeats (a sort; np.unique would import numpy.ma on first use, ~15 ms a process)."""
    ordered = np.sort(values)
    return bool((ordered[1:] != ordered[:-1]).all())


def _columns(entries: List[Any], keys: Sequence[str]) -> Optional[List[List[Any]]]:
    """``[entry[key] for entry in entries]`` of each key (C-level maps, no per-entry Python code), or None when
    an entry lacks a key (or is not a mapping): the caller's ``.get`` path then handles it."""
    try:
        return [list(map(itemgetter(key), entries)) for key in keys]
    except (KeyError, TypeError, IndexError):
        return None


def _int64(values: List[Any], *, exact: bool) -> np.ndarray:
    """``np.array(values, dtype=np.int64)`` (OverflowError beyond int64); ``exact``: of exact ints, faster."""
    if exact:
        return np.fromiter(values, dtype=np.int64, count=len(values))
    return np.array(values, dtype=np.int64).reshape(-1)


_DICT, _INT, _STR, _LIST = frozenset({dict}), frozenset({int}), frozenset({str}), frozenset({list})
_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


def _images(images: List[Any], source: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[str]]:
    ok = _only(images, _DICT)
    if ok:
        columns = _columns(images, _IMAGE_KEYS)
        ok = columns is not None
    if ok:
        ids, names, width_values, height_values = columns  # type: ignore[misc]
        ok = (_only(ids, _INT) and _only(names, _STR) and all(names)
              and _only(width_values, _NUMBER_TYPES) and _only(height_values, _NUMBER_TYPES))
    if ok:
        try:
            id_array = np.array(ids, dtype=np.int64).reshape(-1)
            size_array = np.stack([np.array(width_values, dtype=np.float64).reshape(-1),
                                   np.array(height_values, dtype=np.float64).reshape(-1)], axis=1)
        except OverflowError:
            ok = False
    if ok:
        ok = bool(
            np.isfinite(size_array).all() and (size_array > 0).all() and (size_array == np.floor(size_array)).all()
            and (size_array <= MAX_IMAGE_SIDE).all() and _distinct(id_array)
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
    ok = validated or _only(anns, _DICT)
    if ok:
        columns = _columns(anns, _ANNOTATION_KEYS)
        if columns is not None:  # every entry has every key: one C-level map per field
            ids, image_refs, category_refs, bboxes, areas, crowds = columns
            area_types = _NUMBER_TYPES
        else:  # a key is missing somewhere: area and iscrowd may be left out; the rest is refused below
            ids = [ann.get("id") for ann in anns]
            image_refs = [ann.get("image_id") for ann in anns]
            category_refs = [ann.get("category_id") for ann in anns]
            bboxes = [ann.get("bbox") for ann in anns]
            areas = [ann.get("area", missing) for ann in anns]
            crowds = [ann.get("iscrowd", 0) for ann in anns]
            area_types = _NUMBER_TYPES | {object}
        ok = validated or (_only(ids, _INT) and _only(image_refs, _INT) and _only(category_refs, _INT)
                           and _only(crowds, _INT) and _only(bboxes, _LIST) and set(map(len, bboxes)) <= {4}
                           and _only(areas, area_types))
    if ok:
        try:
            # Lists of 4 (checked above, or by the per-entry rules): one flat conversion. Unvalidated, the values
            # must be ints or floats (_real_values; None otherwise, and the per-entry rules decide).
            flat_boxes = (np.fromiter(chain.from_iterable(bboxes), dtype=np.float64, count=4 * len(bboxes))
                          if validated else _real_values(bboxes, np.full(len(bboxes), 4, dtype=np.int64)))
            ok = flat_boxes is not None
        except OverflowError:
            ok = False
    if ok:
        try:
            out = {
                "id": _int64(ids, exact=not validated),
                "image_id": _int64(image_refs, exact=not validated),
                "category_id": _int64(category_refs, exact=not validated),
                "bbox": flat_boxes.reshape(-1, 4),
                "crowd_value": _int64(crowds, exact=not validated),
            }
            if columns is not None:
                has_area = np.ones(len(anns), dtype=bool)
                area = np.array(areas, dtype=np.float64).reshape(-1)
            else:
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


def _real_values(rows: List[list], lengths: np.ndarray) -> Optional[np.ndarray]:
    """The values of ``rows`` (lists), flat as float64, or None unless every one is an int or a float (not a bool).

    What ``_only(chain.from_iterable(rows), {int, float})`` and a conversion would give, at about half the cost
    for the millions of polygon coordinates of a COCO file: ``sum`` (C loops) raises on a str, None, a list or a
    dict, and ends as an int or a float only when no other number type took part (Decimal, numpy's numbers and
    the like give their own type or raise); a bool is 0 or 1 as a number, so only the values equal to 0 or 1 are
    looked at one by one (all of them exactly when there are many).
    """
    try:
        if type(sum(map(sum, rows))) not in _NUMBER_TYPES:
            return None
        values = np.fromiter(chain.from_iterable(rows), dtype=np.float64, count=int(lengths.sum()))
    except (TypeError, ValueError, OverflowError):
        return None
    suspects = np.flatnonzero((values == 0.0) | (values == 1.0))
    if len(suspects) > len(values) // 16:
        return values if _only(chain.from_iterable(rows), _NUMBER_TYPES) else None
    if len(suspects):
        starts = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        row = np.searchsorted(starts, suspects, side="right") - 1
        if not _only([rows[r][k] for r, k in zip(row.tolist(), (suspects - starts[row]).tolist())], _NUMBER_TYPES):
            return None
    return values


class _Segmentations:
    """Every annotation's ``segmentation``: polygon lengths in bulk; checked and packed once the kept ones are known.

    Args:
        segs: ``ann.get("segmentation")`` of every annotation, file order.
    """

    def __init__(self, segs: List[Any]) -> None:
        self.segs = segs
        self.is_list = _is_each(list(map(type, segs)), list)
        lists = list(compress(segs, self.is_list.tolist()))
        self.poly_offsets = _offsets(map(len, lists), len(lists))  # per list segmentation
        self.polygons = list(chain.from_iterable(lists))
        self.poly_lengths = (np.fromiter(map(len, self.polygons), dtype=np.int64, count=len(self.polygons))
                             if _only(self.polygons, _LIST) else None)

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

    def check_and_pack(self, anns: List[Any], kept: np.ndarray, widths: np.ndarray, heights: np.ndarray,
                       image_pos: np.ndarray, source: str) -> Tuple[np.ndarray, ...]:
        """``CocoAnnotations.check_segmentations``, then the kept annotations' segmentations packed.

        Every present segmentation is checked (crowd regions and dropped boxes included): polygons and RLE counts
        in bulk, the exact rule of ``coco_format`` on a doubt. The kept annotations' polygons are converted
        straight in the order of ``kept`` (no file-order copy to gather from); the other segmentations (RLE)
        are stored as JSON bytes.

        Args:
            anns: the annotations, file order.
            kept: the training annotations, in index order.
            widths, heights: per image. image_pos: each annotation's image position.
            source: how messages name the file.

        Returns:
            ``(seg_kind, poly_offsets, coord_offsets, coords, json_offsets, json_bytes)`` of the kept annotations.

        Raises:
            ValueError: the first malformed segmentation in file order (``"<source>: annotation id N ..."``).
        """
        kept_is_list = self.is_list[kept]
        list_number = np.cumsum(self.is_list) - 1  # list segmentation j: polygons poly_offsets[j]:poly_offsets[j + 1]
        kept_lists = list_number[kept[kept_is_list]]
        p_start, p_stop = self.poly_offsets[kept_lists], self.poly_offsets[kept_lists + 1]
        order = _ranges(p_start, p_stop)  # the kept annotations' polygons, in index order
        rest = np.ones(len(self.polygons), dtype=bool)
        rest[order] = False
        rest = np.flatnonzero(rest)  # the other polygons (crowd regions, dropped boxes): checked, not kept
        take = self.polygons.__getitem__
        kept_polygons = list(map(take, order.tolist()))
        coords: Optional[np.ndarray] = None
        ok = False
        if self.poly_lengths is not None and not (self.poly_lengths % 2).any():
            coords = _real_values(kept_polygons, self.poly_lengths[order])
            others = _real_values(list(map(take, rest.tolist())), self.poly_lengths[rest])
            ok = (coords is not None and others is not None and bool(np.isfinite(coords).all())
                  and bool(np.isfinite(others).all()))
        if ok:
            others_present = np.flatnonzero(~self.is_list).tolist()
            ok = self._rles_ok([i for i in others_present if "segmentation" in anns[i]], widths, heights, image_pos)
        if not ok:
            for i, ann in enumerate(anns):  # the exact rule and message, first offender in file order
                if "segmentation" in ann:
                    k = image_pos[i]
                    problem = segmentation_problem(ann["segmentation"], height=int(heights[k]), width=int(widths[k]))
                    if problem:
                        raise ValueError(f"{source}: annotation id {ann['id']} {problem}")
            # Valid by the rules, though not of JSON's exact types (an in-memory dict: numpy numbers, list
            # subclasses): the polygons are lists of real numbers, converted as they are.
            kept_lengths = np.fromiter(map(len, kept_polygons), dtype=np.int64, count=len(kept_polygons))
            coords = np.fromiter(chain.from_iterable(kept_polygons), dtype=np.float64, count=int(kept_lengths.sum()))
        else:
            kept_lengths = self.poly_lengths[order]  # type: ignore[index]
        assert coords is not None

        kinds = np.where(kept_is_list, SEG_POLYGONS,
                         np.where(_is_each(list(map(self.segs.__getitem__, kept.tolist())), None), SEG_NONE,
                                  SEG_JSON)).astype(np.int8)
        polys_per_ann = np.zeros(len(kept), dtype=np.int64)
        polys_per_ann[kept_is_list] = p_stop - p_start
        poly_offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(polys_per_ann, out=poly_offsets[1:])
        coord_offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(kept_lengths, out=coord_offsets[1:])
        json_kept = np.flatnonzero(kinds == SEG_JSON)
        texts = [b""] * len(kept)
        for a, k in zip(json_kept.tolist(), kept[json_kept].tolist()):
            texts[a] = json.dumps(self.segs[k]).encode("utf-8")
        json_offsets = _offsets(map(len, texts), len(texts))
        json_bytes = np.frombuffer(b"".join(texts), dtype=np.uint8).copy()
        return kinds, poly_offsets, coord_offsets, coords, json_offsets, json_bytes

    def _rles_ok(self, indices: List[int], widths: np.ndarray, heights: np.ndarray, image_pos: np.ndarray) -> bool:
        """Whether every RLE among ``indices`` passes :func:`segmentation_problem` (checked in bulk)."""
        for i in indices:
            seg = self.segs[i]
            if type(seg) is not dict:
                return False
            size, counts = seg.get("size"), seg.get("counts")
            k = image_pos[i]
            height, width = int(heights[k]), int(widths[k])
            if type(size) is not list or len(size) != 2 or not _only(size, _INT) or size != [height, width]:
                return False
            if type(counts) is list:  # Python's min and sum over exact ints: no array per region
                if not counts or not _only(counts, _INT) or min(counts) < 0 or sum(counts) != height * width:
                    return False
            elif not isinstance(counts, (str, bytes)) or not counts:
                return False
        return True
