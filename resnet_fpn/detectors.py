"""Detectors: torchvision's Faster/Mask R-CNN, RetinaNet and FCOS heads on this project's backbones."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from .backbone import build_backbone, is_pyramid, list_backbones, resolve_norm_and_freeze
from .models.variants import suggest_names
from .weights import WeightsSource, load_weights

__all__ = ["DETECTORS", "DetectorSpec", "build_detector", "list_detectors", "is_detector", "iou_types_of"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DetectorSpec:
    """What a detector name means beyond its torchvision class.

    Attributes:
        top_block: the FPN top block its heads expect (R-CNNs pool P2-P5 and anchor P2-P6: "maxpool";
            one-stage heads run on P3-P7: "p6p7").
        iou_types: what it predicts, as COCO evaluation types ("bbox", plus "segm" for masks).
        class_layers: its class-dependent predictor layers (module names): the only tensors whose shapes may
            differ from a checkpoint's when fine-tuning on another number of classes (see `build_detector`).
    """

    top_block: str
    iou_types: Tuple[str, ...] = ("bbox",)
    class_layers: Tuple[str, ...] = ()


_BOX_PREDICTOR = ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred")
_CLS_LOGITS = ("head.classification_head.cls_logits",)
DETECTORS = {
    "faster_rcnn": DetectorSpec("maxpool", class_layers=_BOX_PREDICTOR),
    "mask_rcnn": DetectorSpec("maxpool", ("bbox", "segm"),
                              class_layers=_BOX_PREDICTOR + ("roi_heads.mask_predictor.mask_fcn_logits",)),
    "retinanet": DetectorSpec("p6p7", class_layers=_CLS_LOGITS),
    "fcos": DetectorSpec("p6p7", class_layers=_CLS_LOGITS),
}


def list_detectors() -> List[str]:
    """Detector names for ``build_detector`` (``["faster_rcnn", "mask_rcnn", "retinanet", "fcos"]``)."""
    return list(DETECTORS)


def iou_types_of(model: str) -> Tuple[str, ...]:
    """The COCO IoU types a detector name is evaluated with, e.g. ``("bbox", "segm")`` for "mask_rcnn".

    Raises:
        ValueError: an unknown detector name (the closest valid ones are suggested).
    """
    return _spec(model).iou_types


def _spec(model: object) -> DetectorSpec:
    if model not in DETECTORS:
        raise ValueError(
            f"unknown detector {model!r}.{suggest_names(str(model), list(DETECTORS))} Valid names: {list(DETECTORS)}"
        )
    return DETECTORS[model]  # type: ignore[index]


def is_detector(model: object) -> bool:
    """True for torchvision's detectors (R-CNNs, RetinaNet, FCOS): a resize/normalise ``transform`` feeding a
    ``backbone``, called on a list of images. The one definition of "a whole detector" for deploy/ and tools.

    Example:
        >>> is_detector(build_detector("fcos", num_classes=3, backbone="resnet18-fpn")), is_detector(nn.Conv2d(1, 1, 1))
        (True, False)
    """
    return isinstance(model, (GeneralizedRCNN, RetinaNet, FCOS))


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _anchor_generator(model: str, anchor_sizes: Optional[Sequence[int]]) -> Optional[AnchorGenerator]:
    """One anchor size per pyramid level (5 levels). None keeps torchvision's default for the model."""
    if anchor_sizes is None:
        return None
    sizes = tuple(int(s) for s in anchor_sizes)
    if len(sizes) != 5 or any(s <= 0 for s in sizes):
        raise ValueError(f"anchor_sizes must be 5 positive sizes, one per pyramid level, got {list(anchor_sizes)}")
    if model == "retinanet":
        # RetinaNet: three scales per octave (Lin et al., 2017b), as torchvision's default.
        per_level = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes)
        return AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * 5)
    if model == "fcos":
        return AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * 5)
    return AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * 5)


def _check_pyramid(fpn: nn.Module, name: str) -> None:
    """torchvision's heads run one RPN/classification head on every level: the backbone must declare a pyramid."""
    if is_pyramid(fpn):
        return
    shapes = getattr(fpn, "output_shape", lambda: {})()
    declared = ", ".join(f"{k}: {s.channels} ch / stride {s.stride}" for k, s in shapes.items()) or "no output_shape()"
    with_fpn = [n for n in (f"{name}-fpn",) if n in list_backbones() or name.startswith("timm:")]
    hint = f"; use {with_fpn[0]!r}" if with_fpn else ""
    raise ValueError(
        f"detectors need a feature pyramid (every output with the same channels, declared by output_shape()); "
        f"backbone {name!r} declares {declared}{hint}"
    )


def _keys(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... and {len(keys) - n} more" if len(keys) > n else "")


def _load_detector_weights(detector: nn.Module, weights: WeightsSource, *, model: str, backbone: str) -> None:
    """Load a whole-detector checkpoint: every tensor must fit, except the class-dependent predictor layers.

    Those (`DetectorSpec.class_layers`) stay at their init when their shapes differ (a checkpoint trained on
    another number of classes), with one warning naming them.

    Args:
        detector: the detector just built.
        weights: a path, URL or state dict (see `load_weights`).
        model, backbone: the detector's and the backbone's names, for messages.

    Raises:
        ValueError: any other tensor of another shape, missing from the checkpoint or not in the model (named,
            with counts).
    """
    report = load_weights(detector, weights, strict=False, skip_mismatched=True)
    class_layers = tuple(f"{layer}." for layer in _spec(model).class_layers)
    reinit = [m for m in report.mismatched if m[0].startswith(class_layers)]
    mismatched = [m for m in report.mismatched if not m[0].startswith(class_layers)]
    skipped = {m[0] for m in report.mismatched}
    missing = [k for k in report.missing if k not in skipped]
    if mismatched or missing or report.unexpected:
        problems = []
        if mismatched:
            shapes = [f"{k} {theirs} vs {ours}" for k, theirs, ours in mismatched]
            problems.append(f"{len(mismatched)} of another shape (checkpoint vs model) [{_keys(shapes)}]")
        if missing:
            problems.append(f"{len(missing)} missing from the checkpoint [{_keys(missing)}]")
        if report.unexpected:
            problems.append(f"{len(report.unexpected)} not in the model [{_keys(report.unexpected)}]")
        raise ValueError(
            f"weights {report.source} do not fit {model} on {backbone}: {'; '.join(problems)}. Only the "
            f"class-dependent predictor layers ({', '.join(_spec(model).class_layers)}) may differ; was the "
            f"checkpoint trained with another detector, backbone or head options? To start from its backbone "
            f"only, pass it as backbone_weights"
        )
    if reinit:
        log.warning(
            "weights %s: the class-dependent layers %s are left at their init (another number of classes: %s)",
            report.source, ", ".join(sorted({k.rsplit(".", 1)[0] for k, _, _ in reinit})),
            ", ".join(f"{k} {theirs} -> {ours}" for k, theirs, ours in reinit),
        )


def build_detector(
    model: str,
    *,
    num_classes: int,
    backbone: str = "resnet50-fpn",
    backbone_weights: Optional[WeightsSource] = None,
    weights: Optional[WeightsSource] = None,
    norm: str = "auto",
    freeze_at: Optional[int] = None,
    fpn_channels: int = 256,
    min_size: Union[int, Tuple[int, ...]] = 800,
    max_size: int = 1333,
    anchor_sizes: Optional[Sequence[int]] = None,
    rpn_batch_size_per_image: int = 256,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    box_batch_size_per_image: int = 512,
    box_head_dim: int = 1024,
    mask_head_dim: int = 256,
    score_thresh: float = 0.05,
    detections_per_img: int = 100,
) -> nn.Module:
    """Build a torchvision detector on a backbone of this project.

    Every default is torchvision's (and detectron2's): 800-1333 px, RPN 2000/1000 proposals, 512 RoIs per
    image, a 1024-wide two-layer box head, four 256-channel mask convs, score threshold 0.05, 100 detections.

    Args:
        model: "faster_rcnn", "mask_rcnn", "retinanet" or "fcos".
        num_classes: classes including background (torchvision's convention: 91 for COCO's ids, K + 1
            for K contiguous classes).
        backbone: a name of ``list_backbones()`` with FPN, or ``timm:<model>-fpn``. RetinaNet and FCOS get
            the ``p6p7`` top block, the R-CNNs ``maxpool``.
        backbone_weights: ImageNet (or detection) weights for the backbone; see ``build_backbone``.
        weights: a whole detector checkpoint (this project's or torchvision's detection layout) of the same
            detector, backbone and head options. Only the class-dependent predictor layers may differ in shape
            (another number of classes: ``roi_heads.box_predictor.cls_score``/``bbox_pred``,
            ``roi_heads.mask_predictor.mask_fcn_logits``, RetinaNet/FCOS ``head.classification_head.cls_logits``);
            they stay at their init, with a warning naming them. Any other difference is an error.
        norm, freeze_at: backbone options (see ``build_backbone``); "auto" and None follow `backbone_weights`
            (or `weights`: a trained detector is fine-tuned with frozen BN and freeze_at 2, as torchvision).
        fpn_channels: channels of the pyramid (256 as torchvision); the RPN and RoI heads follow it. On small
            CPU images 128 halves a training step (the stride-4 FPN and RPN convs dominate).
        min_size, max_size: resize range of torchvision's transform; a tuple of min sizes picks one at
            random per training batch (multi-scale training).
        anchor_sizes: 5 sizes, one per pyramid level (default: torchvision's, 32..512).
        rpn_*, box_*, mask_head_dim, score_thresh, detections_per_img: head options (R-CNN ones are ignored
            by RetinaNet/FCOS, which use score_thresh and detections_per_img).

    Returns:
        The torchvision detector (``model.backbone`` is the ResNet-FPN).

    Raises:
        ValueError: unknown model (closest names suggested), bad option values, or `weights` that do not fit
            (tensors of another shape other than the class-dependent layers, missing or left over: named).
        FileNotFoundError: a weights file that does not exist.

    Example:
        >>> detector = build_detector("mask_rcnn", backbone="resnet18-fpn", num_classes=4, min_size=320)
    """
    spec = _spec(model)
    _positive_int("num_classes", num_classes)
    if num_classes < 2 and model in ("faster_rcnn", "mask_rcnn"):
        raise ValueError(f"num_classes counts the background for R-CNNs: need >= 2, got {num_classes}")
    for name, value in [("max_size", max_size), ("box_batch_size_per_image", box_batch_size_per_image),
                        ("box_head_dim", box_head_dim), ("mask_head_dim", mask_head_dim),
                        ("detections_per_img", detections_per_img)]:
        _positive_int(name, value)
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    for size in sizes:
        _positive_int("min_size", size)
    # A trained detector in `weights` is fine-tuned as a pretrained backbone would be (frozen BN, freeze_at 2).
    body_norm, body_freeze_at = resolve_norm_and_freeze(
        norm, freeze_at, pretrained=backbone_weights is not None or weights is not None
    )
    fpn = build_backbone(
        backbone,
        weights=backbone_weights,
        norm=body_norm,
        freeze_at=body_freeze_at,
        top_block=spec.top_block,
        fpn_channels=fpn_channels,
    )
    _check_pyramid(fpn, backbone)
    common = dict(min_size=sizes if len(sizes) > 1 else sizes[0], max_size=max_size)
    anchors = _anchor_generator(model, anchor_sizes)
    if model in ("faster_rcnn", "mask_rcnn"):
        resolution = 7  # torchvision's MultiScaleRoIAlign output for boxes
        rcnn = dict(
            rpn_anchor_generator=anchors,
            rpn_batch_size_per_image=rpn_batch_size_per_image,
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_head=TwoMLPHead(fpn.out_channels * resolution**2, box_head_dim),
            box_predictor=FastRCNNPredictor(box_head_dim, num_classes),
            box_batch_size_per_image=box_batch_size_per_image,
            box_score_thresh=score_thresh,
            box_detections_per_img=detections_per_img,
        )
        if model == "faster_rcnn":
            detector: nn.Module = FasterRCNN(fpn, num_classes=None, **common, **rcnn)
        else:
            detector = MaskRCNN(
                fpn,
                num_classes=None,
                mask_head=MaskRCNNHeads(fpn.out_channels, (mask_head_dim,) * 4, 1),
                mask_predictor=MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes),
                **common,
                **rcnn,
            )
    else:
        cls = RetinaNet if model == "retinanet" else FCOS
        extra = {} if anchors is None else {"anchor_generator": anchors}
        detector = cls(fpn, num_classes=num_classes, score_thresh=score_thresh,
                       detections_per_img=detections_per_img, **common, **extra)
    if weights is not None:
        _load_detector_weights(detector, weights, model=model, backbone=backbone)
    return detector
