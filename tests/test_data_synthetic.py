"""The embedded synthetic data set: determinism, caching, and that it loads like real COCO data."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from resnet_fpn.data import SHAPES, CocoDetection, make_synthetic_coco, resolve_data_paths

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

ARGS = dict(num_train=24, num_val=8, image_size=(96, 128), num_classes=3, seed=5)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("synthetic"), **ARGS)


def _ann(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def test_layout_and_counts(synthetic):
    paths = resolve_data_paths(synthetic)
    assert paths.train_ann == _ann(synthetic, "train") and paths.val_images == synthetic / "images"
    train = json.loads(_ann(synthetic, "train").read_text())
    val = json.loads(_ann(synthetic, "val").read_text())
    assert len(train["images"]) == 24 and len(val["images"]) == 8
    assert [c["name"] for c in train["categories"]] == ["circle", "rectangle", "triangle"] == list(SHAPES[:3])
    # Image ids are unique across the two splits.
    assert [i["id"] for i in train["images"]] == list(range(1, 25))
    assert [i["id"] for i in val["images"]] == list(range(25, 33))
    per_image = Counter(a["image_id"] for a in train["annotations"])
    # 1..6 objects are drawn per image; a crowded image may place fewer, never zero (the first always fits).
    assert set(per_image) == {i["id"] for i in train["images"]}
    assert all(1 <= n <= 6 for n in per_image.values())
    assert 2.0 <= len(train["annotations"]) / 24 <= 5.0  # about 3.5 on average
    assert set(Counter(a["category_id"] for a in train["annotations"])) == {1, 2, 3}
    assert all(a["iscrowd"] == 0 for a in train["annotations"])


def test_deterministic_bytes(tmp_path, synthetic):
    other = make_synthetic_coco(tmp_path / "again", **ARGS)
    for split in ("train", "val"):
        assert _ann(other, split).read_bytes() == _ann(synthetic, split).read_bytes()
    for name in ("train_000000.png", "train_000023.png", "val_000007.png"):
        assert (other / "images" / name).read_bytes() == (synthetic / "images" / name).read_bytes()
    reseeded = make_synthetic_coco(tmp_path / "seed6", **{**ARGS, "seed": 6})
    assert _ann(reseeded, "train").read_bytes() != _ann(synthetic, "train").read_bytes()


def test_cache_is_reused_without_writing(synthetic):
    watched = [_ann(synthetic, "train"), synthetic / "synthetic.json", synthetic / "images" / "val_000003.png"]
    before = [p.stat().st_mtime_ns for p in watched]
    assert make_synthetic_coco(synthetic, **ARGS) == synthetic
    assert [p.stat().st_mtime_ns for p in watched] == before


def test_regenerates_when_arguments_change_or_files_are_missing(tmp_path):
    root = make_synthetic_coco(tmp_path / "s", **ARGS)
    first = _ann(root, "train").read_bytes()
    make_synthetic_coco(root, **{**ARGS, "num_train": 10})
    assert len(json.loads(_ann(root, "train").read_text())["images"]) == 10
    assert not (root / "images" / "train_000023.png").exists()  # stale images of the old set are removed
    assert json.loads((root / "synthetic.json").read_text())["params"]["num_train"] == 10

    make_synthetic_coco(root, **ARGS)
    assert _ann(root, "train").read_bytes() == first
    (root / "images" / "val_000002.png").unlink()  # an incomplete set is redone
    make_synthetic_coco(root, **ARGS)
    assert (root / "images" / "val_000002.png").is_file()


def test_refuses_foreign_folder_and_bad_arguments(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("someone's data")
    with pytest.raises(ValueError, match=r"real is not empty and has no synthetic\.json"):
        make_synthetic_coco(tmp_path / "real", **ARGS)
    with pytest.raises(ValueError, match=r"num_classes must be in 1\.\.6 .* got 7"):
        make_synthetic_coco(tmp_path / "x", num_classes=7)
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\) with ints >= 32, got \(16, 16\)"):
        make_synthetic_coco(tmp_path / "x", image_size=(16, 16))
    with pytest.raises(ValueError, match=r"num_train must be an int >= 1, got 0"):
        make_synthetic_coco(tmp_path / "x", num_train=0)


def test_annotations_agree_with_pixels_and_pycocotools(synthetic):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(_ann(synthetic, "train")))
    assert len(coco.getImgIds()) == 24 and sorted(coco.getCatIds()) == [1, 2, 3]
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        assert mask.shape == (img["height"], img["width"])
        assert int(mask.sum()) == ann["area"]  # area is the decoded mask's pixel count, exactly
        x, y, w, h = ann["bbox"]
        poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
        # bbox tight on the polygon, polygon and box inside the image.
        assert (x, y) == (poly[:, 0].min(), poly[:, 1].min())
        assert abs(x + w - poly[:, 0].max()) < 0.011 and abs(y + h - poly[:, 1].max()) < 0.011
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        ys, xs = np.nonzero(mask)
        assert xs.min() >= np.floor(x) and xs.max() <= np.ceil(x + w)
        assert ys.min() >= np.floor(y) and ys.max() <= np.ceil(y + h)
    circles = [a for a in coco.dataset["annotations"] if a["category_id"] == 1]
    assert circles and all(len(a["segmentation"][0]) == 64 for a in circles)  # 32-gons


def test_objects_stay_mostly_visible(synthetic):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(_ann(synthetic, "train")))
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for i, mask in enumerate(masks):
            later = np.zeros_like(mask)
            for other in masks[i + 1 :]:
                later |= other
            # Later objects are painted on top; they may cover at most 15% of an earlier one.
            assert np.count_nonzero(mask & later) <= 0.15 * mask.sum()


def test_loads_with_coco_detection(synthetic):
    ds = CocoDetection(synthetic / "images", _ann(synthetic, "val"), with_masks=True)
    assert len(ds) == 8 and ds.num_classes == 4 and ds.has_masks
    assert ds.num_clipped == 0 and ds.num_degenerate == 0
    image, target = ds[0]
    assert image.shape == (3, 96, 128)
    masks = target["masks"].numpy()
    assert masks.shape == (len(target["boxes"]), 96, 128)
    assert target["area"].tolist() == masks.reshape(len(masks), -1).sum(axis=1).tolist()
    # Objects are drawn in a colour far from the background: the mean inside each mask differs from the
    # mean of the pixels just around its box.
    for mask, box in zip(masks.astype(bool), target["boxes"].numpy()):
        inside = image[:, mask].mean(dim=1)
        x1, y1, x2, y2 = (int(v) for v in box)
        ring = np.zeros_like(mask)
        ring[max(y1 - 3, 0) : y2 + 4, max(x1 - 3, 0) : x2 + 4] = True
        ring[y1 : y2 + 1, x1 : x2 + 1] = False
        if ring.sum() > 20:
            outside = image[:, ring].mean(dim=1)
            assert float((inside - outside).abs().sum()) > 0.15
    rle = mask_utils.encode(np.asfortranarray(masks[0]))
    assert mask_utils.area(rle) == int(target["area"][0])
