"""COCO scale: the generator, the compact training index (same targets and errors as CocoAnnotations'), loader
workers that share it, and the evaluator's bulk conversion. The ~5k-image run is ``@pytest.mark.slow``."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from resnet_fpn.coco_format import CocoAnnotations
from resnet_fpn.data import CocoDetection
from resnet_fpn.data.generate import COCO_CATEGORY_IDS, make_coco_scale_file
from resnet_fpn.data.index import SEG_JSON, SEG_POLYGONS, build_training_index, index_from_dict


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    info = make_coco_scale_file(root / "ann.json", num_images=60, annotations_per_image=5, crowd_share=0.1,
                                images_dir=root / "images", seed=3)
    return root, info


def test_generator_writes_a_valid_coco_file_with_coco_ids(small_file):
    root, info = small_file
    gt = CocoAnnotations.from_file(root / "ann.json")
    gt.check_segmentations()
    assert len(gt.images) == 60 and len(gt.annotations) == info["annotations"] == 300
    assert gt.category_ids == sorted(COCO_CATEGORY_IDS) and len(gt.category_ids) == 80
    assert 0 < info["crowd"] == sum(a["iscrowd"] for a in gt.annotations) < 300
    crowd = next(a for a in gt.annotations if a["iscrowd"])
    assert isinstance(crowd["segmentation"]["counts"], list)  # COCO stores crowds as uncompressed RLE
    # the same arguments give the same file
    again = make_coco_scale_file(root / "again.json", num_images=60, annotations_per_image=5, crowd_share=0.1,
                                 images_dir=root / "images", seed=3)
    assert (root / "again.json").read_bytes() == (root / "ann.json").read_bytes() and again["bytes"] == info["bytes"]


@pytest.mark.parametrize("kwargs, match", [
    ({"num_images": 0}, r"num_images must be a positive int, got 0"),
    ({"num_images": 5, "crowd_share": 1.5}, r"crowd_share must be a number in \[0, 1\], got 1\.5"),
    ({"num_images": 5, "polygon_points": 2}, r"polygon_points must be an int >= 3"),
])
def test_generator_refuses_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_coco_scale_file(tmp_path / "x.json", **kwargs)


def test_index_targets_match_the_annotations(small_file):
    root, _ = small_file
    ds = CocoDetection(root / "images", root / "ann.json", with_masks=True)
    gt = CocoAnnotations.from_file(root / "ann.json")
    assert ds.ids == gt.image_ids and ds.num_crowd == sum(a["iscrowd"] for a in gt.annotations)
    for index, image_id in enumerate(ds.ids):
        record = ds._records[index]
        expected = [a for a in gt.annotations_by_image[image_id] if not a["iscrowd"]]
        assert record.labels.tolist() == [ds.category_id_to_label[a["category_id"]] for a in expected]
        assert list(record.segmentations) == [a["segmentation"] for a in expected]  # the file's values exactly
        np.testing.assert_array_equal(record.area, np.array([a["area"] for a in expected], dtype=np.float32))
    image, target = ds[3]
    assert target["masks"].shape == (len(target["labels"]), *image.shape[1:])
    assert ds.aspect_ratios().tolist() == [gt.images[i]["width"] / gt.images[i]["height"] for i in ds.ids]


def test_index_keeps_rle_segmentations_as_json(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}],
            "categories": [{"id": 7, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2], "area": 4,
                             "iscrowd": 0, "segmentation": {"size": [3, 4], "counts": [0, 2, 1, 2, 7]}},
                            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2],
                             "segmentation": [[1, 1, 3, 1, 3, 3]]}]}
    index = index_from_dict(data, source="mem", keep_segmentations=True)
    assert index.seg_kind.tolist() == [SEG_JSON, SEG_POLYGONS]
    assert index.segmentation(0) == data["annotations"][0]["segmentation"]
    assert index.segmentation(1) == [[1.0, 1.0, 3.0, 1.0, 3.0, 3.0]]
    assert index.area.tolist() == [4.0, 4.0]  # a missing area is the box area, as CocoAnnotations fills it


def _mutants():
    def base():
        return {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8},
                           {"id": 2, "file_name": "b.jpg", "width": 8, "height": 8}],
                "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}],
                "annotations": [{"id": k, "image_id": 1 + k % 2, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9,
                                 "iscrowd": 0, "segmentation": [[1, 1, 4, 1, 4, 4]]} for k in range(1, 5)]}

    def edit(fn):
        data = base()
        fn(data)
        return data

    return [
        edit(lambda d: d["images"][1].update(id=1)),
        edit(lambda d: d["images"][1].update(width=True)),
        edit(lambda d: d["images"][0].update(height=7.5)),
        edit(lambda d: d["annotations"][2].update(bbox=[1, 1, 3])),
        edit(lambda d: d["annotations"][2].update(bbox=[1, 1, 3, float("nan")])),
        edit(lambda d: d["annotations"][3].update(image_id=9)),
        edit(lambda d: d["annotations"][1].update(category_id=2)),
        edit(lambda d: d["annotations"][1].update(iscrowd=2)),
        edit(lambda d: d["annotations"][1].update(area="9")),
        edit(lambda d: d["annotations"][2].pop("id")),
        edit(lambda d: d["annotations"][2].update(segmentation=[[1, 1, 4, 1, 4, True]])),
        edit(lambda d: d["annotations"][2].update(segmentation=[[1, 1, 4, 1, 4]])),
        edit(lambda d: d["annotations"][3].update(segmentation={"size": [8, 8], "counts": [60, 3]})),
        edit(lambda d: d["annotations"][3].update(segmentation={"size": [8, 9], "counts": "abc"})),
    ]


@pytest.mark.parametrize("data", _mutants())
def test_index_raises_what_coco_annotations_raises(data):
    with pytest.raises(ValueError) as expected:
        CocoAnnotations(data, source="f.json").check_segmentations()
    with pytest.raises(ValueError, match="^" + __import__("re").escape(str(expected.value)) + "$"):
        index_from_dict(data, source="f.json", keep_segmentations=True)


def test_index_is_numpy_arrays_and_much_smaller_than_the_json(small_file):
    root, info = small_file
    index = build_training_index(root / "ann.json", keep_segmentations=True)
    arrays = [v for v in vars(index).values() if isinstance(v, np.ndarray)]
    assert len(arrays) > 10 and all(a.dtype != object for a in arrays)
    assert index.nbytes < info["bytes"] / 2
