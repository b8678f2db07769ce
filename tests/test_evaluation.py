"""COCO evaluation: pycocotools' own numbers, through results files, the CLI and the streaming evaluator.

The reference for every number is pycocotools run directly in this file (COCO / loadRes / COCOeval) on
coco_val2014_100, the ground truth and demo results that ship with the official COCO API.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_fpn.cli import main as cli_main
from resnet_fpn.coco_format import CocoAnnotations
from resnet_fpn.evaluation import (
    STAT_NAMES,
    COCOEvaluator,
    evaluate_results,
    format_metrics_table,
    plot_precision_recall,
    precision_recall_curves,
    score_results,
)

from conftest import require_shared

pytestmark = [
    # pycocotools' mask.decode (used here to build dense masks) warns under numpy 2; not our code.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    # The COCO API's demo results have no detection on image 1063: scoring them says so (the reference numbers
    # count it as a miss too); tests/test_evaluation_trust.py asserts that warning.
    pytest.mark.filterwarnings("ignore:results cover 99 of 100 ground-truth images:UserWarning"),
]
REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("pycocotools", "faster_coco_eval")
# The official pycocoDemo numbers for these files (the COCO API's README / demo notebook).
PUBLISHED_AP = {"bbox": 0.5046, "segm": 0.3195}


@pytest.fixture(scope="module")
def data_dir(shared_data) -> Path:
    """The shared real data beside the repository (<clone>/../shared/data)."""
    require_shared(shared_data / "coco_val2014_100")
    return shared_data


@pytest.fixture(scope="module")
def val100(data_dir):
    root = data_dir / "coco_val2014_100"
    return {
        "gt": root / "instances_val2014_100.json",
        "bbox": root / "instances_val2014_fakebbox100_results.json",
        "segm": root / "instances_val2014_fakesegm100_results.json",
    }


def _pycocotools(gt_path, results, iou_type):
    """COCOeval exactly as the pycocotools demo runs it."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(results if isinstance(results, list) else str(results))
        coco_eval = COCOeval(gt, dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


@pytest.fixture(scope="module")
def reference(val100):
    return {t: _pycocotools(val100["gt"], val100[t], t) for t in ("bbox", "segm")}


@pytest.fixture(scope="module")
def gt_json(val100):
    return json.loads(val100["gt"].read_text())


def _assert_stats(metrics_of_type, stats, tol=1e-9):
    assert list(metrics_of_type) == list(STAT_NAMES)
    np.testing.assert_allclose([metrics_of_type[k] for k in STAT_NAMES], stats[:12], rtol=0, atol=tol)


def _to_predictions(results, image_ids, *, label_of, sizes, with_masks):
    """COCO results -> torchvision-style predictions per image (what a detector's forward returns)."""
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    preds = []
    for image_id in image_ids:
        rs = by_image.get(image_id, [])
        if with_masks:
            rles = [r["segmentation"] for r in rs]
            xywh = mask_util.toBbox(rles).reshape(-1, 4) if rs else np.zeros((0, 4))
        else:
            xywh = np.array([r["bbox"] for r in rs], dtype=np.float64).reshape(-1, 4)
        xyxy = xywh.astype(np.float64).copy()
        xyxy[:, 2:] += xyxy[:, :2]
        pred = {
            "boxes": torch.tensor(xyxy, dtype=torch.float64),
            # float64 keeps the file's scores bit for bit (float32 could merge two scores into a tie)
            "scores": torch.tensor([r["score"] for r in rs], dtype=torch.float64),
            "labels": torch.tensor([label_of[r["category_id"]] for r in rs], dtype=torch.int64),
        }
        if with_masks:
            h, w = sizes[image_id]
            dense = mask_util.decode(rles) if rs else np.zeros((h, w, 0), np.uint8)
            pred["masks"] = torch.from_numpy(dense.transpose(2, 0, 1).astype(np.float32)).unsqueeze(1)
        preds.append(pred)
    return preds


def _contiguous_labels(gt):
    """torchvision's convention: labels 1..K for the sorted category ids (0 is background)."""
    cat_ids = sorted(c["id"] for c in gt["categories"])
    label_of = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    return label_of, {v: k for k, v in label_of.items()}


# ------------------------------------------------------------------------------------------------
# Results files: pycocotools' numbers, both backends
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_evaluate_results_reproduces_pycocotools(val100, reference, gt_json, backend, iou_type):
    metrics = evaluate_results(val100["gt"], val100[iou_type], iou_types=(iou_type,), backend=backend)
    ref = reference[iou_type]
    assert set(metrics) == {iou_type, "per_category"}
    _assert_stats(metrics[iou_type], ref.stats)
    assert metrics[iou_type]["AP"] == pytest.approx(PUBLISHED_AP[iou_type], abs=1e-4)

    # Per-category AP, detectron2's definition on the reference precision: mean of the entries > -1.
    per_cat = metrics["per_category"][iou_type]
    names = {c["id"]: c["name"] for c in gt_json["categories"]}
    assert set(per_cat) == set(names.values())
    with_gt = {a["category_id"] for a in gt_json["annotations"] if not a["iscrowd"]}
    for k, cid in enumerate(ref.params.catIds):
        p = ref.eval["precision"][:, :, k, 0, -1]
        expected = float(np.mean(p[p > -1])) if cid in with_gt else -1.0
        assert per_cat[names[cid]] == pytest.approx(expected, abs=1e-9), names[cid]
    # 10 of the 80 classes have no annotation in these 100 images: they must read -1, not 0.
    assert sum(v == -1.0 for v in per_cat.values()) == 80 - len(with_gt) == 10
    # Every class with ground truth has all T x R precision entries, so their mean of means is AP.
    assert np.mean([v for v in per_cat.values() if v != -1.0]) == pytest.approx(metrics[iou_type]["AP"], abs=1e-12)


def test_cli_scores_concatenated_files_like_pycocotools(val100, reference, tmp_path):
    entries = json.loads(val100["bbox"].read_text())
    first, second = tmp_path / "part0.json", tmp_path / "part1.json"
    first.write_text(json.dumps(entries[:300]))
    second.write_text(json.dumps(entries[300:]))
    out, plots = tmp_path / "m" / "metrics.json", tmp_path / "plots"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "eval_det.py"), "--gt", str(val100["gt"]), "--results", str(first),
         str(second), "--iou-types", "bbox", "--backend", "faster_coco_eval", "--out", str(out), "--plots", str(plots)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    _assert_stats(metrics["bbox"], reference["bbox"].stats)
    assert "| 0.5046 |" in proc.stdout  # the printed table shows the AP
    assert sorted(p.name for p in plots.iterdir()) == ["pr_bbox_iou50-95.png", "pr_bbox_iou50.png"]


def test_cli_reports_bad_input_in_one_line(val100, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    assert cli_main(["eval", "--gt", str(val100["gt"]), "--results", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"resnet-fpn eval: error: results file {bad} is not valid JSON" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# The streaming evaluator: torchvision predictions in, the same numbers out
# ------------------------------------------------------------------------------------------------
def _feed(evaluator, preds, image_ids, batch=4):
    for i in range(0, len(image_ids), batch):
        evaluator.update(preds[i:i + batch], image_ids[i:i + batch])


def test_evaluator_bbox_matches_results_file(val100, reference, gt_json):
    label_of, to_cat = _contiguous_labels(gt_json)
    image_ids = [img["id"] for img in gt_json["images"]]  # all 100, one of them without any detection
    preds = _to_predictions(json.loads(val100["bbox"].read_text()), image_ids, label_of=label_of, sizes=None, with_masks=False)
    evaluator = COCOEvaluator(str(val100["gt"]), iou_types=("bbox",), label_to_category_id=to_cat)
    _feed(evaluator, preds, image_ids)
    metrics = evaluator.compute()
    assert set(metrics) == {"bbox", "per_category"}
    _assert_stats(metrics["bbox"], reference["bbox"].stats)
    assert metrics == evaluate_results(val100["gt"], val100["bbox"], iou_types=("bbox",))
    assert evaluator.precision["bbox"].shape == (10, 101, 80, 4, 3)


def test_evaluator_masks_match_results_file(val100, reference, gt_json):
    """Decoded masks -> (N,1,H,W) floats -> threshold + RLE again: the same RLE, hence the same segm stats."""
    label_of, to_cat = _contiguous_labels(gt_json)
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt_json["images"]}
    image_ids = list(sizes)
    segm_results = json.loads(val100["segm"].read_text())
    preds = _to_predictions(segm_results, image_ids, label_of=label_of, sizes=sizes, with_masks=True)
    evaluator = COCOEvaluator(
        str(val100["gt"]),
        iou_types=("bbox", "segm"), backend="faster_coco_eval", label_to_category_id=to_cat,
    )
    _feed(evaluator, preds, image_ids)
    metrics = evaluator.compute()
    _assert_stats(metrics["segm"], reference["segm"].stats)
    # The boxes were the masks' bounding boxes: the reference is pycocotools on exactly those boxes.
    boxed = [
        {"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
         "bbox": mask_util.toBbox(r["segmentation"]).tolist()}
        for r in segm_results
    ]
    _assert_stats(metrics["bbox"], _pycocotools(val100["gt"], boxed, "bbox").stats)


def test_evaluator_counts_a_repeated_image_once_and_reset_clears(val100, reference, gt_json):
    label_of, to_cat = _contiguous_labels(gt_json)
    image_ids = [img["id"] for img in gt_json["images"]]
    preds = _to_predictions(json.loads(val100["bbox"].read_text()), image_ids, label_of=label_of, sizes=None, with_masks=False)
    evaluator = COCOEvaluator(val100["gt"], label_to_category_id=to_cat)
    evaluator.update(preds[:1], image_ids[:1])
    evaluator.update([], [])
    assert evaluator.num_images == 1
    evaluator.reset()
    assert evaluator.num_images == 0
    _feed(evaluator, preds, image_ids)
    # A padded repeat of image 0 carrying different (empty) predictions is ignored: first one wins.
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    evaluator.update([empty], [torch.tensor(image_ids[0])])
    assert evaluator.num_images == 100
    _assert_stats(evaluator.compute()["bbox"], reference["bbox"].stats)


def test_evaluator_leaves_the_callers_coco_object_untouched(val100, gt_json):
    coco = COCO.__new__(COCO)
    coco.dataset = copy.deepcopy(gt_json)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    label_of, to_cat = _contiguous_labels(gt_json)
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt_json["images"]}
    image_ids = list(sizes)[:10]
    results = [r for r in json.loads(val100["segm"].read_text()) if r["image_id"] in image_ids]
    evaluator = COCOEvaluator(coco, iou_types=("segm",), label_to_category_id=to_cat)
    _feed(evaluator, _to_predictions(results, image_ids, label_of=label_of, sizes=sizes, with_masks=True), image_ids)
    with pytest.warns(UserWarning, match="COCOEvaluator scored 10 of 100 ground-truth images"):
        evaluator.compute()
    # pycocotools' segm evaluation turns GT polygons into RLE in place: a training set sharing the object would see it.
    assert coco.dataset == gt_json


# ------------------------------------------------------------------------------------------------
# Round trip: ground truth as detections scores 1.0
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco128_val(data_dir):
    path = data_dir / "coco128" / "annotations" / "instances_val.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    return path, coco


def _gt_with_annotations(coco):
    return {a["category_id"] for a in coco.dataset["annotations"] if not a["iscrowd"]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_as_results_scores_one(coco128_val, backend):
    path, coco = coco128_val
    assert any(a["iscrowd"] for a in coco.dataset["annotations"])  # crowd RLE regions are part of the test
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0, "bbox": a["bbox"],
         "segmentation": _str_counts(coco.annToRLE(a))}
        for a in coco.dataset["annotations"] if not a["iscrowd"]
    ]
    metrics = evaluate_results(path, results, iou_types=("bbox", "segm"), backend=backend)
    with_gt = _gt_with_annotations(coco)
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    for t in ("bbox", "segm"):
        assert metrics[t]["AP"] == pytest.approx(1.0, abs=1e-12)
        assert metrics[t]["AR100"] == pytest.approx(1.0, abs=1e-12)
        # val holds 40 of the 80 classes: those score 1 (up to pycocotools' eps in tp / (tp + fp + eps)),
        # a class without annotations reads -1
        expected = {names[c]: (1.0 if c in with_gt else -1.0) for c in sorted(names)}
        assert metrics["per_category"][t] == pytest.approx(expected, abs=1e-12)
    assert len(with_gt) < len(names)


def _str_counts(rle):
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]}


def test_ground_truth_masks_through_the_evaluator_score_one(coco128_val):
    path, coco = coco128_val
    label_of, to_cat = _contiguous_labels(coco.dataset)
    evaluator = COCOEvaluator(coco, iou_types=("bbox", "segm"), label_to_category_id=to_cat, mask_threshold=0.5)
    for img in coco.dataset["images"]:
        anns = [a for a in coco.imgToAnns[img["id"]] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = np.stack([coco.annToMask(a) for a in anns]) if anns else np.zeros((0, img["height"], img["width"]))
        evaluator.update([{
            "boxes": boxes,
            "scores": torch.ones(len(anns)),
            "labels": torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks.astype(np.float32)).unsqueeze(1),
        }], [img["id"]])
    metrics = evaluator.compute()
    assert metrics["bbox"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["segm"]["AP"] == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Clear errors instead of pycocotools tracebacks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_results_warn_and_score_zero(val100, gt_json, backend):
    with pytest.warns(UserWarning, match="no detections to evaluate on 100 images"):
        metrics = evaluate_results(val100["gt"], [], iou_types=("bbox", "segm"), backend=backend)
    # Every area range has ground truth in these images (the reference stats are all > 0), so
    # pycocotools' definition gives exactly 0 everywhere; classes without annotations stay -1.
    for t in ("bbox", "segm"):
        assert metrics[t] == dict.fromkeys(STAT_NAMES, 0.0)
    with_gt = {a["category_id"] for a in gt_json["annotations"] if not a["iscrowd"]}
    expected = {c["name"]: (0.0 if c["id"] in with_gt else -1.0) for c in gt_json["categories"]}
    assert metrics["per_category"]["bbox"] == expected


@pytest.mark.filterwarnings("ignore:COCOEvaluator scored 7 of 100")
def test_evaluator_with_no_detection_at_all_warns(val100, gt_json):
    evaluator = COCOEvaluator(val100["gt"])
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    ids = [img["id"] for img in gt_json["images"]][:7]
    evaluator.update([empty] * len(ids), ids)
    with pytest.warns(UserWarning, match="no detections to evaluate on 7 images"):
        metrics = evaluator.compute()
    assert metrics["bbox"]["AP"] == 0.0


def test_compute_before_update_is_an_error(val100):
    with pytest.raises(RuntimeError, match=r"compute\(\) called before any update\(\)"):
        COCOEvaluator(val100["gt"]).compute()


def test_unknown_image_ids_are_named(val100):
    entries = json.loads(val100["bbox"].read_text())[:20]
    for i, fake in enumerate([900001, 900002, 900003, 900004, 900005, 900006, 900007]):
        entries[i]["image_id"] = fake
    with pytest.raises(ValueError, match=r"image ids not in the ground truth .*\[900001, 900002, 900003, 900004, 900005, \.\.\. \(7 in all\)\]"):
        evaluate_results(val100["gt"], entries, iou_types=("bbox",))


def test_unknown_category_ids_are_named(val100):
    entries = json.loads(val100["bbox"].read_text())[:20]
    entries[3]["category_id"] = 1000
    entries[4]["category_id"] = 0  # a contiguous label 0 passed without label_to_category_id
    with pytest.raises(ValueError, match=r"category ids not in the ground truth .*\[0, 1000\]"):
        evaluate_results(val100["gt"], entries, iou_types=("bbox",))


def test_results_file_that_is_not_a_list_names_the_file(val100, tmp_path):
    with pytest.raises(ValueError, match=r"instances_val2014_100.json holds a JSON dict \(it looks like a ground-truth file\)"):
        evaluate_results(val100["gt"], val100["gt"], iou_types=("bbox",))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": 42,')
    with pytest.raises(ValueError, match=r"results file .*broken.json is not valid JSON"):
        evaluate_results(val100["gt"], broken, iou_types=("bbox",))
    with pytest.raises(FileNotFoundError, match="results file not found: .*missing.json"):
        evaluate_results(val100["gt"], tmp_path / "missing.json", iou_types=("bbox",))


def test_entries_missing_the_needed_field_are_named(val100, tmp_path):
    entries = json.loads(val100["bbox"].read_text())
    del entries[3]["bbox"]
    with pytest.raises(ValueError, match=r"result entry 3 has no 'bbox'"):
        evaluate_results(val100["gt"], entries, iou_types=("bbox",))
    # In a concatenation the message names the file and the index inside it.
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(entries[4:14]))
    second.write_text(json.dumps(entries[:4]))
    with pytest.raises(ValueError, match=r"result entry 13 \(entry 3 of .*b.json\) has no 'bbox'"):
        evaluate_results(val100["gt"], [first, second], iou_types=("bbox",))
    # The bbox results have no masks: asking for segm says which entry lacks one.
    with pytest.raises(ValueError, match=r"result entry 0 \(entry 0 of .*fakebbox100_results.json\) has no 'segmentation'"):
        evaluate_results(val100["gt"], val100["bbox"], iou_types=("segm",))
    segm = json.loads(val100["segm"].read_text())[:5]
    segm[2]["segmentation"] = {"size": [10, 10], "counts": segm[2]["segmentation"]["counts"]}
    with pytest.raises(ValueError, match=r"result entry 2 has a mask of size \[10, 10\] but its image is"):
        evaluate_results(val100["gt"], segm, iou_types=("segm",))


def test_bad_options_list_the_allowed_values(val100, monkeypatch):
    with pytest.raises(ValueError, match=r"backend must be one of \('pycocotools', 'faster_coco_eval'\), got 'detectron2'"):
        evaluate_results(val100["gt"], [], iou_types=("bbox",), backend="detectron2")
    with pytest.raises(ValueError, match=r"iou_types must be a non-empty sequence drawn from \('bbox', 'segm'\), got \('keypoints',\)"):
        COCOEvaluator(val100["gt"], iou_types=("keypoints",))
    with pytest.raises(ValueError, match=r"mask_threshold must be a number in \[0, 1\), got 1.5"):
        COCOEvaluator(val100["gt"], mask_threshold=1.5)
    with pytest.raises(ValueError, match=r"label_to_category_id maps to category ids not in the ground truth .*\[12\]"):
        COCOEvaluator(val100["gt"], label_to_category_id={1: 1, 2: 12})
    with pytest.raises(TypeError, match="coco_gt must be a pycocotools COCO object or a path"):
        COCOEvaluator({"images": []})
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install faster-coco-eval"):
        COCOEvaluator(val100["gt"], backend="faster_coco_eval")


def test_validated_ground_truth_is_accepted_and_checked_for_segm(val100, gt_json, reference):
    # A data set's `annotations` (already validated) scores exactly as the file does.
    gt = CocoAnnotations.from_file(val100["gt"])
    _assert_stats(evaluate_results(gt, val100["bbox"], iou_types=("bbox",))["bbox"], reference["bbox"].stats)
    # Ground truth is validated like a data set's file, naming the source and the entry.
    broken = copy.deepcopy(gt_json)
    broken["annotations"][5]["category_id"] = 1000
    coco = COCO.__new__(COCO)
    coco.dataset = broken
    with pytest.raises(ValueError, match=rf"the given COCO object: annotation id {broken['annotations'][5]['id']} has category_id 1000"):
        COCOEvaluator(coco)
    # segm reads every ground-truth mask: annotations without one are named before pycocotools' KeyError.
    no_masks = copy.deepcopy(gt_json)
    for ann in no_masks["annotations"][:7]:
        del ann["segmentation"]
    coco.dataset = no_masks
    first = [a["id"] for a in no_masks["annotations"][:5]]
    with pytest.raises(ValueError, match=re.escape(f"the given COCO object: annotations [{', '.join(map(str, first))}, ... (7 in all)] have no 'segmentation'")):
        COCOEvaluator(coco, iou_types=("segm",))
    assert COCOEvaluator(coco, iou_types=("bbox",)).category_names[0] == "person"


def test_bad_predictions_are_named(val100, gt_json):
    image_id = gt_json["images"][0]["id"]
    h, w = gt_json["images"][0]["height"], gt_json["images"][0]["width"]
    one = {"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    evaluator = COCOEvaluator(val100["gt"], label_to_category_id={1: 1})
    with pytest.raises(ValueError, match="image id 123456789 is not in the ground truth"):
        evaluator.update([one], [123456789])
    with pytest.raises(ValueError, match=r"update\(\) got 1 predictions but 2 image ids"):
        evaluator.update([one], [image_id, image_id])
    with pytest.raises(TypeError, match="image ids must be integers, got 1.5"):
        evaluator.update([one], [1.5])
    with pytest.raises(ValueError, match=rf"prediction for image {image_id} has labels \[7\] absent from label_to_category_id"):
        evaluator.update([dict(one, labels=torch.tensor([7]))], [image_id])
    with pytest.raises(ValueError, match=r"labels \[0\] that are not category ids of the ground truth"):
        COCOEvaluator(val100["gt"]).update([dict(one, labels=torch.tensor([0]))], [image_id])
    segm = COCOEvaluator(val100["gt"], iou_types=("segm",), label_to_category_id={1: 1})
    with pytest.raises(ValueError, match=rf"prediction for image {image_id} lacks \['masks'\]"):
        segm.update([one], [image_id])
    with pytest.raises(ValueError, match=rf"masks are \({h // 2}, {w}\) but the image is \({h}, {w}\)"):
        segm.update([dict(one, masks=torch.zeros(1, 1, h // 2, w))], [image_id])
    assert evaluator.num_images == 0 and segm.num_images == 0


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------
def test_table_and_plots(val100, reference, tmp_path):
    result = score_results(val100["gt"], val100["segm"], iou_types=("segm",))
    table = format_metrics_table(result.metrics)
    for name in STAT_NAMES:
        assert f"| {name} " in table
    assert "| 0.3195 |" in table
    assert re.search(r"\| fire hydrant +\| -1\.0000 +\|", table)  # no fire hydrant in these images: undefined, as pycocotools says
    per_cat_rows = [line for line in table.splitlines() if line.startswith("| ") and "category" not in line][4:]
    assert len(per_cat_rows) == 27 and per_cat_rows[0].count("|") == 7  # 80 classes in 3 (name, AP) pairs per row

    # The mean curves are what AP averages: their means are AP50 and AP.
    curves = precision_recall_curves(result.precision["segm"])
    assert curves["IoU=0.50"].mean() == pytest.approx(result.metrics["segm"]["AP50"], abs=1e-12)
    assert curves["IoU=0.50:0.95"].mean() == pytest.approx(result.metrics["segm"]["AP"], abs=1e-12)

    paths = plot_precision_recall(result.precision["segm"], tmp_path / "a", iou_type="segm", category_names=result.category_names)
    paths += plot_precision_recall(reference["bbox"], tmp_path / "b", iou_type="bbox")  # a COCOeval object works too
    assert [p.name for p in paths] == ["pr_segm_iou50.png", "pr_segm_iou50-95.png", "pr_bbox_iou50.png", "pr_bbox_iou50-95.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match=r"category_names has 2 names but precision has 80 categories"):
        plot_precision_recall(result.precision["segm"], tmp_path, iou_type="segm", category_names=["a", "b"])


def test_segm_memory_grows_with_detections_not_pixels(val100):
    """Masks are RLE-encoded in update(): what the evaluator keeps per image is a few hundred bytes, not the
    (N, 1, H, W) float probabilities it was given (20 x 480 x 640 x 4 bytes = 24.6 MB per image here)."""
    import pickle

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(val100["gt"]))
    evaluator = COCOEvaluator(coco, iou_types=["segm"], label_to_category_id=None)
    category = sorted(coco.getCatIds())[0]
    kept = []
    for count, image_id in enumerate(sorted(coco.getImgIds())[:40], start=1):
        info = coco.imgs[image_id]
        h, w = info["height"], info["width"]
        masks = torch.zeros(20, 1, h, w)
        for i in range(20):
            masks[i, 0, 10 + i: 60 + i, 20: 90 + 2 * i] = 0.9
        evaluator.update([{"boxes": torch.tensor([[20.0, 10.0, 90.0, 60.0]] * 20), "scores": torch.linspace(0.9, 0.1, 20),
                           "labels": torch.full((20,), category), "masks": masks}], [image_id])
        if count in (10, 40):
            kept.append(len(pickle.dumps(evaluator._results)))
    per_image = (kept[1] - kept[0]) / 30
    assert per_image < 20 * 400  # ~20 short RLE strings per image (about 200 bytes each)
    assert per_image < 1e-3 * 20 * 480 * 640 * 4
