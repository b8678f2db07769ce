"""Where a training step's time goes: data loading versus the model's forward/backward, by operator."""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Mapping, Optional

from torch.profiler import profile

from ..detectors import iou_types_of
from .config import TrainConfig
from .datamodule import DetectionDataModule
from .module import DetectionModule

__all__ = ["profile_train_step", "format_step_profile"]


def profile_train_step(config: TrainConfig, *, steps: int = 4, top: int = 8,
                       model_overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Time the data loader and training steps (forward, backward, optimizer) of a recipe, and profile one step.

    Args:
        config: a training config (its model, data and optimizer sections are used).
        steps: steps timed (the first is a warm-up and not counted).
        top: operators listed, by self CPU time.
        model_overrides: build_detector options to change (e.g. ``{"mask_head_dim": 256}``).

    Returns:
        ``{"data_ms": per batch, "step_s": median, "ops": [(name, ms), ...]}``.
    """
    model = {**config.model, **(model_overrides or {})}
    datamodule = DetectionDataModule(config.data, with_masks="segm" in iou_types_of(model["model"]), seed=0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    start = time.perf_counter()
    batches = [next(loader) for _ in range(steps)]
    data_ms = (time.perf_counter() - start) / steps * 1e3
    module = DetectionModule(model={**model, "num_classes": len(datamodule.categories()) + 1},
                             optim=vars(config.optim), categories=[vars(c) for c in datamodule.categories()],
                             max_steps=config.trainer.max_steps)
    detector = module.model.train()
    optimizer = module.configure_optimizers()["optimizer"]

    def step(images, targets) -> None:
        loss = sum(detector(list(images), list(targets)).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times: List[float] = []
    for images, targets in batches:
        t = time.perf_counter()
        step(images, targets)
        times.append(time.perf_counter() - t)
    with profile() as prof:
        step(*batches[-1])
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()), key=lambda r: -r[1])
    return {"data_ms": data_ms, "step_s": statistics.median(times[1:]), "ops": ops[:top]}


def format_step_profile(result: Mapping[str, Any]) -> str:
    lines = [f"data loading: {result['data_ms']:.0f} ms per batch", f"training step: {result['step_s']:.2f} s",
             "| operator | self CPU ms |", "|---|---:|"]
    lines += [f"| {name} | {ms:.0f} |" for name, ms in result["ops"]]
    return "\n".join(lines)
