"""Test-time augmentation: scales and flip run through the detector, merged per class, masks averaged first."""
import json
import re

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


# ------------------------------------------------------------------------------------- eval --tta (checkpoint)
@pytest.fixture(scope="module")
def fruits_checkpoint(tmp_path_factory):
    from resnet_fpn import Category
    from resnet_fpn.checkpoint import save_detector_checkpoint

    torch.manual_seed(0)
    # Random heads, score_thresh 0: every image has its 10 detections, so the tables have numbers to compare.
    options = dict(model="faster_rcnn", backbone="resnet18-fpn", num_classes=4, min_size=160, max_size=256,
                   rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, detections_per_img=10, score_thresh=0.0)
    categories = [Category(1, 1, "date"), Category(2, 2, "fig"), Category(3, 3, "hazelnut")]
    return save_detector_checkpoint(tmp_path_factory.mktemp("ckpt") / "fruits.ckpt", build_detector(**options),
                                    model_options=options, categories=categories)


def test_eval_tta_prints_both_tables_and_writes_both_files(shared_data, fruits_checkpoint, tmp_path, capsys):
    from conftest import require_shared
    from resnet_fpn.cli import main
    from resnet_fpn.evaluate import evaluate_checkpoint

    root = require_shared(shared_data / "fruits_nuts")
    out = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(fruits_checkpoint), "--data-root", str(root), "--tta",
                 "--tta-min-sizes", "128", "192", "--tta-max-size", "256", "--out", str(out),
                 "--results-out", str(tmp_path / "results.json")]) == 0
    printed = capsys.readouterr().out
    plain_at = printed.index("without test-time augmentation:")
    tta_at = printed.index("with test-time augmentation (min sizes 128, 192; max size 256; horizontal flip; "
                           "merged per class by NMS 0.5):")
    assert plain_at < tta_at and printed.count("COCO bbox evaluation") == 2
    assert printed.index("COCO bbox evaluation") > plain_at and printed.rindex("COCO bbox evaluation") > tta_at
    plain = json.loads(out.read_text())
    tta = json.loads((tmp_path / "metrics_tta.json").read_text())
    results_tta = json.loads((tmp_path / "results_tta.json").read_text())
    assert results_tta and len(results_tta) <= 4 * 10  # 4 val photos, at most detections_per_img each
    # The same numbers as the library call, which scores the TTA detector on the same batches.
    again = evaluate_checkpoint(fruits_checkpoint, ann_file=root / "annotations" / "instances_val.json",
                                images_dir=root / "images",
                                tta={"min_sizes": (128, 192), "max_size": 256, "flip": True})
    assert again.metrics["bbox"]["AP"] == pytest.approx(plain["bbox"]["AP"], abs=1e-12)
    assert again.tta.metrics["bbox"]["AP"] == pytest.approx(tta["bbox"]["AP"], abs=1e-12)
    assert again.tta.results != again.results  # two runs differ (the test can fail)


def test_eval_tta_of_the_model_size_without_flip_equals_the_plain_evaluation(shared_data, fruits_checkpoint):
    from conftest import require_shared
    from resnet_fpn.evaluate import evaluate_checkpoint

    root = require_shared(shared_data / "fruits_nuts")
    got = evaluate_checkpoint(fruits_checkpoint, ann_file=root / "annotations" / "instances_val.json",
                              images_dir=root / "images", tta={"min_sizes": (160,), "max_size": 256, "flip": False})
    # Random heads score AP 0 here, so the detections themselves are compared (and then the stats).
    def ordered(results):
        return sorted(results, key=lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"]))

    plain, tta = ordered(got.results), ordered(got.tta.results)
    assert len(plain) == 4 * 10 and len(tta) == len(plain)
    for p, t in zip(plain, tta):
        assert (p["image_id"], p["category_id"]) == (t["image_id"], t["category_id"])
        assert t["score"] == pytest.approx(p["score"], abs=1e-6) and t["bbox"] == pytest.approx(p["bbox"], abs=1e-3)
    for key, value in got.metrics["bbox"].items():
        assert got.tta.metrics["bbox"][key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("argv, message", [
    (["--tta-min-sizes", "400"], "--tta-min-sizes, --tta-max-size and --tta-no-flip need --tta"),
    (["--tta", "--optimize"], "--tta runs the torch detector"),
    (["--tta", "--tta-min-sizes", "0"], r"--tta-min-sizes takes positive pixel sizes, got \[0\]"),
    (["--tta", "--tta-max-size", "0"], r"--tta-max-size takes positive pixel sizes, got 0"),
])
def test_eval_tta_flag_errors(tmp_path, capsys, argv, message):
    from resnet_fpn.cli import main

    assert main(["eval", "--checkpoint", str(tmp_path / "x.ckpt"), "--data-root", str(tmp_path), *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_evaluate_checkpoint_refuses_tta_with_optimize(tmp_path):
    from resnet_fpn.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match=r"tta needs the torch detector .* cannot run with optimize=True"):
        evaluate_checkpoint(tmp_path / "x.ckpt", ann_file=tmp_path / "a.json", images_dir=tmp_path,
                            optimize=True, tta=DETECTRON2_TTA)


def test_cli_tta_defaults_are_detectron2s():
    from resnet_fpn.cli import evaluate as cli_evaluate

    assert cli_evaluate.TTA_MIN_SIZES == DETECTRON2_TTA["min_sizes"]
    assert cli_evaluate.TTA_MAX_SIZE == DETECTRON2_TTA["max_size"]
