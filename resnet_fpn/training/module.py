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
from .val_loss import detections_and_losses

__all__ = ["DetectionModule", "NonFiniteLossError", "lr_lambda", "parameter_groups"]


class NonFiniteLossError(FloatingPointError):
    """The training loss went NaN or inf (``DetectionModule.training_step`` stops there, as detectron2 does).

    Attributes:
        step: the global step whose loss was not finite (what a caller records, e.g. the ablation's
            ``diverged_at``, without reading it out of the message).
    """

    def __init__(self, message: str, *, step: int) -> None:
        super().__init__(message)
        self.step = step


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
        val_loss: compute the validation loss (``val/loss`` and each ``val/loss_*`` term) with the detections,
            from the same forward pass (`detections_and_losses`); the validation targets must then carry what the
            losses need (masks for Mask R-CNN).
        seed: seeds the samplers of the validation loss (``seed + batch index``), so it is repeatable.

    Validation runs in float32 whatever the training precision (autocast off): the metrics of a run are those that
    ``resnet-fpn evaluate`` gives its checkpoint. ``tta``, when set (a ``resnet_fpn.tta.TTADetector`` around
    ``self.model``), replaces the detector in validation (the final test-time-augmented evaluation; no loss).
    """

    def __init__(self, *, model: Mapping[str, Any], optim: Mapping[str, Any], categories: Sequence[Mapping[str, Any]],
                 max_steps: int, eval_backend: str = "pycocotools", channels_last: bool = False,
                 val_loss: bool = False, seed: int = 0) -> None:
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
        # The mean validation loss terms of the last validation ({"loss": ..., "loss_classifier": ...}).
        self.last_val_losses: Optional[Dict[str, float]] = None
        self.tta: Optional[nn.Module] = None
        self._loss_sums: Dict[str, torch.Tensor] = {}
        self._loss_images = 0

    @property
    def iou_types(self) -> List[str]:
        return list(iou_types_of(self.hparams.model["model"]))

    def forward(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        # Stop at the first non-finite loss, as detectron2 does (FloatingPointError): its backward would make
        # every weight NaN (or they already are: diverged), and every later step, checkpoint and evaluation would
        # be NaN's. The checkpoints written so far hold earlier weights. One host sync per step.
        if not bool(torch.isfinite(loss.detach())):
            terms = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in losses.items())
            raise NonFiniteLossError(
                f"training loss is not finite at step {self.global_step} ({terms}): training stopped before NaN "
                "gradients reach the weights (or after they diverged). The "
                "checkpoints saved so far hold earlier weights. Lower optim.lr, lengthen optim.warmup_steps, set "
                "trainer.gradient_clip_val, or train with trainer.precision: 32-true", step=self.global_step)
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
        self._loss_sums, self._loss_images = {}, 0

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        # float32 whatever the training precision: the metrics are those the checkpoint gives at evaluation.
        with torch.autocast(self.device.type, enabled=False):
            if self.tta is not None:
                outputs = self.tta(images)
            elif self.hparams.get("val_loss", False):
                outputs, losses = detections_and_losses(self.model, images, targets,
                                                        seed=self.hparams.get("seed", 0) + batch_idx)
                # Summed per image, so the mean over the epoch weighs every image once (a short last batch too).
                for name, value in {"loss": sum(losses.values()), **losses}.items():
                    value = value.detach().float() * len(images)
                    self._loss_sums[name] = self._loss_sums.get(name, 0) + value
                self._loss_images += len(images)
            else:
                outputs = self.model(images)
        self.evaluator.update(outputs, [int(t["image_id"]) for t in targets])

    def _mean_val_losses(self) -> Optional[Dict[str, float]]:
        """The epoch's mean loss terms over every image of every process (None without losses)."""
        if not self._loss_sums:
            return None
        names = sorted(self._loss_sums)
        totals = torch.stack([self._loss_sums[n] for n in names] + [
            torch.tensor(float(self._loss_images), device=self.device)])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        return {n: float(totals[i] / totals[-1]) for i, n in enumerate(names)}

    def on_validation_epoch_end(self) -> None:
        metrics = self.evaluator.compute()  # gathered across processes, identical on every rank
        self.last_metrics, self.last_metrics_step = metrics, self.global_step
        self.last_val_losses = self._mean_val_losses()
        for name, value in (self.last_val_losses or {}).items():
            self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=False)
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
