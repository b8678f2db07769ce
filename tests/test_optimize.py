"""optimize_for_inference (its torch runtime; the external runtimes and "auto": tests/test_runtimes.py): BN folding is exact, the input model is untouched, detectors keep their detections."""
import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from benchmarks.agreement import max_relative_difference
from benchmarks.models import randomize_norm_statistics
from resnet_fpn import build_backbone, build_detector, optimize_for_inference
from resnet_fpn.deploy import InferenceWrapper, fold_batchnorm, norms_after_convs
from resnet_fpn.deploy.optimize import LowPrecisionHead, _cpu_has_native_bf16
from resnet_fpn.detectors import list_detectors


def _norm_count(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.modules())


# name -> (BN layers, of which directly after a conv). Post-activation nets: every BN follows a conv
# (resnet18: stem 1 + 8 blocks x 2 + 3 projections = 20; resnet50: 1 + 16 x 3 + 4 = 53; the deep stem of
# resnet50d adds 2). Pre-activation (He et al., 2016, "Identity mappings"): only bn2 of each of the 8 blocks
# follows a conv; bn1 precedes one (with a ReLU between) and the final norm follows the residual add.
FOLDABLE = {
    "resnet18-fpn": (20, 20),
    "resnet50d-fpn": (55, 55),
    "se_resnext50_32x4d-fpn": (53, 53),
    "preact_resnet18-fpn": (17, 8),
}


@pytest.fixture(scope="module")
def image_batch():
    return torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(FOLDABLE))
def test_fold_counts_and_exactness(name, image_batch):
    backbone = randomize_norm_statistics(build_backbone(name, norm="frozen_bn").eval())
    total, foldable = FOLDABLE[name]
    assert _norm_count(backbone) == total
    assert len(norms_after_convs(backbone)) == foldable
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    fast = optimize_for_inference(backbone, runtime="torch")

    # The input model is not modified.
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert isinstance(fast, InferenceWrapper) and fast.channels_last
    assert norms_after_convs(fast.module) == []
    assert _norm_count(fast.module) == total - foldable
    assert not any(p.requires_grad for p in fast.parameters())
    # The wrapper stands in for the backbone: its declared shapes are the backbone's.
    assert fast.out_channels == backbone.out_channels
    with torch.inference_mode():
        reference, out = backbone(image_batch), fast(image_batch)
    assert max_relative_difference(out, reference) <= 1e-4


def test_fold_batchnorm_leaves_training_mode_norms():
    # Trainable BN in train mode normalises with batch statistics: nothing can be folded.
    backbone = build_backbone("resnet18-fpn", norm="bn").train()
    assert fold_batchnorm(backbone) == 0
    assert fold_batchnorm(backbone.eval()) == 20


def test_fold_batchnorm_skips_norm_subclasses_with_other_maths():
    # timm's BatchNormAct2d is a BatchNorm2d that also applies its activation: folding it would drop the ReLU.
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)).eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
        assert fold_batchnorm(model) == 1 and isinstance(model[1], BatchNormAct2d)
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_fold_uses_torchs_arithmetic():
    # One conv -> BN pair folded is torch.nn.utils.fusion.fuse_conv_bn_eval's conv, bit for bit.
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        randomize_norm_statistics(model)
    expected = fuse_conv_bn_eval(model[0], model[1])
    assert fold_batchnorm(model) == 1 and isinstance(model[1], nn.Identity)
    assert torch.equal(model[0].weight, expected.weight) and torch.equal(model[0].bias, expected.bias)


def test_plain_copy_is_still_the_wrapper(image_batch):
    # One return type whatever the options: without channels_last or a dtype the wrapper only passes through.
    backbone = randomize_norm_statistics(build_backbone("resnet18-fpn", norm="frozen_bn").eval())
    plain = optimize_for_inference(backbone, channels_last=False, runtime="torch")
    assert isinstance(plain, InferenceWrapper) and not plain.channels_last and plain.dtype is None
    assert norms_after_convs(plain.module) == []
    with torch.inference_mode():
        reference, out = backbone(image_batch), plain(image_batch)
    assert list(out) == list(reference) and all(v.is_contiguous() for v in out.values())
    assert max_relative_difference(out, reference) <= 1e-4


@pytest.mark.slow
def test_compiled_copy_is_the_wrapper_and_runs_the_compiled_graph():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        randomize_norm_statistics(model.eval())
    fast = optimize_for_inference(model, compile=True)
    assert isinstance(fast, InferenceWrapper) and fast.compiled and isinstance(fast.module[1], nn.Identity)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        reference, out = model(x), fast(x)
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo captured a graph: the compiled module ran
    assert torch.allclose(out, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))


def test_detector_keeps_its_detections():
    torch.manual_seed(0)
    # score_thresh 0 and 91 classes: many detections, so a folding error would move some of them.
    detector = build_detector("faster_rcnn", backbone="resnet18-fpn", num_classes=91, norm="frozen_bn",
                              min_size=256, max_size=320, score_thresh=0.0).eval()
    randomize_norm_statistics(detector)
    # A fresh detector that never ran forward: tracing must not leave fx proxies in MultiScaleRoIAlign.
    fast = optimize_for_inference(detector, runtime="torch")
    # Called as the detector (a list of images in, a list of dicts out); the options act on its backbone.
    assert isinstance(fast, InferenceWrapper) and type(fast.module) is type(detector)
    assert isinstance(fast.backbone, InferenceWrapper) and fast.backbone.channels_last
    assert fast.transform is fast.module.transform and norms_after_convs(fast) == []
    image = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, out = detector([image])[0], fast([image])[0]
        again = fast([image])[0]
    assert len(ref["boxes"]) == len(out["boxes"]) > 0
    assert torch.equal(ref["labels"], out["labels"])
    assert (ref["boxes"] - out["boxes"]).abs().max() <= 1e-3
    assert torch.equal(out["boxes"], again["boxes"])


def test_bf16_is_close(image_batch):
    backbone = randomize_norm_statistics(build_backbone("resnet18-fpn", norm="frozen_bn").eval())
    if _cpu_has_native_bf16():
        fast = optimize_for_inference(backbone, dtype=torch.bfloat16, runtime="torch")
    else:
        with pytest.warns(UserWarning, match="without native bf16"):
            fast = optimize_for_inference(backbone, dtype=torch.bfloat16, runtime="torch")
    with torch.inference_mode():
        reference, out = backbone(image_batch), fast(image_batch)
    assert all(v.dtype == torch.float32 for v in out.values())
    # bf16 keeps 8 bits of mantissa (relative rounding 2**-9 per op); over 18 convs a few percent of the range.
    assert max_relative_difference(out, reference) <= 0.05


def _bf16_copy(model):
    if _cpu_has_native_bf16():
        return optimize_for_inference(model, dtype=torch.bfloat16, runtime="torch")
    with pytest.warns(UserWarning, match="without native bf16"):
        return optimize_for_inference(model, dtype=torch.bfloat16, runtime="torch")


def test_bf16_detector_runs_its_heads_in_bf16_and_decodes_in_float32():
    torch.manual_seed(0)
    detector = build_detector("mask_rcnn", backbone="resnet18-fpn", num_classes=5, norm="frozen_bn",
                              min_size=128, max_size=160, score_thresh=0.0).eval()
    randomize_norm_statistics(detector)
    fast = _bf16_copy(detector)
    roi = fast.module.roi_heads
    # Every head torchvision's autocast inference runs in bf16, and nothing else, is wrapped.
    assert [path for path, m in fast.module.named_modules() if isinstance(m, LowPrecisionHead)] == [
        "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head", "roi_heads.mask_predictor"]
    assert isinstance(roi.box_roi_pool, MultiScaleRoIAlign) and roi.has_mask()  # roi_align untouched, found
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.dtype  # returns None: the output is left as it is
        return hook

    hooks = [roi.mask_head.module[0].register_forward_hook(record("mask_conv")),
             roi.box_head.module.fc6.register_forward_hook(record("fc6"))]
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, out = detector([image])[0], fast([image])[0]
    for hook in hooks:
        hook.remove()
    assert seen == {"mask_conv": torch.bfloat16, "fc6": torch.bfloat16}
    assert {k: v.dtype for k, v in out.items()} == {"boxes": torch.float32, "labels": torch.int64,
                                                     "scores": torch.float32, "masks": torch.float32}
    assert len(out["boxes"]) > 0 and len(ref["boxes"]) > 0


# What each detector's bf16 copy runs in bf16 besides the backbone (DETECTOR_HEADS that the model has).
LOW_PRECISION_HEADS = {
    "faster_rcnn": ["rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"],
    "faster_rcnn_v2": ["rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"],
    "mask_rcnn": ["rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head",
                  "roi_heads.mask_predictor"],
    "mask_rcnn_v2": ["rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head",
                     "roi_heads.mask_predictor"],
    "keypoint_rcnn": ["rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.keypoint_head",
                      "roi_heads.keypoint_predictor"],
    "retinanet": ["head"],
    "retinanet_v2": ["head"],
    "fcos": ["head"],
}


def test_every_detector_has_its_heads_listed():
    assert sorted(LOW_PRECISION_HEADS) == sorted(list_detectors())


@pytest.mark.parametrize("name", sorted(LOW_PRECISION_HEADS))
def test_every_detector_runs_in_bf16_with_float32_outputs(name):
    torch.manual_seed(0)
    options = {"num_classes": 3} if name != "keypoint_rcnn" else {"num_classes": 2, "num_keypoints": 5}
    detector = build_detector(name, backbone="resnet18-fpn", norm="frozen_bn", min_size=96, max_size=128,
                              **options).eval()
    fast = _bf16_copy(detector)
    assert [p for p, m in fast.module.named_modules() if isinstance(m, LowPrecisionHead)] == LOW_PRECISION_HEADS[name]
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = fast([image])[0]
    assert out["boxes"].dtype == out["scores"].dtype == torch.float32 and out["boxes"].shape[1] == 4
    assert all(v.dtype in (torch.float32, torch.int64) for v in out.values())


def test_a_low_precision_head_is_the_head_within_bf16_rounding():
    torch.manual_seed(0)
    detector = build_detector("mask_rcnn", backbone="resnet18-fpn", num_classes=5, norm="frozen_bn").eval()
    head = detector.roi_heads.mask_head
    x = torch.randn(6, 256, 14, 14, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        reference, out = head(x), LowPrecisionHead(head, torch.bfloat16)(x)
    assert out.dtype == torch.float32 and not torch.equal(out, reference)  # it did run in bf16
    # 8 bits of mantissa over four 3x3 convs of 2304 inputs each: about a percent of the range
    assert max_relative_difference({"x": out}, {"x": reference}) <= 0.03
    wrapped = LowPrecisionHead(detector.roi_heads.box_predictor, torch.bfloat16)
    assert wrapped.cls_score is detector.roi_heads.box_predictor.cls_score  # attributes of the head show through


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dtype": torch.int8}, ValueError, r"dtype must be one of .*torch\.bfloat16.*got torch\.int8"),
        ({"dtype": "bf16"}, TypeError, r"dtype must be None or a torch\.dtype, got str 'bf16'"),
        ({"dtype": torch.float16}, ValueError, r"float16 is only supported for models on CUDA.*on cpu"),
        ({"channels_last": "yes"}, TypeError, r"channels_last must be a bool, got str 'yes'"),
        ({"compile": 1}, TypeError, r"compile must be a bool, got int 1"),
        ({"runtime": "tensorrt"}, ValueError, r"runtime must be one of \('auto', 'torch', 'onnxruntime', "
                                              r"'openvino'\), got 'tensorrt'"),
        ({"runtime": None}, TypeError, r"runtime must be a str.*got NoneType None"),
        ({"runtime": "onnxruntime", "compile": True}, ValueError,
         r"runtime='onnxruntime' cannot run this model: compile=True is torch\.compile's option"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        optimize_for_inference(build_backbone("resnet18-fpn"), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match=r"optimize_for_inference expects an nn\.Module, got dict"):
        optimize_for_inference({"conv1.weight": torch.zeros(1)})


def test_copy_is_independent_of_later_changes_to_the_original(image_batch):
    backbone = randomize_norm_statistics(build_backbone("resnet18-fpn", norm="frozen_bn").eval())
    fast = optimize_for_inference(backbone, runtime="torch")
    with torch.inference_mode():
        first = fast(image_batch)
        with torch.no_grad():
            backbone.body.conv1.weight.zero_()
        second = fast(image_batch)
    assert all(torch.equal(first[k], second[k]) for k in first)
