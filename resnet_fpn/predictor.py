"""Run a trained detector on pictures: files, PIL images, numpy arrays or tensors in, named detections out.

    >>> predictor = Predictor.from_checkpoint("runs/fruits/best.ckpt", score_threshold=0.5)
    >>> pred = predictor("photo.jpg")
    >>> pred.names, pred.boxes            # ["date", "fig"], tensor([[x1, y1, x2, y2], ...])
    >>> pred.to_coco_results(image_id=42) # COCO results entries (xywh boxes, RLE masks)

Images are read as the training data set reads them (``resnet_fpn.data.CocoDetection``): RGB, alpha dropped,
EXIF orientation applied so that photos are upright. The detector's own transform resizes them as in training
(``min_size``/``max_size``) and torchvision maps boxes and masks back to the original image, so predictions are
in the pixels of the picture passed in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from .checkpoint import detector_from_checkpoint
from .coco_format import MASK_THRESHOLD, Category, encode_masks, xyxy_to_xywh
from .data.images import read_image  # the data set's reader: inference sees images as training did
from .deploy import RUNTIMES, check_runtime, optimize_for_inference

__all__ = ["ImageInput", "Prediction", "Predictor", "read_image", "to_float_image"]

#: What `Predictor` accepts as one image.
ImageInput = Union[str, "os.PathLike[str]", Image.Image, np.ndarray, Tensor]
# Float tensors are checked to lie in [0, 1] up to this slack (resampling can overshoot by rounding).
_RANGE_SLACK = 1e-3


def _array_to_chw(array: np.ndarray, where: str) -> Tensor:
    if array.dtype != np.uint8:
        raise ValueError(f"{where}: numpy images must be uint8 (H, W, 3), got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: numpy images must be (H, W, 3) uint8 (or (H, W), (H, W, 1), (H, W, 4)), "
                         f"got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[:, :, :3]  # RGBA: alpha dropped, as the data set does
    chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
    chw /= 255.0
    return torch.from_numpy(chw)


def to_float_image(image: ImageInput, *, where: str = "image") -> Tensor:
    """Convert one supported image to the detector's input: ``(3, H, W)`` float32 in [0, 1], RGB.

    Args:
        image: a path (str or ``os.PathLike``), a PIL image, an ``(H, W, 3)`` uint8 numpy array (RGB), a
            ``(3, H, W)`` float tensor in [0, 1] or a ``(3, H, W)`` uint8 tensor (as ``torchvision.io``
            reads).
        where: how error messages name the image (e.g. ``"images[3]"``).

    Returns:
        The float tensor (on the CPU, or the device of an input tensor).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that cannot be decoded, a float tensor outside [0, 1] (a 0-255 float image), or
            a wrong shape or dtype.
        TypeError: any other type.
    """
    if isinstance(image, (str, os.PathLike)):
        return _array_to_chw(read_image(image), str(image))
    if isinstance(image, Image.Image):
        return _array_to_chw(np.array(ImageOps.exif_transpose(image).convert("RGB")), where)
    if isinstance(image, np.ndarray):
        return _array_to_chw(image, where)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{where}: tensor images must be (3, H, W), got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        if not image.is_floating_point():
            raise ValueError(f"{where}: tensor images must be float in [0, 1] or uint8, got {image.dtype}")
        low, high = float(image.min()), float(image.max())
        if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ValueError(
                f"{where}: float tensor images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}] "
                f"(divide a 0-255 image by 255)"
            )
        return image.float()
    raise TypeError(
        f"{where}: expected a path, PIL image, numpy uint8 (H, W, 3) array or (3, H, W) tensor, "
        f"got {type(image).__name__}"
    )


@dataclass
class Prediction:
    """The detections of one image, at or above the predictor's score threshold, best first.

    Attributes:
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` in the pixels of the image passed in.
        scores: ``(N,)`` float32.
        labels: ``(N,)`` int64 training labels (1..K).
        category_ids: the data set's category id of each detection.
        names: the category name of each detection.
        masks: ``(N, H, W)`` bool (probability > 0.5) for models with masks, else None.
        image_size: ``(height, width)`` of the image.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    category_ids: List[int]
    names: List[str]
    masks: Optional[Tensor]
    image_size: Tuple[int, int]

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to_coco_results(self, image_id: int, *, file_name: Optional[str] = None) -> List[Dict[str, Any]]:
        """COCO results entries, as ``tools/eval_det.py`` and ``resnet_fpn.evaluation`` read them.

        The same conversion as ``COCOEvaluator``'s: ``bbox`` is ``[x, y, width, height]``, ``category_id`` the
        data set's id, ``segmentation`` (models with masks only) a compressed RLE whose ``counts`` is a str.
        Each entry also names its category (``category_name``) and, when given, its image (``file_name``):
        pycocotools ignores both, and ``resnet_fpn.evaluation`` refuses results whose names contradict the
        ground truth for their ids (results scored against another file's images or classes).

        Args:
            image_id: the image's id in the ground-truth file (the caller knows it).
            file_name: the image's file name (as the ground truth writes it, or the file's own name); None
                leaves ``file_name`` out.

        Returns:
            One dict per detection: ``image_id``, ``category_id``, ``category_name``, ``score``, ``bbox`` (and
            ``segmentation``, ``file_name``).

        Raises:
            TypeError: `image_id` is not an int, or `file_name` is not a str.
        """
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise TypeError(f"image_id must be an int, got {type(image_id).__name__} {image_id!r}")
        if file_name is not None and not isinstance(file_name, str):
            raise TypeError(f"file_name must be a str or None, got {type(file_name).__name__} {file_name!r}")
        scores = self.scores.to(torch.float64).tolist()
        out = [
            {"image_id": int(image_id), "category_id": int(c), "category_name": n, "score": s, "bbox": b}
            for c, n, s, b in zip(self.category_ids, self.names, scores, xyxy_to_xywh(self.boxes))
        ]
        if file_name is not None:
            for entry in out:
                entry["file_name"] = file_name
        if self.masks is not None and len(out):
            for entry, rle in zip(out, encode_masks(self.masks)):
                entry["segmentation"] = rle
        return out


class Predictor:
    """A detector plus its categories: images in, `Prediction` out.

    Args:
        detector: a torchvision detector (``build_detector``); moved to `device` and set to eval mode.
        categories: label -> data set id and name, for every label the detector predicts.
        device: where the detector runs ("cpu", "cuda", "cuda:1", or a ``torch.device``).
        score_threshold: keep detections scoring at least this. The detector's own ``score_thresh`` (0.05 by
            default) is applied first, so lower values keep nothing more.

    Raises:
        ValueError: a threshold outside [0, 1], no categories, or repeated labels.
        TypeError: `detector` is not a module.
    """

    def __init__(
        self,
        detector: nn.Module,
        categories: Sequence[Category],
        *,
        device: Union[str, torch.device] = "cpu",
        score_threshold: float = 0.5,
    ) -> None:
        if not isinstance(detector, nn.Module):
            raise TypeError(f"detector must be a torch module, got {type(detector).__name__}")
        if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) or not (
            0.0 <= score_threshold <= 1.0
        ):
            raise ValueError(f"score_threshold must be a number in [0, 1], got {score_threshold!r}")
        categories = list(categories)
        if not categories:
            raise ValueError("categories is empty: the predictor needs label -> (id, name) for every label")
        self.by_label: Dict[int, Category] = {c.label: c for c in categories}
        if len(self.by_label) != len(categories):
            raise ValueError(f"categories repeat a label: {[c.label for c in categories]}")
        self.categories = categories
        self.device = torch.device(device)
        self.score_threshold = float(score_threshold)
        self.detector = detector.to(self.device).eval()

    @classmethod
    def from_checkpoint(
        cls,
        path: Union[str, "os.PathLike[str]"],
        *,
        device: Union[str, torch.device] = "cpu",
        score_threshold: float = 0.5,
        runtime: str = "auto",
    ) -> "Predictor":
        """Rebuild the detector of a training checkpoint (``detector_from_checkpoint``) and wrap it.

        Args:
            path: a checkpoint of ``tools/train_det.py`` or ``save_detector_checkpoint``.
            device: where to run.
            score_threshold: see the class.
            runtime: what runs the detector: ``"auto"`` (default: ``optimize_for_inference``'s fastest runtime
                measured for this machine class, parity-checked at the first call; the choice is
                ``predictor.detector.choice``), ``"torch"``, ``"onnxruntime"``, ``"openvino"``, or ``"eager"``
                (the checkpoint's detector as it is). The predictions' contract is the same with every runtime.

        Returns:
            The predictor.

        Raises:
            FileNotFoundError: no such checkpoint.
            ValueError: not a detector checkpoint of this project, a bad threshold, or an unknown runtime (the
                valid ones named) or one that is not installed.
        """
        if runtime != "eager":
            try:
                check_runtime(runtime)
            except ValueError:
                raise ValueError(f"runtime must be one of {RUNTIMES + ('eager',)}, got {runtime!r}") from None
        loaded = detector_from_checkpoint(path, map_location="cpu")
        detector = loaded.detector.to(torch.device(device)).eval()
        if runtime != "eager":
            detector = optimize_for_inference(detector, runtime=runtime)
        return cls(detector, loaded.categories, device=device, score_threshold=score_threshold)

    def __call__(
        self, images: Union[ImageInput, Sequence[ImageInput]], *, batch_size: int = 1
    ) -> Union[Prediction, List[Prediction]]:
        """Detect objects in one image or a list of images.

        Args:
            images: one image or a list/tuple of images, each of a kind `to_float_image` accepts (paths, PIL
                images, ``(H, W, 3)`` uint8 arrays, ``(3, H, W)`` float tensors in [0, 1]).
            batch_size: images per forward pass (torchvision pads a batch to its largest image, so on a CPU
                one at a time is usually fastest).

        Returns:
            A `Prediction` for a single image, a list of them (in order) for a list.

        Raises:
            FileNotFoundError: a path that does not exist.
            ValueError: an image that cannot be read or has a wrong shape/range (the message names it), a
                predicted label without a category, or a bad `batch_size`.
            TypeError: an unsupported image type.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        predictions: List[Prediction] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            tensors = [
                to_float_image(image, where=f"images[{start + i}]").to(self.device) for i, image in enumerate(chunk)
            ]
            with torch.inference_mode():
                outputs = self.detector(tensors)
            predictions.extend(self._to_prediction(out, tuple(t.shape[-2:])) for out, t in zip(outputs, tensors))
        return predictions[0] if single else predictions

    def _to_prediction(self, output: Dict[str, Tensor], size: Tuple[int, ...]) -> Prediction:
        keep = output["scores"] >= self.score_threshold
        labels = output["labels"][keep].cpu()
        unknown = sorted(set(labels.tolist()) - set(self.by_label))
        if unknown:
            raise ValueError(
                f"the detector predicted labels {unknown} that have no category (known labels "
                f"{sorted(self.by_label)}); the categories do not belong to this detector"
            )
        cats = [self.by_label[label] for label in labels.tolist()]
        masks = None
        if "masks" in output:
            # (N, 1, H, W) probabilities -> (N, H, W) bool, thresholded where they are (one byte a pixel moves).
            masks = (output["masks"][keep][:, 0] > MASK_THRESHOLD).cpu()
        return Prediction(
            boxes=output["boxes"][keep].float().cpu(),
            scores=output["scores"][keep].float().cpu(),
            labels=labels,
            category_ids=[c.id for c in cats],
            names=[c.name for c in cats],
            masks=masks,
            image_size=(int(size[0]), int(size[1])),
        )
