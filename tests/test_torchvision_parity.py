"""Each of torchvision's 8 ResNet-50 detection builders against our detector built by name, on real photos.

The torchvision model gets random weights with randomised BN statistics (every tensor matters), its
``state_dict()`` is loaded strictly into ours by name (``build_detector(<name>, weights=...)``), and both run in
eval mode on the same photographs of shared/data/coco128. Both keep every detection (score threshold 0):
with random heads every score is ~1/91 (R-CNNs) or ~0.01 (one-stage priors), below the default thresholds,
and the comparison would otherwise be of two empty lists.
"""
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models import detection as tvd
from torchvision.transforms.functional import pil_to_tensor

from resnet_fpn import build_detector
from resnet_fpn.detectors import DETECTORS

# our name -> (torchvision builder, num_classes)
BUILDERS = {
    "faster_rcnn": (tvd.fasterrcnn_resnet50_fpn, 91),
    "faster_rcnn_v2": (tvd.fasterrcnn_resnet50_fpn_v2, 91),
    "mask_rcnn": (tvd.maskrcnn_resnet50_fpn, 91),
    "mask_rcnn_v2": (tvd.maskrcnn_resnet50_fpn_v2, 91),
    "retinanet": (tvd.retinanet_resnet50_fpn, 91),
    "retinanet_v2": (tvd.retinanet_resnet50_fpn_v2, 91),
    "fcos": (tvd.fcos_resnet50_fpn, 91),
    "keypoint_rcnn": (tvd.keypointrcnn_resnet50_fpn, 2),
}
# Two photos of coco128 (people, animals, objects): small sizes keep the 16 forward passes quick on a CPU.
PHOTOS = ("000000000009.jpg", "000000000036.jpg")
SIZE = dict(min_size=320, max_size=512)


def test_every_torchvision_resnet50_builder_has_a_name():
    assert set(BUILDERS) <= set(DETECTORS)


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
            # Moderate ranges: wider ones drive a random 50-layer net to degenerate boxes (no detections left).
            m.running_mean.copy_((torch.rand(m.num_features, generator=g) - 0.5) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.4 + 0.8)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 + 0.8)
            m.bias.data.copy_((torch.rand(m.num_features, generator=g) - 0.5) * 0.2)
        if isinstance(m, nn.GroupNorm):
            m.weight.data.copy_(torch.rand(m.num_channels, generator=g) * 0.4 + 0.8)
            m.bias.data.copy_((torch.rand(m.num_channels, generator=g) - 0.5) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def photos(shared_data):
    images = shared_data / "coco128" / "images"
    return [pil_to_tensor(Image.open(images / name).convert("RGB")).float() / 255 for name in PHOTOS]


@pytest.mark.slow  # 16 forward passes of R50 detectors keeping 100 detections each: ~1 min on 2 cores
@pytest.mark.parametrize("name", list(BUILDERS))
def test_loads_torchvision_strictly_and_gives_its_outputs(name, photos):
    builder, num_classes = BUILDERS[name]
    torch.manual_seed(0)
    keep_all = {"box_score_thresh" if DETECTORS[name].family == "rcnn" else "score_thresh": 0.0}
    reference = _randomise(builder(weights=None, weights_backbone=None, num_classes=num_classes, **keep_all, **SIZE))
    # torchvision without weights builds plain BN and freezes nothing: ask for the same, so both compute the very
    # same graph. (With weights, our "auto" freezes the stem and c2 as FrozenBatchNorm2d, which differs from
    # BatchNorm2d by rounding, ~2e-6 of the features; random heads amplify that to ~1e-3 of a box.)
    ours = build_detector(name, num_classes=num_classes, backbone="resnet50-fpn", norm="bn", freeze_at=0,
                          weights=reference.state_dict(), score_thresh=0.0, **SIZE).eval()
    # Strict: every tensor of theirs has a home in ours and the reverse (BN counters aside).
    theirs = {k for k in reference.state_dict() if not k.endswith("num_batches_tracked")}
    assert {k for k in ours.state_dict() if not k.endswith("num_batches_tracked")} == theirs
    with torch.no_grad():
        expected, got = reference(photos), ours(photos)
    total = 0
    for e, o in zip(expected, got):
        assert set(o) == set(e)
        assert torch.equal(o["labels"], e["labels"]), name
        torch.testing.assert_close(o["boxes"], e["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(o["scores"], e["scores"], rtol=1e-4, atol=1e-5)
        if "masks" in e:
            torch.testing.assert_close(o["masks"], e["masks"], rtol=1e-4, atol=1e-4)
        if "keypoints" in e:
            torch.testing.assert_close(o["keypoints"], e["keypoints"], rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(o["keypoints_scores"], e["keypoints_scores"], rtol=1e-4, atol=1e-3)
        total += len(e["boxes"])
    assert total >= 100, f"{name}: only {total} detections; the comparison would prove little"
