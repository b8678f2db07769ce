"""Detectors: torchvision's Faster/Mask/Keypoint R-CNN, RetinaNet and FCOS heads on this project's backbones.

Every head is built from what the backbone declares (``output_shape()``: names, channels, strides): the RoI
pooler's feature names, the number of pyramid levels and the anchor sizes per level are derived, never
assumed, so a backbone with another pyramid (c3-c5 + P6-P7 for an R-CNN, a 4-level pyramid, a timm
model) builds a working detector. For torchvision's standard pyramids the derived values are exactly
torchvision's defaults.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from .backbone import build_backbone, is_pyramid, list_backbones, resolve_norm_and_freeze
from .models.convs import is_new_when_loading
from .models.variants import suggest_names
from .hub import weights_preprocessing, with_required_options
from .preprocessing import IMAGENET
from .weights import WeightsSource, load_weights

__all__ = ["DETECTORS", "DetectorSpec", "build_detector", "list_detectors", "is_detector", "iou_types_of",
           "resolve_build_options"]

log = logging.getLogger(__name__)

FAMILIES = ("rcnn", "retinanet", "fcos")


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector name means beyond its torchvision class.

    Attributes:
        family: "rcnn" (two-stage: RPN + RoI heads), "retinanet" or "fcos" (one-stage, dense heads).
        top_block: the FPN top block its heads expect (R-CNNs pool P2-P5 and anchor P2-P6: "maxpool";
            one-stage heads run on P3-P7: "p6p7", or "p6p7_c5" with P6 from C5 as RetinaNet v2).
        iou_types: what it predicts, as COCO evaluation types ("bbox", plus "segm" for masks, "keypoints").
        class_layers: its class-dependent predictor layers (module names): the only tensors whose shapes may
            differ from a checkpoint's when fine-tuning on another number of classes (see `build_detector`).
        version: 1 for the heads of Ren et al. / He et al. / Lin et al. as torchvision's first builders; 2 for
            torchvision's ``*_v2`` builders (Li et al. 2021, "Benchmarking Detection Transfer Learning with
            Vision Transformers"): BN in the body and the FPN, a two-conv RPN head, the 4conv1fc box head and
            the mask head with BN; RetinaNet v2: GroupNorm heads, GIoU box loss, P6 from C5.
        trainable: whether ``resnet-fpn train`` can train it (keypoint R-CNN: loading and inference only, the
            data path has no keypoints).
    """

    family: str
    top_block: str
    iou_types: Tuple[str, ...] = ("bbox",)
    class_layers: Tuple[str, ...] = ()
    version: int = 1
    trainable: bool = True

    @property
    def body_norm(self) -> Optional[str]:
        """The body norm "auto" means for this detector, or None for the general rule (frozen BN with
        weights, BN from scratch): torchvision's v2 builders keep plain BN (``resnet50()``'s default)."""
        return "bn" if self.version == 2 else None

    @property
    def fpn_norm(self) -> Optional[str]:
        """The FPN's norm: BN for the v2 R-CNNs (``_resnet_fpn_extractor(norm_layer=nn.BatchNorm2d)``)."""
        return "bn" if self.version == 2 and self.family == "rcnn" else None


_BOX_PREDICTOR = ("roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred")
_MASK_PREDICTOR = ("roi_heads.mask_predictor.mask_fcn_logits",)
_CLS_LOGITS = ("head.classification_head.cls_logits",)
DETECTORS: Dict[str, DetectorSpec] = {
    "faster_rcnn": DetectorSpec("rcnn", "maxpool", class_layers=_BOX_PREDICTOR),
    "mask_rcnn": DetectorSpec("rcnn", "maxpool", ("bbox", "segm"), _BOX_PREDICTOR + _MASK_PREDICTOR),
    "retinanet": DetectorSpec("retinanet", "p6p7", class_layers=_CLS_LOGITS),
    "fcos": DetectorSpec("fcos", "p6p7", class_layers=_CLS_LOGITS),
    "faster_rcnn_v2": DetectorSpec("rcnn", "maxpool", class_layers=_BOX_PREDICTOR, version=2),
    "mask_rcnn_v2": DetectorSpec("rcnn", "maxpool", ("bbox", "segm"), _BOX_PREDICTOR + _MASK_PREDICTOR, version=2),
    "retinanet_v2": DetectorSpec("retinanet", "p6p7_c5", class_layers=_CLS_LOGITS, version=2),
    "keypoint_rcnn": DetectorSpec("rcnn", "maxpool", ("bbox", "keypoints"), _BOX_PREDICTOR, trainable=False),
}


def list_detectors(*, trainable: Optional[bool] = None) -> List[str]:
    """Detector names for ``build_detector`` (``["faster_rcnn", "mask_rcnn", "retinanet", "fcos", ...]``).

    Args:
        trainable: True for the names ``resnet-fpn train`` accepts, False for the others, None for all.
    """
    return [n for n, s in DETECTORS.items() if trainable is None or s.trainable == trainable]


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


def _anchor_sizes(family: str, strides: Sequence[int]) -> Tuple[int, ...]:
    """One anchor size per pyramid level, from the level's stride.

    torchvision's defaults are these rules on its pyramids: R-CNN 8 x stride (32..512 on strides 4..64, as
    detectron2's ``ANCHOR_GENERATOR.SIZES``), RetinaNet 4 x stride (32..512 on strides 8..128), FCOS the
    stride itself (8..128).
    """
    factor = {"rcnn": 8, "retinanet": 4, "fcos": 1}[family]
    return tuple(factor * s for s in strides)


def _anchor_generator(family: str, sizes: Sequence[int]) -> AnchorGenerator:
    """torchvision's anchor generator of `family` with one base size per level."""
    n = len(sizes)
    if family == "retinanet":
        # Three scales per octave (Lin et al., 2017b), as torchvision's default.
        per_level = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes)
        return AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * n)
    if family == "fcos":
        return AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * n)
    return AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * n)


def _levels(fpn: nn.Module) -> Tuple[List[str], List[int], List[str]]:
    """(every level's name, its stride, the names RoI heads pool from) as the backbone declares them.

    RoIs are pooled from the FPN outputs of the body's stages, not from the levels a top block adds
    (torchvision pools "0".."3", never "pool"; detectron2 P2-P5, never P6).
    """
    shapes = fpn.output_shape()
    added = set(getattr(getattr(fpn, "top_block", None), "names", ()))
    names = list(shapes)
    pooled = [n for n in names if n not in added]
    return names, [shapes[n].stride for n in names], pooled


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
    # A deformable conv's offset predictor is new to a plain checkpoint: zero-initialised, it computes the plain
    # network until trained, so its absence is not an error (as when loading a backbone).
    new = [k for k in report.missing if is_new_when_loading(detector.get_submodule(k.rsplit(".", 1)[0]))]
    missing = [k for k in report.missing if k not in skipped and k not in new]
    if new:
        log.info("weights %s: %d offset tensors of deformable convs left at their zero init (e.g. %s)",
                 report.source, len(new), new[0])
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


class Float32RPNHead(RPNHead):
    """torchvision's ``RPNHead`` (same layers and parameter names) whose outputs are float32 under autocast.

    Why: torchvision decodes proposals in the dtype of the head's deltas and then casts the ground-truth boxes to
    the proposals' dtype (``RoIHeads.select_training_samples``). Under bf16 autocast (8 bits of mantissa: 2 px
    steps at 256-512 px) a ground-truth box narrower than that collapses to zero width; added as a proposal it
    matches itself with IoU 0/0 and its regression target is log(0/0): the box loss turns NaN (measured: every
    bf16 Faster R-CNN run on coco128 at step 12-89, a 0.65 px wide box at x = 247). detectron2 decodes in float32
    for the same reason (``Box2BoxTransform.apply_deltas``: ``deltas.float()``). The convolutions still run in
    the autocast dtype; only the small per-anchor outputs are widened.
    """

    # torchvision's loop written out rather than super().forward(): TorchScript compiles no super() call.
    def forward(self, x: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits: List[Tensor] = []
        deltas: List[Tensor] = []
        for feature in x:
            t = self.conv(feature)
            logits.append(self.cls_logits(t).float())
            deltas.append(self.bbox_pred(t).float())
        return logits, deltas


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's ``FastRCNNPredictor`` whose class scores and box deltas are float32 under autocast: the
    boxes of the second stage are decoded (and their loss computed) at full precision, as detectron2 does."""

    # Written out rather than super().forward(): TorchScript compiles no super() call.
    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x).float(), self.bbox_pred(x).float()


def build_detector(
    model: str,
    *,
    num_classes: int,
    backbone: str = "resnet50-fpn",
    backbone_weights: Optional[WeightsSource] = None,
    weights: Optional[WeightsSource] = None,
    norm: str = "auto",
    freeze_at: Optional[int] = None,
    backbone_options: Optional[Mapping[str, object]] = None,
    out_features: Optional[Sequence[str]] = None,
    top_block: Optional[str] = None,
    fpn_channels: int = 256,
    image_mean: Optional[Sequence[float]] = None,
    image_std: Optional[Sequence[float]] = None,
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
    num_keypoints: int = 17,
    score_thresh: Optional[float] = None,
    detections_per_img: Optional[int] = None,
) -> nn.Module:
    """Build a torchvision detector on a backbone of this project.

    Every default is torchvision's (and detectron2's): 800-1333 px, RPN 2000/1000 proposals, 512 RoIs per
    image, a 1024-wide two-layer box head, four 256-channel mask convs; score threshold and detections per image
    as each torchvision class (R-CNNs 0.05 and 100, RetinaNet 0.05 and 300, FCOS 0.2 and 100).
    The ``*_v2`` names build what torchvision's ``*_resnet50_fpn_v2`` builders build (see `DetectorSpec`).
    The heads follow the backbone's declared ``output_shape()``: anchors on every level (one size per level,
    from its stride), RoIs pooled from the levels of the body's stages.

    Args:
        model: a name of ``list_detectors()``: "faster_rcnn", "mask_rcnn", "retinanet", "fcos",
            "faster_rcnn_v2", "mask_rcnn_v2", "retinanet_v2", "keypoint_rcnn".
        num_classes: classes including background (torchvision's convention: 91 for COCO's ids, K + 1
            for K contiguous classes; 2 for keypoint R-CNN's person).
        backbone: a name of ``list_backbones()`` with FPN, or ``timm:<model>-fpn``, or any registered backbone
            that declares a pyramid.
        backbone_weights: ImageNet (or detection) weights for the backbone: a path, URL or name such as
            ``"torchvision://resnet50"`` (see ``build_backbone`` and ``list_weights()``).
        weights: a whole detector checkpoint (this project's, or torchvision's detection layout, e.g.
            ``"torchvision://fasterrcnn_resnet50_fpn_v2"``) of the same detector, backbone and head options.
            Only the class-dependent predictor layers may differ in shape (another number of classes:
            ``roi_heads.box_predictor.cls_score``/``bbox_pred``, ``roi_heads.mask_predictor.mask_fcn_logits``,
            RetinaNet/FCOS ``head.classification_head.cls_logits``); they stay at their init, with a warning
            naming them. Any other difference is an error.
        norm, freeze_at: backbone options (see ``build_backbone``); "auto" and None follow `backbone_weights`
            (or `weights`: a trained detector is fine-tuned with frozen BN and freeze_at 2, as torchvision).
            The v2 detectors' "auto" is plain BN, as torchvision's v2 builders.
        backbone_options: ResNet architecture options (``ResNetOptions`` fields, e.g. ``{"stride_in_1x1":
            True}``), see ``build_backbone(options=)``.
        out_features: the body stages feeding the FPN (default c2-c5, c3-c5 for the p6p7 top blocks).
        top_block: the FPN top block ("maxpool", "p6p7", "p6p7_c5"); default the detector's (`DetectorSpec`).
        fpn_channels: channels of the pyramid (256 as torchvision); the RPN and RoI heads follow it. On small
            CPU images 128 halves a training step (the stride-4 FPN and RPN convs dominate).
        image_mean, image_std: normalisation of torchvision's transform (RGB, pixels in [0, 1]). None: what the
            weights were trained with (``weights`` or ``backbone_weights`` by name carry it, e.g. detectron2's
            MSRA nets' BGR 0-255 means), else ImageNet's.
        min_size, max_size: resize range of torchvision's transform; a tuple of min sizes picks one at
            random per training batch (multi-scale training).
        anchor_sizes: one size per pyramid level (default: from each level's stride, which gives torchvision's
            defaults on its pyramids: R-CNN 32..512, RetinaNet 32..512 with 3 scales, FCOS 8..128).
        rpn_*, box_*, mask_head_dim, num_keypoints: head options (R-CNN ones are ignored by RetinaNet/FCOS).
        score_thresh, detections_per_img: post-processing; None keeps the torchvision class's default.

    Returns:
        The torchvision detector (``model.backbone`` is the ResNet-FPN).

    Raises:
        ValueError: unknown model (closest names suggested), bad option values, or `weights` that do not fit
            (tensors of another shape other than the class-dependent layers, missing or left over: named).
        FileNotFoundError: a weights file that does not exist.

    Example:
        >>> detector = build_detector("mask_rcnn", backbone="resnet18-fpn", num_classes=4, min_size=320)
        >>> [len(a) for a in detector.rpn.anchor_generator.sizes]  # one size per level P2-P6
        [1, 1, 1, 1, 1]
    """
    spec = _spec(model)
    _positive_int("num_classes", num_classes)
    if num_classes < 2 and spec.family == "rcnn":
        raise ValueError(f"num_classes counts the background for R-CNNs: need >= 2, got {num_classes}")
    for name, value in [("max_size", max_size), ("box_batch_size_per_image", box_batch_size_per_image),
                        ("box_head_dim", box_head_dim), ("mask_head_dim", mask_head_dim),
                        ("num_keypoints", num_keypoints)]:
        _positive_int(name, value)
    post = {}  # torchvision's own defaults unless given
    if detections_per_img is not None:
        post["detections_per_img"] = _positive_int("detections_per_img", detections_per_img)
    if score_thresh is not None:
        if isinstance(score_thresh, bool) or not isinstance(score_thresh, (int, float)) or not 0 <= score_thresh <= 1:
            raise ValueError(f"score_thresh must be a number in [0, 1], got {score_thresh!r}")
        post["score_thresh"] = float(score_thresh)
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    for size in sizes:
        _positive_int("min_size", size)
    source = weights if weights is not None else backbone_weights
    mean, std = _normalisation(image_mean, image_std, source)
    backbone_options = with_required_options(backbone_options, source)
    # A trained detector in `weights` is fine-tuned as a pretrained backbone would be (frozen BN, freeze_at 2).
    body_norm, body_freeze_at = resolve_norm_and_freeze(
        spec.body_norm if norm == "auto" and spec.body_norm else norm, freeze_at,
        pretrained=backbone_weights is not None or weights is not None,
    )
    fpn = build_backbone(
        backbone,
        weights=backbone_weights,
        norm=body_norm,
        freeze_at=body_freeze_at,
        options=backbone_options,
        out_features=out_features,
        top_block=spec.top_block if top_block is None else top_block,
        fpn_channels=fpn_channels,
        fpn_norm=spec.fpn_norm,
    )
    _check_pyramid(fpn, backbone)
    names, strides, pooled = _levels(fpn)
    if anchor_sizes is None:
        anchor_sizes = _anchor_sizes(spec.family, strides)
    elif len(anchor_sizes) != len(names) or any(isinstance(a, bool) or not isinstance(a, int) or a <= 0
                                                for a in anchor_sizes):
        raise ValueError(
            f"anchor_sizes must be {len(names)} positive ints, one per pyramid level of {backbone} "
            f"({', '.join(f'{n}: stride {s}' for n, s in zip(names, strides))}), got {list(anchor_sizes)}"
        )
    anchors = _anchor_generator(spec.family, anchor_sizes)
    common = dict(min_size=sizes if len(sizes) > 1 else sizes[0], max_size=max_size, image_mean=mean,
                  image_std=std)
    channels = fpn.out_channels
    if spec.family == "rcnn":
        resolution = 7  # torchvision's MultiScaleRoIAlign output for boxes
        if spec.version == 2:
            box_head: nn.Module = FastRCNNConvFCHead((channels, resolution, resolution), [256, 256, 256, 256],
                                                     [box_head_dim], norm_layer=nn.BatchNorm2d)
        else:
            box_head = TwoMLPHead(channels * resolution**2, box_head_dim)
        rcnn = dict(
            rpn_anchor_generator=anchors,
            rpn_head=Float32RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=spec.version),
            rpn_batch_size_per_image=rpn_batch_size_per_image,
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_roi_pool=MultiScaleRoIAlign(pooled, output_size=resolution, sampling_ratio=2),
            box_head=box_head,
            box_predictor=Float32BoxPredictor(box_head_dim, num_classes),
            box_batch_size_per_image=box_batch_size_per_image,
            **{f"box_{k}": v for k, v in post.items()},
        )
        if "segm" in spec.iou_types:
            mask_norm = nn.BatchNorm2d if spec.version == 2 else None
            detector: nn.Module = MaskRCNN(
                fpn,
                num_classes=None,
                mask_roi_pool=MultiScaleRoIAlign(pooled, output_size=14, sampling_ratio=2),
                mask_head=MaskRCNNHeads(channels, (mask_head_dim,) * 4, 1, norm_layer=mask_norm),
                mask_predictor=MaskRCNNPredictor(mask_head_dim, mask_head_dim, num_classes),
                **common,
                **rcnn,
            )
        elif "keypoints" in spec.iou_types:
            detector = KeypointRCNN(
                fpn,
                num_classes=None,
                keypoint_roi_pool=MultiScaleRoIAlign(pooled, output_size=14, sampling_ratio=2),
                keypoint_head=KeypointRCNNHeads(channels, (512,) * 8),
                keypoint_predictor=KeypointRCNNPredictor(512, num_keypoints),
                **common,
                **rcnn,
            )
        else:
            detector = FasterRCNN(fpn, num_classes=None, **common, **rcnn)
    elif spec.family == "retinanet":
        norm_layer = partial(nn.GroupNorm, 32) if spec.version == 2 else None
        head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes, norm_layer=norm_layer)
        if spec.version == 2:
            head.regression_head._loss_type = "giou"  # torchvision's v2 builder sets this private field too
        detector = RetinaNet(fpn, num_classes=num_classes, anchor_generator=anchors, head=head, **post, **common)
    else:
        detector = FCOS(fpn, num_classes=num_classes, anchor_generator=anchors, **post, **common)
    if weights is not None:
        _load_detector_weights(detector, weights, model=model, backbone=backbone)
    return detector


def resolve_build_options(options: Mapping[str, object]) -> Dict[str, object]:
    """``build_detector``'s keyword arguments with what named weights imply made explicit.

    ``image_mean``/``image_std`` become the weights' preprocessing (or ImageNet's) and ``backbone_options`` gain the
    architecture options the weights require. A checkpoint records these, so the detector is rebuilt the same
    way without its weights (``detector_from_checkpoint`` never fetches them).

    Args:
        options: ``build_detector`` keyword arguments (``model`` included).

    Returns:
        A new dict; the input is not changed.

    Example:
        >>> resolve_build_options({"model": "faster_rcnn", "num_classes": 3})["image_mean"]
        [0.485, 0.456, 0.406]
    """
    out = dict(options)
    source = out.get("weights") if out.get("weights") is not None else out.get("backbone_weights")
    out["image_mean"], out["image_std"] = _normalisation(out.get("image_mean"), out.get("image_std"), source)  # type: ignore[arg-type]
    out["backbone_options"] = with_required_options(out.get("backbone_options"), source)
    return out


def _normalisation(image_mean: Optional[Sequence[float]], image_std: Optional[Sequence[float]],
                   weights: Optional[WeightsSource]) -> Tuple[List[float], List[float]]:
    """The transform's mean/std: as given, else the named weights' own (``hub.weights_preprocessing``), else
    ImageNet's (torchvision's default)."""
    for name, value in (("image_mean", image_mean), ("image_std", image_std)):
        if value is not None and (len(value) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"{name} must be 3 numbers (RGB, pixels in [0, 1]), got {list(value)!r}")
    if image_std is not None and any(v <= 0 for v in image_std):
        raise ValueError(f"image_std must be positive, got {list(image_std)}")
    if image_mean is not None and image_std is not None:
        return [float(v) for v in image_mean], [float(v) for v in image_std]
    known = weights_preprocessing(weights) if weights is not None else None
    source = known if known is not None else IMAGENET
    mean = list(source.image_mean) if image_mean is None else [float(v) for v in image_mean]
    std = list(source.image_std) if image_std is None else [float(v) for v in image_std]
    return mean, std
