"""COCO evaluation whose numbers are pycocotools' numbers.

Two entry points share one core:

* :class:`COCOEvaluator` is fed torchvision-style predictions batch by batch (the validation loop),
  converts them to COCO results as they arrive (xywh boxes, category ids, RLE masks), gathers them
  across processes under ``torch.distributed`` and scores them on rank 0.
* :func:`evaluate_results` / :func:`score_results` score COCO results (a list, a JSON file or several
  JSON files) against a ground-truth file, e.g. what a detector wrote to disk.

Both run pycocotools' ``COCO.loadRes`` / ``COCOeval.evaluate`` / ``accumulate`` / ``summarize`` (or the
same steps of faster-coco-eval, which gives the same statistics), after the inputs are checked by
``resnet_fpn.coco_format`` (ground truth: ``CocoAnnotations``; results: ``load_results``/``check_results``),
so that a mistake is reported as a ``ValueError`` naming the bad value instead of an assertion or
``KeyError`` deep inside pycocotools.

Nothing is scored as something else without a word: :func:`match_categories` refuses a detector whose
category names differ from the ground truth's for the same ids; results naming other files than the ground
truth (``file_name``) are refused by ``check_results``; results covering only part of the ground-truth
images, a streaming evaluation of part of them, and ground-truth boxes with no area are reported by a
``UserWarning`` with the count and the ids.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import numbers
import operator
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from ..coco_format import (
    MASK_THRESHOLD,
    Category,
    CocoAnnotations,
    ResultSources,
    check_results,
    encode_masks_with_boxes,
    join_some,
    list_some,
    load_results,
    xyxy_to_xywh,
)

__all__ = [
    "BACKENDS",
    "CATEGORY_MATCHING",
    "IOU_TYPES",
    "STAT_NAMES",
    "COCOEvalResult",
    "COCOEvaluator",
    "evaluate_results",
    "match_categories",
    "score_results",
]

#: The 12 numbers of ``COCOeval.summarize()``, in pycocotools' order (``COCOeval.stats[0:12]``).
STAT_NAMES: Tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
#: Supported ``iouType`` values of COCOeval.
IOU_TYPES: Tuple[str, ...] = ("bbox", "segm")
#: Supported evaluation backends: the reference implementation and its C++ port.
BACKENDS: Tuple[str, ...] = ("pycocotools", "faster_coco_eval")
#: How :func:`match_categories` pairs a detector's categories with the ground truth's.
CATEGORY_MATCHING: Tuple[str, ...] = ("id", "name")

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------
def _check_iou_types(iou_types: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    try:
        requested = list(iou_types)
    except TypeError:
        raise TypeError(f"iou_types must be a sequence drawn from {IOU_TYPES}, got {iou_types!r}") from None
    unknown = [t for t in requested if t not in IOU_TYPES]
    if unknown or not requested:
        raise ValueError(f"iou_types must be a non-empty sequence drawn from {IOU_TYPES}, got {tuple(requested)!r}")
    return tuple(dict.fromkeys(requested))  # drop repeats, keep the caller's order


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


# --------------------------------------------------------------------------------------------
# A detector's categories against the ground truth's
# --------------------------------------------------------------------------------------------
def match_categories(
    categories: Sequence[Category],
    gt: Union[CocoAnnotations, Mapping[int, str]],
    *,
    by: str = "id",
    source: str = "the detector",
    gt_source: Optional[str] = None,
) -> Dict[int, int]:
    """Pair a detector's training labels with the ground truth's category ids, or refuse.

    COCOeval compares category ids only: a detector trained on fruits (1 date, 2 fig, 3 hazelnut) would be
    scored against COCO's 1 person, 2 bicycle, 3 car without a word. This is the check that prevents it.
    Names are compared exactly (case and spaces count: ``"Person"`` is not ``"person"``).

    Args:
        categories: the detector's ``Category(label, id, name)`` for every label it predicts (a checkpoint's
            ``categories``).
        gt: the ground truth (a :class:`resnet_fpn.coco_format.CocoAnnotations`) or its category id -> name.
        by: ``"id"``: each label scores as its own category id, whose name must be the ground truth's name for
            that id. ``"name"``: each label scores as the ground-truth category of the same name, whatever the
            ids (a detector trained on a file that numbers the same classes differently).
        source: how messages name the detector (its checkpoint path).
        gt_source: how messages name the ground truth (default: ``gt.source``, or "the ground truth").

    Returns:
        training label -> ground-truth category id, for every label of `categories`.

    Raises:
        ValueError: `by` is not ``"id"`` or ``"name"``; with ``"id"``, ids absent from the ground truth or
            ids whose names differ (every differing ``id: 'detector name' vs 'ground-truth name'`` pair is
            listed, up to five and the count); with ``"name"``, detector names the ground truth lacks (listed),
            or a needed name that the ground truth gives to several ids.
    """
    if by not in CATEGORY_MATCHING:
        raise ValueError(f"category matching must be one of {CATEGORY_MATCHING}, got {by!r}")
    if isinstance(gt, CocoAnnotations):
        gt_names: Dict[int, str] = gt.category_name_of
        gt_source = gt_source or gt.source
    else:
        gt_names = {int(k): str(v) for k, v in gt.items()}
    gt_source = gt_source or "the ground truth"
    categories = list(categories)
    if by == "id":
        missing = sorted({c.id for c in categories if c.id not in gt_names})
        differ = sorted({(c.id, c.name) for c in categories if c.id in gt_names and c.name != gt_names[c.id]})
        if not missing and not differ:
            return {c.label: c.id for c in categories}
        problems = []
        if differ:
            pairs = [f"{i}: {name!r} vs {gt_names[i]!r}" for i, name in differ]
            problems.append(f"the same category ids name other categories (id: detector vs ground truth): "
                            f"{join_some(pairs)}")
        if missing:
            problems.append(f"category ids {list_some(missing)} are not in the ground truth")
        gt_ids_of = _ids_by_name(gt_names)
        if all(len(gt_ids_of.get(c.name, ())) == 1 for c in categories):
            hint = ("; every one of its category names is in the ground truth: map_categories='name' "
                    "(resnet-fpn eval/infer --map-categories name) scores each label as the category of its name")
        else:
            hint = "; it was trained on another category table: evaluate it on data labelled with its categories"
        raise ValueError(
            f"{source} does not predict the categories of {gt_source}, compared by id (names must be equal): "
            + "; ".join(problems) + hint
        )
    gt_ids_of = _ids_by_name(gt_names)
    absent = sorted({c.name for c in categories if c.name not in gt_ids_of})
    if absent:
        raise ValueError(
            f"{source} predicts categories that {gt_source} does not name (names compared exactly): "
            f"{list_some(absent)}; its category names are {list_some(sorted(gt_ids_of))}"
        )
    ambiguous = sorted({c.name for c in categories if len(gt_ids_of[c.name]) > 1})
    if ambiguous:
        raise ValueError(
            f"{gt_source} gives one name to several category ids, so matching by name is ambiguous: "
            + "; ".join(f"{name!r}: ids {gt_ids_of[name]}" for name in ambiguous[:5])
        )
    return {c.label: gt_ids_of[c.name][0] for c in categories}


def _ids_by_name(names: Mapping[int, str]) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = {}
    for cat_id in sorted(names):
        out.setdefault(names[cat_id], []).append(cat_id)
    return out


# --------------------------------------------------------------------------------------------
# Backends: the same four steps on pycocotools or faster-coco-eval
# --------------------------------------------------------------------------------------------
class _Backend:
    """Adapter giving both libraries one interface; everything else in this module is shared."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            self._coco_cls, self._eval_cls = COCO, COCOeval
        else:
            try:
                import faster_coco_eval
            except ImportError as exc:
                raise ImportError(
                    "backend='faster_coco_eval' needs the optional faster-coco-eval package: "
                    "pip install faster-coco-eval  (or pip install 'resnet_fpn[fast-eval]'); "
                    "backend='pycocotools' needs nothing extra"
                ) from exc
            self._coco_cls, self._eval_cls = faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster

    def coco_from_dataset(self, dataset: Dict[str, Any]) -> Any:
        coco = self._coco_cls()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def load_res(self, coco_gt: Any, detections: "_Detections", iou_type: str) -> Any:
        """What ``coco_gt.loadRes(entries)`` builds, made from the columns in bulk.

        ``loadRes`` walks one dict per detection in Python to add ``area``, ``id`` and ``iscrowd`` (and, for
        segm, ``bbox``); here they come from numpy (box areas ``w * h`` in float64, as ``bb[2] * bb[3]``) and
        one ``mask.area`` / ``mask.toBbox`` call over all RLEs, giving the same annotations and so the same
        statistics (tests/test_evaluation.py checks them against pycocotools' own numbers). Like ``loadRes``,
        the results object has the ground truth's images and a copy of its categories.
        """
        anns: List[Dict[str, Any]] = []
        n = len(detections)
        if n:
            image_ids, category_ids = detections.image_ids.tolist(), detections.category_ids.tolist()
            scores, ann_ids = detections.scores.tolist(), range(1, n + 1)
            if iou_type == "bbox":
                boxes = detections.boxes
                assert boxes is not None
                areas = (boxes[:, 2] * boxes[:, 3]).tolist()
                anns = [
                    {"image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "id": k, "iscrowd": 0}
                    for i, c, b, s, a, k in zip(image_ids, category_ids, boxes.tolist(), scores, areas, ann_ids)
                ]
            else:
                from pycocotools import mask as mask_util

                rles = [dict(rle) for rle in detections.rles or []]
                # No 'bbox' from the detections for segm: the box of the mask, as loadRes computes it when
                # absent (a detection's own box would change its area range; detectron2 drops it too).
                if detections.mask_areas is not None and detections.mask_boxes is not None:
                    # Known since the masks were encoded (encode_masks_with_boxes): what mask.area and
                    # mask.toBbox give, without decoding every RLE again.
                    areas = detections.mask_areas.tolist()
                    bboxes = detections.mask_boxes.tolist()
                else:
                    # pycocotools' mask.area fails on a list of 256 RLEs or more (it sizes a count as uint8):
                    # chunks of 255.
                    chunks = [rles[i : i + 255] for i in range(0, len(rles), 255)]
                    areas = np.concatenate([mask_util.area(c) for c in chunks]).tolist()
                    bboxes = np.concatenate([mask_util.toBbox(c) for c in chunks]).reshape(-1, 4).tolist()
                anns = [
                    {"image_id": i, "category_id": c, "segmentation": r, "score": s, "area": a, "bbox": b, "id": k,
                     "iscrowd": 0}
                    for i, c, r, s, a, b, k in zip(image_ids, category_ids, rles, scores, areas, bboxes, ann_ids)
                ]
        # pycocotools' loadRes indexes anns[0] and crashes on an empty list; an empty results object with the
        # ground truth's images and categories is what it would have built.
        return self.coco_from_dataset({
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset["categories"]),
            "annotations": anns,
        })

    def evaluate(
        self, coco_gt: Any, coco_dt: Any, iou_type: str, image_ids: Sequence[int]
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Run evaluate/accumulate/summarize; return (the 12 stats, eval['precision'] [T,R,K,A,M])."""
        with contextlib.redirect_stdout(io.StringIO()):
            if self.name == "pycocotools":
                coco_eval = self._eval_cls(coco_gt, coco_dt, iouType=iou_type)
            else:
                # faster-coco-eval logs its summary through print_function (logger.info by default).
                coco_eval = self._eval_cls(coco_gt, coco_dt, iouType=iou_type, print_function=_silent)
            coco_eval.params.imgIds = sorted(image_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = np.asarray(coco_eval.stats[: len(STAT_NAMES)], dtype=np.float64)
        return stats, np.asarray(coco_eval.eval["precision"], dtype=np.float64)


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while scoring builds its millions of short-lived dicts and lists.

    Each of CPython's full collections walks every live container (the ground truth, the results, the
    per-image evaluations), so collections triggered by allocation make building them quadratic-ish; the
    objects hold no reference cycles that must go before the end. The collector runs again afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _get_backend(name: str) -> _Backend:
    return _Backend(_check_backend(name))


# --------------------------------------------------------------------------------------------
# Inputs: ground truth and results, checked by coco_format
# --------------------------------------------------------------------------------------------
def _load_ground_truth(coco_gt: Any, iou_types: Sequence[str]) -> CocoAnnotations:
    """The validated ground truth of a path, a ``CocoAnnotations`` or a pycocotools COCO object."""
    if isinstance(coco_gt, CocoAnnotations):
        gt = coco_gt
    elif _is_pathlike(coco_gt):
        gt = CocoAnnotations.from_file(coco_gt, kind="ground-truth annotation file")
    elif isinstance(getattr(coco_gt, "dataset", None), dict) and hasattr(coco_gt, "loadRes"):
        gt = CocoAnnotations(coco_gt.dataset, source="the given COCO object")
    else:
        raise TypeError(
            "coco_gt must be a pycocotools COCO object or a path to a COCO instances JSON file (or a "
            f"resnet_fpn.coco_format.CocoAnnotations), got {type(coco_gt).__name__}"
        )
    if "segm" in iou_types:
        # Crowd regions too: COCOeval turns every ground-truth annotation into a mask.
        bad = [ann["id"] for ann in gt.annotations if "segmentation" not in ann]
        if bad:
            raise ValueError(f"{gt.source}: annotations {list_some(bad)} have no 'segmentation', which segm evaluation reads")
        gt.check_segmentations()
    return gt


def _category_keys(gt: CocoAnnotations) -> List[str]:
    """The per-category AP keys: the names, with the id added to a name that is not unique."""
    names = gt.category_names
    # A repeated name would silently overwrite another class's AP.
    return [f"{n} (id {c})" if names.count(n) > 1 else n for n, c in zip(names, gt.category_ids)]


def _is_pathlike(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _dataset_for_eval(gt: CocoAnnotations) -> Dict[str, Any]:
    """The ground truth as a dict whose annotation dicts COCOeval may change without touching anyone's.

    pycocotools' segm evaluation replaces each ground-truth polygon by its RLE in place and both libraries
    add an ``ignore`` flag; a training data set or a caller's COCO object sharing those dicts must not see
    that. Only top-level keys are replaced, so copying each annotation dict (not deep) is enough.
    """
    dataset = gt.to_dict()
    dataset["annotations"] = [dict(ann) for ann in dataset["annotations"]]
    return dataset


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class _Detections:
    """Detections as columns: what :meth:`COCOEvaluator.update` keeps per image and what scoring reads.

    Converting in bulk (numpy) instead of one Python dict per detection as it arrives, and building the
    results object the way ``loadRes`` would (:meth:`_Backend.load_res`), is what brings the evaluator's cost
    down to the library's core. Masks are RLE from the start; the gathered payload holds these arrays and
    RLE dicts, never masks.

    Attributes:
        image_ids, category_ids: (N,) int64. scores: (N,) float64.
        boxes: (N, 4) float64 ``[x, y, w, h]``, or None without bbox.
        rles: N compressed RLE dicts, or None without segm.
        mask_areas, mask_boxes: (N,) int64 and (N, 4) float64 ``[x, y, w, h]``: each RLE's ``mask.area`` and
            ``mask.toBbox``, when known from encoding the masks (:meth:`COCOEvaluator.update`); None for
            results read from entries, whose RLEs are decoded for them when scored.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    scores: np.ndarray
    boxes: Optional[np.ndarray] = None
    rles: Optional[List[Dict[str, Any]]] = None
    mask_areas: Optional[np.ndarray] = None
    mask_boxes: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def concatenate(cls, parts: Sequence["_Detections"], iou_types: Sequence[str]) -> "_Detections":
        def cat(arrays: List[np.ndarray], shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
            return np.concatenate(arrays) if arrays else np.zeros(shape, dtype=dtype)

        segm = "segm" in iou_types
        # The masks' areas and boxes only when every part has them (all do when they come from update()).
        mask_stats = segm and all(p.mask_areas is not None and p.mask_boxes is not None for p in parts)
        return cls(
            image_ids=cat([p.image_ids for p in parts], (0,), np.int64),
            category_ids=cat([p.category_ids for p in parts], (0,), np.int64),
            scores=cat([p.scores for p in parts], (0,), np.float64),
            boxes=cat([p.boxes for p in parts], (0, 4), np.float64) if "bbox" in iou_types else None,
            rles=[r for p in parts for r in p.rles] if segm else None,  # type: ignore[union-attr]
            mask_areas=cat([p.mask_areas for p in parts], (0,), np.int64) if mask_stats else None,  # type: ignore
            mask_boxes=cat([p.mask_boxes for p in parts], (0, 4), np.float64) if mask_stats else None,  # type: ignore
        )

    @classmethod
    def from_entries(cls, entries: Sequence[Dict[str, Any]], iou_types: Sequence[str]) -> "_Detections":
        """Checked COCO result dicts (``check_results``) as columns."""
        return cls(
            image_ids=np.array([r["image_id"] for r in entries], dtype=np.int64).reshape(-1),
            category_ids=np.array([r["category_id"] for r in entries], dtype=np.int64).reshape(-1),
            scores=np.array([r["score"] for r in entries], dtype=np.float64).reshape(-1),
            boxes=(np.array([r["bbox"] for r in entries], dtype=np.float64).reshape(-1, 4)
                   if "bbox" in iou_types else None),
            rles=[r["segmentation"] for r in entries] if "segm" in iou_types else None,
        )

    def entries(self) -> List[Dict[str, Any]]:
        """JSON-ready COCO result dicts (``image_id``, ``category_id``, ``score``, ``bbox``, ``segmentation``)."""
        out = [{"image_id": i, "category_id": c, "score": s}
               for i, c, s in zip(self.image_ids.tolist(), self.category_ids.tolist(), self.scores.tolist())]
        if self.boxes is not None:
            for r, b in zip(out, self.boxes.tolist()):
                r["bbox"] = b
        if self.rles is not None:
            for r, rle in zip(out, self.rles):
                r["segmentation"] = rle
        return out


# --------------------------------------------------------------------------------------------
# Scoring core
# --------------------------------------------------------------------------------------------
@dataclass
class COCOEvalResult:
    """Everything one evaluation produced.

    Attributes:
        metrics: ``{"bbox": {12 stats}, "segm": {...}, "per_category": {"bbox": {name: AP}, ...}}``,
            requested iou types only (see :func:`evaluate_results`).
        precision: per iou type, COCOeval's ``eval["precision"]`` array [T, R, K, A, M]
            (10 IoU thresholds, 101 recall points, K categories, 4 area ranges, 3 maxDets); input of
            :func:`resnet_fpn.evaluation.report.plot_precision_recall`.
        category_names: the names of the K axis (ground-truth categories sorted by id).
        category_ids: the COCO category ids of the K axis.
    """

    metrics: Dict[str, Any]
    precision: Dict[str, np.ndarray] = field(default_factory=dict)
    category_names: List[str] = field(default_factory=list)
    category_ids: List[int] = field(default_factory=list)


def _per_category_ap(precision: np.ndarray, names: Sequence[str]) -> Dict[str, float]:
    # detectron2's _derive_coco_results: mean of precision[:, :, k, area=all, maxDets=100] over the
    # entries > -1. Kept as a fraction (detectron2 reports x100) and -1 where nothing is defined
    # (detectron2 gives nan) so the dict reads like pycocotools' own stats and stays valid JSON.
    out: Dict[str, float] = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[name] = float(np.mean(p)) if p.size else -1.0
    return out


def _score(
    gt: CocoAnnotations,
    detections: _Detections,
    *,
    iou_types: Sequence[str],
    backend: str,
    image_ids: Sequence[int],
) -> COCOEvalResult:
    adapter = _get_backend(backend)
    if not len(detections):
        warnings.warn(
            f"no detections to evaluate on {len(image_ids)} images: AP and AR are 0 for every category "
            "with ground truth (-1 where there is none), as pycocotools defines them",
            UserWarning,
            stacklevel=3,
        )
    _warn_degenerate_boxes(gt, image_ids)
    with _gc_paused():
        return _score_core(adapter, gt, detections, iou_types=iou_types, image_ids=image_ids)


def _score_core(adapter: _Backend, gt: CocoAnnotations, detections: "_Detections", *, iou_types: Sequence[str],
                image_ids: Sequence[int]) -> COCOEvalResult:
    coco_gt = adapter.coco_from_dataset(_dataset_for_eval(gt))
    category_keys = _category_keys(gt)
    metrics: Dict[str, Any] = {}
    per_category: Dict[str, Dict[str, float]] = {}
    precision: Dict[str, np.ndarray] = {}
    for iou_type in iou_types:
        coco_dt = adapter.load_res(coco_gt, detections, iou_type)
        stats, prec = adapter.evaluate(coco_gt, coco_dt, iou_type, image_ids)
        metrics[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, stats)}
        per_category[iou_type] = _per_category_ap(prec, category_keys)
        precision[iou_type] = prec
    metrics["per_category"] = per_category
    return COCOEvalResult(
        metrics=metrics,
        precision=precision,
        category_names=category_keys,
        category_ids=list(gt.category_ids),
    )


def _warn_degenerate_boxes(gt: CocoAnnotations, image_ids: Sequence[int]) -> None:
    """Name the ground-truth boxes of the evaluated images that no detection can match."""
    if not gt.degenerate_box_ids:
        return
    evaluated = set(image_ids)
    by_id = {ann["id"]: ann for ann in gt.annotations if not ann["iscrowd"]}
    bad = [i for i in gt.degenerate_box_ids if by_id[i]["image_id"] in evaluated]
    if bad:
        warnings.warn(
            f"{gt.source}: {len(bad)} ground-truth box(es) with a width or height <= 0, annotation ids "
            f"{list_some(bad)}: no detection can overlap them, so pycocotools scores each as a miss (training "
            "drops them); fix their bbox to score them",
            UserWarning,
            stacklevel=4,
        )


def _warn_partial_results(gt: CocoAnnotations, entries: Sequence[Dict[str, Any]]) -> None:
    """Say how many ground-truth images the results leave out: pycocotools counts their objects as missed."""
    covered = {r["image_id"] for r in entries}
    left = [i for i in gt.image_ids if i not in covered]
    if entries and left:
        warnings.warn(
            f"results cover {len(covered)} of {len(gt.image_ids)} ground-truth images of {gt.source}; "
            f"pycocotools scores the other {len(left)} as misses (image ids {list_some(left)}): right only "
            "if the detector found nothing there",
            UserWarning,
            stacklevel=3,
        )


def score_results(
    coco_gt: Any,
    results: Union[Sequence[Dict[str, Any]], PathLike, Sequence[PathLike]],
    *,
    iou_types: Union[str, Sequence[str]],
    backend: str = "pycocotools",
) -> COCOEvalResult:
    """Score COCO results against ground truth and keep the precision arrays for plots.

    Same as :func:`evaluate_results` but returns a :class:`COCOEvalResult` (metrics, precision
    arrays, category names).

    Args:
        coco_gt: a pycocotools (or faster-coco-eval) ``COCO`` object, a
            :class:`resnet_fpn.coco_format.CocoAnnotations` (e.g. a data set's ``annotations``), or the path
            of a COCO instances JSON file. It is not modified; it is validated as ``CocoAnnotations`` does
            (a missing ``area``/``iscrowd`` is taken as the box area / 0).
        results: a list of COCO result dicts (``image_id``, ``category_id``, ``score``, ``bbox`` as
            ``[x, y, w, h]`` and/or ``segmentation`` as compressed RLE), the path of a JSON file holding
            such a list, or a sequence of such paths whose lists are concatenated in order.
        iou_types: ``"bbox"`` and/or ``"segm"``; every entry must carry the field each one needs.
        backend: ``"pycocotools"`` (the reference) or ``"faster_coco_eval"`` (same statistics, faster).

    Returns:
        The :class:`COCOEvalResult`; every ground-truth image is evaluated, as pycocotools does.

    Warns:
        UserWarning: the results leave some ground-truth images without a detection (``"results cover K of
            N ground-truth images ...; pycocotools scores the other N-K as misses"``: the numbers include them,
            which is right only where the detector found nothing); ground-truth boxes with a width or height
            <= 0 (their annotation ids: pycocotools scores each as a miss); no results at all.

    Raises:
        ValueError: unknown iou type or backend; a results file that is not JSON or not a list; an
            entry lacking a field (named by its index and file); image or category ids absent from the
            ground truth (the first few and their count); entries whose ``file_name`` or ``category_name``
            contradicts the ground truth for their id (see ``resnet_fpn.coco_format.check_results``);
            invalid ground truth (its file and entry named), or, for segm, ground-truth annotations without
            ``segmentation``.
        TypeError: ``coco_gt`` is neither a COCO object, a ``CocoAnnotations`` nor a path.
        FileNotFoundError: a results or ground-truth file does not exist.
        ImportError: ``backend="faster_coco_eval"`` without the faster-coco-eval package.
    """
    iou_types = _check_iou_types(iou_types)
    _check_backend(backend)
    gt = _load_ground_truth(coco_gt, iou_types)
    sources: ResultSources = []
    if _is_pathlike(results):
        entries, sources = load_results([results])
    elif isinstance(results, (list, tuple)) and results and all(_is_pathlike(r) for r in results):
        entries, sources = load_results(results)
    elif isinstance(results, (list, tuple)):
        entries = list(results)
    else:
        raise TypeError(
            "results must be a list of COCO result dicts, a JSON file path or a list of such paths, "
            f"got {type(results).__name__}"
        )
    check_results(entries, gt, iou_types=iou_types, sources=sources)
    _warn_partial_results(gt, entries)
    detections = _Detections.from_entries(entries, iou_types)
    return _score(gt, detections, iou_types=iou_types, backend=backend, image_ids=gt.image_ids)


def evaluate_results(
    coco_gt: Any,
    results: Union[Sequence[Dict[str, Any]], PathLike, Sequence[PathLike]],
    *,
    iou_types: Union[str, Sequence[str]],
    backend: str = "pycocotools",
) -> Dict[str, Any]:
    """Score COCO results (a list, a JSON file or several) exactly as pycocotools does.

    Args:
        coco_gt: a pycocotools ``COCO`` object or the path of a COCO instances JSON file.
        results: a list of COCO result dicts, a results JSON path, or a sequence of paths
            (concatenated in order).
        iou_types: ``"bbox"`` and/or ``"segm"``.
        backend: ``"pycocotools"`` or ``"faster_coco_eval"``.

    Returns:
        ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl"}, "segm": {...}, "per_category": {"bbox": {category name: AP}, "segm": {...}}}`` with the
        requested iou types only. Values are pycocotools' fractions, ``-1`` where pycocotools gives -1
        (no ground truth in that area range / category). Per-category AP is the mean of
        ``precision[:, :, k, area=all, maxDets=100]`` over its entries > -1, or -1 if there are none.
        Empty results give AP/AR 0 (with a warning) instead of pycocotools' crash.

    Warns:
        UserWarning: as :func:`score_results` (partial coverage, boxes with no area, no results).

    Raises:
        ValueError, TypeError, FileNotFoundError, ImportError: as :func:`score_results`.
    """
    return score_results(coco_gt, results, iou_types=iou_types, backend=backend).metrics


# --------------------------------------------------------------------------------------------
# The streaming evaluator
# --------------------------------------------------------------------------------------------
class COCOEvaluator:
    """Accumulates torchvision-style predictions and scores them with COCOeval.

    Predictions are turned into COCO results in :meth:`update` (xywh boxes, COCO category ids, masks
    thresholded and RLE-encoded), so memory grows with the number of detections, not with image
    pixels. Each image id counts once: a repeated id (DistributedSampler pads its last batches with
    repeated images) keeps the predictions seen first, in rank order under torch.distributed.

    Only the images passed to :meth:`update` are evaluated (COCOeval ``params.imgIds``), so a
    partial validation pass scores the images it saw, and :meth:`compute` says so with a warning.

    Attributes:
        precision: after :meth:`compute` on rank 0, per iou type the ``eval["precision"]`` array
            [T, R, K, A, M] (input of ``report.plot_precision_recall``); empty on other ranks.
        category_names: names of the K axis (ground-truth categories sorted by id).
    """

    def __init__(
        self,
        coco_gt: Any,
        *,
        iou_types: Union[str, Sequence[str]] = ("bbox",),
        backend: str = "pycocotools",
        label_to_category_id: Optional[Mapping[int, int]] = None,
        mask_threshold: float = MASK_THRESHOLD,
    ) -> None:
        """Create an evaluator.

        Args:
            coco_gt: a pycocotools ``COCO`` object, a :class:`resnet_fpn.coco_format.CocoAnnotations` (a data
                set's ``annotations``: no second validation, no COCO index built until scoring) or the path of
                a COCO instances JSON file (not modified).
            iou_types: ``"bbox"`` and/or ``"segm"`` (segm needs ``masks`` in the predictions).
            backend: ``"pycocotools"`` or ``"faster_coco_eval"``.
            label_to_category_id: contiguous training label -> COCO category id of the file; None
                when the labels already are category ids.
            mask_threshold: a mask pixel is foreground when its probability is > this value.

        Raises:
            ValueError: unknown iou type or backend; invalid ground truth (file and entry named); a mapping to
                category ids the ground truth lacks; a threshold outside [0, 1).
            TypeError: a mapping that is not int -> int, or a ``coco_gt`` that is neither COCO,
                ``CocoAnnotations`` nor path.
            FileNotFoundError: no such ground-truth file.
            ImportError: ``backend="faster_coco_eval"`` without the faster-coco-eval package.
        """
        self.iou_types = _check_iou_types(iou_types)
        self.backend = _get_backend(backend).name  # fails now, not after an epoch, if the package is missing
        self._gt = _load_ground_truth(coco_gt, self.iou_types)
        self._known_images = set(self._gt.image_ids)
        self._known_cats = set(self._gt.category_ids)
        self.label_to_category_id: Optional[Dict[int, int]] = None
        if label_to_category_id is not None:
            if not isinstance(label_to_category_id, Mapping) or not all(
                _is_int(k) and _is_int(v) for k, v in label_to_category_id.items()
            ):
                raise TypeError(f"label_to_category_id must be a dict int -> int, got {label_to_category_id!r}")
            mapping = {int(k): int(v) for k, v in label_to_category_id.items()}
            bad = sorted(set(mapping.values()) - self._known_cats)
            if bad:
                raise ValueError(
                    f"label_to_category_id maps to category ids not in the ground truth ({self._gt.source}): "
                    f"{list_some(bad)}; its category ids are {list_some(self._gt.category_ids)}"
                )
            self.label_to_category_id = mapping
        # (nan fails both comparisons; bool is a Real but not a threshold)
        if not (isinstance(mask_threshold, numbers.Real) and not isinstance(mask_threshold, bool)
                and 0.0 <= mask_threshold < 1.0):
            raise ValueError(f"mask_threshold must be a number in [0, 1), got {mask_threshold!r}")
        self.mask_threshold = float(mask_threshold)
        self.category_names: List[str] = _category_keys(self._gt)
        self.precision: Dict[str, np.ndarray] = {}
        self._results: Dict[int, _Detections] = {}
        # training label -> category id as one lookup array (-1: no category), for the bulk conversion
        self._label_lookup: Optional[np.ndarray] = None
        if self.label_to_category_id:
            self._label_lookup = np.full(max(max(self.label_to_category_id), 0) + 1, -1, dtype=np.int64)
            for label, category_id in self.label_to_category_id.items():
                if label >= 0:
                    self._label_lookup[label] = category_id

    def reset(self) -> None:
        """Forget every prediction and the last precision arrays (call at the start of each epoch)."""
        self._results = {}
        self.precision = {}

    @property
    def num_images(self) -> int:
        """Distinct image ids received by this process since the last reset."""
        return len(self._results)

    def results(self) -> List[Dict[str, Any]]:
        """The COCO results accumulated by this process so far (JSON-ready), in image-id order."""
        return _Detections.concatenate([self._results[i] for i in sorted(self._results)], self.iou_types).entries()

    def update(self, predictions: Sequence[Mapping[str, Any]], image_ids: Sequence[Any]) -> None:
        """Convert one batch of predictions to COCO results.

        Args:
            predictions: one dict per image with ``boxes`` (N, 4) xyxy in original-image pixels,
                ``scores`` (N,), ``labels`` (N,) int and, for segm, ``masks`` (N, 1, H, W) (or (N, H, W))
                probabilities at the image's full size. Tensors on any device, or numpy arrays.
            image_ids: the COCO image id of each prediction (ints or 0-d integer tensors).

        Raises:
            ValueError: lengths differ; an image id absent from the ground truth; a label without a
                category id; a missing key; shapes that disagree; a mask not of its image's size.
            TypeError: an image id that is not an integer.
        """
        if len(predictions) != len(image_ids):
            raise ValueError(f"update() got {len(predictions)} predictions but {len(image_ids)} image ids")
        for pred, raw_id in zip(predictions, image_ids):
            try:
                image_id = operator.index(raw_id)
            except TypeError:
                raise TypeError(f"image ids must be integers, got {raw_id!r}") from None
            if image_id not in self._known_images:
                raise ValueError(f"image id {image_id} is not in the ground truth ({self._gt.source})")
            if image_id in self._results:
                continue  # a repeated image (sampler padding) is counted once: first one wins
            self._results[image_id] = self._convert(pred, image_id)

    def _convert(self, pred: Mapping[str, Any], image_id: int) -> _Detections:
        needed = ["scores", "labels"]
        needed += (["boxes"] if "bbox" in self.iou_types else []) + (["masks"] if "segm" in self.iou_types else [])
        missing = [k for k in needed if k not in pred]
        if missing:
            raise ValueError(
                f"prediction for image {image_id} lacks {missing}; iou_types {self.iou_types} need {needed}"
            )
        scores = torch.as_tensor(pred["scores"]).detach().reshape(-1)
        labels = torch.as_tensor(pred["labels"]).detach().reshape(-1)
        n = scores.numel()
        if labels.numel() != n:
            raise ValueError(f"prediction for image {image_id}: {n} scores but {labels.numel()} labels")
        # float64 on the CPU: xyxy -> xywh differences and scores then reach JSON without a float32 round trip.
        out = _Detections(
            image_ids=np.full(n, image_id, dtype=np.int64),
            category_ids=self._category_ids(labels.to("cpu", torch.int64).numpy(), image_id),
            scores=scores.to("cpu", torch.float64).numpy(),
        )
        if "bbox" in self.iou_types:
            boxes = torch.as_tensor(pred["boxes"]).detach().to("cpu", torch.float64)
            if boxes.shape != (n, 4):
                raise ValueError(
                    f"prediction for image {image_id}: boxes of shape {tuple(boxes.shape)}, expected ({n}, 4)"
                )
            xyxy = boxes.numpy()
            out.boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)  # as xyxy_to_xywh
        if "segm" in self.iou_types:
            if n:
                out.rles, out.mask_areas, out.mask_boxes = self._encode_masks(pred["masks"], n, image_id)
            else:
                out.rles, out.mask_areas, out.mask_boxes = [], np.zeros(0, np.int64), np.zeros((0, 4), np.float64)
        return out

    def _category_ids(self, labels: np.ndarray, image_id: int) -> np.ndarray:
        if self.label_to_category_id is None:
            bad = sorted(set(np.unique(labels).tolist()) - self._known_cats)
            if bad:
                raise ValueError(
                    f"prediction for image {image_id} has labels {list_some(bad)} that are not category ids of "
                    f"the ground truth; pass label_to_category_id to map training labels to category ids"
                )
            return labels.astype(np.int64)
        lookup = self._label_lookup if self._label_lookup is not None else np.zeros(0, dtype=np.int64)
        inside = (labels >= 0) & (labels < len(lookup))
        mapped = np.full(len(labels), -1, dtype=np.int64)
        mapped[inside] = lookup[labels[inside]]
        if (mapped < 0).any():
            bad = sorted(set(labels[mapped < 0].tolist()))
            raise ValueError(
                f"prediction for image {image_id} has labels {list_some(bad)} absent from label_to_category_id "
                f"(keys {list_some(sorted(self.label_to_category_id))})"
            )
        return mapped

    def _encode_masks(
        self, masks: Any, n: int, image_id: int
    ) -> Tuple[List[Dict[str, Any]], np.ndarray, np.ndarray]:
        """Threshold and encode one image's masks: ``(rles, areas, boxes)`` of ``encode_masks_with_boxes``."""
        masks = torch.as_tensor(masks).detach()
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.ndim != 3 or masks.shape[0] != n:
            raise ValueError(
                f"prediction for image {image_id}: masks of shape {tuple(masks.shape)}, expected ({n}, 1, H, W)"
            )
        size = self._gt.image_sizes.get(image_id)
        if size is not None and tuple(masks.shape[-2:]) != size:
            raise ValueError(
                f"prediction for image {image_id}: masks are {tuple(masks.shape[-2:])} but the image is {size} "
                "(height, width); paste masks at the original image size"
            )
        # Threshold where the masks live (GPU) so only one byte per pixel crosses to the CPU.
        binary = masks if masks.dtype == torch.bool else masks > self.mask_threshold
        return encode_masks_with_boxes(binary)

    def compute(self) -> Dict[str, Any]:
        """Gather the results of every process, score them on rank 0 and share the metrics.

        Must be called on every rank when torch.distributed is initialized (it runs collectives).

        Returns:
            The metrics dict of :func:`evaluate_results` for the requested iou types, identical on all
            ranks.

        Warns:
            UserWarning: on rank 0, when the images passed to :meth:`update` (all ranks together) are only
                some of the ground truth's (``"scored K of N ground-truth images ..."``: the metrics are those
                of the K images, the others are left out, not counted as misses); ground-truth boxes with a
                width or height <= 0 among them (annotation ids); no detection at all.

        Raises:
            RuntimeError: no image was passed to :meth:`update` on any rank; or scoring failed on rank 0
                (other ranks raise with its message instead of waiting forever).
        """
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        local = list(self._results.items())
        if distributed:
            gathered: List[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        merged: Dict[int, _Detections] = {}
        for rank_items in gathered:  # rank order, then update order: the first copy of an image wins
            for image_id, dets in rank_items:
                merged.setdefault(image_id, dets)
        if not merged:
            raise RuntimeError("COCOEvaluator.compute() called before any update(): no image to evaluate")
        rank = dist.get_rank() if distributed else 0
        payload: List[Any] = [None]
        error: Optional[BaseException] = None
        if rank == 0:
            detections = _Detections.concatenate(list(merged.values()), self.iou_types)
            left = len(self._gt.image_ids) - len(merged)
            if left:
                warnings.warn(
                    f"COCOEvaluator scored {len(merged)} of {len(self._gt.image_ids)} ground-truth images of "
                    f"{self._gt.source} (the ones passed to update()); the metrics leave the other {left} out",
                    UserWarning,
                    stacklevel=2,
                )
            try:
                result = _score(
                    self._gt, detections, iou_types=self.iou_types, backend=self.backend, image_ids=list(merged)
                )
                self.precision = result.precision
                payload = [("ok", result.metrics)]
            except Exception as exc:  # noqa: BLE001 - re-raised below after the other ranks are told
                error = exc
                payload = [("error", f"{type(exc).__name__}: {exc}")]
        if distributed:
            dist.broadcast_object_list(payload, src=0)
        if error is not None:
            raise error
        status, value = payload[0]
        if status == "error":
            raise RuntimeError(f"COCO evaluation failed on rank 0: {value}")
        return value
