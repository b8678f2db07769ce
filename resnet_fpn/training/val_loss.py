"""Detections and losses of a torchvision detector from one forward pass, in eval mode.

torchvision's detectors return losses only in training mode and detections only in eval mode (torchvision
issue #1574, open since 2019). Switching to training mode for a validation loss would run BatchNorm on batch
statistics and update its running statistics, and a second forward pass would double validation's cost. So the
detector's pieces are run here, in eval mode, with torchvision's own methods and loss functions:

- two-stage (Faster/Mask R-CNN, v1 and v2 heads): the transform, the backbone and the RPN head run once; the RPN's
  proposals are filtered twice (the test counts for the detections, the training counts for the loss), and its
  loss comes from ``assign_targets_to_anchors`` + ``compute_loss`` on the same outputs; the RoI heads run once on
  the test proposals (detections) and once, with only the ``RoIHeads`` module's own ``training`` flag set, on the
  training proposals (``select_training_samples``: ground truth added, 512 RoIs sampled; ``fastrcnn_loss``,
  ``maskrcnn_loss``). The box/mask heads' layers stay in eval mode (the v2 heads' BatchNorm uses its running
  statistics and does not update them).
- single-stage (RetinaNet, FCOS): the head runs once; ``compute_loss`` and ``postprocess_detections`` share its outputs.

What "the same losses as training mode" means here, exactly (tests/test_val_loss.py checks it): the losses equal
those that ``model(images, targets)`` returns in training mode with every normalisation layer in eval mode
(running statistics, which is what FrozenBatchNorm always does), the resize transform at its test size, and the
global random generator seeded identically before the call (the RPN and RoI samplers draw from it). The detections
equal ``model(images)`` in eval mode.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.image_list import ImageList

__all__ = ["detections_and_losses", "seeded_rng"]


@contextlib.contextmanager
def _training_flag(module: nn.Module) -> Iterator[None]:
    """Set ``module.training`` alone (not its children's, unlike ``module.train()``) for the duration."""
    before = module.training
    module.training = True
    try:
        yield
    finally:
        module.training = before


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the duration and restore them after: the samplers of the validation loss
    are repeatable, and the training run's random stream is the same with or without validation losses.

    Args:
        seed: the seed.
        device: the device of the model (its CUDA generator is forked too).
    """
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _transform_and_backbone(model: nn.Module, images: Sequence[Tensor], targets: Sequence[Dict[str, Tensor]]
                            ) -> Tuple[List[Tuple[int, int]], ImageList, List[Dict[str, Tensor]], "OrderedDict[str, Tensor]"]:
    """The part every torchvision detector's forward starts with: original sizes, resized batch, targets, features."""
    original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    image_list, targets = model.transform(list(images), [dict(t) for t in targets])
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    return original_sizes, image_list, targets, features


def _rcnn(model: GeneralizedRCNN, images: Sequence[Tensor], targets: Sequence[Dict[str, Tensor]]
          ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
    original_sizes, image_list, targets, features = _transform_and_backbone(model, images, targets)
    rpn = model.rpn
    levels = list(features.values())
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(image_list, levels)
    num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    test_proposals, _ = rpn.filter_proposals(proposals, objectness, image_list.image_sizes, num_anchors_per_level)
    with _training_flag(rpn):  # pre/post-NMS counts of training
        train_proposals, _ = rpn.filter_proposals(proposals, objectness, image_list.image_sizes,
                                                  num_anchors_per_level)
    labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
    regression_targets = rpn.box_coder.encode(matched_gt_boxes, anchors)
    loss_objectness, loss_rpn_box_reg = rpn.compute_loss(objectness, deltas, labels, regression_targets)
    losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
    # RoIHeads.forward branches on its own `training` only; its layers keep eval mode.
    with _training_flag(model.roi_heads):
        _, roi_losses = model.roi_heads(features, train_proposals, image_list.image_sizes, targets)
    losses.update(roi_losses)
    detections, _ = model.roi_heads(features, test_proposals, image_list.image_sizes)
    detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
    return detections, losses


def _single_stage(model: nn.Module, images: Sequence[Tensor], targets: Sequence[Dict[str, Tensor]]
                  ) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
    original_sizes, image_list, targets, features = _transform_and_backbone(model, images, targets)
    levels = list(features.values())
    head_outputs = model.head(levels)
    anchors = model.anchor_generator(image_list, levels)
    hw_per_level = [x.size(2) * x.size(3) for x in levels]
    if isinstance(model, FCOS):
        losses = model.compute_loss(targets, head_outputs, anchors, hw_per_level)
        per_level = hw_per_level
    else:
        losses = model.compute_loss(targets, head_outputs, anchors)
        per_anchor = head_outputs["cls_logits"].size(1) // sum(hw_per_level)
        per_level = [hw * per_anchor for hw in hw_per_level]
    split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    detections = model.postprocess_detections(split_outputs, split_anchors, image_list.image_sizes)
    detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
    return detections, losses


def detections_and_losses(model: nn.Module, images: Sequence[Tensor], targets: Sequence[Dict[str, Tensor]], *,
                          seed: Optional[int] = None) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
    """The detections of eval mode and the losses of training mode, from one pass of a detector in eval mode.

    Nothing is switched to training mode: BatchNorm (plain or frozen) uses and keeps its running statistics. See
    the module docstring for what is computed once and what twice, and what "the losses of training mode" means
    exactly.

    Args:
        model: a torchvision ``FasterRCNN``/``MaskRCNN`` (any ``GeneralizedRCNN`` without keypoints),
            ``RetinaNet`` or ``FCOS``, in eval mode.
        images: CHW float images, as for ``model(images)``.
        targets: their targets (``boxes`` xyxy, ``labels``; ``masks`` for Mask R-CNN), as for training.
        seed: seed the global generator for the RPN/RoI samplers, restoring it afterwards (None: draw from it).

    Returns:
        ``(detections, losses)``: the list ``model(images)`` returns in eval mode, and the dict of loss terms
        (``loss_objectness``, ``loss_classifier``, ... ; torchvision's names) that training mode returns.

    Raises:
        ValueError: the model is in training mode, has a keypoint head, or is not one of the detectors above.
    """
    if model.training:
        raise ValueError("detections_and_losses needs the model in eval mode (model.eval()): training mode would "
                         "update BatchNorm statistics")
    if isinstance(model, GeneralizedRCNN):
        if getattr(model.roi_heads, "keypoint_roi_pool", None) is not None:
            raise ValueError("detections_and_losses: keypoint R-CNN is not supported (the data has no keypoints)")
        run = _rcnn
    elif isinstance(model, (RetinaNet, FCOS)):
        run = _single_stage
    else:
        raise ValueError(f"detections_and_losses: expected a torchvision GeneralizedRCNN, RetinaNet or FCOS, got "
                         f"{type(model).__name__}")
    if seed is None:
        return run(model, images, targets)
    device = next(model.parameters()).device
    with seeded_rng(seed, device):
        return run(model, images, targets)
