"""The LightningDataModule: COCO-format train/val sets (or the synthetic set), samplers and loaders."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from ..coco_format import Category
from lightning.pytorch.utilities import rank_zero_only

from ..data import (CocoDetection, DataPaths, GroupedBatchSampler, aspect_ratio_groups, build_transforms,
                    collate_fn, make_synthetic_coco, resolve_data_paths)
from ..data.doctor import quick_check
from ..data.transforms import COPY_PASTE, CopyPaste, build_batch_transform, split_augment
from .config import DataConfig

__all__ = ["DetectionDataModule", "default_cache_dir"]


def default_cache_dir() -> Path:
    """Where generated data lives: $RESNET_FPN_CACHE, else ~/.cache/resnet_fpn."""
    return Path(os.environ.get("RESNET_FPN_CACHE", Path.home() / ".cache" / "resnet_fpn"))


@rank_zero_only
def _print_rank_zero(text: str) -> None:
    print(text, flush=True)


class _CopyPasteCollate:
    """``collate_fn`` after `CopyPaste` on the batch's items (a class, so loader workers can pickle it)."""

    def __init__(self, copy_paste: CopyPaste) -> None:
        self.copy_paste = copy_paste

    def __call__(self, batch):
        return collate_fn(self.copy_paste(batch))


class DetectionDataModule(L.LightningDataModule):
    """Train and val loaders for COCO-format data.

    The data set is the one `config` names (a root or four explicit paths) or, with neither, the embedded
    synthetic set generated once into the cache (so the main job needs no download).

    Args:
        config: the data section of the training config.
        with_masks: decode instance masks (Mask R-CNN). The data set must then have masks: otherwise
            `setup` raises a ValueError naming the annotation file, before any training.
        seed: augmentation seed.
        val_targets_with_masks: decode the val split's masks too (the validation loss of Mask R-CNN needs them).

    A ``CopyPaste`` entry of ``data.augment`` (the last one) runs on whole training batches, in the loader's
    collate function; it needs masks, so the training set is read with masks even for a box-only detector (and
    they are dropped after the paste), and it is refused, naming the annotation file, on boxes-only data.
    """

    def __init__(self, config: DataConfig, *, with_masks: bool = False, seed: int = 0,
                 val_targets_with_masks: bool = False) -> None:
        super().__init__()
        self.config = config
        self.with_masks = with_masks
        self.seed = seed
        self.val_targets_with_masks = val_targets_with_masks
        per_image, copy_paste = split_augment(config.augment)
        if copy_paste is not None and config.batch_size < 2:
            raise ValueError(f"data.augment {COPY_PASTE} pastes the objects of another image of the batch: "
                             f"data.batch_size must be >= 2, got {config.batch_size}")
        self.per_image_augment = per_image
        self.copy_paste: Optional[CopyPaste] = build_batch_transform(copy_paste, keep_masks=with_masks, seed=seed)
        self.train_dataset: Optional[CocoDetection] = None
        self.val_dataset: Optional[CocoDetection] = None

    @property
    def uses_synthetic(self) -> bool:
        c = self.config
        return c.root is None and not any((c.train_ann, c.train_images, c.val_ann, c.val_images))

    def synthetic_root(self) -> Path:
        s = self.config.synthetic
        cache = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()
        name = f"synthetic_{s.num_train}_{s.num_val}_{s.image_size[0]}x{s.image_size[1]}_c{s.num_classes}_s{s.seed}"
        return cache / name

    def paths(self) -> DataPaths:
        c = self.config
        root = self.synthetic_root() if self.uses_synthetic else c.root
        return resolve_data_paths(root, train_ann=c.train_ann, train_images=c.train_images, val_ann=c.val_ann,
                                  val_images=c.val_images)

    def prepare_data(self) -> None:
        if self.uses_synthetic:
            s = self.config.synthetic
            # Idempotent and written atomically: ranks that race here write identical files.
            make_synthetic_coco(self.synthetic_root(), num_train=s.num_train, num_val=s.num_val,
                                image_size=tuple(s.image_size), num_classes=s.num_classes, seed=s.seed)

    def check_data(self, paths: DataPaths) -> None:
        """The data doctor's quick pass over both splits (JSON rules + a header check of every image), before
        anything is built: its one-paragraph summary is printed, and with ``data.bad_images: error`` images
        that cannot be used stop the run here, named, instead of minutes into training.

        Raises:
            ValueError: image files missing, unreadable or of another size than the JSON says (the ids and
                files named), unless ``data.bad_images`` is "skip".
        """
        for ann, images in ((paths.train_ann, paths.train_images), (paths.val_ann, paths.val_images)):
            report = quick_check(ann, images)
            _print_rank_zero(f"data check: {report.summary()}")
            bad = [f for f in report.findings if f.code in ("missing_image", "bad_image", "size_mismatch")]
            if bad and self.config.bad_images == "error":
                shown = "; ".join(f.message for f in bad[:3])
                raise ValueError(
                    f"{ann}: {len(report.bad_image_ids)} image(s) cannot be used (ids {report.bad_image_ids[:10]}): "
                    f"{shown}{' ...' if len(bad) > 3 else ''}. Fix or remove them (resnet-fpn check-data --ann "
                    f"{ann} --images {images} --out REPORT_DIR lists every problem), or set data.bad_images: skip "
                    f"to leave them out"
                )

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_dataset is not None:
            return
        paths = self.paths()
        self.check_data(paths)
        bad_images = self.config.bad_images
        train_masks = self.with_masks or self.copy_paste is not None
        try:
            self.train_dataset = CocoDetection(paths.train_images, paths.train_ann, with_masks=train_masks,
                                               transforms=build_transforms(self.per_image_augment, seed=self.seed),
                                               bad_images=bad_images)
        except ValueError as exc:
            if self.copy_paste is None or self.with_masks:
                raise
            raise ValueError(f"data.augment {COPY_PASTE} needs instance masks (it pastes objects by their masks, "
                             f"Ghiasi et al. 2021), and this data set has none: {exc}. Remove {COPY_PASTE} from "
                             f"data.augment for boxes-only data") from None
        self.val_dataset = CocoDetection(paths.val_images, paths.val_ann, with_masks=self.val_targets_with_masks,
                                         bad_images=bad_images)
        if self.train_dataset.category_ids != self.val_dataset.category_ids:
            raise ValueError(
                f"{paths.train_ann} and {paths.val_ann} list different categories "
                f"({len(self.train_dataset.category_ids)} vs {len(self.val_dataset.category_ids)} ids); "
                f"train and val must share one category list"
            )

    def categories(self) -> List[Category]:
        """Training labels 1..K with the data set's category ids and names."""
        ds = self.train_dataset
        return [Category(label, cid, name)
                for label, (cid, name) in enumerate(zip(ds.category_ids, ds.category_names), start=1)]

    def _distributed(self) -> bool:
        return self.trainer is not None and self.trainer.world_size > 1

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset
        if self._distributed():
            sampler = DistributedSampler(ds, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                         shuffle=True, seed=self.seed)
        else:
            sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(self.seed))
        c = self.config
        collate = collate_fn if self.copy_paste is None else _CopyPasteCollate(self.copy_paste)
        if c.aspect_ratio_grouping:
            batch_sampler = GroupedBatchSampler(sampler, aspect_ratio_groups(ds.aspect_ratios()), c.batch_size)
            return DataLoader(ds, batch_sampler=batch_sampler, num_workers=c.num_workers, collate_fn=collate,
                              persistent_workers=c.num_workers > 0)
        return DataLoader(ds, sampler=sampler, batch_size=c.batch_size, num_workers=c.num_workers,
                          collate_fn=collate, drop_last=False, persistent_workers=c.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        ds = self.val_dataset
        # DistributedSampler pads the last batch with repeated images; the evaluator counts each image once.
        sampler = (DistributedSampler(ds, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                      shuffle=False) if self._distributed() else SequentialSampler(ds))
        c = self.config
        return DataLoader(ds, sampler=sampler, batch_size=c.val_batch_size, num_workers=c.num_workers,
                          collate_fn=collate_fn)
