"""Issue 13, "no silently wrong metric": evaluation refuses or warns, it never scores one thing as another.

Each case is one a new user met with exit status 0 and a wrong number, reproduced on the real data sets:

1. results made without --ann (image ids = positions) scored against another file's images -> refused, the
   differing file names listed;
2. a checkpoint trained on fruits_nuts (date, fig, hazelnut) scored on coco128 (person, bicycle, car under the
   same ids) -> refused, the differing names listed; ``map_categories="name"`` pairs categories by name;
3. results that cover only part of the ground-truth images -> a warning with the count;
4. a ground-truth box with a negative width -> a warning naming its annotation id.

Valid inputs keep pycocotools' own numbers (tests/test_evaluation.py, and the references here).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_fpn import Category, evaluate_checkpoint
from resnet_fpn.checkpoint import save_detector_checkpoint
from resnet_fpn.cli import main as cli_main
from resnet_fpn.coco_format import CocoAnnotations, category_names_by_id, same_file_name
from resnet_fpn.data import CocoDetection
from resnet_fpn.detectors import build_detector
from resnet_fpn.evaluation import COCOEvaluator, evaluate_results, match_categories, score_results
from conftest import require_shared

FRUITS = [Category(1, 1, "date"), Category(2, 2, "fig"), Category(3, 3, "hazelnut")]


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def fruits(shared_data):
    root = require_shared(shared_data / "fruits_nuts")
    return root


@pytest.fixture(scope="module")
def coco128(shared_data):
    root = require_shared(shared_data / "coco128")
    return root


@pytest.fixture(scope="module")
def val100(shared_data):
    root = require_shared(shared_data / "coco_val2014_100")
    return {"gt": root / "instances_val2014_100.json", "bbox": root / "instances_val2014_fakebbox100_results.json"}


def _perfect_results(data, *, file_names=None):
    """The ground truth's non-crowd boxes as detections of score 1 (AP 1 when every box is valid)."""
    out = []
    for ann in data["annotations"]:
        if ann["iscrowd"]:
            continue
        entry = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0, "bbox": ann["bbox"]}
        if file_names is not None:
            entry["file_name"] = file_names[ann["image_id"]]
        out.append(entry)
    return out


def _pycocotools_stats(gt_data, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_data)
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def _save_checkpoint(path: Path, categories, *, num_classes: int = 4) -> Path:
    torch.manual_seed(0)
    # Random heads, few proposals, small images: these tests check what is compared, not accuracy.
    options = dict(model="faster_rcnn", backbone="resnet18-fpn", num_classes=num_classes, min_size=160, max_size=256,
                   rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, detections_per_img=10, score_thresh=0.0)
    return save_detector_checkpoint(path, build_detector(**options), model_options=options, categories=categories)


@pytest.fixture(scope="module")
def fruits_checkpoint(tmp_path_factory):
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "fruits.ckpt", FRUITS)


@pytest.fixture(scope="module")
def swapped_checkpoint(tmp_path_factory):
    """date and fig numbered the other way round from fruits_nuts' file, and no hazelnut."""
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt") / "swapped.ckpt",
                            [Category(1, 2, "date"), Category(2, 1, "fig")], num_classes=3)


# ------------------------------------------------------------------------------------------------ case 1
def test_results_for_another_image_list_are_refused(fruits):
    """infer without --ann on the 4 val photos numbers them 1..4; train's images 1..4 are other photos."""
    val = json.loads((fruits / "annotations" / "instances_val.json").read_text())
    positions = {img["id"]: i + 1 for i, img in enumerate(val["images"])}  # 15..18 -> 1..4
    names = {img["id"]: img["file_name"] for img in val["images"]}
    results = [dict(r, image_id=positions[r["image_id"]], file_name=names[r["image_id"]])
               for r in _perfect_results(val)]
    train = fruits / "annotations" / "instances_train.json"
    with pytest.raises(ValueError, match=(
            r"results name other files than the ground truth .*instances_train.json for the same image ids "
            r"\(id: results vs ground truth\): 1: '14.jpg' vs '0.jpg'; 2: '15.jpg' vs '1.jpg'; "
            r"3: '16.jpg' vs '2.jpg'; 4: '17.jpg' vs '3.jpg'; they were made for another image list "
            r"\(resnet-fpn infer without --ann numbers images 1..N in file order: run it with --ann set to the "
            r"ground truth that lists those images\)")):
        evaluate_results(train, results, iou_types="bbox")
    # Without file names the same ids are scored silently, as pycocotools would: what the check is for.
    with pytest.warns(UserWarning, match="results cover 4 of 14"):
        evaluate_results(train, [{k: v for k, v in r.items() if k != "file_name"} for r in results], iou_types="bbox")


def test_file_names_that_agree_change_nothing(fruits):
    """Right ids and names: pycocotools' exact numbers (AP 1); a ground truth with folders matches bare names."""
    ann = fruits / "annotations" / "instances_val.json"
    val = json.loads(ann.read_text())
    names = {img["id"]: img["file_name"] for img in val["images"]}
    named = _perfect_results(val, file_names=names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # full coverage, valid boxes: not a word
        metrics = evaluate_results(ann, named, iou_types="bbox")
    assert metrics["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    # pycocotools' loadRes keeps extra keys and scores as without them.
    assert metrics["bbox"]["AP"] == _pycocotools_stats(val, named)[0]
    in_folder = copy.deepcopy(val)
    for img in in_folder["images"]:
        img["file_name"] = "val/" + img["file_name"]
    gt = CocoAnnotations(in_folder, source="val in a folder")
    assert evaluate_results(gt, named, iou_types="bbox")["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    # ... but another folder, or a longer name, is another file.
    other = [dict(r, file_name="train/" + r["file_name"]) for r in named]
    with pytest.raises(ValueError, match=r"15: 'train/14.jpg' vs 'val/14.jpg'"):
        evaluate_results(gt, other, iou_types="bbox")
    assert not same_file_name("114.jpg", "14.jpg") and same_file_name("val\\14.jpg", "val/14.jpg")
    bad = [dict(named[0], file_name=15)]
    with pytest.raises(ValueError, match=r"result entry 0 has file_name 15, expected a string"):
        evaluate_results(ann, bad, iou_types="bbox")


def test_infer_without_ann_says_ids_are_positions_and_eval_refuses_them(fruits, fruits_checkpoint, tmp_path, capsys):
    """The user's commands: infer on the 4 val photos without --ann, then eval against the train file."""
    images = tmp_path / "photos"
    images.mkdir()
    val = json.loads((fruits / "annotations" / "instances_val.json").read_text())
    for img in val["images"]:
        shutil.copy(fruits / "images" / img["file_name"], images / img["file_name"])
    out = tmp_path / "out"
    assert cli_main(["infer", "--checkpoint", str(fruits_checkpoint), "--images", str(images), "--out", str(out),
                     "--score-threshold", "0"]) == 0
    err = capsys.readouterr().err
    assert "note: without --ann, image ids are only positions (1..4 in sorted file order" in err
    results = json.loads((out / "results.json").read_text())
    assert results and all(r["file_name"] == f"{13 + r['image_id']}.jpg" for r in results)
    assert {r["category_name"] for r in results} <= {"date", "fig", "hazelnut"}
    train = fruits / "annotations" / "instances_train.json"
    assert cli_main(["eval", "--gt", str(train), "--results", str(out / "results.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"resnet-fpn eval: error: results name other files than the ground truth {train} "
                          "for the same image ids (id: results vs ground truth): 1: '14.jpg' vs '0.jpg'")
    # With --ann the results carry the file's ids and file names: eval scores them.
    assert cli_main(["infer", "--checkpoint", str(fruits_checkpoint), "--images", str(images), "--out",
                     str(tmp_path / "out2"), "--score-threshold", "0", "--ann",
                     str(fruits / "annotations" / "instances_val.json")]) == 0
    assert "note: without --ann" not in capsys.readouterr().err
    annotated = json.loads((tmp_path / "out2" / "results.json").read_text())
    names = {img["id"]: img["file_name"] for img in val["images"]}
    assert annotated and all(r["file_name"] == names[r["image_id"]] for r in annotated)
    assert cli_main(["eval", "--gt", str(fruits / "annotations" / "instances_val.json"),
                     "--results", str(tmp_path / "out2" / "results.json")]) == 0


# ------------------------------------------------------------------------------------------------ case 2
def test_categories_with_other_names_under_the_same_ids_are_refused(fruits, coco128):
    gt = CocoAnnotations.from_file(coco128 / "annotations" / "instances_val.json")
    with pytest.raises(ValueError, match=(
            r"the detector does not predict the categories of .*instances_val.json, compared by id \(names must be "
            r"equal\): the same category ids name other categories \(id: detector vs ground truth\): "
            r"1: 'date' vs 'person'; 2: 'fig' vs 'bicycle'; 3: 'hazelnut' vs 'car'; it was trained on another "
            r"category table")):
        match_categories(FRUITS, gt)
    with pytest.raises(ValueError, match=r"predicts categories that .* does not name \(names compared exactly\): "
                                         r"\['date', 'fig', 'hazelnut'\]"):
        match_categories(FRUITS, gt, by="name")
    with pytest.raises(ValueError, match=r"category matching must be one of \('id', 'name'\), got 'label'"):
        match_categories(FRUITS, gt, by="label")
    # Exact comparison: a capital letter is another name.
    with pytest.raises(ValueError, match=r"1: 'Date' vs 'date'"):
        match_categories([Category(1, 1, "Date")], {1: "date"})
    assert match_categories(FRUITS, {1: "date", 2: "fig", 3: "hazelnut", 4: "kiwi"}) == {1: 1, 2: 2, 3: 3}
    # Names mapped by name to other ids; a name the ground truth gives twice is refused.
    assert match_categories(FRUITS, {7: "hazelnut", 8: "date", 9: "fig"}, by="name") == {1: 8, 2: 9, 3: 7}
    with pytest.raises(ValueError, match=r"gives one name to several category ids.*'fig': ids \[2, 5\]"):
        match_categories(FRUITS, {1: "date", 2: "fig", 3: "hazelnut", 5: "fig"}, by="name")


def test_fruits_checkpoint_on_coco128_is_refused(fruits_checkpoint, coco128, tmp_path, capsys):
    ann, images = coco128 / "annotations" / "instances_val.json", coco128 / "images"
    with pytest.raises(ValueError, match=r"1: 'date' vs 'person'; 2: 'fig' vs 'bicycle'; 3: 'hazelnut' vs 'car'"):
        evaluate_checkpoint(fruits_checkpoint, ann_file=ann, images_dir=images)
    with pytest.raises(ValueError, match=r"does not name .*\['date', 'fig', 'hazelnut'\]"):
        evaluate_checkpoint(fruits_checkpoint, ann_file=ann, images_dir=images, map_categories="name")
    with pytest.raises(ValueError, match=r"map_categories must be one of \('id', 'name'\), got 'ids'"):
        evaluate_checkpoint(fruits_checkpoint, ann_file=ann, images_dir=images, map_categories="ids")
    # The user's command (--data-root resolves coco128's val split), one line, exit 2.
    assert cli_main(["eval", "--checkpoint", str(fruits_checkpoint), "--data-root", str(coco128)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        f"resnet-fpn eval: error: checkpoint {fruits_checkpoint} does not predict the categories of {ann}")
    assert "1: 'date' vs 'person'" in err
    # infer --ann checks the same before running anything.
    assert cli_main(["infer", "--checkpoint", str(fruits_checkpoint), "--images", str(images), "--out",
                     str(tmp_path / "out"), "--ann", str(ann)]) == 2
    assert "1: 'date' vs 'person'" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert cli_main(["eval", "--gt", str(ann), "--results", "r.json", "--map-categories", "name"]) == 2
    assert "--map-categories needs --checkpoint" in capsys.readouterr().err


def test_map_categories_by_name_scores_each_label_as_its_name(fruits, swapped_checkpoint):
    ckpt = swapped_checkpoint
    ann, images = fruits / "annotations" / "instances_val.json", fruits / "images"
    with pytest.raises(ValueError, match=r"1: 'fig' vs 'date'; 2: 'date' vs 'fig'; every one of its category names "
                                         r"is in the ground truth: map_categories='name'"):
        evaluate_checkpoint(ckpt, ann_file=ann, images_dir=images)
    with pytest.warns(UserWarning, match=r"has annotations of 1 categor\(ies\) that checkpoint .* does not predict: "
                                         r"'hazelnut' \(id 3\); each scores AP 0"):
        evaluation = evaluate_checkpoint(ckpt, ann_file=ann, images_dir=images, map_categories="name")
    assert evaluation.evaluator.label_to_category_id == {1: 1, 2: 2}  # label 1 'date' -> the file's 'date' (1)
    assert evaluation.results and {r["category_id"] for r in evaluation.results} <= {1, 2}
    assert evaluation.metrics["per_category"]["bbox"]["hazelnut"] == 0.0


def test_infer_map_categories_by_name_writes_the_files_ids(fruits, swapped_checkpoint, tmp_path, capsys):
    ann = fruits / "annotations" / "instances_val.json"
    photo = fruits / "images" / "14.jpg"
    argv = ["infer", "--checkpoint", str(swapped_checkpoint), "--images", str(photo), "--ann", str(ann),
            "--score-threshold", "0"]
    assert cli_main([*argv, "--out", str(tmp_path / "by_id")]) == 2
    assert "1: 'fig' vs 'date'; 2: 'date' vs 'fig'" in capsys.readouterr().err
    assert cli_main([*argv, "--out", str(tmp_path / "by_name"), "--map-categories", "name"]) == 0
    results = json.loads((tmp_path / "by_name" / "results.json").read_text())
    assert results and {(r["category_id"], r["category_name"]) for r in results} <= {(1, "date"), (2, "fig")}
    assert {r["file_name"] for r in results} == {"14.jpg"} and {r["image_id"] for r in results} == {15}
    with pytest.warns(UserWarning, match="results cover 1 of 4"):
        evaluate_results(ann, results, iou_types="bbox")  # names and files agree with the file
    # An image list without categories has nothing to map by name.
    images_only = tmp_path / "images_only.json"
    images_only.write_text(json.dumps({"images": json.loads(ann.read_text())["images"]}))
    assert category_names_by_id(images_only) is None and category_names_by_id(ann) == {1: "date", 2: "fig",
                                                                                          3: "hazelnut"}
    assert cli_main(["infer", "--checkpoint", str(swapped_checkpoint), "--images", str(photo), "--ann",
                     str(images_only), "--out", str(tmp_path / "o"), "--map-categories", "name"]) == 2
    assert "--map-categories name needs the 'categories' of" in capsys.readouterr().err
    assert cli_main(["infer", "--checkpoint", str(swapped_checkpoint), "--images", str(photo), "--out",
                     str(tmp_path / "o"), "--map-categories", "name"]) == 2
    assert "--map-categories needs --ann" in capsys.readouterr().err


def test_results_naming_other_categories_are_refused(val100):
    entries = json.loads(val100["bbox"].read_text())[:50]
    named = [dict(r, category_name="person" if r["category_id"] == 1 else "date") for r in entries]
    others = sorted({r["category_id"] for r in entries} - {1})
    with pytest.raises(ValueError, match=(
            rf"results name other categories than the ground truth .* for the same category ids "
            rf"\(id: results vs ground truth\): {others[0]}: 'date' vs '")):
        evaluate_results(val100["gt"], named, iou_types="bbox")


# ------------------------------------------------------------------------------------------------ case 3
def test_results_covering_part_of_the_images_warn_with_the_count(val100, tmp_path, capsys):
    gt_data = json.loads(val100["gt"].read_text())
    entries = json.loads(val100["bbox"].read_text())
    first = {img["id"] for img in gt_data["images"][:10]}
    part = [r for r in entries if r["image_id"] in first]
    with pytest.warns(UserWarning, match=r"results cover 10 of 100 ground-truth images of .*instances_val2014_100"
                                         r".json; pycocotools scores the other 90 as misses \(image ids \["):
        metrics = evaluate_results(val100["gt"], part, iou_types="bbox")
    # The number is still pycocotools' own (it evaluates every ground-truth image).
    assert [metrics["bbox"][k] for k in ("AP", "AR100")] == pytest.approx(
        list(_pycocotools_stats(gt_data, part)[[0, 8]]), abs=1e-12)
    # The COCO API's demo results themselves leave one image without a detection.
    with pytest.warns(UserWarning, match=r"results cover 99 of 100 .* the other 1 as misses \(image ids \[1063\]\)"):
        score_results(val100["gt"], val100["bbox"], iou_types="bbox")
    path = tmp_path / "part.json"
    path.write_text(json.dumps(part))
    assert cli_main(["eval", "--gt", str(val100["gt"]), "--results", str(path)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines == [f"warning: results cover 10 of 100 ground-truth images of {val100['gt']}; pycocotools scores "
                     f"the other 90 as misses (image ids {lines[0].split('(image ids ')[1]}"]
    assert f"{metrics['bbox']['AP']:.4f}" in captured.out  # the table, printed as before


@pytest.mark.filterwarnings("ignore:no detections to evaluate")
def test_evaluator_scoring_part_of_the_images_warns(val100):
    gt_data = json.loads(val100["gt"].read_text())
    evaluator = COCOEvaluator(val100["gt"])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    evaluator.update([empty] * 3, [img["id"] for img in gt_data["images"][:3]])
    with pytest.warns(UserWarning, match=r"COCOEvaluator scored 3 of 100 ground-truth images .* the metrics leave "
                                         r"the other 97 out"):
        evaluator.compute()


# ------------------------------------------------------------------------------------------------ case 4
@pytest.mark.filterwarnings("ignore:no detections to evaluate", "ignore:COCOEvaluator scored 1 of 4")
def test_ground_truth_box_with_negative_width_is_named(fruits, tmp_path, caplog):
    ann = fruits / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    broken = copy.deepcopy(data)
    target = broken["annotations"][0]
    x, y, w, h = target["bbox"]
    target["bbox"] = [x + w, y, -w, h]  # the same box, corners swapped: width -w
    results = _perfect_results(broken)  # the detections are exactly the ground truth, bad box included
    gt = CocoAnnotations(broken, source="fruits val with a negative width")
    assert gt.degenerate_box_ids == [target["id"]]
    with pytest.warns(UserWarning, match=(
            rf"fruits val with a negative width: 1 ground-truth box\(es\) with a width or height <= 0, annotation "
            rf"ids \[{target['id']}\]: no detection can overlap them, so pycocotools scores each as a miss")):
        metrics = evaluate_results(gt, results, iou_types="bbox")
    expected = _pycocotools_stats(broken, results)[0]
    assert metrics["bbox"]["AP"] == expected < 0.99  # pycocotools' number, said to be one miss short of 1
    intact = evaluate_results(ann, _perfect_results(data), iou_types="bbox")
    assert intact["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    # The streaming evaluator warns too (for the images it scores).
    evaluator = COCOEvaluator(gt)
    evaluator.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                       "labels": torch.zeros(0, dtype=torch.int64)}], [target["image_id"]])
    with pytest.warns(UserWarning, match=rf"annotation ids \[{target['id']}\]"):
        evaluator.compute()
    # Training keeps its rule: the box is dropped from the targets with a counted warning.
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with caplog.at_level(logging.WARNING):
        dataset = CocoDetection(fruits / "images", path, with_masks=False)
    assert dataset.num_degenerate == 1 and "dropped 1 degenerate box(es)" in caplog.text


def test_non_finite_ground_truth_box_is_an_error(fruits):
    data = json.loads((fruits / "annotations" / "instances_val.json").read_text())
    data["annotations"][3]["bbox"][2] = float("nan")
    with pytest.raises(ValueError, match=rf"annotation id {data['annotations'][3]['id']} has bbox \[.*nan.*\], "
                                         r"expected 4 finite numbers"):
        evaluate_results(CocoAnnotations(data, source="nan box"), [], iou_types="bbox")
