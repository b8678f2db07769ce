"""Detectors read the backbone contract: pyramids are declared, not guessed from a name suffix."""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

import resnet_fpn
from resnet_fpn.backbone import Backbone, FPNBackbone, ResNetFeatures, ShapeSpec, is_pyramid
from resnet_fpn.detectors import DETECTORS, build_detector, iou_types_of, list_detectors
from resnet_fpn.models import get_variant


def test_a_body_without_pyramid_is_refused_with_what_it_declares():
    with pytest.raises(ValueError, match=r"detectors need a feature pyramid .* backbone 'resnet18' declares "
                                         r"c2: 64 ch / stride 4, .* c5: 512 ch / stride 32; use 'resnet18-fpn'"):
        build_detector("faster_rcnn", backbone="resnet18", num_classes=3)


def test_a_name_missing_its_dash_suggests_the_real_one():
    # Was: "detectors need a backbone with FPN, e.g. 'resnet50fpn-fpn'".
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet50fpn'\. Did you mean 'resnet50-fpn'"):
        build_detector("faster_rcnn", backbone="resnet50fpn", num_classes=3)


def test_any_registered_pyramid_builds_a_detector_whatever_its_name():
    name = "tiny-pyramid-no-suffix"

    @resnet_fpn.register_backbone(name)
    def tiny(*, weights, norm, freeze_at, out_features, top_block, fpn_channels):
        body = ResNetFeatures(get_variant("resnet18"), out_features=out_features, norm=norm, freeze_at=freeze_at)
        return FPNBackbone(body, top_block=top_block, fpn_channels=fpn_channels)

    model = build_detector("faster_rcnn", backbone=name, num_classes=3, min_size=64, max_size=64).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_specs_say_top_block_and_iou_types():
    assert list_detectors() == ["faster_rcnn", "mask_rcnn", "retinanet", "fcos", "faster_rcnn_v2", "mask_rcnn_v2",
                                "retinanet_v2", "keypoint_rcnn"]
    assert iou_types_of("mask_rcnn") == ("bbox", "segm") and iou_types_of("fcos") == ("bbox",)
    assert iou_types_of("keypoint_rcnn") == ("bbox", "keypoints")
    assert {n: s.top_block for n, s in DETECTORS.items()} == {
        "faster_rcnn": "maxpool", "mask_rcnn": "maxpool", "retinanet": "p6p7", "fcos": "p6p7",
        "faster_rcnn_v2": "maxpool", "mask_rcnn_v2": "maxpool", "retinanet_v2": "p6p7_c5", "keypoint_rcnn": "maxpool"}
    with pytest.raises(ValueError, match=r"unknown detector 'mask_rnn'\. Did you mean 'mask_rcnn'"):
        iou_types_of("mask_rnn")


def test_backbone_contract_declares_and_sets_out_channels():
    body = resnet_fpn.build_backbone("resnet18")
    assert isinstance(body, Backbone) and body.feature_names == ["c2", "c3", "c4", "c5"]
    assert not hasattr(body, "out_channels") and not is_pyramid(body)
    single = ResNetFeatures(get_variant("resnet18"), out_features=["c4"])
    assert single.out_channels == 256 and single.output_shape() == {"c4": ShapeSpec(256, 16)}
    fpn = resnet_fpn.build_backbone("resnet18-fpn", fpn_channels=64)
    assert is_pyramid(fpn) and fpn.out_channels == 64 and fpn.feature_names == ["0", "1", "2", "3", "pool"]
    assert not is_pyramid(nn.Conv2d(3, 3, 1))


class _P6Only(ExtraFPNBlock):
    """A user top block: one extra level by a stride-2 max pool, named p6."""

    names = ("p6",)

    def forward(self, results, x, names):
        results.append(nn.functional.max_pool2d(results[-1], 1, 2))
        return results, names + ["p6"]


def test_a_top_block_module_declares_its_levels():
    body = ResNetFeatures(get_variant("resnet18"), out_features=["c3", "c4", "c5"])
    fpn = FPNBackbone(body, top_block=_P6Only(), fpn_channels=32).eval()
    assert fpn.output_shape() == OrderedDict(
        [("0", ShapeSpec(32, 8)), ("1", ShapeSpec(32, 16)), ("2", ShapeSpec(32, 32)), ("p6", ShapeSpec(32, 64))])
    with torch.no_grad():
        out = fpn(torch.rand(1, 3, 64, 96))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {"0": (8, 12), "1": (4, 6), "2": (2, 3), "p6": (1, 2)}
    with pytest.raises(TypeError, match=r"top_block must be a name of \['maxpool', 'p6p7', 'p6p7_c5'\] or an ExtraFPNBlock"):
        FPNBackbone(body, top_block=nn.Identity())
    with pytest.raises(TypeError, match=r"must declare its outputs with output_shape\(\)"):
        FPNBackbone(nn.Conv2d(3, 8, 3))


def test_auto_rule_is_one_function():
    from resnet_fpn.backbone import resolve_norm_and_freeze

    assert resolve_norm_and_freeze("auto", None, pretrained=True) == ("frozen_bn", 2)
    assert resolve_norm_and_freeze("auto", None, pretrained=False) == ("bn", 0)
    assert resolve_norm_and_freeze("gn", 3, pretrained=True) == ("gn", 3)
    with pytest.raises(ValueError, match=r"norm must be one of .* got 'batchnorm'"):
        resolve_norm_and_freeze("batchnorm", None, pretrained=False)
    # build_detector with a whole-detector checkpoint applies the same rule as with backbone weights.
    detector = build_detector("faster_rcnn", backbone="resnet18-fpn", num_classes=3,
                              weights=build_detector("faster_rcnn", backbone="resnet18-fpn",
                                                     num_classes=3).state_dict())
    assert detector.backbone.body.freeze_at == 2
    assert not any(p.requires_grad for p in detector.backbone.body.layer1.parameters())


# ------------------------------------------------------------------------------- whole-detector weights
CLASS_LAYERS = {
    "faster_rcnn": "roi_heads.box_predictor.bbox_pred, roi_heads.box_predictor.cls_score",
    "mask_rcnn": "roi_heads.box_predictor.bbox_pred, roi_heads.box_predictor.cls_score, "
                 "roi_heads.mask_predictor.mask_fcn_logits",
    "retinanet": "head.classification_head.cls_logits",
    "fcos": "head.classification_head.cls_logits",
}


def test_torchvision_91_class_detector_fine_tunes_on_4_classes(caplog):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    coco = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=91)
    with caplog.at_level("WARNING", logger="resnet_fpn.detectors"):
        ours = build_detector("faster_rcnn", backbone="resnet18-fpn", num_classes=4, weights=coco.state_dict())
    assert len(caplog.records) == 1
    assert (f"the class-dependent layers {CLASS_LAYERS['faster_rcnn']} are left at their init (another number of "
            f"classes: roi_heads.box_predictor.cls_score.weight (91, 1024) -> (4, 1024)") in caplog.text
    theirs = coco.state_dict()
    for key, value in ours.state_dict().items():
        if "num_batches_tracked" in key or key.startswith("roi_heads.box_predictor."):
            continue
        assert torch.equal(value, theirs[key]), key
    assert ours.roi_heads.box_predictor.cls_score.out_features == 4


@pytest.mark.parametrize("model", ["mask_rcnn", "retinanet", "fcos"])
def test_only_the_class_dependent_layers_stay_at_init(model, caplog):
    source = build_detector(model, backbone="resnet18-fpn", num_classes=91, min_size=64, max_size=64)
    with caplog.at_level("WARNING", logger="resnet_fpn.detectors"):
        build_detector(model, backbone="resnet18-fpn", num_classes=4, min_size=64, max_size=64,
                       weights=source.state_dict())
    assert [r.getMessage().split(" are left")[0] for r in caplog.records] == [
        f"weights state dict: the class-dependent layers {CLASS_LAYERS[model]}"]


def test_detector_weights_of_another_backbone_are_refused(tmp_path):
    # Was: 23 warnings, and a detector with a random backbone.
    path = tmp_path / "r18_frcnn.pth"
    torch.save(build_detector("faster_rcnn", backbone="resnet18-fpn", num_classes=4).state_dict(), path)
    with pytest.raises(ValueError, match=r"weights .*r18_frcnn\.pth do not fit faster_rcnn on resnet50-fpn: 27 of "
                                         r"another shape \(checkpoint vs model\) \[backbone\.body\.layer1\.0\."
                                         r"conv1\.weight \(64, 64, 3, 3\) vs \(64, 64, 1, 1\), .*\]; 165 missing from "
                                         r"the checkpoint "
                                         r"\[backbone\.body\.layer1\.0\.bn3\.bias, .*\]\. Only the class-dependent "
                                         r"predictor layers .* may differ"):
        build_detector("faster_rcnn", backbone="resnet50-fpn", num_classes=4, weights=path)


@pytest.mark.parametrize(
    "source, target, match",
    [
        (dict(model="mask_rcnn"), dict(model="faster_rcnn"),
         r"12 not in the model \[roi_heads\.mask_head\.0\.0\.bias, .*\]\..*pass it as backbone_weights"),
        (dict(model="faster_rcnn"), dict(model="faster_rcnn", box_head_dim=256),
         r"4 of another shape \(checkpoint vs model\) \[roi_heads\.box_head\.fc6\.weight \(1024, 12544\) vs "
         r"\(256, 12544\), "),
        (dict(model="fcos"), dict(model="retinanet"),
         r"do not fit retinanet on resnet18-fpn: 2 of another shape \(checkpoint vs model\) \[head\.regression_head\."
         r"bbox_reg\.weight \(4, 256, 3, 3\) vs \(36, 256, 3, 3\), .*\]; 16 missing from the checkpoint .*; 34 not in "
         r"the model"),
        (dict(model="faster_rcnn"), dict(model="faster_rcnn", fpn_channels=128),
         r"of another shape \(checkpoint vs model\) \[backbone\.fpn\.inner_blocks\.0\.0\.weight \(256, 64, 1, 1\) vs "
         r"\(128, 64, 1, 1\)"),
    ],
    ids=["mask-into-faster", "box-head-width", "fcos-into-retinanet", "fpn-width"],
)
def test_any_difference_beyond_the_class_layers_is_refused(source, target, match):
    weights = build_detector(backbone="resnet18-fpn", num_classes=4, **source).state_dict()
    with pytest.raises(ValueError, match=match):
        build_detector(backbone="resnet18-fpn", num_classes=4, weights=weights, **target)


def test_backbone_checkpoint_given_as_detector_weights_points_to_backbone_weights():
    import torchvision

    with pytest.raises(ValueError, match=r"30 missing from the checkpoint \[backbone\.fpn\..*\]; 2 not in the model "
                                         r"\[fc\.bias, fc\.weight\]\..*pass it as backbone_weights"):
        build_detector("faster_rcnn", backbone="resnet18-fpn", num_classes=4,
                       weights=torchvision.models.resnet18(weights=None).state_dict())


@pytest.mark.parametrize("model", ["faster_rcnn", "mask_rcnn"])
def test_bf16_autocast_training_keeps_sub_pixel_boxes_finite(model):
    """Under bf16 autocast torchvision's heads gave bf16 proposals, and the ground truth was cast to them: a box
    0.65 px wide at x = 247 became 0 px wide, matched itself with IoU 0/0 and its box-regression target was
    log(0/0), so loss_box_reg turned NaN (every bf16 coco128 run of 6 Dec 2026). The RPN and box predictor give
    float32 outputs (detectron2 decodes in float32), so the loss stays finite; parameter names are torchvision's."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead

    from resnet_fpn.detectors import build_detector

    torch.manual_seed(0)
    detector = build_detector(model, backbone="resnet18-fpn", num_classes=3, min_size=320, max_size=320,
                              fpn_channels=64, box_head_dim=64, mask_head_dim=16).train()
    assert isinstance(detector.rpn.head, RPNHead) and isinstance(detector.roi_heads.box_predictor, FastRCNNPredictor)
    assert {"rpn.head.conv.0.0.weight", "roi_heads.box_predictor.bbox_pred.weight"} <= set(detector.state_dict())
    boxes = torch.tensor([[246.5974, 118.7544, 247.2470, 124.1177], [40.0, 40.0, 120.0, 150.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
    if model == "mask_rcnn":
        masks = torch.zeros(2, 320, 320, dtype=torch.uint8)
        masks[0, 119:124, 247] = 1
        masks[1, 40:150, 40:120] = 1
        target["masks"] = masks
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = detector([torch.rand(3, 320, 320)], [target])
        logits, deltas = detector.rpn.head([torch.rand(1, 64, 8, 8)])
    assert logits[0].dtype == deltas[0].dtype == torch.float32
    assert all(torch.isfinite(value) for value in losses.values()), losses
