"""Backbone contracts: declared shapes, freeze_at, norms, registry errors, torchvision drop-in, checkpoints."""
import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, KeypointRCNN, MaskRCNN, RetinaNet
from torchvision.ops import FrozenBatchNorm2d

from resnet_fpn.backbone import FPNBackbone, ResNetFeatures, build_backbone, list_backbones, register_backbone
from resnet_fpn.models import VARIANTS, get_variant

from test_weights import randomize_bn


def test_every_variant_is_registered_with_and_without_fpn():
    names = list_backbones()
    for variant in VARIANTS:
        assert variant in names and f"{variant}-fpn" in names


def check_declared_shapes(model: nn.Module, device: str) -> None:
    shapes = model.output_shape()
    with torch.no_grad():
        for h, w in [(67, 93), (33, 50)]:
            out = model(torch.randn(1, 3, h, w, device=device))
            assert list(out) == list(shapes)
            for key, spec in shapes.items():
                assert tuple(out[key].shape) == (1, spec.channels, math.ceil(h / spec.stride), math.ceil(w / spec.stride))


@pytest.mark.parametrize("name", list_backbones())
def test_declared_shapes_match_outputs_at_odd_sizes(name):
    # The meta device runs torch's own shape functions without allocating or computing, so the contract is
    # checked for every registered backbone (the 127M-parameter ones included) in milliseconds.
    with torch.device("meta"):
        check_declared_shapes(build_backbone(name).eval(), "meta")


@pytest.mark.parametrize("name", ["resnet18-fpn", "resnet50", "se_resnext50_32x4d-fpn", "resnet50d-fpn",
                                  "preact_resnet18-fpn", "timm:resnet18-fpn", "timm:efficientnet_b0"])
def test_declared_shapes_with_real_tensors(name):
    check_declared_shapes(build_backbone(name).eval(), "cpu")


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "wide_resnet50_2", "preact_resnet34"])
def test_channels_and_strides_come_from_the_variant_table(name):
    shapes = build_backbone(name).output_shape()
    assert [s.channels for s in shapes.values()] == list(get_variant(name).stage_channels)
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    fpn = build_backbone(f"{name}-fpn", top_block="p6p7", fpn_channels=128).output_shape()
    assert {k: tuple(v) for k, v in fpn.items()} == {
        "0": (128, 8), "1": (128, 16), "2": (128, 32), "p6": (128, 64), "p7": (128, 128)}


def test_out_features_subset_does_not_build_later_stages():
    body = build_backbone("resnet50", out_features=["c3", "c4"])
    assert not hasattr(body, "layer4")
    with torch.no_grad():
        out = body.eval()(torch.randn(1, 3, 64, 64))
    assert list(out) == ["c3", "c4"] and out["c4"].shape == (1, 1024, 4, 4)


def stage_modules(body: ResNetFeatures):
    return [[getattr(body, a) for a in unit] for unit in body.stage_members()]


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
@pytest.mark.parametrize("freeze_at", range(6))
def test_freeze_at_freezes_exactly_the_stages_and_stays_frozen(freeze_at, norm):
    model = build_backbone("resnet18-fpn", norm=norm, freeze_at=freeze_at)
    body = model.body
    for mode in ("built", "train"):
        if mode == "train":
            model.train()
        for index, unit in enumerate(stage_modules(body)):
            frozen = index < freeze_at
            params = [p for m in unit for p in m.parameters()]
            assert all(p.requires_grad != frozen for p in params), (index, mode)
            norms = [m for u in unit for m in u.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
            if frozen or norm == "frozen_bn":
                assert all(isinstance(m, FrozenBatchNorm2d) for m in norms)
            else:
                assert all(isinstance(m, nn.BatchNorm2d) for m in norms)
    assert all(p.requires_grad for p in model.fpn.parameters())
    # Running statistics: a training forward moves only the BN layers of unfrozen stages.
    before = {n: b.clone() for n, b in body.named_buffers() if "running_mean" in n}
    model.train()(torch.randn(2, 3, 64, 64))
    moved = {n.split(".")[0] for n, b in body.named_buffers() if "running_mean" in n and not torch.equal(b, before[n])}
    if norm == "frozen_bn":
        assert moved == set()
    else:
        expected = {a for unit in body.stage_members()[freeze_at:] for a in unit if a != "conv1"}
        assert moved == expected


@pytest.mark.parametrize("name", ["resnet18-fpn", "se_resnet50-fpn", "preact_resnet18-fpn", "timm:resnet18-fpn"])
@pytest.mark.parametrize("freeze_at", [0, 2, 4])
def test_gradients_reach_trainable_stages_only(name, freeze_at):
    model = build_backbone(name, freeze_at=freeze_at, norm="bn").train()
    sum(v.float().pow(2).mean() for v in model(torch.randn(2, 3, 64, 64)).values()).backward()
    for p_name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), p_name
        else:
            assert p.grad is None, p_name
    frozen = sum(not p.requires_grad for p in model.parameters())
    assert (frozen == 0) == (freeze_at == 0)


def test_auto_norm_and_freeze_defaults(tmp_path):
    scratch = build_backbone("resnet18-fpn")
    assert isinstance(scratch.body.bn1, nn.BatchNorm2d) and scratch.body.freeze_at == 0
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    pretrained = build_backbone("resnet18-fpn", weights=path)
    assert isinstance(pretrained.body.layer4[0].bn1, FrozenBatchNorm2d) and pretrained.body.freeze_at == 2
    assert not any(p.requires_grad for p in pretrained.body.layer1.parameters())
    assert all(p.requires_grad for p in pretrained.body.layer2.parameters())


def test_group_norm_backbone():
    model = build_backbone("resnet50-fpn", norm="gn")
    assert isinstance(model.body.layer2[0].bn2, nn.GroupNorm) and model.body.layer2[0].bn2.num_groups == 32


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": "resnet50-fnp"}, ValueError, r"unknown backbone 'resnet50-fnp'\. Did you mean 'resnet50-fpn'"),
        ({"name": "resnet50-fpn", "freeze_at": 7}, ValueError, r"freeze_at must be in 0\.\.5 .* got 7"),
        ({"name": "resnet50-fpn", "freeze_at": -1}, ValueError, r"freeze_at must be in 0\.\.5 .* got -1"),
        ({"name": "resnet50-fpn", "freeze_at": "2"}, TypeError, r"freeze_at must be an int in 0\.\.5, got str '2'"),
        ({"name": "resnet50-fpn", "norm": "batchnorm"}, ValueError, r"norm must be one of \('auto', 'frozen_bn', 'bn', 'sync_bn', 'gn'\), got 'batchnorm'"),
        ({"name": "resnet50-fpn", "top_block": "p6"}, ValueError, r"top_block must be one of \['maxpool', 'p6p7', 'p6p7_c5'\], got 'p6'"),
        ({"name": "resnet50-fpn", "out_features": ["c6"]}, ValueError, r"unknown out_features \['c6'\]; valid names are \['c2', 'c3', 'c4', 'c5'\]"),
        ({"name": "resnet50-fpn", "fpn_channels": 0}, ValueError, r"fpn_channels must be a positive int, got 0"),
        ({"name": "timm:resnet5"}, ValueError, r"unknown timm model 'resnet5'\. Did you mean"),
    ],
)
def test_bad_backbone_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_backbone(**kwargs)


def test_register_custom_backbone():
    @register_backbone("tiny-test-fpn")
    def tiny(*, weights, norm, freeze_at, out_features, top_block, fpn_channels):
        body = ResNetFeatures(get_variant("resnet18"), out_features=out_features, norm=norm, freeze_at=freeze_at)
        return FPNBackbone(body, top_block=top_block, fpn_channels=fpn_channels)

    assert "tiny-test-fpn" in list_backbones()
    assert build_backbone("tiny-test-fpn", fpn_channels=64).out_channels == 64
    with pytest.raises(ValueError, match=r"backbone 'tiny-test-fpn' is already registered"):
        register_backbone("tiny-test-fpn", tiny)


def test_torchvision_detection_checkpoint_gives_identical_backbone_outputs(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    randomize_bn(reference)
    path = tmp_path / "frcnn.pth"
    torch.save(reference.state_dict(), path)
    ours = build_backbone("resnet50-fpn", weights=path).eval()
    x = torch.randn(1, 3, 160, 224)
    with torch.no_grad():
        expected, got = reference.backbone(x), ours(x)
    assert list(got) == list(expected) == ["0", "1", "2", "3", "pool"]
    for key in expected:
        assert (got[key] - expected[key]).abs().max() / expected[key].abs().max() <= 1e-5, key
    assert set(ours.state_dict()) <= {k[len("backbone."):] for k in reference.state_dict()}


def test_imagenet_checkpoint_leaves_fpn_at_init_and_reports(tmp_path, caplog):
    path = tmp_path / "r50.pth"
    source = torchvision.models.resnet50(weights=None)
    torch.save(source.state_dict(), path)
    with caplog.at_level("INFO"):
        model = build_backbone("resnet50-fpn", weights=path)
    assert torch.equal(model.body.layer3[2].conv2.weight, source.layer3[2].conv2.weight)
    assert "FPN left at its initialisation" in caplog.text and "fc.weight" in caplog.text


DEEPER_BLOCKS = r"layer1\.2, layer2\.2, layer2\.3, layer3\.2, layer3\.3, layer3\.4, layer3\.5, layer4\.2"


def test_shallower_checkpoint_names_unset_backbone_tensors(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=rf"weights .*r18\.pth leave 80 backbone tensors of resnet34-fpn unset, in "
                                         rf"{DEEPER_BLOCKS} \(e\.g\. body\.layer1\.2\.conv1\.weight\)"):
        build_backbone("resnet34-fpn", weights=path)


@pytest.mark.parametrize("name", ["resnet18-fpn", "resnet18"])
def test_deeper_checkpoint_is_refused_naming_the_blocks_the_model_lacks(tmp_path, name):
    # Was: loaded, the 80 extra tensors logged at INFO; same widths, so no shape told them apart.
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=rf"weights .*r34\.pth hold 80 backbone tensors that {name} does not have, "
                                         rf"in {DEEPER_BLOCKS} \(e\.g\. layer1\.2\.conv1\.weight\); is the "
                                         r"checkpoint for another architecture"):
        build_backbone(name, weights=path)


def test_checkpoint_with_se_blocks_is_refused_for_a_plain_resnet():
    import timm

    with pytest.raises(ValueError, match=r"hold 32 backbone tensors that resnet18-fpn does not have, in layer1\.0\.se, "
                                         r"layer1\.1\.se, .* \(e\.g\. layer1\.0\.se\.fc1\.weight\)"):
        build_backbone("resnet18-fpn", weights=timm.create_model("seresnet18").state_dict())


def test_detection_checkpoint_of_a_deeper_backbone_is_refused():
    # A detector's heads are not the backbone's business, but its body must be this body.
    deeper = FasterRCNN(build_backbone("resnet34-fpn"), num_classes=3).state_dict()
    with pytest.raises(ValueError, match=rf"hold 80 backbone tensors that resnet18-fpn does not have, in "
                                         rf"{DEEPER_BLOCKS} \(e\.g\. backbone\.body\.layer1\.2\.conv1\.weight\)"):
        build_backbone("resnet18-fpn", weights=deeper)


def test_unused_parts_of_a_checkpoint_are_not_errors():
    source = torchvision.models.resnet18(weights=None)
    # Stages the backbone does not build (out_features stops at c3) and the classifier are not its tensors.
    model = build_backbone("resnet18", weights=source.state_dict(), out_features=["c2", "c3"])
    assert torch.equal(model.layer2[1].conv2.weight, source.layer2[1].conv2.weight)
    detector = FasterRCNN(build_backbone("resnet18-fpn"), num_classes=3)
    body_only = build_backbone("resnet18", weights=detector.state_dict())  # FPN, rpn and roi_heads unused
    assert torch.equal(body_only.layer4[1].conv1.weight, detector.backbone.body.layer4[1].conv1.weight)


def one_train_step_and_eval(model: nn.Module, *, masks: bool = False, keypoints: bool = False) -> None:
    torch.manual_seed(0)
    images = [torch.rand(3, 120, 160), torch.rand(3, 100, 140)]
    targets = []
    for img in images:
        h, w = img.shape[1:]
        target = {"boxes": torch.tensor([[10.0, 15.0, 70.0, 80.0]]), "labels": torch.tensor([1])}
        if masks:
            m = torch.zeros(1, h, w, dtype=torch.uint8)
            m[:, 15:80, 10:70] = 1
            target["masks"] = m
        if keypoints:
            target["keypoints"] = torch.tensor([[[20.0, 30.0, 1.0]] * 17])
        targets.append(target)
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "scores", "labels"} <= set(out[0])


DETECTORS = {
    "faster_rcnn_r50": (lambda: FasterRCNN(build_backbone("resnet50-fpn"), num_classes=91), {}),
    "mask_rcnn_r50": (lambda: MaskRCNN(build_backbone("resnet50-fpn"), num_classes=91), {"masks": True}),
    "keypoint_rcnn_r18": (lambda: KeypointRCNN(build_backbone("resnet18-fpn"), num_classes=2), {"keypoints": True}),
    "retinanet_r50": (lambda: RetinaNet(build_backbone("resnet50-fpn", top_block="p6p7"), num_classes=91), {}),
    "fcos_r18": (lambda: FCOS(build_backbone("resnet18-fpn", top_block="p6p7"), num_classes=91), {}),
    "faster_rcnn_timm_r18": (lambda: FasterRCNN(build_backbone("timm:resnet18-fpn"), num_classes=91), {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DETECTORS))
def test_drop_in_torchvision_detectors_with_default_arguments(name):
    make, kwargs = DETECTORS[name]
    one_train_step_and_eval(make(), **kwargs)
