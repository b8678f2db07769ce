"""Training augmentation built from the YAML config with albumentations, keeping boxes and masks in sync.

A spec is a list of ``{"name": <albumentations class>, **its arguments}`` dicts, for example::

    - {name: HorizontalFlip, p: 0.5}
    - {name: RandomBrightnessContrast, p: 0.3}
    - {name: RandomScale, scale_limit: 0.2}
    - {name: OneOf, p: 0.5, transforms: [{name: Blur}, {name: GaussNoise}]}

Resizing to the model's input size is not done here: torchvision's ``GeneralizedRCNNTransform`` inside the
detector resizes (``min_size``/``max_size``) and normalises every image.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["DetectionTransform", "build_transforms"]

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

    Args:
        compose: the ``albumentations.Compose`` to apply; it must have been built with ``bbox_params`` in
            ``pascal_voc`` format and the label field ``"box_index"``, as :func:`build_transforms` does.
        seed: seed used in the main process (``None``: ``torch.initial_seed()``).
    """

    def __init__(self, compose: Any, *, seed: Optional[int] = None) -> None:
        self.compose = compose
        self.seed = seed
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
    return DetectionTransform(compose, seed=seed)
