"""A torch ``Dataset`` over a COCO instances JSON, in the target format of torchvision's detectors.

The JSON is read, validated and indexed once at construction; ``__getitem__`` (the data loader's hot path)
only opens the image, looks up precomputed per-image arrays and, when masks are asked for, decodes them with
pycocotools. See ``docs/data.md`` for the full contract.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

logger = logging.getLogger(__name__)

__all__ = ["CocoDetection", "Transform"]

PathLike = Union[str, "os.PathLike[str]"]
# What ``CocoDetection(transforms=...)`` accepts: called with the decoded RGB image (H, W, 3) uint8 and the
# target as numpy arrays, it returns the same pair (see ``resnet_fpn.data.transforms``).
Transform = Callable[[np.ndarray, Dict[str, Any]], Tuple[np.ndarray, Dict[str, Any]]]

_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")
# A box whose side is shorter than this (after clipping to the image) cannot be regressed sensibly and makes
# torchvision's detectors raise ("All bounding boxes should have positive height and width").
_MIN_BOX_SIDE = 1.0
# Coordinates are floats in COCO files; an overshoot below this is rounding noise, not a box outside the image.
_CLIP_TOLERANCE = 1e-3


@dataclass(frozen=True)
class _ImageRecord:
    """Everything ``__getitem__`` needs about one image, computed once at construction."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32, xyxy, clipped to the image
    labels: np.ndarray  # (N,) int64, contiguous 1..K
    area: np.ndarray  # (N,) float32, the annotation's ``area``
    segmentations: Tuple[Any, ...]  # N COCO segmentations (polygons or RLE), decoded only on demand


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but ``[0, 0, True, 5]`` is a broken bbox, not a box.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _segmentation_present(seg: Any) -> bool:
    """True if ``seg`` holds at least one decodable polygon or an RLE."""
    if isinstance(seg, dict):
        return "counts" in seg and "size" in seg
    if isinstance(seg, list):
        return any(isinstance(poly, list) and len(poly) >= 6 for poly in seg)
    return False


def _segmentation_to_rle(seg: Any, height: int, width: int) -> Dict[str, Any]:
    """Convert one COCO segmentation (polygons, uncompressed or compressed RLE) to a compressed RLE.

    The same conversion as ``COCO.annToRLE``, without its per-call image lookup.
    """
    if isinstance(seg, list):
        # A "polygon" of fewer than 3 points has no area; worse, pycocotools reads a 4-number list as a box.
        polys = [poly for poly in seg if len(poly) >= 6]
        if not polys:
            return mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def _load_json(path: Path) -> Dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a COCO instances JSON object at the top level, got {type(data).__name__}"
        )
    missing = [key for key in _REQUIRED_TOP_LEVEL if key not in data]
    if missing:
        raise ValueError(
            f"{path}: missing top-level key(s) {missing}; a COCO instances file needs {list(_REQUIRED_TOP_LEVEL)}"
        )
    for key in _REQUIRED_TOP_LEVEL:
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: top-level {key!r} must be a list, got {type(data[key]).__name__}")
    return data


class CocoDetection(torch.utils.data.Dataset):
    """Images and instance targets from a COCO instances JSON, for torchvision's Faster/Mask R-CNN.

    Each item is ``(image, target)``:

    - ``image``: float32 tensor ``(3, H, W)`` in ``[0, 1]``, RGB. Grayscale, palette, RGBA and CMYK files are
      converted to RGB (alpha is dropped) and the EXIF orientation is applied, so photos load upright.
    - ``target``: a dict with ``boxes`` float32 ``(N, 4)`` (``x1, y1, x2, y2`` in pixels), ``labels`` int64
      ``(N,)`` in ``1..K`` (0 is background), ``image_id`` (int, the COCO id), ``area`` float32 ``(N,)``,
      ``iscrowd`` int64 ``(N,)`` (all zeros, crowd regions are not targets) and, only when ``with_masks``,
      ``masks`` uint8 ``(N, H, W)``.

    Rules applied to the training targets (``self.coco``, the evaluator's ground truth, keeps every
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

    Raises:
        FileNotFoundError: ``ann_file`` or ``images_dir`` does not exist, or (with ``verify_files``) image
            files are missing; the message lists them.
        ValueError: the JSON is malformed or inconsistent (the message names the file and the entry), or
            ``with_masks`` is asked of a file in which a non-crowd annotation has no segmentation.
        TypeError: ``transforms`` is not callable.
    """

    def __init__(
        self,
        images_dir: PathLike,
        ann_file: PathLike,
        *,
        transforms: Optional[Transform] = None,
        with_masks: bool = False,
        verify_files: bool = True,
    ) -> None:
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

        data = _load_json(self.ann_file)
        images = self._index_images(data["images"])
        self.category_ids, self.category_names = self._index_categories(data["categories"])
        self.label_to_category_id: Dict[int, int] = {i + 1: c for i, c in enumerate(self.category_ids)}
        self.category_id_to_label: Dict[int, int] = {c: i + 1 for i, c in enumerate(self.category_ids)}
        self.num_classes = len(self.category_ids) + 1
        self.ids: List[int] = [img["id"] for img in data["images"]]

        per_image = self._index_annotations(data["annotations"], images)
        self._records: List[_ImageRecord] = [per_image[image_id] for image_id in self.ids]
        self._aspect_ratios = np.array(
            [record.width / record.height for record in self._records], dtype=np.float64
        )
        if self.with_masks and not self._all_segmented:
            more = f" (and {self._num_unsegmented - 1} more)" if self._num_unsegmented > 1 else ""
            raise ValueError(
                f"{self.ann_file}: with_masks=True but the annotations have no segmentation masks: annotation id "
                f"{self._first_unsegmented}{more} has none; train a box-only model (faster_rcnn) or add masks"
            )

        # Build the pycocotools index from the dict already in memory rather than reading the file twice;
        # COCO() prints progress to stdout, which would interleave with the progress bars of training.
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()

        if verify_files:
            self.check_files(raise_missing=True)

    # ------------------------------------------------------------------ construction helpers
    def _index_images(self, entries: List[Any]) -> Dict[int, Dict[str, Any]]:
        images: Dict[int, Dict[str, Any]] = {}
        for index, img in enumerate(entries):
            if not isinstance(img, dict):
                raise ValueError(f"{self.ann_file}: images[{index}] must be an object, got {img!r}")
            for key in ("id", "file_name", "width", "height"):
                if key not in img:
                    raise ValueError(f"{self.ann_file}: images[{index}] (id {img.get('id')!r}) has no {key!r}")
            image_id = img["id"]
            if not isinstance(image_id, int) or isinstance(image_id, bool):
                raise ValueError(f"{self.ann_file}: images[{index}] has a non-integer id {image_id!r}")
            for key in ("width", "height"):
                value = img[key]
                # Some exporters write sizes as floats (640.0); accept those, refuse fractions and the rest.
                if not _is_number(value) or value <= 0 or float(value) != int(value):
                    raise ValueError(
                        f"{self.ann_file}: image id {image_id} has {key}={value!r}, expected a positive integer"
                    )
            if image_id in images:
                raise ValueError(f"{self.ann_file}: image id {image_id} appears twice in 'images'")
            images[image_id] = img
        return images

    def _index_categories(self, entries: List[Any]) -> Tuple[List[int], List[str]]:
        names: Dict[int, str] = {}
        for index, cat in enumerate(entries):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                raise ValueError(f"{self.ann_file}: categories[{index}] needs an 'id' and a 'name', got {cat!r}")
            cat_id = cat["id"]
            if not isinstance(cat_id, int) or isinstance(cat_id, bool):
                raise ValueError(f"{self.ann_file}: categories[{index}] has a non-integer id {cat_id!r}")
            if cat_id in names:
                raise ValueError(f"{self.ann_file}: category id {cat_id} appears twice in 'categories'")
            names[cat_id] = str(cat["name"])
        if not names:
            raise ValueError(f"{self.ann_file}: 'categories' is empty; a detector needs at least one class")
        ids = sorted(names)
        return ids, [names[c] for c in ids]

    def _index_annotations(
        self, entries: List[Any], images: Dict[int, Dict[str, Any]]
    ) -> Dict[int, _ImageRecord]:
        known_categories = set(self.category_ids)
        grouped: Dict[int, List[Tuple[List[float], int, float, Any]]] = {image_id: [] for image_id in images}
        num_clipped = num_degenerate = num_crowd = 0
        self._num_unsegmented = 0
        self._first_unsegmented: Optional[int] = None
        num_instances = 0

        for index, ann in enumerate(entries):
            if not isinstance(ann, dict):
                raise ValueError(f"{self.ann_file}: annotations[{index}] must be an object, got {ann!r}")
            ann_id = ann.get("id")
            if ann_id is None:
                raise ValueError(f"{self.ann_file}: annotations[{index}] has no 'id'")
            for key in ("image_id", "category_id", "bbox"):
                if key not in ann:
                    raise ValueError(f"{self.ann_file}: annotation id {ann_id} has no {key!r}")
            image_id = ann["image_id"]
            if image_id not in images:
                raise ValueError(
                    f"{self.ann_file}: annotation id {ann_id} refers to image_id {image_id!r}, "
                    "which is not in 'images'"
                )
            category_id = ann["category_id"]
            if category_id not in known_categories:
                raise ValueError(
                    f"{self.ann_file}: annotation id {ann_id} has category_id {category_id!r}, which is not in "
                    f"'categories' (known ids: {self.category_ids[:10]}{'...' if len(self.category_ids) > 10 else ''})"
                )
            bbox = ann["bbox"]
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                raise ValueError(
                    f"{self.ann_file}: annotation id {ann_id} has bbox {bbox!r}, expected 4 finite numbers [x, y, w, h]"
                )
            x, y, w, h = (float(v) for v in bbox)
            # COCOeval reads 'area' and 'iscrowd' of every ground-truth annotation; fill them in memory when
            # a hand-made file leaves them out, so self.coco can be evaluated against (the file is unchanged).
            if "iscrowd" not in ann:
                ann["iscrowd"] = 0
            if "area" not in ann:
                ann["area"] = max(w, 0.0) * max(h, 0.0)
            elif not _is_number(ann["area"]):
                raise ValueError(f"{self.ann_file}: annotation id {ann_id} has area {ann['area']!r}, expected a number")
            if ann["iscrowd"]:
                num_crowd += 1
                continue
            num_instances += 1
            seg = ann.get("segmentation")
            if not _segmentation_present(seg):
                self._num_unsegmented += 1
                if self._first_unsegmented is None:
                    self._first_unsegmented = ann_id

            img = images[image_id]
            x1, y1, x2, y2 = x, y, x + w, y + h
            cx1, cy1 = min(max(x1, 0.0), img["width"]), min(max(y1, 0.0), img["height"])
            cx2, cy2 = min(max(x2, 0.0), img["width"]), min(max(y2, 0.0), img["height"])
            if w >= 0 and h >= 0 and max(cx1 - x1, cy1 - y1, x2 - cx2, y2 - cy2) > _CLIP_TOLERANCE:
                num_clipped += 1
            if cx2 - cx1 < _MIN_BOX_SIDE or cy2 - cy1 < _MIN_BOX_SIDE:
                num_degenerate += 1
                continue
            grouped[image_id].append(
                ([cx1, cy1, cx2, cy2], self.category_id_to_label[category_id], float(ann["area"]), seg)
            )

        self._all_segmented = self._num_unsegmented == 0
        self.has_masks = num_instances > 0 and self._all_segmented
        self.num_crowd = num_crowd
        self.num_clipped = num_clipped
        self.num_degenerate = num_degenerate
        if num_clipped:
            logger.warning(
                "%s: %d box(es) partly outside their image were clipped to it", self.ann_file, num_clipped
            )
        if num_degenerate:
            logger.warning(
                "%s: dropped %d degenerate box(es) (width or height < %g px after clipping) from the training targets",
                self.ann_file,
                num_degenerate,
                _MIN_BOX_SIDE,
            )

        records: Dict[int, _ImageRecord] = {}
        for image_id, items in grouped.items():
            img = images[image_id]
            records[image_id] = _ImageRecord(
                image_id=image_id,
                file_name=str(img["file_name"]),
                width=int(img["width"]),
                height=int(img["height"]),
                boxes=np.array([b for b, _, _, _ in items], dtype=np.float32).reshape(-1, 4),
                labels=np.array([label for _, label, _, _ in items], dtype=np.int64),
                area=np.array([a for _, _, a, _ in items], dtype=np.float32),
                segmentations=tuple(s for _, _, _, s in items),
            )
        return records

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
        return self.images_dir / self._records[index].file_name

    def aspect_ratios(self) -> np.ndarray:
        """Width / height of every image, in item order, from the JSON (no image is opened).

        Returns:
            float64 array of shape ``(len(self),)``, for :func:`resnet_fpn.data.samplers.aspect_ratio_groups`.
        """
        return self._aspect_ratios.copy()

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
        listings: Dict[Path, set] = {}
        missing: List[Tuple[Path, int]] = []
        for record in self._records:
            path = self.images_dir / record.file_name
            folder = path.parent
            if folder not in listings:
                try:
                    listings[folder] = set(os.listdir(folder))
                except FileNotFoundError:
                    listings[folder] = set()
            if path.name not in listings[folder]:
                missing.append((path, record.image_id))
        if missing and raise_missing:
            shown = "\n".join(f"  {path} (image id {image_id})" for path, image_id in missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise FileNotFoundError(
                f"{len(missing)} of {len(self._records)} image file(s) listed in {self.ann_file} are missing:\n"
                f"{shown}{more}"
            )
        return [path for path, _ in missing]

    def load_image(self, index: int) -> np.ndarray:
        """Read item ``index``'s image as an upright RGB uint8 array.

        Args:
            index: position in the dataset.

        Returns:
            ``(H, W, 3)`` uint8 array whose size matches the JSON's ``width``/``height``.

        Raises:
            FileNotFoundError: the file does not exist (the message names the path and the image id).
            ValueError: the decoded size matches neither the JSON's size nor, before the EXIF rotation, its
                transpose.
        """
        record = self._records[index]
        path = self.images_dir / record.file_name
        try:
            with Image.open(path) as raw:
                upright = ImageOps.exif_transpose(raw)
                expected = (record.width, record.height)
                if upright.size != expected:
                    # Some tools annotate the stored pixels and ignore the EXIF orientation; the JSON's size
                    # tells which frame the coordinates are in, so follow it.
                    if raw.size == expected:
                        upright = raw
                    else:
                        raise ValueError(
                            f"{path} (image id {record.image_id}) is {upright.size[0]}x{upright.size[1]} "
                            f"but {self.ann_file} says {record.width}x{record.height}"
                        )
                rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
                # np.array copies into a writable array (np.asarray of a PIL image is read-only), so
                # transforms may work in place.
                return np.array(rgb)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"image file not found: {path} (image id {record.image_id}, listed in {self.ann_file})"
            ) from err

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
        record = self._records[index]
        image = self.load_image(index)
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
