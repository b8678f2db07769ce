"""Heads built from the backbone's declared shapes, and the v2 / keypoint detectors' structure.

torchvision's defaults assume five levels named "0".."3" + "pool" (R-CNN) or "0".."2" + "p6"/"p7"; ours derive
the RoI pooler's names, the number of anchor levels and their sizes from ``output_shape()``.
"""
import pytest
import torch
from torch import nn

from resnet_fpn import build_detector
from resnet_fpn.detectors import DETECTORS, list_detectors, resolve_build_options

# Small images, few proposals and RoIs: the v2 box head runs four 256-channel convs on every RoI, so torchvision's
# 2000 proposals and 512 RoIs per image would make each step cost ~100 GFLOPs.
SMALL = dict(min_size=128, max_size=128, fpn_channels=64, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
             rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32,
             detections_per_img=10)


def _target(with_masks: bool = False):
    boxes = torch.tensor([[10.0, 12.0, 70.0, 90.0], [50.0, 40.0, 120.0, 110.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
    if with_masks:
        masks = torch.zeros(2, 128, 128, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        target["masks"] = masks
    return target


def _train_step_and_eval(model: nn.Module, *, masks: bool = False) -> None:
    torch.manual_seed(0)
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    model.train()
    losses = model(images, [_target(masks), _target(masks)])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])


@pytest.mark.parametrize(
    "model, options, levels, pooled",
    [
        # The standard pyramids give torchvision's defaults exactly.
        ("faster_rcnn", {}, [(32,), (64,), (128,), (256,), (512,)], ["0", "1", "2", "3"]),
        ("fcos", {}, [(8,), (16,), (32,), (64,), (128,)], None),
        # c3-c5 + P6/P7 for an R-CNN: anchors 8 x stride on strides 8..128, RoIs from P3-P5 only.
        ("faster_rcnn", {"out_features": ["c3", "c4", "c5"], "top_block": "p6p7"},
         [(64,), (128,), (256,), (512,), (1024,)], ["0", "1", "2"]),
        # A 4-level pyramid: c3-c5 + max-pooled P6.
        ("faster_rcnn", {"out_features": ["c3", "c4", "c5"]}, [(64,), (128,), (256,), (512,)], ["0", "1", "2"]),
        ("mask_rcnn", {"out_features": ["c2", "c3", "c4"]}, [(32,), (64,), (128,), (256,)], ["0", "1", "2"]),
    ],
)
def test_heads_follow_the_declared_pyramid(model, options, levels, pooled):
    detector = build_detector(model, num_classes=3, backbone="resnet18-fpn", **options, **SMALL)
    generator = detector.rpn.anchor_generator if hasattr(detector, "rpn") else detector.anchor_generator
    assert [tuple(s) for s in generator.sizes] == levels
    if pooled is not None:
        assert detector.roi_heads.box_roi_pool.featmap_names == pooled
        if hasattr(detector.roi_heads, "mask_roi_pool") and detector.roi_heads.mask_roi_pool is not None:
            assert detector.roi_heads.mask_roi_pool.featmap_names == pooled
    _train_step_and_eval(detector, masks=model == "mask_rcnn")


def test_retinanet_anchors_are_three_scales_per_octave_from_strides():
    detector = build_detector("retinanet", num_classes=3, backbone="resnet18-fpn", **SMALL)
    assert detector.anchor_generator.sizes[0] == (32, 40, 50)  # 4 x stride 8, x 2^(1/3), x 2^(2/3)
    assert detector.anchor_generator.sizes[-1] == (512, 645, 812)


@pytest.mark.parametrize("backbone", ["timm:convnext_tiny-fpn", "timm:efficientnet_b0-fpn"])
def test_timm_pyramids_build_working_detectors(backbone):
    detector = build_detector("faster_rcnn", num_classes=3, backbone=backbone, **SMALL)
    # Strides 4..32 declared by timm's feature_info, P6 from the max-pool top block.
    assert [s[0] for s in detector.rpn.anchor_generator.sizes] == [32, 64, 128, 256, 512]
    _train_step_and_eval(detector)


def test_anchor_sizes_must_give_one_size_per_declared_level():
    with pytest.raises(ValueError, match=r"anchor_sizes must be 4 positive ints, one per pyramid level of "
                                         r"resnet18-fpn \(0: stride 8, 1: stride 16, 2: stride 32, pool: stride 64\)"):
        build_detector("faster_rcnn", num_classes=3, backbone="resnet18-fpn", out_features=["c3", "c4", "c5"],
                       anchor_sizes=[32, 64, 128, 256, 512], **SMALL)


def test_a_backbone_without_declared_shapes_is_refused_with_what_to_declare():
    import resnet_fpn

    name = "undeclared-test-pyramid"

    @resnet_fpn.register_backbone(name)
    def undeclared(*, weights, norm, freeze_at, out_features, top_block, fpn_channels):
        module = nn.Conv2d(3, fpn_channels, 3)
        module.out_channels = fpn_channels
        return module

    with pytest.raises(ValueError, match=r"detectors need a feature pyramid .* declares no output_shape\(\)"):
        build_detector("faster_rcnn", num_classes=3, backbone=name, **SMALL)


# --- torchvision's v2 detectors, as its *_v2 builders make them ---------------------------------------------

def _count(module: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_faster_rcnn_v2_has_bn_in_body_and_fpn_two_conv_rpn_and_4conv1fc_box_head():
    detector = build_detector("faster_rcnn_v2", num_classes=3, backbone="resnet18-fpn", **SMALL)
    assert _count(detector.backbone.body, nn.BatchNorm2d) == 20  # ResNet-18: stem 1 + 8 blocks x 2 + 3 shortcuts
    assert _count(detector.backbone.fpn, nn.BatchNorm2d) == 8  # 4 lateral + 4 output convs
    assert len(detector.rpn.head.conv) == 2
    assert _count(detector.roi_heads.box_head, nn.BatchNorm2d) == 4
    assert _count(detector.roi_heads.box_head, nn.Linear) == 1
    _train_step_and_eval(detector)


def test_mask_rcnn_v2_mask_head_has_bn():
    detector = build_detector("mask_rcnn_v2", num_classes=3, backbone="resnet18-fpn", **SMALL)
    assert _count(detector.roi_heads.mask_head, nn.BatchNorm2d) == 4
    _train_step_and_eval(detector, masks=True)


def test_retinanet_v2_has_group_norm_heads_giou_loss_and_p6_from_c5():
    detector = build_detector("retinanet_v2", num_classes=3, backbone="resnet18-fpn", **SMALL)
    assert _count(detector.head, nn.GroupNorm) == 8  # 4 convs in each of the two subnets
    assert detector.head.regression_head._loss_type == "giou"
    assert detector.backbone.fpn.extra_blocks.p6.in_channels == 512  # C5 of a ResNet-18
    assert _count(detector.backbone.fpn, nn.BatchNorm2d) == 0
    _train_step_and_eval(detector)


def test_v2_auto_norm_is_plain_bn_even_with_weights_but_stem_and_c2_stay_frozen():
    import torchvision

    weights = torchvision.models.resnet18().state_dict()
    detector = build_detector("faster_rcnn_v2", num_classes=3, backbone="resnet18-fpn", backbone_weights=weights,
                              **SMALL)
    assert isinstance(detector.backbone.body.layer4[0].bn1, nn.BatchNorm2d)
    assert isinstance(detector.backbone.body.bn1, torchvision.ops.FrozenBatchNorm2d)  # freeze_at 2
    v1 = build_detector("faster_rcnn", num_classes=3, backbone="resnet18-fpn", backbone_weights=weights, **SMALL)
    assert isinstance(v1.backbone.body.layer4[0].bn1, torchvision.ops.FrozenBatchNorm2d)


def test_keypoint_rcnn_builds_and_predicts_but_is_not_trainable_by_the_tools():
    detector = build_detector("keypoint_rcnn", num_classes=2, backbone="resnet18-fpn", **SMALL).eval()
    with torch.no_grad():
        out = detector([torch.rand(3, 128, 128)])
    assert {"keypoints", "keypoints_scores"} <= set(out[0])
    assert detector.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 17
    assert "keypoint_rcnn" in list_detectors() and "keypoint_rcnn" not in list_detectors(trainable=True)
    assert DETECTORS["keypoint_rcnn"].iou_types == ("bbox", "keypoints")


def test_post_processing_defaults_are_each_torchvision_class_own():
    kwargs = dict(num_classes=3, backbone="resnet18-fpn", min_size=128, max_size=128)
    assert build_detector("retinanet", **kwargs).detections_per_img == 300
    assert build_detector("fcos", **kwargs).score_thresh == 0.2
    rcnn = build_detector("faster_rcnn", **kwargs).roi_heads
    assert (rcnn.score_thresh, rcnn.detections_per_img) == (0.05, 100)
    assert build_detector("fcos", score_thresh=0.05, **kwargs).score_thresh == 0.05


def test_normalisation_defaults_to_imagenet_and_is_recorded_resolved():
    detector = build_detector("faster_rcnn", num_classes=3, backbone="resnet18-fpn", **SMALL)
    assert detector.transform.image_mean == [0.485, 0.456, 0.406]
    assert detector.transform.image_std == [0.229, 0.224, 0.225]
    resolved = resolve_build_options({"model": "faster_rcnn", "num_classes": 3, "image_std": [1.0, 1.0, 1.0]})
    assert resolved["image_mean"] == [0.485, 0.456, 0.406] and resolved["image_std"] == [1.0, 1.0, 1.0]
    assert resolved["backbone_options"] is None
    with pytest.raises(ValueError, match=r"image_mean must be 3 numbers \(RGB, pixels in \[0, 1\]\), got \[0\.5\]"):
        build_detector("faster_rcnn", num_classes=3, backbone="resnet18-fpn", image_mean=[0.5], **SMALL)


def test_a_plain_detector_checkpoint_loads_into_a_dcn_detector_with_offsets_new():
    plain = build_detector("faster_rcnn", num_classes=3, backbone="resnet18-fpn", **SMALL)
    dcn = build_detector("faster_rcnn", num_classes=3, backbone="resnet18-fpn", weights=plain.state_dict(),
                         backbone_options={"deform_stages": ["c5"]}, **SMALL).eval()
    offsets = [k for k in dcn.state_dict() if k not in plain.state_dict()]
    assert offsets and all(".conv2.offset." in k for k in offsets)
    with torch.no_grad():
        image = [torch.rand(3, 128, 128)]
        a, b = plain.eval()(image)[0], dcn(image)[0]
    torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)  # zero offsets: the plain network
