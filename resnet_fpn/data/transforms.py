"""Training augmentation built from the YAML config with albumentations, keeping boxes and masks in sync.

A spec is a list of ``{"name": <albumentations class>, **its arguments}`` dicts, for example::

    - {name: HorizontalFlip, p: 0.5}
    - {name: RandomBrightnessContrast, p: 0.3}
    - {name: RandomScale, scale_limit: 0.2}
    - {name: OneOf, p: 0.5, transforms: [{name: Blur}, {name: GaussNoise}]}

Two entries are ours, for the large-scale-jitter recipes (Ghiasi et al. 2021, "Simple Copy-Paste is a Strong Data
Augmentation Method for Instance Segmentation"; Du et al. 2021, "Simple Training Strategies and Model Scaling for
Object Detection"):

- ``{name: LargeScaleJitter, size: 1024, scale: [0.1, 2.0]}``: albumentations' own transforms in sequence
  (``LongestMaxSize(size)``, ``RandomScale`` by a factor in ``scale``, ``PadIfNeeded`` to a ``size`` square at
  the bottom/right, ``RandomCrop(size, size)``): the image is resized to a random factor of the target size and
  cropped or padded to a fixed square. The padding is the mean pixel (``fill``), which the detector's
  normalisation turns into 0, the value of its own batch padding, and carries no instance. With masks, every
  box is then the tight box of its cropped mask, and an instance whose mask left the crop is dropped.
- ``{name: CopyPaste, p: 0.5}``: pastes the objects of another image of the batch (`CopyPaste`); it works on
  whole batches, so it is built by `build_batch_transform`, after the per-image pipeline (it must come last).

Resizing to the model's input size is not done here: torchvision's ``GeneralizedRCNNTransform`` inside the
detector resizes (``min_size``/``max_size``) and normalises every image (with LSJ, set the model's
``min_size``/``max_size`` to the LSJ size, so that its resize leaves the jittered square as it is).
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["DetectionTransform", "build_transforms", "CopyPaste", "build_batch_transform", "split_augment",
           "LARGE_SCALE_JITTER", "COPY_PASTE", "boxes_from_masks"]

LARGE_SCALE_JITTER = "LargeScaleJitter"
COPY_PASTE = "CopyPaste"
# The mean RGB pixel of ImageNet (torchvision's image_mean x 255): LSJ's padding, 0 after normalisation.
MEAN_PIXEL = (124, 116, 104)

# albumentations' import asks PyPI for a newer version (a blocking request of up to 2 s, and a warning when
# offline); a training library should not phone home at import time. setdefault keeps a user's own choice.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Transforms that would break the contract of CocoDetection: the model normalises internally, and the
# dataset converts the uint8 array to a tensor itself.
_FORBIDDEN = {
    "Normalize": "the detector normalises its input itself (GeneralizedRCNNTransform image_mean/image_std)",
    "ToTensorV2": "CocoDetection converts the image and target to tensors itself",
    "ToFloat": "CocoDetection expects the transformed image as uint8 and scales it to [0, 1] itself",
    "FromFloat": "CocoDetection expects the transformed image as uint8 and scales it to [0, 1] itself",
}
# Abstract bases and nested full pipelines (which would bring their own bbox settings) are not spec entries.
_NOT_ENTRIES = {"BasicTransform", "DualTransform", "ImageOnlyTransform", "Transform3D", "BaseCompose", "Compose",
                "ReplayCompose"}
# A box keeping less than this share of its area after a crop/affine transform no longer shows its object.
DEFAULT_MIN_VISIBILITY = 0.1
# Boxes below this area (px^2) or side (px) after a transform are dropped: the detectors reject boxes with a
# side of 0, and a sliver of a box has nothing left to learn from.
DEFAULT_MIN_AREA = 4.0
DEFAULT_MIN_SIDE = 1.0


def _albumentations():
    # Imported on first use: it takes seconds (cv2, pydantic), and most users of resnet_fpn.data never
    # augment (evaluation, export).
    import albumentations

    return albumentations


def _valid_names(A) -> List[str]:
    names = []
    for name in dir(A):
        obj = getattr(A, name)
        if isinstance(obj, type) and (issubclass(obj, A.BasicTransform) or issubclass(obj, A.BaseCompose)):
            if name not in _FORBIDDEN and name not in _NOT_ENTRIES and not name.startswith("_"):
                names.append(name)
    return sorted(names)


def _build_one(A, entry: Any, where: str):
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping like {{'name': 'HorizontalFlip', 'p': 0.5}}, got {entry!r}")
    if "name" not in entry:
        raise ValueError(f"{where}: missing 'name' (an albumentations transform class) in {dict(entry)!r}")
    name = entry["name"]
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    if name == LARGE_SCALE_JITTER:
        return _large_scale_jitter(A, kwargs, where)
    if name == COPY_PASTE:
        raise ValueError(f"{where}: {COPY_PASTE} mixes the images of a batch and cannot be nested or given to "
                         f"build_transforms; give it as the last entry of the spec (see split_augment)")
    if name in _FORBIDDEN:
        raise ValueError(f"{where}: transform {name!r} is not allowed here: {_FORBIDDEN[name]}")
    cls = getattr(A, name, None) if isinstance(name, str) and name not in _NOT_ENTRIES else None
    is_transform = isinstance(cls, type) and issubclass(cls, A.BasicTransform)
    is_compose = isinstance(cls, type) and issubclass(cls, A.BaseCompose)
    if not (is_transform or is_compose):
        valid = _valid_names(A)
        examples = [n for n in ("HorizontalFlip", "RandomBrightnessContrast", "RandomScale", "Affine", "OneOf")
                    if n in valid]
        close = difflib.get_close_matches(name, valid, n=3) if isinstance(name, str) else []
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"{where}: unknown transform name {name!r}; expected an albumentations {A.__version__} transform "
            f"class such as {examples} ({len(valid)} valid names).{hint}"
        )
    if is_transform:
        targets = set(getattr(cls, "_targets", ()))
        if A.core.type_definitions.Targets.BBOXES not in targets and not issubclass(cls, A.ImageOnlyTransform):
            raise ValueError(
                f"{where}: transform {name!r} changes geometry but cannot move bounding boxes; "
                "it would leave boxes and masks out of sync with the image"
            )
    if is_compose:
        children = kwargs.pop("transforms", None)
        if not isinstance(children, (list, tuple)) or not children:
            raise ValueError(f"{where}: {name!r} needs a non-empty 'transforms' list of transform specs")
        kwargs["transforms"] = [
            _build_one(A, child, f"{where}.transforms[{i}] ({name})") for i, child in enumerate(children)
        ]
    # albumentations 2.x only warns about unknown arguments (and then ignores them); a typo in a config
    # should fail loudly, so check the names against the constructor's signature first.
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown and not accepts_any:
        raise ValueError(f"{where}: transform {name!r} got unknown argument(s) {unknown}; it accepts {allowed}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: transform {name!r} rejected its arguments {kwargs!r}: {err}") from err


def _large_scale_jitter(A, kwargs: Dict[str, Any], where: str):
    """``LargeScaleJitter`` as albumentations' transforms (see the module docstring).

    Raises:
        ValueError: an unknown argument, a size that is not a positive int, a scale that is not
            ``[low, high]`` with ``0 < low <= high``, a fill that is not a number or three.
    """
    import cv2

    allowed = ("size", "scale", "fill")
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: transform {LARGE_SCALE_JITTER!r} got unknown argument(s) {unknown}; it accepts "
                         f"{list(allowed)}")
    size = kwargs.get("size", 1024)
    scale = kwargs.get("scale", [0.1, 2.0])
    fill = kwargs.get("fill", MEAN_PIXEL)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{where}: {LARGE_SCALE_JITTER} size must be a positive integer, got {size!r}")
    if (not isinstance(scale, (list, tuple)) or len(scale) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
            or not 0 < scale[0] <= scale[1]):
        raise ValueError(f"{where}: {LARGE_SCALE_JITTER} scale must be [low, high] with 0 < low <= high, "
                         f"got {scale!r}")
    fills = [fill] if isinstance(fill, (int, float)) and not isinstance(fill, bool) else fill
    if not isinstance(fills, (list, tuple)) or len(fills) not in (1, 3) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 255 for v in fills):
        raise ValueError(f"{where}: {LARGE_SCALE_JITTER} fill must be a pixel value in [0, 255] or three, got {fill!r}")
    fill_value = tuple(float(v) for v in fills) if len(fills) == 3 else float(fills[0])
    low, high = float(scale[0]), float(scale[1])
    return A.Sequential([
        A.LongestMaxSize(max_size=size),
        # RandomScale draws the factor 1 + U(limit): [low, high] of the target size.
        A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0),
        A.PadIfNeeded(min_height=size, min_width=size, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                      fill=fill_value, fill_mask=0),
        A.RandomCrop(height=size, width=size),
    ], p=1.0)


def boxes_from_masks(masks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The tight xyxy box of each mask (pixel edges: a one-pixel mask at (x, y) gives ``[x, y, x + 1, y + 1]``).

    Args:
        masks: ``(N, H, W)`` array, nonzero inside.

    Returns:
        ``(boxes, nonempty)``: float32 ``(N, 4)`` (zeros for an empty mask) and the bool ``(N,)`` of masks with
        at least one pixel.
    """
    masks = np.asarray(masks).astype(bool, copy=False)
    n = len(masks)
    boxes = np.zeros((n, 4), dtype=np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    nonempty = rows.any(axis=1)
    for i in np.flatnonzero(nonempty):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes, nonempty


class DetectionTransform:
    """Apply an albumentations pipeline to an image and its detection target, keeping them in sync.

    Called by :class:`resnet_fpn.data.CocoDetection` with the RGB uint8 ``(H, W, 3)`` image and the target as
    numpy arrays (``boxes`` xyxy ``(N, 4)``, ``labels``, ``area``, ``iscrowd`` and optionally ``masks``
    ``(N, H, W)``). Boxes that a transform pushes out of the image or shrinks below the visibility limits are
    dropped together with their label, area, iscrowd and mask: the index of every box rides through the
    pipeline as a label field. ``area`` is recomputed after the pipeline (mask pixel count with masks, box
    area without), since a geometric transform changes it.

    Randomness: each data-loader worker re-seeds the pipeline from ``torch.utils.data.get_worker_info().seed``
    (itself derived from torch's seed, so ``seed_everything`` makes runs repeatable); without this every forked
    worker would inherit the same generator state and produce the same augmentations. In the main process
    (``num_workers=0``) the pipeline uses ``seed``, or, when it is ``None``, ``torch.initial_seed()`` at the
    first call.

    With ``masks_define_boxes`` (the spec has a ``LargeScaleJitter``) and masks in the target, every box is
    replaced by the tight box of its transformed mask, and an instance whose mask is empty after the pipeline is
    dropped: a crop cuts a mask, and the clipped box of an L-shaped object is not the box of what is left.

    Args:
        compose: the ``albumentations.Compose`` to apply; it must have been built with ``bbox_params`` in
            ``pascal_voc`` format and the label field ``"box_index"``, as :func:`build_transforms` does.
        seed: seed used in the main process (``None``: ``torch.initial_seed()``).
        masks_define_boxes: recompute the boxes from the masks after the pipeline (see above).
    """

    def __init__(self, compose: Any, *, seed: Optional[int] = None, masks_define_boxes: bool = False) -> None:
        self.compose = compose
        self.seed = seed
        self.masks_define_boxes = bool(masks_define_boxes)
        self._seeded_for: Optional[Tuple[int, Optional[int]]] = None

    def __repr__(self) -> str:
        names = [type(t).__name__ for t in self.compose.transforms]
        return f"{type(self).__name__}({names})"

    def _reseed(self) -> None:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            key, seed = (os.getpid(), info.seed), info.seed
        elif self.seed is None:
            # Main process (num_workers=0) without an explicit seed: follow torch's seed, so that
            # torch.manual_seed / Lightning's seed_everything make the augmentations repeatable too.
            key, seed = (os.getpid(), None), torch.initial_seed()
        else:
            return  # the Compose was built with self.seed
        if self._seeded_for != key:
            if hasattr(self.compose, "set_random_seed"):
                self.compose.set_random_seed(seed % (2**32))
            else:
                # albumentations < 2 draws from numpy's global generator, which torch does not seed per worker.
                np.random.seed(seed % (2**32))
            self._seeded_for = key

    def __call__(self, image: np.ndarray, target: Dict[str, Any]) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Transform ``image`` and ``target`` together.

        Args:
            image: ``(H, W, 3)`` uint8 RGB array.
            target: dict with numpy ``boxes`` ``(N, 4)`` xyxy, ``labels`` ``(N,)`` and optionally ``area``,
                ``iscrowd``, ``masks`` ``(N, H, W)``; other keys are passed through unchanged.

        Returns:
            The transformed ``(image, target)``; ``boxes``/``labels``/``area``/``iscrowd``/``masks`` keep only
            the boxes that survived, in their original order.

        Raises:
            ValueError: ``image`` is not ``(H, W, 3)`` uint8, or the target arrays disagree in length.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(
                f"expected an (H, W, 3) uint8 image, got {type(image).__name__} "
                f"{getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            )
        self._reseed()
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        for key in ("labels", "area", "iscrowd", "masks"):
            if key in target and len(target[key]) != n:
                raise ValueError(f"target[{key!r}] has {len(target[key])} entries but there are {n} boxes")
        inputs: Dict[str, Any] = {"image": image, "bboxes": boxes, "box_index": np.arange(n)}
        masks = target.get("masks")
        # albumentations cannot stack an empty list of masks; carry none and rebuild the (0, H, W) array.
        if masks is not None and n > 0:
            inputs["masks"] = np.asarray(masks, dtype=np.uint8)
        out = self.compose(**inputs)

        new_image = out["image"]
        keep = np.asarray(out["box_index"], dtype=np.int64).reshape(-1)
        result = dict(target)
        result["boxes"] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        for key in ("labels", "iscrowd"):
            if key in target:
                result[key] = np.asarray(target[key])[keep]
        height, width = new_image.shape[:2]
        if masks is not None:
            new_masks = out["masks"] if n > 0 else np.zeros((0, height, width), dtype=np.uint8)
            result["masks"] = np.asarray(new_masks, dtype=np.uint8).reshape(-1, height, width)[keep]
            if self.masks_define_boxes:
                tight, nonempty = boxes_from_masks(result["masks"])
                for key in ("labels", "iscrowd", "masks"):
                    if key in result:
                        result[key] = result[key][nonempty]
                result["boxes"], keep = tight[nonempty], keep[nonempty]
            if "area" in target:
                result["area"] = result["masks"].reshape(len(keep), height * width).sum(axis=1).astype(np.float32)
        elif "area" in target:
            b = result["boxes"]
            result["area"] = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).astype(np.float32)
        return new_image, result


def build_transforms(
    spec: Optional[Sequence[Mapping[str, Any]]],
    *,
    min_visibility: float = DEFAULT_MIN_VISIBILITY,
    min_area: float = DEFAULT_MIN_AREA,
    min_side: float = DEFAULT_MIN_SIDE,
    seed: Optional[int] = None,
) -> Optional[DetectionTransform]:
    """Build the training augmentation from a config spec.

    Args:
        spec: list of dicts, each ``{"name": <albumentations transform class>, **arguments}``; compositions
            (``OneOf``, ``SomeOf``, ``Sequential``) take a nested ``transforms`` list. ``None`` or ``[]``
            means no augmentation.
        min_visibility: a box keeping less than this fraction of its area after the pipeline is dropped.
        min_area: a box smaller than this (px^2) after the pipeline is dropped.
        min_side: a box narrower or lower than this (px) after the pipeline is dropped.
        seed: seed of the pipeline in the main process (workers re-seed from torch, see
            :class:`DetectionTransform`).

    Returns:
        A :class:`DetectionTransform` for ``CocoDetection(transforms=...)``, or ``None`` for an empty spec.

    Raises:
        ValueError: an entry is not a mapping or has no ``name``, a name is unknown (the message lists valid
            ones) or not allowed (``Normalize``, ``ToTensorV2``, ...), a transform cannot move boxes, or a
            transform rejects its arguments (the message names it).
        TypeError: ``spec`` is not a list.
    """
    if spec is None:
        return None
    if isinstance(spec, (str, bytes, Mapping)) or not isinstance(spec, Sequence):
        raise TypeError(f"augmentation spec must be a list of transform dicts, got {type(spec).__name__}: {spec!r}")
    if not spec:
        return None
    for name, value in (("min_visibility", min_visibility), ("min_area", min_area), ("min_side", min_side)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if min_visibility > 1:
        raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility!r}")
    A = _albumentations()
    transforms = [_build_one(A, entry, f"augmentation[{i}]") for i, entry in enumerate(spec)]
    masks_define_boxes = any(isinstance(e, Mapping) and e.get("name") == LARGE_SCALE_JITTER for e in spec)
    # albumentations >= 2 gives each Compose its own generator (seed=); 1.x has no such argument.
    seed_kwargs = {"seed": seed} if "seed" in inspect.signature(A.Compose.__init__).parameters else {}
    with warnings.catch_warnings():
        # A spec of image-only transforms makes albumentations warn that the bbox processor has nothing to
        # do; that is expected (boxes then pass through unchanged), so keep the log clean.
        warnings.filterwarnings("ignore", message="Got processor for bboxes, but no transform to process it")
        compose = A.Compose(
            transforms,
            bbox_params=A.BboxParams(
                format="pascal_voc",
                label_fields=["box_index"],
                min_visibility=float(min_visibility),
                min_area=float(min_area),
                min_width=float(min_side),
                min_height=float(min_side),
                # Input boxes are already clipped by CocoDetection; clip=True also absorbs float round-off
                # that would otherwise make albumentations reject a box touching the border.
                clip=True,
            ),
            **seed_kwargs,
        )
    return DetectionTransform(compose, seed=seed, masks_define_boxes=masks_define_boxes)


def split_augment(spec: Optional[Sequence[Mapping[str, Any]]]) -> Tuple[List[Mapping[str, Any]],
                                                                          Optional[Mapping[str, Any]]]:
    """Split a ``data.augment`` spec into the per-image entries and the batch-level ``CopyPaste`` entry.

    Args:
        spec: the list of entries (None: no augmentation).

    Returns:
        ``(per_image, copy_paste)``: the entries for :func:`build_transforms`, and the ``CopyPaste`` entry for
        :func:`build_batch_transform` (None without one).

    Raises:
        ValueError: more than one ``CopyPaste``, or one that is not the last entry (it pastes the augmented
            images of a batch into each other, so it runs after every per-image transform).
        TypeError: ``spec`` is not a list.
    """
    if spec is None:
        return [], None
    if isinstance(spec, (str, bytes, Mapping)) or not isinstance(spec, Sequence):
        raise TypeError(f"augmentation spec must be a list of transform dicts, got {type(spec).__name__}: {spec!r}")
    at = [i for i, e in enumerate(spec) if isinstance(e, Mapping) and e.get("name") == COPY_PASTE]
    if not at:
        return list(spec), None
    if len(at) > 1 or at[0] != len(spec) - 1:
        raise ValueError(f"augmentation[{at[0]}]: {COPY_PASTE} must be the last entry, and only one (it pastes the "
                         f"augmented images of a batch into each other); got it at {at} of {len(spec)} entries")
    return list(spec[:-1]), spec[-1]


class CopyPaste:
    """Simple Copy-Paste (Ghiasi et al. 2021) across the images of a batch, with their masks.

    Each image, with probability `p`, receives a random subset of the instances of the next image of the batch
    (each instance with probability 1/2, at least one), pasted at the same place (both images have been jittered
    independently by the per-image pipeline; LSJ makes them the same square). The source is aligned at the top
    left and cut to the destination's size. Pixels under the pasted objects are removed from the destination's
    masks, their boxes recomputed as the tight boxes of what remains, and instances left without a pixel dropped;
    the pasted instances are appended with the tight boxes of their masks. Composition is plain (no blending:
    the paper finds Gaussian smoothing of the alpha makes no difference).

    Randomness follows :class:`DetectionTransform`: each data-loader worker re-seeds from its torch seed; the
    main process uses `seed` (None: ``torch.initial_seed()``).

    Args:
        p: the probability that an image receives pasted objects.
        keep_masks: keep ``masks`` in the returned targets (False for a box-only detector: they were loaded for
            the paste only).
        seed: seed in the main process.

    Raises:
        ValueError: `p` not in [0, 1].
    """

    def __init__(self, *, p: float = 0.5, keep_masks: bool = True, seed: Optional[int] = None) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"{COPY_PASTE} p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.keep_masks = keep_masks
        self.seed = seed
        self._rng: Optional[np.random.Generator] = None
        self._seeded_for: Optional[Tuple[int, Optional[int]]] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            key, seed = (os.getpid(), info.seed), info.seed
        else:
            key, seed = (os.getpid(), None), (torch.initial_seed() if self.seed is None else self.seed)
        if self._rng is None or self._seeded_for != key:
            self._rng = np.random.default_rng(seed % (2**63))
            self._seeded_for = key
        return self._rng

    def __call__(self, batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]) -> List[Tuple[torch.Tensor, Dict[str, Any]]]:
        """Paste within `batch`, a list of ``(image, target)`` as ``CocoDetection`` returns them (float CHW image,
        target tensors with ``masks`` ``(N, H, W)`` uint8).

        Returns:
            The new list (the inputs are not modified).

        Raises:
            ValueError: a target without ``masks`` (copy-paste needs instance masks).
        """
        for _, target in batch:
            if "masks" not in target:
                raise ValueError(f"{COPY_PASTE} needs instance masks (it pastes objects by their masks, Ghiasi et al. "
                                 f"2021); the targets have none: use a data set with segmentation masks, or remove "
                                 f"{COPY_PASTE} from data.augment")
        rng = self._generator()
        out = []
        for i, (image, target) in enumerate(batch):
            if len(batch) > 1 and rng.random() < self.p:
                source = batch[(i + 1) % len(batch)]
                image, target = paste_instances(image, target, source[0], source[1], rng=rng)
            if not self.keep_masks:
                target = {k: v for k, v in target.items() if k != "masks"}
            out.append((image, target))
        return out


def paste_instances(image: torch.Tensor, target: Dict[str, Any], src_image: torch.Tensor, src_target: Dict[str, Any],
                    *, rng: np.random.Generator, select: Optional[np.ndarray] = None
                    ) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Paste instances of (`src_image`, `src_target`) onto (`image`, `target`); see `CopyPaste`.

    Args:
        image, target: the destination (CHW image; ``boxes``, ``labels``, ``masks``, optional ``area``/``iscrowd``).
        src_image, src_target: the source.
        rng: draws the subset of source instances (when `select` is None).
        select: bool ``(N_src,)``: which source instances to paste (None: each with probability 1/2, at least one).

    Returns:
        The new ``(image, target)``.
    """
    src_masks = src_target["masks"]
    n = len(src_masks)
    if n == 0:
        return image, target
    if select is None:
        select = rng.random(n) < 0.5
        if not select.any():
            select[rng.integers(n)] = True
    chosen = torch.as_tensor(np.flatnonzero(select), dtype=torch.int64)
    height, width = image.shape[-2:]
    h, w = min(height, src_image.shape[-2]), min(width, src_image.shape[-1])
    pasted = torch.zeros((len(chosen), height, width), dtype=torch.uint8)
    pasted[:, :h, :w] = src_masks[chosen][:, :h, :w]
    alpha = pasted.bool().any(dim=0)
    if not bool(alpha.any()):
        return image, target
    new_image = image.clone()
    canvas = torch.zeros_like(image)
    canvas[:, :h, :w] = src_image[:, :h, :w]
    new_image[:, alpha] = canvas[:, alpha]

    masks = target["masks"] * (~alpha).to(torch.uint8)
    boxes, nonempty = boxes_from_masks(masks.numpy())
    pasted_boxes, pasted_nonempty = boxes_from_masks(pasted.numpy())
    keep = torch.as_tensor(nonempty)
    keep_pasted = torch.as_tensor(pasted_nonempty)
    result = dict(target)
    result["masks"] = torch.cat([masks[keep], pasted[keep_pasted]])
    result["boxes"] = torch.cat([torch.as_tensor(boxes[nonempty]), torch.as_tensor(pasted_boxes[pasted_nonempty])])
    for key in ("labels", "iscrowd"):
        if key in target:
            result[key] = torch.cat([target[key][keep], src_target[key][chosen][keep_pasted]])
    if "area" in target:
        result["area"] = result["masks"].flatten(1).sum(dim=1).to(torch.float32)
    return new_image, result


def build_batch_transform(entry: Optional[Mapping[str, Any]], *, keep_masks: bool = True,
                          seed: Optional[int] = None) -> Optional[CopyPaste]:
    """The batch-level ``CopyPaste`` of a spec (the second value of :func:`split_augment`).

    Args:
        entry: ``{"name": "CopyPaste", "p": 0.5}`` or None.
        keep_masks: see `CopyPaste`.
        seed: seed in the main process.

    Returns:
        The `CopyPaste`, or None.

    Raises:
        ValueError: an unknown argument or a bad `p` (the entry named).
    """
    if entry is None:
        return None
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    unknown = sorted(set(kwargs) - {"p"})
    if unknown:
        raise ValueError(f"augmentation: transform {COPY_PASTE!r} got unknown argument(s) {unknown}; it accepts ['p']")
    return CopyPaste(p=kwargs.get("p", 0.5), keep_masks=keep_masks, seed=seed)
