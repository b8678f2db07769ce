"""Predictor (images in, named detections out), drawing, and tools/infer.py on fruits_nuts."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from resnet_fpn import Category
from resnet_fpn.cli import main as cli_main
from resnet_fpn.cli.infer import find_images
from resnet_fpn.checkpoint import save_detector_checkpoint
from resnet_fpn.detectors import build_detector
from resnet_fpn.evaluation import evaluate_results
from resnet_fpn.predictor import Prediction, Predictor, read_image, to_float_image
from resnet_fpn.visualize import draw_predictions, label_color, save_image
from conftest import require_shared

REPO = Path(__file__).resolve().parents[1]
# Random heads score every class alike (~1/num_classes), so a low threshold keeps detections.
LOW_THRESHOLD = 0.05


def _categories(ann_file: Path):
    data = json.loads(ann_file.read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    return [Category(label=i + 1, id=c["id"], name=c["name"]) for i, c in enumerate(cats)]


def _save_checkpoint(path: Path, ann_file: Path, **sizes) -> Path:
    torch.manual_seed(0)
    # Few proposals and detections: the randomly initialised model is only here to exercise the plumbing.
    options = dict(model="mask_rcnn", backbone="resnet18-fpn", num_classes=4, rpn_pre_nms_top_n_test=200,
                   rpn_post_nms_top_n_test=100, detections_per_img=10, **sizes)
    detector = build_detector(**options)
    return save_detector_checkpoint(path, detector, model_options=options, categories=_categories(ann_file))


@pytest.fixture(scope="module")
def fruits(shared_data):
    return require_shared(shared_data / "fruits_nuts")


@pytest.fixture(scope="module")
def small_checkpoint(fruits, tmp_path_factory):
    """A Mask R-CNN at 160-256 px: the unit tests check plumbing, not accuracy."""
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.ckpt",
                            fruits / "annotations" / "instances_val.json", min_size=160, max_size=256)


@pytest.fixture(scope="module")
def predictor(small_checkpoint):
    return Predictor.from_checkpoint(small_checkpoint, score_threshold=LOW_THRESHOLD, runtime="eager")


@pytest.fixture(scope="module")
def photo(fruits):
    return fruits / "images" / "14.jpg"  # image id 15 of instances_val.json, 800x600


@pytest.fixture(scope="module")
def photo_prediction(predictor, photo):
    return predictor(photo)


# ------------------------------------------------------------------------------------------------ loading
def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope\.ckpt"):
        Predictor.from_checkpoint(tmp_path / "nope.ckpt")


def test_read_image_applies_exif_orientation(tmp_path):
    # A 40x60 (w x h) picture stored sideways with EXIF orientation 6 ("rotate 90 clockwise to view").
    stored = Image.new("RGB", (60, 40), (200, 10, 10))
    stored.paste((10, 200, 10), (0, 0, 10, 40))  # a green band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, exif=exif, quality=95)
    upright = read_image(path)
    assert upright.shape == (60, 40, 3)
    # Rotating 90 degrees clockwise moves the stored left edge to the top.
    assert upright[:5, :, 1].mean() > 150 and upright[-5:, :, 1].mean() < 60
    with Image.open(path) as pil:
        assert tuple(to_float_image(pil).shape) == (3, 60, 40)


def test_unreadable_image_raises_clear_error(predictor, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.jpg"):
        predictor(broken)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"cannot read image .*truncated\.png"):
        read_image(truncated)
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*absent\.jpg"):
        predictor(tmp_path / "absent.jpg")


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.full((3, 8, 8), 200.0), ValueError, r"must lie in \[0, 1\].*divide a 0-255 image by 255"),
        (np.zeros((8, 8, 3), dtype=np.float32), ValueError, r"numpy images must be uint8"),
        (np.zeros((8, 8, 5), dtype=np.uint8), ValueError, r"numpy images must be \(H, W, 3\)"),
        (torch.zeros(1, 3, 8, 8), ValueError, r"tensor images must be \(3, H, W\)"),
        (12, TypeError, r"expected a path, PIL image"),
    ],
)
def test_bad_inputs_are_refused(bad, error, match):
    with pytest.raises(error, match=match):
        to_float_image(bad)


def test_predictor_options_are_checked(small_checkpoint):
    with pytest.raises(ValueError, match=r"score_threshold must be a number in \[0, 1\]"):
        Predictor.from_checkpoint(small_checkpoint, score_threshold=1.5)
    detector = build_detector("faster_rcnn", backbone="resnet18-fpn", num_classes=3, min_size=160, max_size=256)
    with pytest.raises(ValueError, match="categories repeat a label"):
        Predictor(detector, [Category(1, 1, "a"), Category(1, 2, "b")])


# ------------------------------------------------------------------------------------------------ predicting
def test_every_input_kind_gives_the_same_prediction(predictor, photo, photo_prediction):
    array = read_image(photo)
    chw_float = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    with Image.open(photo) as pil:
        pil.load()
    # One call with a list: returns a list, in order.
    others = predictor([str(photo), pil, array, chw_float], batch_size=2)
    assert isinstance(others, list) and len(others) == 4
    assert isinstance(photo_prediction, Prediction)
    for other in others:
        assert torch.allclose(other.boxes, photo_prediction.boxes, atol=1e-4)
        assert torch.equal(other.labels, photo_prediction.labels)
        assert other.names == photo_prediction.names


def test_prediction_matches_the_detector_and_categories(predictor, photo, photo_prediction, fruits):
    pred = photo_prediction
    assert len(pred) > 0, "a random Mask R-CNN scores ~1/4 per class: detections above 0.05 expected"
    assert pred.image_size == (600, 800)
    assert pred.boxes.dtype == torch.float32 and pred.boxes.shape == (len(pred), 4)
    assert bool((pred.boxes[:, 0] >= 0).all() and (pred.boxes[:, 2] <= 800).all() and (pred.boxes[:, 3] <= 600).all())
    assert bool((pred.scores >= LOW_THRESHOLD).all())
    assert pred.masks.dtype == torch.bool and tuple(pred.masks.shape) == (len(pred), 600, 800)
    cats = {c.label: c for c in _categories(fruits / "annotations" / "instances_val.json")}
    assert pred.category_ids == [cats[int(label)].id for label in pred.labels]
    assert pred.names == [cats[int(label)].name for label in pred.labels]
    # Same numbers as the detector itself, thresholded.
    with torch.no_grad():
        raw = predictor.detector([to_float_image(photo)])[0]
    keep = raw["scores"] >= LOW_THRESHOLD
    assert torch.equal(pred.boxes, raw["boxes"][keep])
    assert torch.equal(pred.masks, raw["masks"][keep][:, 0] > 0.5)


def test_runtime_is_chosen_and_keeps_the_contract(small_checkpoint, photo, photo_prediction):
    fast = Predictor.from_checkpoint(small_checkpoint, score_threshold=LOW_THRESHOLD, runtime="torch")
    assert fast.detector.runtime == "torch" and "torch" in fast.detector.choice
    pred = fast(photo)
    # BN folded into the convolutions: the same detections up to float rounding (a detection at the score
    # threshold may come or go).
    n = min(len(pred), len(photo_prediction))
    assert n >= len(photo_prediction) - 1 and n > 0
    torch.testing.assert_close(pred.boxes[:n], photo_prediction.boxes[:n], atol=0.05, rtol=0)
    assert pred.names[:n] == photo_prediction.names[:n]
    with pytest.raises(ValueError, match=r"runtime must be one of \('auto', 'torch', 'onnxruntime', 'openvino', "
                                         r"'eager'\), got 'tensorrt'"):
        Predictor.from_checkpoint(small_checkpoint, runtime="tensorrt")


def test_score_threshold_filters(small_checkpoint, photo, photo_prediction):
    threshold = float(photo_prediction.scores.median())
    strict = Predictor.from_checkpoint(small_checkpoint, score_threshold=threshold, runtime="eager")(photo)
    assert 0 < len(strict) < len(photo_prediction)
    assert bool((strict.scores >= threshold).all())
    assert torch.equal(strict.boxes, photo_prediction.boxes[photo_prediction.scores >= threshold])


def test_labels_without_category_are_an_error(predictor, photo, photo_prediction):
    predicted = set(photo_prediction.labels.tolist())
    others = [c for c in predictor.categories if c.label not in predicted] or [Category(99, 99, "none")]
    only_others = Predictor(predictor.detector, others, score_threshold=LOW_THRESHOLD)
    with pytest.raises(ValueError, match=r"labels \[.*\] that have no category"):
        only_others(photo)


def test_coco_results_round_trip(photo_prediction, fruits):
    pred = photo_prediction
    entries = pred.to_coco_results(image_id=15)
    assert len(entries) == len(pred)
    json.loads(json.dumps(entries))  # serialisable as it is
    for entry, box, mask in zip(entries, pred.boxes.tolist(), pred.masks):
        x, y, w, h = entry["bbox"]
        assert [x, y, x + w, y + h] == pytest.approx(box, abs=1e-4)
        assert isinstance(entry["segmentation"]["counts"], str)
        decoded = mask_utils.decode({"size": entry["segmentation"]["size"],
                                     "counts": entry["segmentation"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask.numpy())
    with pytest.warns(UserWarning, match="results cover 1 of 4 ground-truth images"):  # one photo of val's four
        metrics = evaluate_results(fruits / "annotations" / "instances_val.json", entries, iou_types=("bbox", "segm"))
    assert set(metrics) >= {"bbox", "segm"}
    with pytest.raises(TypeError, match="image_id must be an int"):
        pred.to_coco_results(image_id="15")


# ------------------------------------------------------------------------------------------------ drawing
def test_draw_predictions_draws_boxes_masks_and_labels(photo, photo_prediction):
    image = torch.from_numpy(read_image(photo)).permute(2, 0, 1)
    picture = draw_predictions(image, photo_prediction)
    assert picture.dtype == torch.uint8 and picture.shape == image.shape
    x1, y1, x2, y2 = photo_prediction.boxes[0].round().int().tolist()
    changed = (picture != image).any(dim=0)
    assert changed[y1:y2 + 1, x1:x2 + 1].float().mean() > 0.3  # outline, label and translucent mask
    # Far from every box (labels may stick out to the right of narrow boxes), nothing is drawn.
    near = torch.zeros_like(changed)
    for bx1, by1, bx2, by2 in photo_prediction.boxes.round().int().tolist():
        near[max(by1 - 5, 0):by2 + 6, max(bx1 - 5, 0):bx2 + 100] = True
    assert (~near).any() and not changed[~near].any()
    # Nothing above the threshold: the image comes back unchanged (a copy).
    untouched = draw_predictions(image, photo_prediction, score_threshold=1.01)
    assert torch.equal(untouched, image) and untouched.data_ptr() != image.data_ptr()


def test_draw_predictions_reads_torchvision_dicts():
    image = torch.zeros(3, 50, 80, dtype=torch.uint8)
    masks = torch.zeros(1, 1, 50, 80)
    masks[0, 0, 10:20, 10:30] = 0.9
    raw = {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([2]), "masks": masks}
    picture = draw_predictions(image.float() / 255, raw, label_names={2: "fig"}, mask_alpha=1.0)
    assert picture[:, 15, 20].tolist() == list(label_color(2))  # inside the mask, fully opaque
    assert picture[:, 45, 70].tolist() == [0, 0, 0]  # outside everything
    with pytest.raises(ValueError, match=r"masks are \(50, 80\) but the image is \(40, 80\)"):
        draw_predictions(torch.zeros(3, 40, 80, dtype=torch.uint8), raw)
    with pytest.raises(ValueError, match=r"prediction lacks \['scores'\]"):
        draw_predictions(image, {"boxes": raw["boxes"], "labels": raw["labels"]})


def test_save_image_round_trip(tmp_path):
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    path = save_image(image, tmp_path / "deep" / "picture.png")
    assert np.array_equal(np.array(Image.open(path)), image.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match=r"unknown image format '\.nope'"):
        save_image(image, tmp_path / "picture.nope")


# ------------------------------------------------------------------------------------------------ tools/infer.py
def _infer(argv):
    return cli_main(["infer", *argv])


def test_infer_skips_unreadable_images_with_a_warning(small_checkpoint, photo, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.open(photo).resize((200, 150)).save(images / "good.png")
    (images / "broken.jpg").write_bytes(b"not an image at all")
    (images / "notes.txt").write_text("not an image suffix: ignored")
    out = tmp_path / "out"
    status = _infer(["--checkpoint", str(small_checkpoint), "--images", str(images),
                                       "--out", str(out), "--score-threshold", "0.05"])
    assert status == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1 and "broken.jpg" in warnings[0] and "cannot read image" in warnings[0]
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg", "image_ids.json", "results.json"]
    ids = json.loads((out / "image_ids.json").read_text())
    # Without --ann, ids number the files found in sorted order, skipped ones included (ids do not shift when a
    # file cannot be read).
    assert {Path(k).name: v for k, v in ids.items()} == {"broken.jpg": 1, "good.png": 2}
    results = json.loads((out / "results.json").read_text())
    assert results and {r["image_id"] for r in results} == {2}


def test_infer_errors(small_checkpoint, tmp_path, capsys):
    status = _infer(["--checkpoint", str(tmp_path / "missing.ckpt"), "--images", str(tmp_path), "--out",
                     str(tmp_path / "o")])
    assert status == 2
    assert "resnet-fpn infer: error: --images" in capsys.readouterr().err
    (tmp_path / "a.png").write_bytes(b"x")
    status = _infer(["--checkpoint", str(tmp_path / "missing.ckpt"), "--images", str(tmp_path / "a.png"),
                     "--out", str(tmp_path / "o")])
    assert status == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"--images .*\*\.tif: no such file"):
        find_images([str(tmp_path / "*.tif")])


@pytest.mark.slow
def test_infer_on_fruits_val_then_eval_det(fruits, tmp_path):
    """Acceptance: tools/infer.py writes pictures and a results JSON that tools/eval_det.py scores."""
    ann = fruits / "annotations" / "instances_val.json"
    ckpt = _save_checkpoint(tmp_path / "mask_rcnn.ckpt", ann, min_size=320, max_size=512)
    out = tmp_path / "out"
    infer = subprocess.run(
        [sys.executable, str(REPO / "tools" / "infer.py"), "--checkpoint", str(ckpt), "--images",
         str(fruits / "images"), "--ann", str(ann), "--out", str(out), "--score-threshold", "0.05"],
        capture_output=True, text=True, timeout=600,
    )
    assert infer.returncode == 0, infer.stderr
    assert "4 image(s) processed, 0 skipped" in infer.stdout
    val = json.loads(ann.read_text())["images"]
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(img["file_name"] for img in val)
    results = json.loads((out / "results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {img["id"] for img in val}
    assert all("segmentation" in r for r in results)
    scored = subprocess.run(
        [sys.executable, str(REPO / "tools" / "eval_det.py"), "--gt", str(ann), "--results",
         str(out / "results.json"), "--iou-types", "bbox", "segm", "--out", str(tmp_path / "metrics.json")],
        capture_output=True, text=True, timeout=600,
    )
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["bbox"]) >= {"AP", "AP50"} and set(metrics["segm"]) >= {"AP"}


def test_picture_grid_tiles_pictures_of_different_sizes():
    from resnet_fpn.visualize import picture_grid

    pictures = [torch.zeros(3, 10, 20, dtype=torch.uint8), torch.zeros(3, 15, 5, dtype=torch.uint8)]
    grid = picture_grid(pictures, columns=2, padding=4)
    # make_grid: one row of two 15x20 cells, 4 px around and between: (15 + 4) + 4 by 2 * (20 + 4) + 4.
    assert grid.shape == (3, 23, 52) and grid.dtype == torch.uint8
    assert int(grid[:, 4:14, 4:24].max()) == 0 and int(grid[:, 0, 0].min()) == 255
    with pytest.raises(ValueError, match="at least one picture"):
        picture_grid([])
