"""The data doctor (resnet_fpn.data.doctor, `resnet-fpn check-data`) on real data with planted faults, and a fuzz
test of every COCO reader (the dataset, the doctor, the evaluator) on mutated copies of real annotation files."""
import copy
import json
import random
import warnings
from collections import Counter
from pathlib import Path

import pytest

from resnet_fpn.cli import main
from resnet_fpn.data import CocoDetection
from resnet_fpn.data.coco import _segmentation_to_rle
from resnet_fpn.data.doctor import CODES, TINY_BOX_SIDE, check_dataset, quick_check
from resnet_fpn.evaluation import evaluate_results

# What the unmodified shared sets legitimately hold at warning level (coco128 train: four boxes under 4 px);
# the planted-fault test checks that nothing else at error or warning level appears.
LEGITIMATE_WARNINGS = {"tiny_box"}


def _copy_set(shared_data: Path, tmp_path: Path, name: str, split: str):
    """The split's JSON (copied, parsed) and its images (symlinked) under tmp_path."""
    data = json.loads((shared_data / name / "annotations" / f"instances_{split}.json").read_text())
    images = tmp_path / "images"
    images.mkdir()
    for img in data["images"]:
        (images / img["file_name"]).symlink_to(shared_data / name / "images" / img["file_name"])
    return data, images


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _keyed(report, severities=("error", "warning")):
    """{(code, id)} of the findings of these severities; the id is the annotation's, else the image's."""
    out = set()
    for f in report.findings:
        if f.severity in severities:
            out.add((f.code, f.annotation_id if f.annotation_id is not None else f.image_id))
    return out


@pytest.mark.parametrize("name, split, workers", [("fruits_nuts", "val", 0), ("coco128", "train", 2)])
def test_planted_faults_are_reported_by_id_and_nothing_else(shared_data, tmp_path, name, split, workers):
    data, images = _copy_set(shared_data, tmp_path, name, split)
    clean = check_dataset(_write(tmp_path / "clean.json", data), images, decode=True, workers=workers)
    assert clean.ok, clean.summary()
    assert {f.code for f in clean.warnings} <= LEGITIMATE_WARNINGS
    flagged = {f.annotation_id for f in clean.findings} | {f.image_id for f in clean.findings}

    planted = copy.deepcopy(data)
    # Entries with no finding of their own in the clean set, whose category has other instances.
    per_category = Counter(a["category_id"] for a in data["annotations"] if not a["iscrowd"])
    anns = [a for a in planted["annotations"] if not a["iscrowd"] and a["id"] not in flagged
            and a["image_id"] not in flagged and per_category[a["category_id"]] > 2
            and min(a["bbox"][2:]) >= 2 * TINY_BOX_SIDE]
    imgs = [i for i in planted["images"] if i["id"] not in flagged]
    negative, duplicate, unknown_cat = anns[0], anns[1], anns[2]
    truncated, wrong_width = imgs[0], imgs[1]

    source = shared_data / name / "images" / truncated["file_name"]
    (images / truncated["file_name"]).unlink()
    (images / truncated["file_name"]).write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    (images / "not_an_image.jpg").write_text("this is a text file named like a JPEG\n")
    bogus_id = max(i["id"] for i in planted["images"]) + 1
    planted["images"].append({"id": bogus_id, "file_name": "not_an_image.jpg", "width": 640, "height": 480})
    wrong_width["width"] += 10  # wider: no box of it leaves the image, so only the size is wrong
    negative["bbox"][2] = -5.0
    planted["annotations"].append(dict(duplicate))  # the same id twice
    unknown_cat["category_id"] = 999

    report = check_dataset(_write(tmp_path / "planted.json", planted), images, decode=True, workers=workers)
    expected = {
        ("bad_image", truncated["id"]),
        ("bad_image", bogus_id),
        ("size_mismatch", wrong_width["id"]),
        ("degenerate_box", negative["id"]),
        ("duplicate_annotation_id", duplicate["id"]),
        ("unknown_category", unknown_cat["id"]),
    }
    assert _keyed(report) - _keyed(clean) == expected
    assert _keyed(clean) <= _keyed(report)
    assert {f.code for f in report.errors} == {code for code, _ in expected}
    assert not report.ok and report.bad_image_ids == sorted([truncated["id"], bogus_id, wrong_width["id"]], key=repr)
    bad = {f.image_id: f for f in report.of(code="bad_image")}
    assert truncated["file_name"] in bad[truncated["id"]].message and "not_an_image.jpg" in bad[bogus_id].message

    # The quick pass reads headers only: everything but the truncated JPEG, whose header is intact.
    quick = quick_check(tmp_path / "planted.json", images)
    assert _keyed(quick) - _keyed(clean) == expected - {("bad_image", truncated["id"])}
    summary = quick.summary()
    assert "\n" not in summary and "5 error(s)" in summary and f"annotation {unknown_cat['id']}" in summary


def test_clean_sets_and_statistics(shared_data, tmp_path):
    data, images = _copy_set(shared_data, tmp_path, "coco128", "train")
    report = quick_check(_write(tmp_path / "a.json", data), images, anchor_sizes=[16, 32, 64, 128, 256])
    crowd = {a["id"] for a in data["annotations"] if a["iscrowd"]}
    empty = {i["id"] for i in data["images"]} - {a["image_id"] for a in data["annotations"]}
    assert {f.annotation_id for f in report.of(code="crowd")} == crowd and len(crowd) == 7
    assert {f.image_id for f in report.of(code="image_without_annotations")} == empty and len(empty) == 2
    assert all(f.severity == "info" for f in report.of(code="crowd") + report.of(code="unused_category"))
    assert sum(report.instances_per_category.values()) == len(data["annotations"]) - len(crowd)
    assert len(report.box_sides) == len(report.box_aspects) == len(data["annotations"]) - len(crowd)
    assert report.to_dict()["anchor_sizes"] == [16, 32, 64, 128, 256]
    json.dumps(report.to_dict())  # report.json is plain JSON


def test_segmentation_findings(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "segmentation": square},  # fine
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "segmentation": square},  # elsewhere
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "segmentation": [[1, 2, 3]]},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "segmentation": [[1, 2, 3, 4]] + square},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
         "segmentation": {"size": [50, 100], "counts": [5000]}},  # RLE of another size
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [90, 10, 20, 20], "segmentation": square},  # out, mismatch
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 10, 2, 20], "segmentation": square},  # tiny only
    ]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "unused"}], "annotations": anns}
    report = check_dataset(_write(tmp_path / "a.json", data), images, check_images=False)
    assert _keyed(report, ("error", "warning", "info")) == {
        ("mask_box_mismatch", 2), ("invalid_segmentation", 3), ("short_polygon", 4),
        ("invalid_segmentation", 5), ("box_out_of_bounds", 6), ("mask_box_mismatch", 6), ("tiny_box", 7),
        ("unused_category", None),
    }
    assert report.of(code="unused_category")[0].category_id == 2
    with pytest.raises(ValueError, match=r"a\.json: annotation id 3 has segmentation polygon 0 with an odd"):
        CocoDetection(images, tmp_path / "a.json", with_masks=True, verify_files=False)
    CocoDetection(images, tmp_path / "a.json", verify_files=False)  # boxes only: masks are not read


def test_a_file_that_is_not_an_instances_file_is_a_finding(tmp_path):
    (tmp_path / "bad.json").write_text('{"images": [}')
    report = check_dataset(tmp_path / "bad.json", tmp_path, check_images=False)
    assert [f.code for f in report.errors] == ["invalid_file"] and "line 1" in report.errors[0].message
    report = check_dataset(_write(tmp_path / "list.json", []), tmp_path)
    assert [f.code for f in report.errors] == ["invalid_file"]
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        check_dataset(tmp_path / "nothing.json", tmp_path)
    with pytest.raises(ValueError, match="workers"):
        check_dataset(tmp_path / "list.json", tmp_path, workers=-1)


# ------------------------------------------------------------------------------------------------------------
# The fuzz test
# ------------------------------------------------------------------------------------------------------------
JUNK = ["x", "", None, [], {}, True, 1.5, -1, 0, [1, 2], {"a": 1}, float("nan"), float("inf"), 10**20]
BROKEN_SEGMENTATIONS = [[[1, 2, 3]], [["a", "b", "c", "d", "e", "f"]], [[]], [], [[1, 2, float("nan"), 4, 5, 6]],
                        {"size": [1, 2], "counts": "abc"}, {"counts": [1, 2]}, {"size": [600, 800], "counts": [1]},
                        {"size": [600, 800], "counts": 12}, "polygon", [[1, 2, 3, 4, 5, 6], "x"], [1, 2, 3, 4, 5, 6]]


def _mutate(data: dict, rng: random.Random) -> str:
    """Apply one random mutation in place; returns its description."""
    kind = rng.choice(["delete", "wrong_type", "bad_box", "unknown_id", "duplicate_id", "segmentation",
                       "empty_list", "top_level"])
    lists = [k for k in ("images", "annotations", "categories") if isinstance(data.get(k), list) and data[k]]
    if kind in ("delete", "wrong_type", "duplicate_id") and lists:
        key = rng.choice(lists)
        entry = rng.choice(data[key])
        if kind == "duplicate_id":
            data[key].append(copy.deepcopy(entry))
            return f"duplicate {key} entry"
        if not isinstance(entry, dict) or not entry:
            return "noop"
        field = rng.choice(sorted(entry))
        if kind == "delete":
            del entry[field]
            return f"delete {key}.{field}"
        entry[field] = rng.choice(JUNK)
        return f"{key}.{field} = {entry[field]!r}"
    anns = [a for a in data.get("annotations", []) if isinstance(a, dict)] if isinstance(data.get("annotations"), list) else []
    if kind == "bad_box" and anns:
        ann = rng.choice(anns)
        box = list(ann.get("bbox", [0, 0, 1, 1])) if isinstance(ann.get("bbox"), list) else [0, 0, 1, 1]
        box = (box + [1, 1, 1, 1])[:4]
        i = rng.randrange(4)
        box[i] = rng.choice([-5.0, -1e9, float("nan"), float("inf"), 0.0, "3", None])
        ann["bbox"] = rng.choice([box, box[:3], box + [1]])
        return f"bbox = {ann['bbox']!r}"
    if kind == "unknown_id" and anns:
        ann = rng.choice(anns)
        field = rng.choice(["image_id", "category_id"])
        ann[field] = rng.choice([99999, -3])
        return f"{field} unknown"
    if kind == "segmentation" and anns:
        ann = rng.choice(anns)
        ann["segmentation"] = copy.deepcopy(rng.choice(BROKEN_SEGMENTATIONS))
        return f"segmentation = {ann['segmentation']!r}"
    if kind == "empty_list":
        key = rng.choice(["images", "annotations", "categories"])
        data[key] = []
        return f"{key} = []"
    if kind == "top_level":
        key = rng.choice(["images", "annotations", "categories"])
        if rng.random() < 0.5:
            data.pop(key, None)
            return f"no {key}"
        data[key] = rng.choice(JUNK)
        return f"{key} = {data[key]!r}"
    return "noop"


def _results(data: dict) -> list:
    """Valid bbox + segm results for `data`: every ground-truth object found with score 1."""
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    out = []
    for ann in data["annotations"]:
        rle = _segmentation_to_rle(ann["segmentation"], *sizes[ann["image_id"]])
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
                    "bbox": ann["bbox"], "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return out


def _attempt(seen: Counter, who: str, path: Path, call):
    """Run `call`; only ValueError/FileNotFoundError naming `path` may come out. Returns the exception or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except (ValueError, FileNotFoundError) as err:
        seen[f"{who}: {type(err).__name__}"] += 1
        assert str(path) in str(err), f"{who}: {type(err).__name__} does not name the file: {err}"
        return err
    seen[f"{who}: ok"] += 1
    return None


@pytest.mark.parametrize("name, mutations", [("fruits_nuts", 150), ("coco128", 90)])
def test_fuzz_mutated_annotation_files(shared_data, tmp_path, name, mutations):
    original = json.loads((shared_data / name / "annotations" / "instances_val.json").read_text())
    images = shared_data / name / "images"
    results = _results(original)

    # The valid file loads everywhere and scores perfectly against its own objects.
    good = _write(tmp_path / "good.json", original)
    assert len(CocoDetection(images, good, with_masks=True)) == len(original["images"])
    assert check_dataset(good, images, check_images=False).ok
    metrics = evaluate_results(good, results, iou_types=("bbox", "segm"))
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)

    rng = random.Random(f"doctor-fuzz-{name}")
    seen: Counter = Counter()
    for i in range(mutations):
        data = copy.deepcopy(original)
        done = [_mutate(data, rng) for _ in range(rng.randint(1, 3))]
        path = tmp_path / f"mutant_{i:03d}.json"
        text = json.dumps(data)  # NaN and Infinity are written as Python's json reads them
        if rng.random() < 0.05:
            text = text[: rng.randrange(len(text))]  # a torn file
            done.append("truncated JSON")
        path.write_text(text)

        def load_and_decode():
            dataset = CocoDetection(images, path, with_masks=True, verify_files=False)
            for record in dataset._records:  # the masks training would decode; no image is read
                dataset._decode_masks(record)

        refused = _attempt(seen, "dataset", path, load_and_decode)
        _attempt(seen, "evaluator", path, lambda: evaluate_results(path, results, iou_types=("bbox", "segm")))
        report = check_dataset(path, images, check_images=False)  # never raises on the data's problems
        seen["doctor: errors found" if report.errors else "doctor: no error"] += 1
        json.dumps(report.to_dict(), allow_nan=True)
        if refused is not None and "with_masks=True but" not in str(refused):
            # Whatever makes the dataset refuse a file, the doctor reports as an error.
            assert report.errors, f"{done}: the dataset refused ({refused}) but the doctor found no error"
    print(f"\n{name}: {mutations} mutated files: " + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())))
    assert seen["dataset: ValueError"] > mutations // 4 and seen["dataset: ok"] > 0
    assert seen["evaluator: ValueError"] > mutations // 4 and seen["evaluator: ok"] > 0


# ------------------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------------------
def test_check_data_command_exit_codes_and_files(shared_data, tmp_path, capsys):
    data, images = _copy_set(shared_data, tmp_path, "fruits_nuts", "val")
    good = _write(tmp_path / "good.json", data)
    out = tmp_path / "report"
    assert main(["check-data", "--ann", str(good), "--images", str(images), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    assert "no problem found" in capsys.readouterr().out
    written = json.loads((out / "report.json").read_text())
    assert written["ok"] and written["splits"]["good"]["num_annotations"] == len(data["annotations"])
    assert {p.name for p in out.glob("*.png")} == {
        f"good_{n}.png" for n in ("instances_per_class", "box_sizes", "box_aspects", "image_sizes")}
    assert "# Data check" in (out / "summary.md").read_text()

    data["annotations"][0]["category_id"] = 77
    bad = _write(tmp_path / "bad.json", data)
    assert main(["check-data", "--ann", str(bad), "--images", str(images), "--out", str(out), "--quick",
                 "--no-progress"]) == 1
    written = json.loads((out / "report.json").read_text())
    finding, = [f for f in written["splits"]["bad"]["findings"] if f["severity"] == "error"]
    assert finding["code"] == "unknown_category" and finding["annotation_id"] == data["annotations"][0]["id"]
    assert "unknown_category" in (out / "summary.md").read_text()

    assert main(["check-data", "--data-root", str(shared_data / "fruits_nuts"), "--out", str(out), "--quick",
                 "--no-progress"]) == 0
    assert set(json.loads((out / "report.json").read_text())["splits"]) == {"train", "val"}

    capsys.readouterr()
    assert main(["check-data", "--ann", str(tmp_path / "none.json"), "--images", str(images), "--out", str(out)]) == 2
    assert "none.json" in capsys.readouterr().err
    assert main(["check-data", "--data-root", str(tmp_path), "--out", str(out)]) == 2
    assert "no split found" in capsys.readouterr().err


def test_every_code_has_a_known_severity():
    assert {severity for severity, _ in CODES.values()} == {"error", "warning", "info"}


# ------------------------------------------------------------------------------------------------------------
# CocoDetection(bad_images="skip"): what training does with data.bad_images: skip
# ------------------------------------------------------------------------------------------------------------
def test_dataset_skips_and_counts_bad_images_when_asked(shared_data, tmp_path, caplog):
    data, images = _copy_set(shared_data, tmp_path, "fruits_nuts", "val")
    first, second, third = data["images"][:3]
    (images / first["file_name"]).unlink()  # missing
    source = shared_data / "fruits_nuts" / "images" / second["file_name"]
    (images / second["file_name"]).unlink()
    (images / second["file_name"]).write_bytes(source.read_bytes()[:5000])  # truncated
    ann = _write(tmp_path / "a.json", data)

    with pytest.raises(FileNotFoundError, match=rf"{first['file_name']} \(image id {first['id']}\)"):
        CocoDetection(images, ann)
    with pytest.raises(ValueError, match="bad_images must be one of"):
        CocoDetection(images, ann, bad_images="ignore")

    dataset = CocoDetection(images, ann, bad_images="skip")
    assert dataset.ids == [i["id"] for i in data["images"][1:]] and len(dataset.aspect_ratios()) == len(dataset)
    assert dataset.skipped_image_ids == [first["id"]]
    _, target = dataset[0]  # the truncated image: replaced by the next one
    assert target["image_id"] == third["id"]
    assert dataset.skipped_image_ids == [first["id"], second["id"]]
    assert dataset[1][1]["image_id"] == third["id"] and len(dataset.skipped_image_ids) == 2  # counted once
    assert f"skipping image id {second['id']}" in caplog.text

    strict = CocoDetection(images, ann, verify_files=False)
    with pytest.raises(ValueError, match=rf"{second['file_name']} \(image id {second['id']}"):
        strict[1]


def test_quick_pass_on_png_images_of_the_synthetic_set(tmp_path):
    # PNG's verify() must come right after open (PIL raises RuntimeError otherwise): the demo's data is PNG.
    from resnet_fpn.data import make_synthetic_coco

    root = make_synthetic_coco(tmp_path / "synthetic", num_train=4, num_val=2, image_size=(64, 64), num_classes=3,
                               seed=0)
    report = quick_check(root / "annotations" / "instances_train.json", root / "images")
    assert report.errors == [] and report.num_images == 4
    first = json.loads((root / "annotations" / "instances_train.json").read_text())["images"][0]
    (root / "images" / first["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    broken = quick_check(root / "annotations" / "instances_train.json", root / "images")
    assert [(f.code, f.image_id) for f in broken.errors] == [("bad_image", first["id"])]
