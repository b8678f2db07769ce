"""Test-time augmentation: scales and flip run through the detector, merged per class, masks averaged first."""
import pytest
import torch

from resnet_fpn.detectors import build_detector
from resnet_fpn.tta import DETECTRON2_TTA, TTADetector, _crop, merge_detections

SMALL = dict(min_size=64, max_size=64, fpn_channels=32, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
             detections_per_img=20, score_thresh=0.0)


def _sorted(output):
    order = torch.argsort(output["scores"], descending=True, stable=True)
    return {k: v[order] for k, v in output.items()}


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn"])
def test_one_scale_without_flip_is_the_detector_itself(name):
    torch.manual_seed(0)
    detector = build_detector(name, num_classes=4, backbone="resnet18-fpn", norm="frozen_bn", **SMALL).eval()
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    with torch.no_grad():
        expected = detector(images)
    tta = TTADetector(detector, min_sizes=[64], max_size=64, flip=False)
    got = tta(images)
    assert detector.transform.min_size == (64,) and detector.transform.max_size == 64  # restored
    for g, e in zip(got, expected):
        g, e = _sorted(g), _sorted(e)
        assert len(e["boxes"]) > 0
        torch.testing.assert_close(g["boxes"], e["boxes"])
        torch.testing.assert_close(g["labels"], e["labels"])
        if "masks" in e:
            torch.testing.assert_close(g["masks"], e["masks"], atol=1e-3, rtol=0)  # crops kept as float16


def test_flip_and_scales_run_every_augmentation_and_map_boxes_back():
    torch.manual_seed(0)
    detector = build_detector("faster_rcnn", num_classes=4, backbone="resnet18-fpn", norm="frozen_bn", **SMALL).eval()
    tta = TTADetector(detector, min_sizes=[48, 64, 96], max_size=128, flip=True)
    assert tta.augmentations() == [(48, False), (48, True), (64, False), (64, True), (96, False), (96, True)]
    image = torch.rand(3, 64, 80)
    out = tta([image])[0]
    assert len(out["boxes"]) <= tta.detections_per_img == 20
    assert (out["boxes"][:, 0] >= 0).all() and (out["boxes"][:, 2] <= 80).all()  # original coordinates
    assert TTADetector(detector).min_sizes == list(range(400, 1201, 100)) and DETECTRON2_TTA["max_size"] == 4000


def test_masks_are_averaged_before_thresholding_and_boxes_merged_per_class():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 3.9], [0.0, 0.0, 4.0, 4.0]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 2])
    a, b, c = torch.zeros(6, 6), torch.zeros(6, 6), torch.zeros(6, 6)
    a[0, 0], b[0, 0] = 0.8, 0.3   # mean 0.55: kept at 0.5
    a[1, 1], b[1, 1] = 0.6, 0.2   # mean 0.4: dropped, though one run alone had it above 0.5
    c[2, 2] = 1.0
    out = merge_detections(boxes, scores, labels, nms_thresh=0.5, limit=10, masks=[_crop(m) for m in (a, b, c)],
                           image_size=(6, 6))
    # Same class, IoU 0.975: merged into the best; the class-2 box overlapping them stays (per-class NMS).
    assert out["labels"].tolist() == [1, 2] and out["scores"].tolist() == pytest.approx([0.9, 0.7])
    merged = out["masks"][0, 0]
    assert merged[0, 0].item() == pytest.approx(0.55, abs=1e-3) and merged[1, 1].item() == pytest.approx(0.4, abs=1e-3)
    assert ((out["masks"][0, 0] > 0.5).nonzero().tolist()) == [[0, 0]]
    assert out["masks"][1, 0, 2, 2].item() == 1.0 and out["masks"][1].sum().item() == 1.0


def test_bad_options_are_refused():
    detector = build_detector("faster_rcnn", num_classes=4, backbone="resnet18-fpn", **SMALL)
    with pytest.raises(ValueError, match=r"min_sizes must be a non-empty list of positive ints"):
        TTADetector(detector, min_sizes=[])
    with pytest.raises(ValueError, match=r"needs a torchvision detector with a GeneralizedRCNNTransform"):
        TTADetector(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"runs in eval mode only"):
        TTADetector(detector.train(), min_sizes=[64])([torch.rand(3, 64, 64)])
