"""A torch ``Dataset`` over a COCO instances JSON, in the target format of torchvision's detectors.

The JSON is read, validated (the rules of ``resnet_fpn.coco_format.CocoAnnotations``) and packed once at
construction into a compact index of numpy arrays (``resnet_fpn.data.index``), which forked loader workers
share; ``__getitem__`` (the data loader's hot path) only opens the image, slices the per-image arrays and, when
masks are asked for, decodes the image's polygons with pycocotools. The evaluator's ground truth
(``annotations``) is read only where it is asked for. See ``docs/data.md`` for the full contract.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..coco_format import MIN_POLYGON_COORDS, CocoAnnotations
from .images import read_image
from .index import TrainingIndex, build_training_index, fix_mmap_threshold, trim_heap

logger = logging.getLogger(__name__)

__all__ = ["BAD_IMAGES", "CocoDetection", "MIN_BOX_SIDE", "Transform", "box_outside_image"]

PathLike = Union[str, "os.PathLike[str]"]
# What ``CocoDetection(transforms=...)`` accepts: called with the decoded RGB image (H, W, 3) uint8 and the
# target as numpy arrays, it returns the same pair (see ``resnet_fpn.data.transforms``).
Transform = Callable[[np.ndarray, Dict[str, Any]], Tuple[np.ndarray, Dict[str, Any]]]

# What CocoDetection(bad_images=...) accepts: fail on a bad image file, or skip (and count) it.
BAD_IMAGES = ("error", "skip")
# A box whose side is shorter than this (after clipping to the image) cannot be regressed sensibly and makes
# torchvision's detectors raise ("All bounding boxes should have positive height and width").
MIN_BOX_SIDE = 1.0
# Coordinates are floats in COCO files; an overshoot below this is rounding noise, not a box outside the image.
_CLIP_TOLERANCE = 1e-3


def box_outside_image(bbox: Any, *, width: float, height: float) -> bool:
    """Whether a COCO ``[x, y, w, h]`` box reaches outside its ``width`` x ``height`` image (the boxes training clips).

    An overshoot up to ``1e-3`` px is float noise of the exporter, not a box outside the image. The data
    doctor reports the same boxes as ``box_out_of_bounds``.

    Args:
        bbox: the box, 4 finite numbers.
        width: the image width.
        height: the image height.

    Returns:
        True when a side lies outside the image by more than the tolerance.
    """
    x1, y1, w, h = (float(v) for v in bbox)
    overshoot = max(-x1, -y1, x1 + w - width, y1 + h - height)
    return overshoot > _CLIP_TOLERANCE


@dataclass(frozen=True)
class _ImageRecord:
    """Everything ``__getitem__`` needs about one image, read from the compact index when asked for."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32, xyxy, clipped to the image
    labels: np.ndarray  # (N,) int64, contiguous 1..K
    area: np.ndarray  # (N,) float32, the annotation's ``area``
    segmentations: Tuple[Any, ...]  # N COCO segmentations (polygons or RLE), decoded only on demand


class _Records(Sequence):
    """Item ``i`` -> its :class:`_ImageRecord`, made on access from the :class:`TrainingIndex` (nothing kept)."""

    def __init__(self, index: TrainingIndex, items: np.ndarray, *, with_segmentations: bool) -> None:
        self._index, self._items, self._with_segmentations = index, items, with_segmentations

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, item: int) -> _ImageRecord:  # type: ignore[override]
        index = self._index
        position = int(self._items[item])
        start, stop = index.annotation_range(position)
        segmentations = tuple(index.segmentation(a) for a in range(start, stop)) if self._with_segmentations else ()
        return _ImageRecord(
            image_id=int(index.image_ids[position]),
            file_name=index.file_name(position),
            width=int(index.widths[position]),
            height=int(index.heights[position]),
            boxes=index.boxes[start:stop],
            labels=index.labels[start:stop],
            area=index.area[start:stop],
            segmentations=segmentations,
        )

    def __iter__(self) -> Iterator[_ImageRecord]:
        return (self[i] for i in range(len(self)))


#: In a data loader worker, the share of its time that handing freed heap pages back may take (see _worker_heap).
WORKER_TRIM_SHARE = 0.05
#: ... but at least after every this many items, whatever a trim costs: a budget alone spaced trims by tens of
#: items when the forked heap was fragmented (each trim slower), and the worker's heap kept 10.6 MiB over 80 items.
WORKER_TRIM_MAX_ITEMS = 8
# The process _worker_heap last looked at (a forked worker inherits the parent's values), whether it is a
# loader worker, when (time.perf_counter) its heap is trimmed next, and the items since its last trim.
_heap_pid: Optional[int] = None
_heap_in_worker = False
_heap_next_trim = 0.0
_heap_items = 0


def _worker_heap(*, after_item: bool) -> None:
    """Called before and after each item: in a data loader worker, keep what items free out of its memory.

    A worker's heap is its parent's, forked: scattered with the free chunks left by reading the JSON. An
    item's small allocations land in those chunks, and its large ones (image, masks, float copies) too once
    glibc's dynamic mmap threshold has risen past their size; freed, all of it stays resident in the worker
    (glibc returns only the top of the heap by itself). Measured in one worker over 500 items of a 10k-image
    file: the heap grew by 8 MB at the first item and 23 MB in all. So, in a loader worker
    (``torch.utils.data.get_worker_info()``), large buffers are mapped on their own from the first item on
    (:func:`resnet_fpn.data.index.fix_mmap_threshold`, before the first item) and the heap pages an item freed
    are handed back when it is done (:func:`resnet_fpn.data.index.trim_heap`, ``malloc_trim``; the item's
    tensors, mapped on their own, are not in the heap). A trim walks every free chunk of the heap, so its cost
    grows with the parent's fragmentation: it runs as often as keeps its time within
    :data:`WORKER_TRIM_SHARE` of the worker's (after every item where it is cheap), and at least after every
    :data:`WORKER_TRIM_MAX_ITEMS` items. The main process (``num_workers=0``) is left as it is.
    """
    global _heap_pid, _heap_in_worker, _heap_next_trim, _heap_items
    pid = os.getpid()
    if _heap_pid != pid:
        _heap_pid, _heap_next_trim, _heap_items = pid, 0.0, 0
        _heap_in_worker = torch.utils.data.get_worker_info() is not None
        if _heap_in_worker:
            fix_mmap_threshold()
    if _heap_in_worker and after_item:
        _heap_items += 1
        now = time.perf_counter()
        if now >= _heap_next_trim or _heap_items >= WORKER_TRIM_MAX_ITEMS:
            _heap_items = 0
            # The trim's cost is its CPU time, not its wall time: on shared cores a trim that was descheduled
            # would look expensive and postpone the next one by many items (measured: one worker of 12 grew
            # 56 MB instead of 37-39 MB with wall time).
            cpu = time.thread_time()
            trim_heap()
            _heap_next_trim = now + (time.thread_time() - cpu) / WORKER_TRIM_SHARE


def _segmentation_to_rle(seg: Any, height: int, width: int) -> Dict[str, Any]:
    """Convert one COCO segmentation (polygons, uncompressed or compressed RLE) to a compressed RLE.

    The same conversion as ``COCO.annToRLE``, without its per-call image lookup.
    """
    if isinstance(seg, list):
        # A "polygon" of fewer than 3 points has no area; worse, pycocotools reads a 4-number list as a box.
        polys = [poly for poly in seg if len(poly) >= MIN_POLYGON_COORDS]
        if not polys:
            return mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


class CocoDetection(torch.utils.data.Dataset):
    """Images and instance targets from a COCO instances JSON, for torchvision's Faster/Mask R-CNN.

    Each item is ``(image, target)``:

    - ``image``: float32 tensor ``(3, H, W)`` in ``[0, 1]``, RGB. Grayscale, palette, RGBA and CMYK files are
      converted to RGB (alpha is dropped) and the EXIF orientation is applied, so photos load upright.
    - ``target``: a dict with ``boxes`` float32 ``(N, 4)`` (``x1, y1, x2, y2`` in pixels), ``labels`` int64
      ``(N,)`` in ``1..K`` (0 is background), ``image_id`` (int, the COCO id), ``area`` float32 ``(N,)``,
      ``iscrowd`` int64 ``(N,)`` (all zeros, crowd regions are not targets) and, only when ``with_masks``,
      ``masks`` uint8 ``(N, H, W)``.

    Rules applied to the training targets (``self.annotations``, the evaluator's ground truth, keeps every
    annotation of the file):

    - ``iscrowd=1`` annotations are left out (torchvision's detectors cannot learn from a crowd region).
    - Boxes partly outside the image are clipped to it, not refused; one warning per file counts them.
    - Boxes narrower or lower than 1 px after clipping are dropped; one warning per file counts them.
    - Images without annotation stay as negatives: ``boxes`` ``(0, 4)``, ``masks`` ``(0, H, W)``.

    Image files are checked at construction with one listing of each image folder (cheap even for the
    118k files of COCO train2017); ``verify_files=False`` skips it, for instance for an evaluator that never
    opens an image.

    Args:
        images_dir: folder holding the images; ``file_name`` entries are relative to it.
        ann_file: the COCO instances JSON.
        transforms: optional callable ``(image, target) -> (image, target)`` applied before the conversion to
            tensors, on the RGB uint8 ``(H, W, 3)`` array and the target as numpy arrays (see
            :func:`resnet_fpn.data.transforms.build_transforms`).
        with_masks: decode the instance masks into ``target["masks"]`` (needed for Mask R-CNN).
        verify_files: check at construction that every image file exists.
        bad_images: ``"error"`` (the default): a missing file fails the construction and a file that cannot
            be decoded (or has another size than the JSON's) fails its item, naming the file and image id.
            ``"skip"``: missing files are left out of the items at construction, and an item whose image
            fails to decode is replaced by the next readable one; both are logged once per image and counted
            (``skipped_image_ids``). The data doctor's quick pass (``resnet_fpn.data.doctor.quick_check``)
            finds most such files before training.

    The file is held as a compact index (:class:`resnet_fpn.data.index.TrainingIndex`: numpy arrays that
    forked loader workers share instead of copying; polygons become lists only in ``__getitem__``), validated
    at construction by the rules of :class:`resnet_fpn.coco_format.CocoAnnotations`, with its messages.

    Attributes:
        annotations: the validated file (:class:`resnet_fpn.coco_format.CocoAnnotations`), read on first
            access (not at construction); pass it to ``COCOEvaluator`` as the ground truth.
        coco: a pycocotools ``COCO`` of the same data, built on first access only.
        ids, category_ids, category_names, label_to_category_id, category_id_to_label, num_classes: the
            image ids in item order and the label mapping (label ``i`` is ``category_ids[i - 1]``).
        has_masks, num_crowd, num_clipped, num_degenerate: what the target rules found.
        skipped_image_ids: with ``bad_images="skip"``, the ids of the images left out (missing) or replaced
            (undecodable) so far in this process (data loader workers each count their own).

    Raises:
        FileNotFoundError: ``ann_file`` or ``images_dir`` does not exist, or (with ``verify_files``) image
            files are missing; the message lists them.
        ValueError: the JSON is malformed or inconsistent (the message names the file and the entry), or
            ``with_masks`` is asked of a file in which a non-crowd annotation has no segmentation.
        TypeError: ``transforms`` is not callable.
        ValueError: ``bad_images`` is not ``"error"`` or ``"skip"``.
    """

    def __init__(
        self,
        images_dir: PathLike,
        ann_file: PathLike,
        *,
        transforms: Optional[Transform] = None,
        with_masks: bool = False,
        verify_files: bool = True,
        bad_images: str = "error",
    ) -> None:
        if bad_images not in BAD_IMAGES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
        self.bad_images = bad_images
        self.skipped_image_ids: List[int] = []
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        if transforms is not None and not callable(transforms):
            raise TypeError(f"transforms must be callable (image, target) -> (image, target), got {transforms!r}")
        self.transforms = transforms
        self.with_masks = bool(with_masks)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.ann_file}")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images folder not found: {self.images_dir} (for {self.ann_file})")

        # The compact index (numpy arrays, see resnet_fpn.data.index): what loader workers share read-only.
        # The evaluator's ground truth (``annotations``) is loaded from the file only where it is asked for.
        self._index: TrainingIndex = build_training_index(self.ann_file, keep_segmentations=self.with_masks)
        self._annotations: Optional[CocoAnnotations] = None
        self._coco: Optional[COCO] = None  # built by the ``coco`` property on first use
        self.category_ids: List[int] = self._index.category_ids.tolist()
        self.category_names: List[str] = list(self._index.category_names)
        self.label_to_category_id: Dict[int, int] = {i + 1: c for i, c in enumerate(self.category_ids)}
        self.category_id_to_label: Dict[int, int] = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.num_classes = len(self.category_ids) + 1
        self._items = np.arange(len(self._index), dtype=np.int64)  # item -> image position in the index
        self._records = _Records(self._index, self._items, with_segmentations=self.with_masks)
        self.num_crowd = self._index.num_crowd
        self.num_clipped = self._index.num_clipped
        self.num_degenerate = self._index.num_degenerate
        self._warn_rules()
        unsegmented = self._index.unsegmented_ids.tolist()
        num_instances = self._index.num_annotations - self.num_crowd
        self.has_masks = num_instances > 0 and not unsegmented
        if self.with_masks and unsegmented:
            more = f" (and {len(unsegmented) - 1} more)" if len(unsegmented) > 1 else ""
            raise ValueError(
                f"{self.ann_file}: with_masks=True but the annotations have no segmentation masks: annotation id "
                f"{unsegmented[0]}{more} has none; train a box-only model (faster_rcnn) or add masks"
            )
        if verify_files:
            if bad_images == "error":
                self.check_files(raise_missing=True)
            else:
                missing = {image_id for _, image_id in self._missing_files()}
                if missing:
                    self._leave_out(missing)

    def _leave_out(self, image_ids: set) -> None:
        """Drop the items of `image_ids` (``bad_images="skip"``), logging the count and the first ids."""
        keep = ~np.isin(self._index.image_ids[self._items], np.fromiter(image_ids, dtype=np.int64))
        self._items = self._items[keep]
        self._records = _Records(self._index, self._items, with_segmentations=self.with_masks)
        self.skipped_image_ids.extend(sorted(image_ids))
        if not self._records:
            raise FileNotFoundError(f"{self.ann_file}: bad_images=skip, but every image file is missing in {self.images_dir}")
        logger.warning("%s: bad_images=skip: left out %d image(s) whose file is missing (ids %s)",
                       self.ann_file, len(image_ids), sorted(image_ids)[:10])

    @property
    def coco(self) -> COCO:
        """A pycocotools ``COCO`` index of the file (every annotation, ``area``/``iscrowd`` filled in).

        Built on first use, from the dict already in memory, and kept. ``COCOEvaluator`` does not need it
        (pass :attr:`annotations`), so a data set that is only iterated and evaluated never pays for it.
        """
        if self._coco is None:
            # COCO() prints progress to stdout, which would interleave with the progress bars of training.
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO()
                coco.dataset = self.annotations.to_dict()
                coco.createIndex()
            self._coco = coco
        return self._coco

    @property
    def annotations(self) -> CocoAnnotations:
        """The validated file (:class:`resnet_fpn.coco_format.CocoAnnotations`, every annotation, crowd included).

        The evaluator's ground truth: read from the file on first access and kept (``COCOEvaluator`` loads it
        where it runs), so the loader workers of a training set, which never ask, do not carry it.
        """
        if self._annotations is None:
            self._annotations = CocoAnnotations.from_file(self.ann_file)
        return self._annotations

    @property
    def ids(self) -> List[int]:
        """The COCO image ids, in item order."""
        return self._index.image_ids[self._items].tolist()

    # ------------------------------------------------------------------ construction helpers
    def _warn_rules(self) -> None:
        """One warning per file for the boxes the training-target rules clipped or dropped."""
        if self.num_clipped:
            logger.warning(
                "%s: %d box(es) partly outside their image were clipped to it", self.ann_file, self.num_clipped
            )
        if self.num_degenerate:
            logger.warning(
                "%s: dropped %d degenerate box(es) (width or height < %g px after clipping) from the training targets",
                self.ann_file,
                self.num_degenerate,
                MIN_BOX_SIDE,
            )

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(ann_file={str(self.ann_file)!r}, images={len(self)}, "
            f"classes={self.num_classes - 1}, with_masks={self.with_masks})"
        )

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``.

        Args:
            index: position in the dataset (``0 <= index < len(self)``).

        Returns:
            ``images_dir / file_name``.
        """
        return self.images_dir / self._index.file_name(int(self._items[index]))

    def aspect_ratios(self) -> np.ndarray:
        """Width / height of every image, in item order, from the JSON (no image is opened).

        Returns:
            float64 array of shape ``(len(self),)``, for :func:`resnet_fpn.data.samplers.aspect_ratio_groups`.
        """
        positions = self._items
        return self._index.widths[positions] / self._index.heights[positions].astype(np.float64)

    def check_files(self, *, raise_missing: bool = True) -> List[Path]:
        """Find the image files that do not exist, with one folder listing per distinct sub-folder.

        Args:
            raise_missing: raise instead of returning when a file is missing.

        Returns:
            The missing paths (empty when all exist).

        Raises:
            FileNotFoundError: ``raise_missing`` and at least one file is missing; the message gives the count,
                the first paths and their image ids.
        """
        missing = self._missing_files()
        if missing and raise_missing:
            shown = "\n".join(f"  {path} (image id {image_id})" for path, image_id in missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise FileNotFoundError(
                f"{len(missing)} of {len(self._records)} image file(s) listed in {self.ann_file} are missing:\n"
                f"{shown}{more}"
            )
        return [path for path, _ in missing]

    def _missing_files(self) -> List[Tuple[Path, int]]:
        """(path, image id) of every item whose image file does not exist."""
        listings: Dict[Path, set] = {}
        missing: List[Tuple[Path, int]] = []
        for item, position in enumerate(self._items.tolist()):
            path = self.images_dir / self._index.file_name(position)
            folder = path.parent
            if folder not in listings:
                try:
                    listings[folder] = set(os.listdir(folder))
                except FileNotFoundError:
                    listings[folder] = set()
            if path.name not in listings[folder]:
                missing.append((path, int(self._index.image_ids[position])))
        return missing

    def load_image(self, index: int) -> np.ndarray:
        """Read item ``index``'s image as an upright RGB uint8 array (see :func:`resnet_fpn.data.images.read_image`).

        Args:
            index: position in the dataset.

        Returns:
            ``(H, W, 3)`` uint8 array whose size matches the JSON's ``width``/``height``.

        Raises:
            FileNotFoundError: the file does not exist (the message names the path and the image id).
            ValueError: the file cannot be decoded, or the decoded size matches neither the JSON's size nor,
                before the EXIF rotation, its transpose.
        """
        position = int(self._items[index])
        return read_image(
            self.images_dir / self._index.file_name(position),
            size=(int(self._index.widths[position]), int(self._index.heights[position])),
            context=f"image id {int(self._index.image_ids[position])}, listed in {self.ann_file}",
        )

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        _worker_heap(after_item=False)
        item = self._item(index)
        _worker_heap(after_item=True)
        return item

    def _item(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        if self.bad_images == "skip":
            index, image = self._first_readable(index)
        else:
            image = self.load_image(index)
        record = self._records[index]
        target: Dict[str, Any] = {
            "boxes": record.boxes.copy(),
            "labels": record.labels.copy(),
            "image_id": record.image_id,
            "area": record.area.copy(),
            "iscrowd": np.zeros(len(record.labels), dtype=np.int64),
        }
        if self.with_masks:
            target["masks"] = self._decode_masks(record)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
                raise TypeError(
                    f"transforms must return the image as an (H, W, 3) uint8 numpy array, got "
                    f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
                )
        return self._to_tensors(image, target)

    def _first_readable(self, index: int) -> Tuple[int, np.ndarray]:
        """``bad_images="skip"``: item `index`'s image, or the next readable one's (wrapping around)."""
        for step in range(len(self._records)):
            current = (index + step) % len(self._records)
            try:
                return current, self.load_image(current)
            except (ValueError, FileNotFoundError) as err:
                image_id = int(self._index.image_ids[self._items[current]])
                if image_id not in self.skipped_image_ids:
                    self.skipped_image_ids.append(image_id)
                    logger.warning("bad_images=skip: skipping image id %s (%d skipped so far): %s",
                                   image_id, len(self.skipped_image_ids), err)
        raise ValueError(f"{self.ann_file}: bad_images=skip, but no image of the {len(self._records)} items can be read")

    # ------------------------------------------------------------------ hot-path helpers
    @staticmethod
    def _decode_masks(record: _ImageRecord) -> np.ndarray:
        if not record.segmentations:
            return np.zeros((0, record.height, record.width), dtype=np.uint8)
        rles = [_segmentation_to_rle(seg, record.height, record.width) for seg in record.segmentations]
        # decode() returns (H, W, N) in Fortran order; one copy makes it a C-contiguous (N, H, W).
        return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))

    @staticmethod
    def _to_tensors(image: np.ndarray, target: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        # numpy does the HWC -> CHW copy and the float conversion: with several threads on a busy machine,
        # torch's permute().contiguous() on uint8 measured 10x slower, and the result is the same.
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        chw /= 255.0
        out: Dict[str, Any] = {
            # torch.tensor copies: the arrays may be read-only views (PIL, user transforms).
            "boxes": torch.tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(target["labels"], dtype=torch.int64),
            "image_id": int(target["image_id"]),
            "area": torch.tensor(target["area"], dtype=torch.float32),
            "iscrowd": torch.tensor(target["iscrowd"], dtype=torch.int64),
        }
        if "masks" in target:
            masks = np.require(target["masks"], dtype=np.uint8, requirements=["C_CONTIGUOUS", "WRITEABLE"])
            out["masks"] = torch.from_numpy(masks)
        return torch.from_numpy(chw), out
