"""Augmentation from a config spec: boxes and masks stay in sync, bad specs fail with clear messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from resnet_fpn.data import CocoDetection, build_transforms, make_synthetic_coco
from resnet_fpn.data.transforms import DetectionTransform

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

H, W = 100, 200


def _sample():
    """Two boxes with exactly matching rectangular masks, in a 100x200 image with a gradient."""
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = np.arange(W, dtype=np.uint8)[None, :]
    masks = np.zeros((2, H, W), np.uint8)
    masks[0, 10:20, 10:30] = 1
    masks[1, 50:90, 150:199] = 1
    target = {
        "boxes": np.array([[10, 10, 30, 20], [150, 50, 199, 90]], np.float32),
        "labels": np.array([3, 4], np.int64),
        "area": np.array([200.0, 1960.0], np.float32),
        "iscrowd": np.zeros(2, np.int64),
        "masks": masks,
        "image_id": 17,
    }
    return image, target


def test_horizontal_flip_moves_boxes_and_masks_exactly():
    transform = build_transforms([{"name": "HorizontalFlip", "p": 1.0}])
    image, target = _sample()
    new_image, out = transform(image, target)
    assert np.array_equal(new_image, image[:, ::-1])
    expected = target["boxes"].copy()
    expected[:, 0], expected[:, 2] = W - target["boxes"][:, 2], W - target["boxes"][:, 0]
    np.testing.assert_allclose(out["boxes"], expected, atol=1e-3)  # x1' = W - x2, x2' = W - x1
    assert np.array_equal(out["masks"], target["masks"][:, :, ::-1])
    assert out["labels"].tolist() == [3, 4] and out["image_id"] == 17
    assert out["area"].tolist() == [200.0, 1960.0]
    # Each flipped mask still fills its flipped box.
    for mask, box in zip(out["masks"], out["boxes"]):
        ys, xs = np.nonzero(mask)
        assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == tuple(round(float(v)) for v in box[[0, 2, 1, 3]])


def test_dropped_box_drops_its_mask_label_and_area():
    # Cropping to the left half removes the second object entirely.
    transform = build_transforms([{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 100, "y_max": 100}])
    image, target = _sample()
    new_image, out = transform(image, target)
    assert new_image.shape == (100, 100, 3)
    assert out["labels"].tolist() == [3] and out["iscrowd"].tolist() == [0]
    np.testing.assert_allclose(out["boxes"], [[10, 10, 30, 20]], atol=1e-3)
    assert out["masks"].shape == (1, 100, 100)
    assert np.array_equal(out["masks"][0], target["masks"][0][:, :100])
    assert out["area"].tolist() == [200.0]


def test_min_visibility_drops_a_mostly_cut_box():
    # Keep x < 155: the second box (x 150..199) keeps 5 of its 49 columns (10%), under min_visibility 0.3.
    spec = [{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 155, "y_max": 100}]
    image, target = _sample()
    _, out = build_transforms(spec, min_visibility=0.3)(image, target)
    assert out["labels"].tolist() == [3]
    _, out = build_transforms(spec, min_visibility=0.0)(image, target)
    assert out["labels"].tolist() == [3, 4]
    np.testing.assert_allclose(out["boxes"][1], [150, 50, 155, 90], atol=1e-3)
    assert out["area"].tolist() == [200.0, 5 * 40.0]  # recomputed from the cropped mask


def test_empty_target_and_resizing_transform():
    transform = build_transforms([{"name": "RandomScale", "scale_limit": (0.5, 0.5), "p": 1.0}])
    image, _ = _sample()
    empty = {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "area": np.zeros(0, np.float32),
        "iscrowd": np.zeros(0, np.int64),
        "masks": np.zeros((0, H, W), np.uint8),
        "image_id": 1,
    }
    new_image, out = transform(image, empty)
    assert new_image.shape == (150, 300, 3)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 150, 300) and out["labels"].shape == (0,)
    _, target = _sample()
    _, out = transform(image, target)
    np.testing.assert_allclose(out["boxes"], target["boxes"] * 1.5, atol=1e-2)
    assert out["masks"].shape == (2, 150, 300)


def test_image_only_and_nested_specs():
    transform = build_transforms(
        [
            {"name": "OneOf", "p": 1.0, "transforms": [{"name": "Blur", "p": 1.0}, {"name": "GaussNoise", "p": 1.0}]},
            {"name": "RandomBrightnessContrast", "p": 1.0},
        ],
        seed=0,
    )
    image, target = _sample()
    new_image, out = transform(image, target)
    assert new_image.dtype == np.uint8 and not np.array_equal(new_image, image)
    np.testing.assert_allclose(out["boxes"], target["boxes"], atol=1e-3)
    assert np.array_equal(out["masks"], target["masks"])
    assert build_transforms(None) is None and build_transforms([]) is None


@pytest.mark.parametrize(
    ("spec", "error", "pattern"),
    [
        ([{"name": "HorizontalFlp"}], ValueError,
         r"augmentation\[0\]: unknown transform name 'HorizontalFlp'.*such as \['HorizontalFlip'.*Did you mean \['HorizontalFlip'\]"),
        ([{"name": "HorizontalFlip"}, {"name": "RandomScale", "scale_lim": 0.2}], ValueError,
         r"augmentation\[1\]: transform 'RandomScale' got unknown argument\(s\) \['scale_lim'\]; it accepts \['scale_limit'"),
        ([{"name": "RandomScale", "scale_limit": "big"}], ValueError,
         r"augmentation\[0\]: transform 'RandomScale' rejected its arguments \{'scale_limit': 'big'\}"),
        ([{"name": "Normalize"}], ValueError, r"'Normalize' is not allowed here: the detector normalises"),
        ([{"name": "ToTensorV2"}], ValueError, r"'ToTensorV2' is not allowed here"),
        ([{"name": "OneOf", "transforms": [{"name": "Blur"}, {"name": "Nope"}]}], ValueError,
         r"augmentation\[0\]\.transforms\[1\] \(OneOf\): unknown transform name 'Nope'"),
        ([{"name": "OneOf"}], ValueError, r"'OneOf' needs a non-empty 'transforms' list"),
        ([{"p": 0.5}], ValueError, r"augmentation\[0\]: missing 'name'"),
        (["HorizontalFlip"], ValueError, r"augmentation\[0\]: expected a mapping"),
        ({"name": "HorizontalFlip"}, TypeError, r"augmentation spec must be a list of transform dicts, got dict"),
    ],
)
def test_bad_specs(spec, error, pattern):
    with pytest.raises(error, match=pattern):
        build_transforms(spec)


class _Repeat(Dataset):
    """The same sample n times, through a transform: any difference between items is augmentation."""

    def __init__(self, transform: DetectionTransform, n: int) -> None:
        self.transform, self.n = transform, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        image, target = _sample()
        return self.transform(image, target)[1]["boxes"]


def _boxes_from_workers(seed: int):
    transform = build_transforms([{"name": "Affine", "translate_px": (-20, 20), "p": 1.0}])
    torch.manual_seed(seed)
    loader = DataLoader(_Repeat(transform, 4), batch_size=1, num_workers=2, collate_fn=lambda b: b[0])
    return [boxes for boxes in loader]


def test_workers_draw_different_augmentations_reproducibly():
    first = _boxes_from_workers(0)
    # Items 0 and 1 come from workers 0 and 1; without per-worker re-seeding their forked generators would
    # be identical copies and so would the translations.
    assert not np.allclose(first[0], first[1])
    assert all(np.allclose(a, b) for a, b in zip(first, _boxes_from_workers(0)))


def test_applied_by_coco_detection(tmp_path):
    root = make_synthetic_coco(tmp_path, num_train=4, num_val=2, image_size=(64, 96), seed=1)
    ann, images = root / "annotations" / "instances_train.json", root / "images"
    plain = CocoDetection(images, ann, with_masks=True)
    flipped = CocoDetection(images, ann, with_masks=True, transforms=build_transforms([{"name": "HorizontalFlip", "p": 1.0}]))
    for index in range(len(plain)):
        image, target = plain[index]
        f_image, f_target = flipped[index]
        assert torch.equal(f_image, image.flip(-1))
        assert torch.equal(f_target["masks"], target["masks"].flip(-1))
        expected = target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([96.0, 0, 96.0, 0])
        torch.testing.assert_close(f_target["boxes"], expected, atol=1e-3, rtol=0)
        assert torch.equal(f_target["labels"], target["labels"])
        assert f_target["boxes"].dtype == torch.float32 and f_target["masks"].dtype == torch.uint8


def test_main_process_follows_torch_seed_or_explicit_seed():
    spec = [{"name": "Affine", "translate_px": (-20, 20), "p": 1.0}]

    def draws(transform):
        image, target = _sample()
        return [transform(image, target)[1]["boxes"] for _ in range(3)]

    torch.manual_seed(3)
    a = draws(build_transforms(spec))
    torch.manual_seed(3)
    b = draws(build_transforms(spec))
    torch.manual_seed(4)
    c = draws(build_transforms(spec))
    assert all(np.allclose(x, y) for x, y in zip(a, b))
    assert not np.allclose(a[0], a[1])  # successive calls draw new parameters
    assert not all(np.allclose(x, y) for x, y in zip(a, c))
    assert all(np.allclose(x, y) for x, y in zip(draws(build_transforms(spec, seed=9)), draws(build_transforms(spec, seed=9))))
