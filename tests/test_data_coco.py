"""CocoDetection on the real data sets, its validation errors, the data-root layouts and the batching helpers."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from resnet_fpn.data import (
    CocoDetection,
    DataPaths,
    GroupedBatchSampler,
    aspect_ratio_groups,
    collate_fn,
    resolve_data_paths,
)

from conftest import require_shared

# pycocotools' decode (compiled against numpy 1) trips numpy 2's __array__(copy=) deprecation; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# The numbers the README of the shared data states; the tests below re-derive what they can from the JSON.
COCO128_IMAGES = {"train": 102, "val": 26}
COCO128_INSTANCES = {"train": 785, "val": 154}
COCO128_CROWD = {"train": 7, "val": 3}


@pytest.fixture(scope="session")
def data_root(shared_data) -> Path:
    require_shared(shared_data / "coco128" / "annotations" / "instances_train.json")
    return shared_data


@pytest.fixture(scope="session")
def coco128(data_root):
    root = data_root / "coco128"
    return {
        split: CocoDetection(root / "images", root / "annotations" / f"instances_{split}.json", with_masks=True)
        for split in ("train", "val")
    }


def _raw(data_root: Path, split: str) -> dict:
    return json.loads((data_root / "coco128" / "annotations" / f"instances_{split}.json").read_text())


# ---------------------------------------------------------------------------------------------- coco128
@pytest.mark.parametrize("split", ["train", "val"])
def test_coco128_counts_and_label_mapping(coco128, data_root, split):
    ds = coco128[split]
    raw = _raw(data_root, split)
    assert len(ds) == COCO128_IMAGES[split]
    assert ds.ids == [img["id"] for img in raw["images"]]
    assert len(raw["annotations"]) == COCO128_INSTANCES[split]
    # 80 classes with COCO's gapped ids 1..90, so labels 1..80 map to non-contiguous ids.
    assert ds.num_classes == 81
    assert ds.category_ids == sorted(c["id"] for c in raw["categories"])
    assert ds.category_ids[0] == 1 and ds.category_ids[-1] == 90
    assert list(ds.label_to_category_id) == list(range(1, 81))
    for label, cat_id in ds.label_to_category_id.items():
        assert ds.category_id_to_label[cat_id] == label
        assert ds.coco.cats[cat_id]["name"] == ds.category_names[label - 1]
    assert ds.label_to_category_id[12] == 13  # id 12 is one of COCO's gaps
    assert ds.num_crowd == COCO128_CROWD[split] and ds.num_degenerate == 0 and ds.num_clipped == 0
    assert ds.has_masks


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco128_targets_match_json(coco128, data_root, split):
    ds = coco128[split]
    raw = _raw(data_root, split)
    anns_per_image = {img["id"]: [] for img in raw["images"]}
    for ann in raw["annotations"]:
        if not ann["iscrowd"]:
            anns_per_image[ann["image_id"]].append(ann)
    total = 0
    for index in range(len(ds)):
        record = ds._records[index]
        expected = anns_per_image[record.image_id]
        # Crowd annotations are excluded and coco128 has no degenerate box, so the rest are all targets.
        assert len(record.labels) == len(expected)
        total += len(expected)
        xywh = np.array([a["bbox"] for a in expected], dtype=np.float32).reshape(-1, 4)
        np.testing.assert_allclose(record.boxes[:, :2], xywh[:, :2], atol=1e-3)
        np.testing.assert_allclose(record.boxes[:, 2:], xywh[:, :2] + xywh[:, 2:], atol=1e-3)
        labels = [ds.category_id_to_label[a["category_id"]] for a in expected]
        assert record.labels.tolist() == labels
    assert total == COCO128_INSTANCES[split] - COCO128_CROWD[split]


def test_coco128_item_format(coco128):
    ds = coco128["train"]
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 480, 640) and image.is_contiguous()
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    n = len(target["labels"])
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64 and int(target["labels"].min()) >= 1
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 480, 640)
    assert target["area"].dtype == torch.float32 and target["iscrowd"].dtype == torch.int64
    assert int(target["iscrowd"].sum()) == 0
    assert target["image_id"] == ds.ids[0] == 9 and isinstance(target["image_id"], int)
    boxes = target["boxes"]
    assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())


def test_coco128_images_without_annotation_are_empty_negatives(coco128, data_root):
    ds = coco128["train"]
    raw = _raw(data_root, "train")
    annotated = {a["image_id"] for a in raw["annotations"]}
    empty = [i for i, image_id in enumerate(ds.ids) if image_id not in annotated]
    assert len(empty) == 2  # as the README says
    for index in empty:
        image, target = ds[index]
        h, w = image.shape[1:]
        assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
        assert target["masks"].shape == (0, h, w)
        assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)


def test_coco128_grayscale_jpeg_loads_as_rgb(coco128, data_root):
    ds = coco128["train"]
    index = next(i for i in range(len(ds)) if ds._records[i].file_name == "000000000086.jpg")
    with Image.open(data_root / "coco128" / "images" / "000000000086.jpg") as raw:
        assert raw.mode == "L"
    image, _ = ds[index]
    assert image.shape == (3, 640, 512)
    # Grayscale replicated into three equal channels.
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco128_masks_decode_to_their_area(coco128, split):
    ds = coco128[split]
    mask_total = area_total = 0.0
    for index in range(len(ds)):
        record = ds._records[index]
        masks = ds._decode_masks(record)
        assert masks.shape == (len(record.labels), record.height, record.width)
        sums = masks.reshape(len(masks), record.height * record.width).sum(axis=1).astype(np.float64)
        # COCO's area is the polygon's geometric area; the pixel count differs by a boundary effect that is
        # a few percent only for objects of COCO's "medium" size (32^2 px) and up.
        medium = record.area >= 32 * 32
        np.testing.assert_allclose(sums[medium], record.area[medium], rtol=0.05)
        # Every mask lies in its box (1 px for rasterisation).
        for mask, box in zip(masks, record.boxes):
            ys, xs = np.nonzero(mask)
            assert xs.min() >= math.floor(box[0]) - 1 and xs.max() <= math.ceil(box[2]) + 1
            assert ys.min() >= math.floor(box[1]) - 1 and ys.max() <= math.ceil(box[3]) + 1
        mask_total += sums.sum()
        area_total += float(record.area.sum())
    assert abs(mask_total - area_total) / area_total < 0.02


def test_coco128_crowd_rle_stays_in_evaluator_ground_truth(coco128):
    ds = coco128["train"]
    crowd = [a for a in ds.coco.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == COCO128_CROWD["train"]
    # Uncompressed RLE (counts is a list) decodes through the same path the dataset uses.
    assert all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    for ann in crowd:
        mask = ds.coco.annToMask(ann)
        # The runs alternate background/foreground starting with background; COCO's crowd 'area' fields
        # were computed on other masks (they differ by up to 34%), so the runs are the reference.
        assert int(mask.sum()) == sum(ann["segmentation"]["counts"][1::2])
        assert mask.shape == tuple(ann["segmentation"]["size"])
    assert len(ds.coco.getAnnIds()) == COCO128_INSTANCES["train"]


def test_coco128_aspect_ratios_from_json(coco128, data_root):
    ds = coco128["train"]
    raw = _raw(data_root, "train")
    expected = [img["width"] / img["height"] for img in raw["images"]]
    np.testing.assert_allclose(ds.aspect_ratios(), expected)
    assert ds.check_files() == []


def test_fruits_nuts_and_box_only(data_root, tmp_path):
    root = data_root / "fruits_nuts"
    ds = CocoDetection(root / "images", root / "annotations" / "instances_train.json", with_masks=True)
    assert ds.has_masks and ds.num_classes == 4 and ds.category_names == ["date", "fig", "hazelnut"]
    image, target = ds[0]
    assert image.shape == (3, 600, 800) and target["masks"].shape[0] == len(target["boxes"]) > 0

    raw = json.loads((root / "annotations" / "instances_train.json").read_text())
    for ann in raw["annotations"]:
        del ann["segmentation"]
    box_only = tmp_path / "boxes.json"
    box_only.write_text(json.dumps(raw))
    ds = CocoDetection(root / "images", box_only)
    assert not ds.has_masks
    assert "masks" not in ds[0][1]
    with pytest.raises(ValueError, match=r"boxes\.json: with_masks=True but the annotations have no segmentation masks: annotation id 1 \(and 133 more\) has none"):
        CocoDetection(root / "images", box_only, with_masks=True)


# ---------------------------------------------------------------------------------------------- small files
def _write_set(tmp_path: Path, data: dict, sizes=None, name: str = "ann.json") -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for img in data.get("images", []):
        path = images / img["file_name"]
        if not path.exists():
            Image.new("RGB", (int(img["width"]), int(img["height"])), (10, 20, 30)).save(path)
    ann = tmp_path / name
    ann.write_text(json.dumps(data))
    return ann


def _minimal(**overrides) -> dict:
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8], "area": 80, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "thing"}, {"id": 9, "name": "other"}],
    }
    data.update(overrides)
    return data


def test_malformed_json_names_file_line_and_column(tmp_path):
    (tmp_path / "images").mkdir()
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [],\n  "annotations": [,]}')
    with pytest.raises(ValueError, match=r"annotation file .*broken\.json is not valid JSON: .* line 2, column 19"):
        CocoDetection(tmp_path / "images", bad)


def test_missing_top_level_key(tmp_path):
    data = _minimal()
    del data["categories"]
    ann = _write_set(tmp_path, data)
    with pytest.raises(ValueError, match=r"ann\.json: missing top-level key\(s\) \['categories'\]"):
        CocoDetection(tmp_path / "images", ann)


def test_annotation_with_unknown_image(tmp_path):
    data = _minimal()
    data["annotations"][0]["image_id"] = 99
    ann = _write_set(tmp_path, data)
    with pytest.raises(ValueError, match=r"ann\.json: annotation id 7 refers to image_id 99"):
        CocoDetection(tmp_path / "images", ann)


def test_annotation_with_unknown_category(tmp_path):
    data = _minimal()
    data["annotations"][0]["category_id"] = 42
    ann = _write_set(tmp_path, data)
    with pytest.raises(ValueError, match=r"ann\.json: annotation id 7 has category_id 42"):
        CocoDetection(tmp_path / "images", ann)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, "3", 4], [1, 2, float("nan"), 4], None, [1, 2, True, 4]])
def test_bbox_must_be_four_numbers(tmp_path, bbox):
    data = _minimal()
    data["annotations"][0]["bbox"] = bbox
    ann = _write_set(tmp_path, data)
    with pytest.raises(ValueError, match=r"ann\.json: annotation id 7 has bbox .*expected 4 finite numbers"):
        CocoDetection(tmp_path / "images", ann)


def test_missing_image_file_at_load_and_check_files(tmp_path):
    ann = _write_set(tmp_path, _minimal())
    ds = CocoDetection(tmp_path / "images", ann)
    (tmp_path / "images" / "b.png").unlink()
    missing = str(tmp_path / "images" / "b.png")
    with pytest.raises(FileNotFoundError, match=rf"{missing} \(image id 2"):
        ds[1]
    assert ds.check_files(raise_missing=False) == [tmp_path / "images" / "b.png"]
    (tmp_path / "images" / "a.png").unlink()
    # At construction all missing files are listed at once.
    with pytest.raises(FileNotFoundError, match=r"(?s)2 of 2 image file\(s\).*a\.png \(image id 1\).*b\.png \(image id 2\)"):
        CocoDetection(tmp_path / "images", ann)
    assert len(CocoDetection(tmp_path / "images", ann, verify_files=False)) == 2


def test_crowd_clipped_and_degenerate_boxes(tmp_path, caplog):
    data = _minimal()
    data["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [30, 20, 20, 20], "area": 1, "iscrowd": 0},  # clipped
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [5, 5, 0.5, 10], "area": 1, "iscrowd": 0},  # too thin
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [45, 5, 10, 10], "area": 1, "iscrowd": 0},  # outside
        {"id": 4, "image_id": 1, "category_id": 5, "bbox": [0, 0, 40, 30], "area": 1, "iscrowd": 1},  # crowd
        {"id": 5, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0},  # kept
    ]
    ann = _write_set(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="resnet_fpn.data.coco"):
        ds = CocoDetection(tmp_path / "images", ann)
    messages = [r.getMessage() for r in caplog.records]
    assert any("ann.json: 2 box(es) partly outside their image were clipped" in m for m in messages)
    assert any("ann.json: dropped 2 degenerate box(es)" in m for m in messages)
    assert (ds.num_clipped, ds.num_degenerate, ds.num_crowd) == (2, 2, 1)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[30.0, 20.0, 40.0, 30.0]]
    assert target["labels"].tolist() == [2]  # category 9 is the second sorted id
    _, target = ds[1]
    assert target["boxes"].tolist() == [[1.0, 1.0, 6.0, 6.0]]
    # The evaluator's ground truth keeps every annotation of the file.
    assert len(ds.coco.getAnnIds()) == 5


def test_missing_area_and_iscrowd_are_filled_for_the_evaluator(tmp_path):
    data = _minimal()
    del data["annotations"][0]["area"], data["annotations"][0]["iscrowd"]
    ds = CocoDetection(tmp_path / "images", _write_set(tmp_path, data))
    ann = ds.coco.anns[7]
    assert ann["area"] == 80.0 and ann["iscrowd"] == 0


def test_palette_rgba_and_exif_orientation(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("P", (40, 30), 3).save(images / "p.png")
    Image.new("RGBA", (40, 30), (200, 100, 50, 128)).save(images / "rgba.png")
    # A 40x20 landscape JPEG stored with EXIF orientation 6 (display rotated 90 degrees clockwise): upright
    # it is 20x40 and the red marker stored at the top-left shows at the top-right.
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:6, :6] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(raw).save(images / "rot.jpg", exif=exif, quality=95)
    data = {
        "images": [
            {"id": 1, "file_name": "p.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "rgba.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "rot.jpg", "width": 20, "height": 40},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "x"}],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetection(images, ann)
    assert ds[0][0].shape == (3, 30, 40)
    rgba, _ = ds[1]
    assert rgba.shape == (3, 30, 40) and round(float(rgba[0, 0, 0]) * 255) == 200
    upright, _ = ds[2]
    assert upright.shape == (3, 40, 20)
    assert float(upright[0, :4, -4:].mean()) > 0.8 and float(upright[0, :4, :4].mean()) < 0.2

    # A file annotated in the stored (unrotated) frame: the JSON's size says so, and it is followed.
    data["images"][2].update(width=40, height=20)
    ann.write_text(json.dumps(data))
    assert CocoDetection(images, ann)[2][0].shape == (3, 20, 40)
    data["images"][2].update(width=50, height=50)
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"rot\.jpg \(image id 3, listed in .*ann\.json\) is 20x40 \(width x height\) but its annotations say 50x50"):
        CocoDetection(images, ann)[2]


def test_unreadable_image_names_the_file_and_image_id(tmp_path):
    ann = _write_set(tmp_path, _minimal())
    (tmp_path / "images" / "b.png").write_bytes(b"not a png at all")
    ds = CocoDetection(tmp_path / "images", ann)
    assert ds[0][0].shape == (3, 30, 40)
    with pytest.raises(ValueError, match=r"cannot read image .*b\.png \(image id 2, listed in .*ann\.json\)"):
        ds[1]


def test_pycocotools_index_is_built_only_when_asked_for(tmp_path, monkeypatch):
    import resnet_fpn.data.coco as data_coco

    built = []

    class CountingCOCO(data_coco.COCO):
        def createIndex(self):
            built.append(self)
            super().createIndex()

    monkeypatch.setattr(data_coco, "COCO", CountingCOCO)
    ds = CocoDetection(tmp_path / "images", _write_set(tmp_path, _minimal()))
    ds[0], ds[1]
    assert built == []  # construction and iteration do without it
    assert ds.coco is ds.coco and len(built) == 1  # built once, on first access, then kept
    assert ds.coco.getAnnIds() == [7] and ds.coco.cats[9]["name"] == "other"


def test_compressed_and_uncompressed_rle_masks(tmp_path):
    ann_file = _write_set(tmp_path, _minimal())
    data = json.loads(ann_file.read_text())
    block = np.zeros((30, 40), np.uint8, order="F")
    block[5:15, 10:30] = 1
    rle = mask_utils.encode(block)
    compressed = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    # Uncompressed RLE: column-major run lengths starting with zeros.
    flat = block.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    uncompressed = {"size": [30, 40], "counts": runs}
    data["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": compressed},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": uncompressed},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
    ]
    ann_file.write_text(json.dumps(data))
    ds = CocoDetection(tmp_path / "images", ann_file, with_masks=True)
    masks = ds[0][1]["masks"].numpy()
    assert masks.shape == (3, 30, 40)
    assert np.array_equal(masks[0], block) and np.array_equal(masks[1], block)
    assert abs(int(masks[2].sum()) - 200) <= 30  # polygon rasterisation differs at the border only


# ---------------------------------------------------------------------------------------------- layouts
def test_resolve_simple_layout(data_root):
    paths = resolve_data_paths(data_root / "coco128")
    root = data_root / "coco128"
    assert paths == DataPaths(
        root / "annotations/instances_train.json", root / "images", root / "annotations/instances_val.json",
        root / "images",
    )


def test_resolve_coco2017_layout_and_overrides(tmp_path):
    (tmp_path / "annotations").mkdir()
    for name in ("instances_train2017.json", "instances_val2017.json"):
        (tmp_path / "annotations" / name).write_text("{}")
    (tmp_path / "train2017").mkdir()
    (tmp_path / "val2017").mkdir()
    paths = resolve_data_paths(tmp_path)
    assert paths.train_ann == tmp_path / "annotations/instances_train2017.json"
    assert paths.train_images == tmp_path / "train2017" and paths.val_images == tmp_path / "val2017"
    other = tmp_path / "mini_val.json"
    other.write_text("{}")
    assert resolve_data_paths(tmp_path, val_ann=other).val_ann == other
    # With all four explicit paths no root is needed.
    explicit = resolve_data_paths(
        train_ann=other, train_images=tmp_path / "train2017", val_ann=other, val_images=tmp_path / "val2017"
    )
    assert explicit == DataPaths(other, tmp_path / "train2017", other, tmp_path / "val2017")


@pytest.mark.parametrize("layout", ["simple", "coco2017"])
def test_resolve_a_root_with_only_a_val_split(tmp_path, layout):
    ann = "instances_val.json" if layout == "simple" else "instances_val2017.json"
    images = tmp_path / ("images" if layout == "simple" else "val2017")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / ann).write_text("{}")
    images.mkdir()
    # Training needs both splits and says which paths it looked for ...
    with pytest.raises(ValueError, match=rf"(?s)matches no known layout for the train/val split.*instances_train"):
        resolve_data_paths(tmp_path)
    # ... evaluation needs only val.
    paths = resolve_data_paths(tmp_path, splits=("val",))
    assert paths == DataPaths(None, None, tmp_path / "annotations" / ann, images)
    explicit = resolve_data_paths(val_ann=tmp_path / "annotations" / ann, val_images=images, splits=["val"])
    assert explicit == paths
    with pytest.raises(ValueError, match=r"no data root given and \['val_images'\] not set"):
        resolve_data_paths(val_ann=tmp_path / "annotations" / ann, splits=("val",))
    with pytest.raises(ValueError, match=r"splits must be a non-empty sequence drawn from \('train', 'val'\), got 'val'"):
        resolve_data_paths(tmp_path, splits="val")
    with pytest.raises(ValueError, match=r"splits must be .*got \('test',\)"):
        resolve_data_paths(tmp_path, splits=("test",))


def test_resolve_errors(tmp_path):
    with pytest.raises(ValueError, match=rf"data root {tmp_path} matches no known layout(?s:.*)simple(?s:.*)coco2017"):
        resolve_data_paths(tmp_path)
    with pytest.raises(ValueError, match=r"no data root given and \['val_ann', 'val_images'\] not set"):
        resolve_data_paths(train_ann=__file__, train_images=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train_ann \(--train-ann\): file not found: .*nope\.json"):
        resolve_data_paths(tmp_path, train_ann=tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------- batching
def test_aspect_ratio_groups():
    assert aspect_ratio_groups([0.75, 1.0, 1.333]) == [0, 1, 1]
    # k=1: bin edges 0.5, 1, 2.
    assert aspect_ratio_groups([0.4, 0.5, 0.9, 1.0, 1.9, 2.0, 3.0], k=1) == [0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match=r"aspect ratio 0\.0 at index 1"):
        aspect_ratio_groups([1.0, 0.0])
    with pytest.raises(ValueError, match=r"k must be a non-negative int, got -1"):
        aspect_ratio_groups([1.0], k=-1)


def _check_batches(batches, group_ids, expected_indices, batch_size):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == sorted(expected_indices)  # every index exactly once
    assert all(0 < len(b) <= batch_size for b in batches)
    mixed = [b for b in batches if len({group_ids[i] for i in b}) > 1]
    return mixed


def test_grouped_batch_sampler_exact_cases():
    group_ids = [0] * 10 + [1] * 7
    sampler = GroupedBatchSampler(SequentialSampler(range(17)), group_ids, 4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5  # ceil(17 / 4)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [10, 11, 12, 13], [14, 15, 16], [8, 9]]
    assert _check_batches(batches, group_ids, range(17), 4) == []

    # Leftovers 1 + 1 fit one batch: with ceil(10 / 4) = 3 batches the last one must mix the two groups.
    group_ids = [0] * 5 + [1] * 5
    batches = list(GroupedBatchSampler(SequentialSampler(range(10)), group_ids, 4))
    assert batches == [[0, 1, 2, 3], [5, 6, 7, 8], [4, 9]]
    batches = list(GroupedBatchSampler(SequentialSampler(range(10)), group_ids, 4, drop_last=True))
    assert batches == [[0, 1, 2, 3], [5, 6, 7, 8]]

    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        GroupedBatchSampler(SequentialSampler(range(3)), [0, 0, 0], 0)
    with pytest.raises(TypeError, match=r"sampler should be an instance"):
        GroupedBatchSampler(range(3), [0, 0, 0], 2)


def test_grouped_batch_sampler_random_on_coco128(coco128):
    ds = coco128["train"]
    group_ids = aspect_ratio_groups(ds.aspect_ratios())
    assert set(group_ids) == {0, 1}  # coco128 has portrait and landscape images
    generator = torch.Generator().manual_seed(0)
    sampler = GroupedBatchSampler(RandomSampler(ds, generator=generator), group_ids, 4)
    for _ in range(3):  # three epochs, three shuffles
        batches = list(sampler)
        assert len(batches) == len(sampler) == math.ceil(len(ds) / 4)
        mixed = _check_batches(batches, group_ids, range(len(ds)), 4)
        # Only the tail can mix groups, at most once with two groups.
        assert len(mixed) <= 1 and (not mixed or mixed[0] is batches[-1])


def test_grouped_batch_sampler_with_distributed_sampler(coco128):
    ds = coco128["train"]
    group_ids = aspect_ratio_groups(ds.aspect_ratios())
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            inner = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
            sampler = GroupedBatchSampler(inner, group_ids, 4)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            mixed = _check_batches(batches, group_ids, list(inner), 4)
            assert len(mixed) <= 1
            per_rank.append(batches)
        # Equal step counts on every rank, or DDP would hang; together the ranks cover the whole set.
        assert len(per_rank[0]) == len(per_rank[1]) == math.ceil(len(ds) / 2 / 4)
        assert {i for batches in per_rank for b in batches for i in b} == set(range(len(ds)))


def test_lightning_can_inject_a_distributed_sampler(coco128):
    pytest.importorskip("lightning")
    try:
        from lightning.fabric.utilities.data import _replace_dunder_methods
        from lightning.pytorch.utilities.data import _update_dataloader
    except ImportError as err:  # private helpers; their location may move between Lightning versions
        pytest.skip(f"Lightning's dataloader re-instantiation helpers moved: {err}")
    from torch.utils.data import BatchSampler

    ds = coco128["val"]
    group_ids = aspect_ratio_groups(ds.aspect_ratios())
    # Lightning wraps the *_dataloader hooks like this to record the batch sampler's init arguments.
    with _replace_dunder_methods(BatchSampler):
        loader = DataLoader(ds, batch_sampler=GroupedBatchSampler(RandomSampler(ds), group_ids, 2), collate_fn=collate_fn)
    distributed = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True)
    rebuilt = _update_dataloader(loader, distributed)
    assert isinstance(rebuilt.batch_sampler, GroupedBatchSampler)
    assert rebuilt.batch_sampler.sampler is distributed and rebuilt.batch_sampler.group_ids == group_ids
    assert len(rebuilt.batch_sampler) == math.ceil(len(ds) / 2 / 2)


def test_collate_fn_with_data_loader(coco128):
    ds = coco128["val"]
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 3
    assert [t["image_id"] for t in targets] == ds.ids[:3]
    assert all(img.shape[0] == 3 for img in images)
    assert Counter(type(t["boxes"]) for t in targets) == Counter({torch.Tensor: 3})


def test_image_sizes_must_be_positive_integers(tmp_path):
    data = _minimal()
    data["images"][0]["width"] = 40.0  # some exporters write integral floats
    assert CocoDetection(tmp_path / "images", _write_set(tmp_path, data))[0][0].shape == (3, 30, 40)
    data["images"][1]["height"] = 30.5
    with pytest.raises(ValueError, match=r"ann\.json: image id 2 has height=30\.5, expected a positive integer"):
        CocoDetection(tmp_path / "images", _write_set(tmp_path, data))
