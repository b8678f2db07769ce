"""resnet_fpn.coco_format: the one reader/validator of COCO files (instances, image lists, results)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from resnet_fpn.coco_format import (
    Category,
    CocoAnnotations,
    check_results,
    image_ids_by_file_name,
    load_coco_json,
    load_results,
)


def _minimal() -> dict:
    return {
        "info": {"description": "kept"},
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "sub/b.png", "width": 20.0, "height": 10},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 9, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": [[2, 3, 12, 3, 12, 11]]},
            {"id": 8, "image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 5]},  # no area, no iscrowd
            {"id": 9, "image_id": 1, "category_id": 5, "bbox": [0, 0, 40, 30], "area": 1200, "iscrowd": 1,
             "segmentation": {"size": [30, 40], "counts": [0, 1200]}},
        ],
        "categories": [{"id": 9, "name": "other"}, {"id": 5, "name": "thing"}],
    }


def _write(tmp_path: Path, data, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_index_labels_and_fill_in_without_touching_the_input():
    data = _minimal()
    original = copy.deepcopy(data)
    gt = CocoAnnotations(data, source="mem.json")
    assert gt.image_ids == [1, 2] and gt.image_sizes == {1: (30, 40), 2: (10, 20)}
    assert gt.category_ids == [5, 9] and gt.category_names == ["thing", "other"]
    assert gt.categories == [Category(label=1, id=5, name="thing"), Category(label=2, id=9, name="other")]
    assert gt.label_to_category_id == {1: 5, 2: 9} and gt.category_id_to_label == {5: 1, 9: 2}
    assert [a["id"] for a in gt.annotations_by_image[1]] == [7, 8, 9] and gt.annotations_by_image[2] == []
    filled = gt.annotations[1]
    assert filled["area"] == 20.0 and filled["iscrowd"] == 0
    # Annotation 8 has no segmentation; the crowd one (9) does not count as a target.
    assert gt.unsegmented_ids == [8]
    assert data == original  # the input (maybe a caller's COCO.dataset) is not modified
    assert gt.annotations[0] is data["annotations"][0]  # complete entries are shared, not copied
    as_dict = gt.to_dict()
    assert as_dict["info"] == {"description": "kept"} and as_dict["annotations"][1]["area"] == 20.0
    assert as_dict["categories"] == data["categories"]


def test_from_file_on_real_coco(shared_data):
    path = shared_data / "coco128" / "annotations" / "instances_val.json"
    raw = json.loads(path.read_text())
    gt = CocoAnnotations.from_file(path)
    assert gt.source == str(path) and gt.image_ids == [img["id"] for img in raw["images"]]
    assert len(gt.categories) == 80 and gt.categories[11] == Category(label=12, id=13, name="stop sign")
    assert sum(map(len, gt.annotations_by_image.values())) == len(gt.annotations) == len(raw["annotations"]) == 154
    assert gt.unsegmented_ids == []


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["images"].append({"id": 1, "file_name": "c.png", "width": 1, "height": 1}),
         r"mem\.json: image id 1 appears twice in 'images'"),
        (lambda d: d["images"][1].pop("file_name"), r"mem\.json: images\[1\] \(id 2\) has no 'file_name'"),
        (lambda d: d["images"][0].update(id="1"), r"mem\.json: images\[0\] has a non-integer id '1'"),
        (lambda d: d["images"][0].update(height=0), r"mem\.json: image id 1 has height=0, expected a positive integer"),
        (lambda d: d["categories"][1].pop("name"), r"mem\.json: categories\[1\] needs an 'id' and a 'name'"),
        (lambda d: d["categories"].append({"id": 5, "name": "again"}), r"mem\.json: category id 5 appears twice"),
        (lambda d: d.update(categories=[]), r"mem\.json: 'categories' is empty"),
        (lambda d: d["annotations"][1].pop("id"), r"mem\.json: annotations\[1\] has no 'id'"),
        (lambda d: d["annotations"][1].pop("bbox"), r"mem\.json: annotation id 8 has no 'bbox'"),
        (lambda d: d["annotations"][2].update(image_id=3), r"mem\.json: annotation id 9 refers to image_id 3, which is not in 'images'"),
        (lambda d: d["annotations"][0].update(category_id=1), r"mem\.json: annotation id 7 has category_id 1, .*known ids: \[5, 9\]"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"mem\.json: annotation id 7 has bbox \[1, 2, 3\], expected 4 finite numbers"),
        (lambda d: d["annotations"][0].update(area="80"), r"mem\.json: annotation id 7 has area '80', expected a number"),
        (lambda d: d.update(annotations={}), r"mem\.json: top-level 'annotations' must be a list, got dict"),
        (lambda d: d.pop("images"), r"mem\.json: missing top-level key\(s\) \['images'\]"),
    ],
)
def test_invalid_entries_are_named(edit, message):
    data = _minimal()
    edit(data)
    with pytest.raises(ValueError, match=message):
        CocoAnnotations(data, source="mem.json")


def test_file_errors_name_the_file_line_and_column(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"annotation file not found: .*nope\.json"):
        CocoAnnotations.from_file(tmp_path / "nope.json")
    bad = _write(tmp_path, '{"images": [\n  {"id": 1,}]}', "bad.json")
    with pytest.raises(ValueError, match=r"annotation file .*bad\.json is not valid JSON: .* at line 2, column 12"):
        CocoAnnotations.from_file(bad)
    with pytest.raises(ValueError, match=r"ground-truth file .*bad\.json is not valid JSON"):
        load_coco_json(bad, kind="ground-truth file")
    listed = _write(tmp_path, [1, 2], "list.json")
    with pytest.raises(ValueError, match=r"list\.json: expected a COCO instances JSON object at the top level, got list"):
        CocoAnnotations.from_file(listed)


def test_image_ids_by_file_name(tmp_path):
    data = _minimal()
    assert image_ids_by_file_name(_write(tmp_path, data)) == {"a.png": 1, "sub/b.png": 2}
    # An image-info file (no annotations, as COCO's test-dev lists) is enough.
    info = {"images": data["images"]}
    assert image_ids_by_file_name(_write(tmp_path, info, "info.json")) == {"a.png": 1, "sub/b.png": 2}
    info["images"].append({"id": 3, "file_name": "a.png", "width": 4, "height": 4})
    with pytest.raises(ValueError, match=r"info\.json: file_name 'a\.png' is listed twice in 'images' \(ids 1 and 3\)"):
        image_ids_by_file_name(_write(tmp_path, info, "info.json"))
    with pytest.raises(ValueError, match=r"none\.json: missing top-level key\(s\) \['images'\]"):
        image_ids_by_file_name(_write(tmp_path, {"annotations": []}, "none.json"))
    with pytest.raises(FileNotFoundError, match=r"annotation file not found: .*absent\.json"):
        image_ids_by_file_name(tmp_path / "absent.json")


def test_results_files_and_their_checks(tmp_path):
    gt = CocoAnnotations(_minimal(), source="gt.json")
    ok = {"image_id": 1, "category_id": 9, "score": 0.5, "bbox": [1, 2, 3, 4]}
    first = _write(tmp_path, [ok, ok], "r0.json")
    second = _write(tmp_path, [ok, dict(ok, score=float("inf"))], "r1.json")
    entries, sources = load_results([first, second])
    assert len(entries) == 4 and sources == [(str(first), 0), (str(second), 2)]
    check_results(entries[:3], gt, iou_types=("bbox",), sources=sources)
    with pytest.raises(ValueError, match=r"result entry 3 \(entry 1 of .*r1\.json\) has score inf, expected a finite number"):
        check_results(entries, gt, iou_types=("bbox",), sources=sources)
    with pytest.raises(ValueError, match=r"result entry 0 has no 'segmentation', which segm evaluation needs"):
        check_results([ok], gt, iou_types=("segm",))
    with pytest.raises(ValueError, match=r"results refer to category ids not in the ground truth \(gt\.json\): \[1\]"):
        check_results([dict(ok, category_id=1)], gt, iou_types=("bbox",))
    with pytest.raises(ValueError, match=r"results file .*gt\.json holds a JSON dict \(it looks like a ground-truth file\)"):
        load_results([_write(tmp_path, _minimal(), "gt.json")])


# --------------------------------------------------------------------------------------------
# encode_masks: byte for byte pycocotools' mask.encode, with mask.area and mask.toBbox
# --------------------------------------------------------------------------------------------
def _edge_masks():
    """Masks that stress the run boundaries: empty, full, borders, one pixel, crops of the full height."""
    import torch

    h, w = 7, 9
    cases = {name: torch.zeros(h, w, dtype=torch.bool) for name in (
        "empty", "full", "top_left_pixel", "bottom_right_pixel", "bottom_left_pixel", "top_right_pixel",
        "first_column", "last_column", "first_row", "last_row", "full_height_band", "full_height_holes",
        "wraps_bottom_to_top", "checkerboard", "frame")}
    cases["full"][:] = True
    cases["top_left_pixel"][0, 0] = True
    cases["bottom_right_pixel"][-1, -1] = True
    cases["bottom_left_pixel"][-1, 0] = True
    cases["top_right_pixel"][0, -1] = True
    cases["first_column"][:, 0] = True
    cases["last_column"][:, -1] = True
    cases["first_row"][0] = True
    cases["last_row"][-1] = True
    cases["full_height_band"][:, 2:6] = True  # one run over several columns
    cases["full_height_holes"][:, 2:6] = True
    cases["full_height_holes"][3, 3] = False
    cases["wraps_bottom_to_top"][5:, 1] = True  # the bottom of column 1 and the top of column 2: one run
    cases["wraps_bottom_to_top"][:2, 2] = True
    cases["checkerboard"] = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
    cases["frame"][:] = True
    cases["frame"][1:-1, 1:-1] = False
    return cases


def _pycocotools_encode(masks):
    import numpy as np
    from pycocotools import mask as mask_util

    array = np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0))
    return mask_util.encode(array)


def _assert_as_pycocotools(masks):
    import numpy as np
    from pycocotools import mask as mask_util

    from resnet_fpn.coco_format import encode_masks, encode_masks_with_boxes

    expected = _pycocotools_encode(masks)
    rles, areas, boxes = encode_masks_with_boxes(masks)
    assert [r["size"] for r in rles] == [r["size"] for r in expected]
    assert [r["counts"].encode("ascii") for r in rles] == [r["counts"] for r in expected]  # byte for byte
    assert encode_masks(masks) == rles
    if len(expected):
        assert areas.dtype == np.int64 and areas.tolist() == mask_util.area(expected).tolist()
        np.testing.assert_array_equal(boxes, mask_util.toBbox(expected).reshape(-1, 4))
    assert boxes.shape == (len(expected), 4)


@pytest.mark.parametrize("name", sorted(_edge_masks()))
def test_encode_masks_edge_cases_are_pycocotools_bytes(name):
    import torch

    mask = _edge_masks()[name]
    _assert_as_pycocotools(mask[None])
    # the same mask among others (each mask's runs must stay its own) and at 1 x W, H x 1
    stack = torch.stack(list(_edge_masks().values()))
    _assert_as_pycocotools(torch.cat([stack, mask[None], stack.flip(0)]))
    _assert_as_pycocotools(mask[:1, :][None])
    _assert_as_pycocotools(mask[:, :1][None])


# Widths that read rows as 1-, 2-, 4- and 8-byte words (13, 10, 12, 48).
@pytest.mark.parametrize("height,width", [(1, 1), (1, 13), (13, 1), (2, 3), (37, 41), (64, 48), (5, 200), (3, 10), (6, 12)])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 0.98, 1.0])
def test_encode_masks_random_masks_are_pycocotools_bytes(height, width, density):
    import torch

    generator = torch.Generator().manual_seed(height * 1000 + width + int(density * 100))
    _assert_as_pycocotools(torch.rand(12, height, width, generator=generator) < density)


def test_encode_masks_64_bit_arithmetic_gives_the_same_bytes(monkeypatch):
    """Images too large for 32-bit run indices take the int64 path: pinned here with a lowered limit."""
    import torch

    from resnet_fpn import coco_format

    monkeypatch.setattr(coco_format, "_INT32_INDEX_LIMIT", 0)
    generator = torch.Generator().manual_seed(3)
    _assert_as_pycocotools(torch.rand(12, 37, 41, generator=generator) < 0.5)
    _assert_as_pycocotools(torch.stack(list(_edge_masks().values())))


def test_encode_masks_blobs_at_image_size_are_pycocotools_bytes():
    """Masks as the evaluator sees them: 28x28 probabilities pasted into boxes at image size, thresholded."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    generator = torch.Generator().manual_seed(0)
    for height, width in [(48, 64), (61, 43)]:
        xy = torch.rand(30, 2, generator=generator) * torch.tensor([width, height]) * 0.8
        wh = 1 + torch.rand(30, 2, generator=generator) * torch.tensor([width, height])
        boxes = torch.cat([xy, xy + wh], 1)  # some past the image's border: clipped when pasted
        boxes[0] = torch.tensor([0, 0, width, height])  # one crop of the full height and width
        probs = torch.rand(30, 1, 28, 28, generator=generator)
        _assert_as_pycocotools(paste_masks_in_image(probs, boxes, (height, width))[:, 0] > 0.5)


def test_encode_masks_inputs_other_than_contiguous_bool():
    import numpy as np
    import torch

    from resnet_fpn.coco_format import encode_masks, encode_masks_with_boxes

    masks = torch.rand(5, 17, 23, generator=torch.Generator().manual_seed(1)) > 0.6
    expected = encode_masks(masks)
    assert encode_masks(masks.to(torch.uint8)) == expected
    assert encode_masks(masks.numpy()) == expected
    assert encode_masks(masks.transpose(1, 2).contiguous().transpose(1, 2)) == expected  # not contiguous
    assert encode_masks(masks.to(torch.uint8) * 255) == expected  # any nonzero byte is foreground
    rles, areas, boxes = encode_masks_with_boxes(torch.zeros(0, 4, 6, dtype=torch.bool))
    assert rles == [] and areas.shape == (0,) and boxes.shape == (0, 4)
    assert json.loads(json.dumps(expected)) == expected  # counts are str: JSON-ready
    assert all(isinstance(r["counts"], str) and r["size"] == [17, 23] for r in expected)
    assert np.array_equal(encode_masks_with_boxes(masks)[1], masks.sum((1, 2)).numpy())
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\), got shape \(17, 23\)"):
        encode_masks(masks[0])
