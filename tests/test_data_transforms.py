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


# ------------------------------------------------------------------------- large-scale jitter, copy-paste
from resnet_fpn.data.transforms import (CopyPaste, boxes_from_masks, build_batch_transform, paste_instances,
                                        split_augment)

COLORS = {1: (250, 0, 0), 2: (0, 250, 0), 3: (0, 0, 250)}


def _painted_sample():
    """Three instances (labels 1-3), an L-shaped one among them, each painted in its own color on black, with its
    mask: after a transform, the color under a mask tells which instance the mask is."""
    image = np.zeros((120, 160, 3), np.uint8)
    masks = np.zeros((3, 120, 160), np.uint8)
    masks[0, 10:60, 10:20] = 1
    masks[0, 50:60, 10:70] = 1  # an L: a crop through it leaves a box smaller than the clipped one
    masks[1, 70:115, 100:155] = 1
    masks[2, 5:40, 110:150] = 1
    for i, label in enumerate((1, 2, 3)):
        image[masks[i] > 0] = COLORS[label]
    boxes, _ = boxes_from_masks(masks)
    target = {"boxes": boxes, "labels": np.array([1, 2, 3]), "area": masks.reshape(3, -1).sum(1).astype(np.float32),
              "iscrowd": np.zeros(3, np.int64), "masks": masks}
    return image, target


def test_large_scale_jitter_keeps_every_box_the_tight_box_of_its_mask_and_drops_what_left_the_crop():
    transform = build_transforms([{"name": "LargeScaleJitter", "size": 96, "scale": [0.3, 3.0]}], seed=0)
    image, target = _painted_sample()
    dropped = 0
    for _ in range(40):
        out_image, out = transform(image, target)
        assert out_image.shape == (96, 96, 3) and out["masks"].shape[1:] == (96, 96)
        n = len(out["labels"])
        assert len(out["boxes"]) == len(out["masks"]) == len(out["area"]) == len(out["iscrowd"]) == n
        dropped += 3 - n
        tight, nonempty = boxes_from_masks(out["masks"])
        assert nonempty.all(), "an instance with nothing left in the crop survived"
        np.testing.assert_array_equal(out["boxes"], tight)
        for mask, label in zip(out["masks"], out["labels"]):
            # The mask still covers its own object: its pixels have that object's color.
            pixels = out_image[mask > 0].astype(int)
            assert np.abs(pixels.mean(0) - COLORS[int(label)]).max() < 60, (label, pixels.mean(0))
    assert dropped > 0  # at scale up to 3x, crops leave instances out: the dropping was exercised


def test_large_scale_jitter_pads_with_the_mean_pixel_and_no_instance():
    transform = build_transforms([{"name": "LargeScaleJitter", "size": 200, "scale": [0.5, 0.5]}], seed=0)
    image, target = _painted_sample()
    out_image, out = transform(image, target)
    # 160x120 -> longest side 200 -> x0.5: 100x75 at the top left, the rest is padding.
    assert (out_image[75:, :] == (124, 116, 104)).all() and (out_image[:, 100:] == (124, 116, 104)).all()
    assert out["masks"][:, 75:, :].sum() == 0 and out["masks"][:, :, 100:].sum() == 0
    assert len(out["labels"]) == 3 and (out["boxes"][:, 2] <= 100).all() and (out["boxes"][:, 3] <= 75).all()


@pytest.mark.parametrize("entry, match", [
    ({"name": "LargeScaleJitter", "size": 0}, r"augmentation\[0\]: LargeScaleJitter size must be a positive integer, got 0"),
    ({"name": "LargeScaleJitter", "scale": [2.0, 0.1]}, r"scale must be \[low, high\] with 0 < low <= high, got \[2\.0, 0\.1\]"),
    ({"name": "LargeScaleJitter", "sizes": 3}, r"'LargeScaleJitter' got unknown argument\(s\) \['sizes'\]; it accepts \['size', 'scale', 'fill'\]"),
    ({"name": "CopyPaste"}, r"augmentation\[0\]: CopyPaste mixes the images of a batch"),
])
def test_large_scale_jitter_and_copy_paste_spec_errors(entry, match):
    with pytest.raises(ValueError, match=match):
        build_transforms([entry])


def test_copy_paste_must_come_last_and_only_once():
    per_image, batch = split_augment([{"name": "HorizontalFlip"}, {"name": "CopyPaste", "p": 0.3}])
    assert per_image == [{"name": "HorizontalFlip"}] and batch == {"name": "CopyPaste", "p": 0.3}
    with pytest.raises(ValueError, match=r"augmentation\[0\]: CopyPaste must be the last entry, and only one"):
        split_augment([{"name": "CopyPaste"}, {"name": "HorizontalFlip"}])
    with pytest.raises(ValueError, match=r"CopyPaste p must be a probability in \[0, 1\], got 2"):
        build_batch_transform({"name": "CopyPaste", "p": 2})
    with pytest.raises(ValueError, match=r"'CopyPaste' got unknown argument\(s\) \['prob'\]; it accepts \['p'\]"):
        build_batch_transform({"name": "CopyPaste", "prob": 0.5})


def _as_tensors(image, target):
    out = {k: torch.as_tensor(v) for k, v in target.items()}
    return torch.as_tensor(image).permute(2, 0, 1).float() / 255, out


def test_copy_paste_removes_pasted_pixels_from_the_masks_it_covers_and_drops_covered_instances():
    dst_image, dst = _as_tensors(*_painted_sample())
    src_masks = torch.zeros((2, 120, 160), dtype=torch.uint8)
    src_masks[0, 0:65, 0:40] = 1    # covers the L's vertical bar and corner, not its foot's end
    src_masks[1, 0:45, 105:160] = 1  # covers instance 3 whole
    src_image = torch.full((3, 120, 160), 0.5)
    src = {"boxes": torch.as_tensor(boxes_from_masks(src_masks.numpy())[0]), "labels": torch.tensor([2, 2]),
           "area": src_masks.flatten(1).sum(1).float(), "iscrowd": torch.zeros(2, dtype=torch.int64), "masks": src_masks}
    image, out = paste_instances(dst_image, dst, src_image, src, rng=np.random.default_rng(0),
                                 select=np.array([True, True]))
    alpha = src_masks.bool().any(0)
    # Instance 3 was fully covered: dropped. The L and instance 2 remain, then the two pasted ones.
    assert out["labels"].tolist() == [1, 2, 2, 2]
    assert not (out["masks"][:2].bool() & alpha).any(), "a pasted object's pixels are still in an existing mask"
    np.testing.assert_array_equal(out["masks"][:2].numpy(), (dst["masks"][:2].bool() & ~alpha).numpy())
    tight, nonempty = boxes_from_masks(out["masks"].numpy())
    assert nonempty.all()
    np.testing.assert_array_equal(out["boxes"].numpy(), tight)
    assert out["boxes"][0].tolist() == [40.0, 50.0, 70.0, 60.0]  # the L's foot, what remains of it
    assert torch.equal(image[:, alpha], src_image[:, alpha]) and torch.equal(image[:, ~alpha], dst_image[:, ~alpha])
    assert out["area"].tolist() == out["masks"].flatten(1).sum(1).float().tolist()
    assert torch.equal(dst["masks"], torch.as_tensor(_painted_sample()[1]["masks"]))  # the input is not modified


def test_copy_paste_on_a_batch_and_its_refusal_without_masks():
    batch = [_as_tensors(*_painted_sample()) for _ in range(3)]
    out = CopyPaste(p=1.0, seed=0)(batch)
    assert len(out) == 3 and all(len(t["labels"]) >= 1 for _, t in out)
    assert any(len(t["labels"]) != 3 or not torch.equal(t["masks"], s["masks"]) for (_, t), (_, s) in zip(out, batch))
    for _, t in out:
        np.testing.assert_array_equal(t["boxes"].numpy(), boxes_from_masks(t["masks"].numpy())[0])
    without = CopyPaste(p=1.0, keep_masks=False, seed=0)(batch)
    assert all("masks" not in t for _, t in without)
    boxes_only = [(image, {k: v for k, v in t.items() if k != "masks"}) for image, t in batch]
    with pytest.raises(ValueError, match=r"CopyPaste needs instance masks .* the targets have none"):
        CopyPaste(p=1.0)(boxes_only)


def test_copy_paste_on_boxes_only_data_is_refused_before_training(tmp_path, shared_data):
    from resnet_fpn.training import DataConfig
    from resnet_fpn.training.datamodule import DetectionDataModule

    from test_training import boxes_only_copy

    root = boxes_only_copy(shared_data, tmp_path)
    config = DataConfig(root=str(root), augment=[{"name": "CopyPaste", "p": 0.5}])
    module = DetectionDataModule(config, with_masks=False)
    with pytest.raises(ValueError, match=r"data\.augment CopyPaste needs instance masks .* and this data set has none: "
                                         r".*instances_train\.json"):
        module.setup("fit")
    with pytest.raises(ValueError, match=r"data\.batch_size must be >= 2, got 1"):
        DetectionDataModule(DataConfig(root=str(root), batch_size=1, augment=[{"name": "CopyPaste"}]))
