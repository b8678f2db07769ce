"""Batching for detection: aspect-ratio grouping and the list collate function.

Batching images of one orientation together keeps the padding that ``GeneralizedRCNNTransform`` adds (it pads
every image of a batch to the largest height and width) small: a portrait and a landscape photo in one batch
cost nearly twice the memory and compute of two landscape ones.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
from torch.utils.data import BatchSampler, Sampler

__all__ = ["GroupedBatchSampler", "aspect_ratio_groups", "collate_fn"]


def aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 0) -> List[int]:
    """Quantize width/height ratios into group ids, as torchvision's detection references do.

    Args:
        aspect_ratios: width / height of every image (``CocoDetection.aspect_ratios()``).
        k: ``0`` gives two groups (portrait ``w/h < 1`` -> 0, landscape or square -> 1); ``k > 0`` uses the
            ``2k`` bin edges ``2 ** linspace(-1, 1, 2k + 1)``, i.e. ``2k + 2`` groups from "taller than 1:2"
            to "wider than 2:1".

    Returns:
        One int group id per image.

    Raises:
        ValueError: ``k`` is negative or a ratio is not a positive finite number.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    ratios = np.asarray(aspect_ratios, dtype=np.float64).reshape(-1)
    bad = ~np.isfinite(ratios) | (ratios <= 0)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"aspect ratio {float(ratios[index])!r} at index {index} is not a positive finite number")
    bins = (2.0 ** np.linspace(-1, 1, 2 * k + 1)) if k > 0 else np.array([1.0])
    return np.digitize(ratios, bins).astype(int).tolist()


class GroupedBatchSampler(BatchSampler):
    """Batch the indices of ``sampler`` so that a batch holds images of one aspect-ratio group.

    Indices are taken in ``sampler`` order and buffered per group; a batch is yielded as soon as a group's
    buffer holds ``batch_size`` indices. At the end of the epoch the leftovers (fewer than ``batch_size`` per
    group) fill the remaining batches: one per group when the count allows, otherwise packed together, so a
    few of the last batches may mix groups.

    Every index the sampler yields appears exactly once (``drop_last=False``) and the number of batches is
    always ``ceil(len(sampler) / batch_size)`` (``floor`` with ``drop_last``), like a plain ``BatchSampler``.
    That count depends only on ``len(sampler)``, so under DDP, where a ``DistributedSampler`` gives every rank
    the same length but different images, every rank runs the same number of steps (a rank with one batch
    more would wait forever in the gradient all-reduce).

    The class subclasses ``torch.utils.data.BatchSampler`` and keeps its ``sampler``, ``batch_size`` and
    ``drop_last`` names, so Lightning can rebuild it around a ``DistributedSampler`` when the data loader is
    created in a ``*_dataloader`` hook; ``set_epoch`` is forwarded to the inner sampler.

    Args:
        sampler: yields dataset indices (``RandomSampler``, ``SequentialSampler``, ``DistributedSampler``...).
        group_ids: group id of every dataset index (:func:`aspect_ratio_groups`).
        batch_size: images per batch.
        drop_last: drop the final incomplete batch.

    Raises:
        TypeError: ``sampler`` is not a ``Sampler``.
        ValueError: ``batch_size`` is not a positive int or ``group_ids`` is empty.
    """

    def __init__(
        self,
        sampler: Sampler,
        group_ids: Sequence[int],
        batch_size: int,
        *,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler should be an instance of torch.utils.data.Sampler, got {sampler!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        group_ids = [int(g) for g in group_ids]
        if not group_ids:
            raise ValueError("group_ids is empty; expected one group id per dataset index")
        # BatchSampler.__init__ only stores these three; set them directly rather than call it, since its
        # validation differs across torch versions.
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)
        self.group_ids = group_ids

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the inner sampler (``DistributedSampler`` reshuffles with it).

        Args:
            epoch: the epoch number.
        """
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        buffers: Dict[int, List[int]] = defaultdict(list)
        num_yielded = 0
        for index in self.sampler:
            try:
                group = self.group_ids[index]
            except IndexError:
                raise IndexError(
                    f"sampler yielded index {index} but group_ids has only {len(self.group_ids)} entries"
                ) from None
            buffer = buffers[group]
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield buffer
                num_yielded += 1
                buffers[group] = []
        yield from self._tail(buffers, len(self) - num_yielded)

    def _tail(self, buffers: Dict[int, List[int]], slots: int) -> Iterator[List[int]]:
        # Largest leftovers first, so that with drop_last it is the smallest remainders that are dropped;
        # ties broken by group id for a deterministic order.
        leftovers = sorted((b for b in buffers.values() if b), key=lambda b: (-len(b), self.group_ids[b[0]]))
        if slots <= 0 or not leftovers:
            return
        if len(leftovers) <= slots and not self.drop_last:
            # ceil(R / batch_size) >= number of non-empty groups only when each group fits its own batch.
            yield from leftovers
            return
        flat = [index for buffer in leftovers for index in buffer]
        for start in range(0, slots * self.batch_size, self.batch_size):
            batch = flat[start : start + self.batch_size]
            if not batch or (self.drop_last and len(batch) < self.batch_size):
                return
            yield batch


def collate_fn(batch: Sequence[Tuple[Any, Any]]) -> Tuple[List[Any], List[Any]]:
    """Collate ``(image, target)`` pairs into lists, the input format of torchvision's detectors.

    Images of a batch may differ in size (the model pads them), so they cannot be stacked.

    Args:
        batch: the items of one batch.

    Returns:
        ``(images, targets)``, two lists in batch order.
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets
