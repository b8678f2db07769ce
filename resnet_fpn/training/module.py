"""The LightningModule: a torchvision detector, its losses, optimizer, schedule and COCO validation."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import lightning as L
import torch
from torch import nn

from ..checkpoint import read_categories
from ..coco_format import Category
from ..detectors import build_detector, iou_types_of, resolve_build_options
from ..evaluation import COCOEvaluator
from ..evaluation.coco import STAT_NAMES

__all__ = ["DetectionModule", "lr_lambda", "parameter_groups"]


def lr_lambda(step: int, *, warmup_steps: int, warmup_factor: float, schedule: str, milestones: Sequence[int],
              gamma: float, max_steps: int) -> float:
    """LR multiplier at `step`: linear warm-up from `warmup_factor` (Goyal et al., 2017), then the schedule."""
    if schedule == "multistep":
        factor = gamma ** sum(step >= m for m in milestones)
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step, max_steps) / max(1, max_steps)))
    else:
        factor = 1.0
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def parameter_groups(model: nn.Module, *, weight_decay: float, weight_decay_norm: float) -> List[Dict[str, Any]]:
    """Trainable parameters split so that norm layers get `weight_decay_norm` (detectron2's WEIGHT_DECAY_NORM)."""
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    norm_params, other = [], []
    seen = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (norm_params if isinstance(module, norm_types) else other).append(param)
    groups = [{"params": other, "weight_decay": weight_decay}]
    if norm_params:
        groups.append({"params": norm_params, "weight_decay": weight_decay_norm})
    return groups


class DetectionModule(L.LightningModule):
    """Trains a detector built by ``build_detector`` and validates it with COCO mAP.

    Hyper-parameters (saved in every checkpoint, so ``detector_from_checkpoint`` can rebuild the model):
    ``model`` (build_detector's keyword arguments, ``num_classes`` included), ``optim`` (OptimConfig as a
    dict), ``categories`` (label -> data set category id and name), ``max_steps``, ``eval_backend``.

    Args:
        model: build_detector options.
        optim: optimizer/schedule options (see ``OptimConfig``).
        categories: ``[{"label": 1, "id": 18, "name": "dog"}, ...]``.
        max_steps: total steps, for the cosine schedule.
        eval_backend: "pycocotools" or "faster_coco_eval".
        channels_last: convert the detector to torch.channels_last (NHWC convolutions).
    """

    def __init__(self, *, model: Mapping[str, Any], optim: Mapping[str, Any], categories: Sequence[Mapping[str, Any]],
                 max_steps: int, eval_backend: str = "pycocotools", channels_last: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Recorded resolved (the weights' normalisation and required backbone options made explicit), so the
        # checkpoint rebuilds this detector without fetching its weights again.
        self.hparams["model"] = resolve_build_options(model)
        self.model = build_detector(**self.hparams["model"])
        if channels_last:
            # Converts the 4-d weights; conv outputs then follow the weights' layout (oneDNN and cuDNN pick
            # NHWC when either operand is), and Module.to(device) keeps the format.
            self.model.to(memory_format=torch.channels_last)
        self.categories: List[Category] = read_categories(self.hparams, "DetectionModule")
        self.evaluator: Optional[COCOEvaluator] = None
        self.last_metrics: Optional[Dict[str, Any]] = None
        self.last_metrics_step = -1

    @property
    def iou_types(self) -> List[str]:
        return list(iou_types_of(self.hparams.model["model"]))

    def forward(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        batch_size = len(images)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def on_validation_epoch_start(self) -> None:
        dataset = self.trainer.datamodule.val_dataset
        self.evaluator = COCOEvaluator(
            dataset.annotations,
            iou_types=self.iou_types,
            backend=self.hparams.eval_backend,
            label_to_category_id={c.label: c.id for c in self.categories},
        )

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        outputs = self.model(images)
        self.evaluator.update(outputs, [int(t["image_id"]) for t in targets])

    def on_validation_epoch_end(self) -> None:
        metrics = self.evaluator.compute()  # gathered across processes, identical on every rank
        self.last_metrics, self.last_metrics_step = metrics, self.global_step
        for iou_type in self.iou_types:
            for stat in STAT_NAMES:
                value = float(metrics[iou_type][stat])
                self.log(f"val/{iou_type}_{stat}", value, prog_bar=(stat == "AP"), sync_dist=False,
                         rank_zero_only=False)
        self.evaluator = None

    def configure_optimizers(self):
        optim = self.hparams.optim
        groups = parameter_groups(self.model, weight_decay=optim["weight_decay"],
                                  weight_decay_norm=optim["weight_decay_norm"])
        if optim["name"] == "sgd":
            optimizer = torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"])
        else:
            optimizer = torch.optim.AdamW(groups, lr=optim["lr"])
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_lambda(
            step,
            warmup_steps=optim["warmup_steps"],
            warmup_factor=optim["warmup_factor"],
            schedule=optim["schedule"],
            milestones=optim["steps"],
            gamma=optim["gamma"],
            max_steps=self.hparams.max_steps,
        ))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
