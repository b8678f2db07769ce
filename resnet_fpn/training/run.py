"""One training run, end to end: data, model, Lightning Trainer, checkpoints, final COCO evaluation, reports."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn

from ..checkpoint import read_checkpoint
from ..detectors import iou_types_of
from ..evaluation import format_metrics_table
from ..files import atomic_write_json
from ..machine import Machine, auto_channels_last, auto_precision, this_machine
from .checkpoint_io import AtomicCheckpointIO, remove_partial_checkpoints
from .config import EMAConfig, TrainConfig, TrainerConfig, TTAConfig
from .datamodule import DetectionDataModule
from .module import DetectionModule

__all__ = ["train", "TrainResult", "ResumePoint", "find_resume_checkpoint", "SpeedSettings", "resolve_speed_settings",
           "ema_callback"]

log = logging.getLogger(__name__)


class TrainResult(dict):
    """What `train` returns: ``metrics`` (the final COCO metrics), ``output_dir``, ``checkpoint`` (last)."""


class ValidationHistory(Callback):
    """Records (step, wall seconds since fit start, bbox/segm AP) after each validation, for the AP-vs-time plot.

    Wall time counts training and validation both: it is what a user waits for. On resume the clock
    continues from the history file, so a killed run's curve stays one curve. With the validation loss, each row
    also has ``val_loss`` and one ``val_loss_*`` per term.
    """

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        self.rows: List[Dict[str, float]] = json.loads(path.read_text()) if resume and path.is_file() else []
        self.offset = self.rows[-1]["seconds"] if self.rows else 0.0
        self.start = time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not fitting or trainer.sanity_checking or pl_module.last_metrics is None or not trainer.is_global_zero:
            return
        row = {"step": trainer.global_step, "seconds": round(self.offset + time.perf_counter() - self.start, 1)}
        for iou_type in pl_module.iou_types:
            row[f"{iou_type}_AP"] = pl_module.last_metrics[iou_type]["AP"]
        for name, value in (pl_module.last_val_losses or {}).items():
            row[f"val_{name}"] = round(value, 6)
        self.rows.append(row)
        atomic_write_json(self.path, self.rows, indent=1)


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: a readable training checkpoint and its global step."""

    path: str
    step: int


def _resume_point(path: Path) -> ResumePoint:
    """Read `path` whole and check that Lightning can resume from it.

    Raises:
        ValueError: the file is truncated or corrupt, or not a training checkpoint (the file named).
    """
    ckpt = read_checkpoint(path)
    step = ckpt.get("global_step")
    if not isinstance(ckpt.get("state_dict"), Mapping) or "optimizer_states" not in ckpt or not isinstance(step, int):
        raise ValueError(f"{path} is not a training checkpoint of Lightning (no optimizer state or global_step); "
                         f"to start a run from its weights, give it as model.weights (--weights) instead")
    return ResumePoint(str(path), step)


def find_resume_checkpoint(output_dir: Union[str, Path], resume: Union[bool, str, None]) -> Optional[ResumePoint]:
    """The checkpoint to resume from, read whole first: a run never starts from a file it cannot read.

    With ``resume=True``: OUTPUT_DIR/checkpoints/last.ckpt. `AtomicCheckpointIO` writes it atomically, but a
    copy made by hand can still leave it truncated; then the newest readable checkpoint of that folder
    (``best.ckpt``, step-numbered ones) is used instead, with a warning naming the unreadable file and the step
    the run goes back to. When none is readable, the run stops and the message names the files to remove.

    Args:
        output_dir: the run's output folder.
        resume: True for OUTPUT_DIR/checkpoints, a checkpoint path (used as given, no fallback), or
            None/False for a fresh run.

    Returns:
        The `ResumePoint` (path and global step), or None for a fresh run.

    Raises:
        FileNotFoundError: resuming was asked for and there is no such checkpoint (no checkpoint at all in
            OUTPUT_DIR/checkpoints for ``True``).
        ValueError: the given checkpoint cannot be read or is not a training checkpoint; or, for ``True``, no
            checkpoint of the folder can be read (each named, with what to remove).
    """
    if not resume:
        return None
    if resume is not True:
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: checkpoint not found: {path}")
        return _resume_point(path)
    folder = Path(output_dir) / "checkpoints"
    last = folder / "last.ckpt"
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != last.name and p.is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    candidates = ([last] if last.is_file() else []) + others
    if not candidates:
        raise FileNotFoundError(f"cannot resume: checkpoint not found: {last}")
    unreadable: List[Tuple[Path, ValueError]] = []
    for path in candidates:
        try:
            point = _resume_point(path)
        except ValueError as exc:
            unreadable.append((path, exc))
            continue
        if path != last:
            why = f"{unreadable[0][1]}" if unreadable else f"{last} not found"
            log.warning("cannot resume from the last checkpoint: %s; resuming from %s (step %d), the newest "
                        "readable checkpoint", why, path, point.step)
        return point
    files = " ".join(str(p) for p, _ in unreadable)
    raise ValueError(
        f"cannot resume: no checkpoint in {folder} can be read ({'; '.join(str(e) for _, e in unreadable)}). "
        f"Remove {files} and run again without --resume to start over"
    )


def _precision(value: str) -> str:
    return "32-true" if str(value) == "32" else str(value)


@dataclass(frozen=True)
class SpeedSettings:
    """The precision and memory format a run uses, with "auto" decided for its machine.

    Attributes:
        machine: the machine the run's device is (None: one `this_machine` cannot describe, e.g. ``accelerator:
            gpu`` without a GPU, which Lightning then refuses with its own message; or mps/tpu).
        precision: Lightning's precision name.
        channels_last: NHWC convolutions.
        precision_auto, channels_last_auto: whether each was "auto".
    """

    machine: Optional[Machine]
    precision: str
    channels_last: bool
    precision_auto: bool
    channels_last_auto: bool

    def describe(self) -> str:
        """One line for the start of a run, e.g. "machine: cpu AMD EPYC ...; precision: bf16-mixed (auto); ..."."""
        where = self.machine.describe() if self.machine is not None else "unknown (no auto choice, the safe one)"
        return (f"machine: {where}; precision: {self.precision}{' (auto)' if self.precision_auto else ''}; "
                f"channels_last: {self.channels_last}{' (auto)' if self.channels_last_auto else ''}")


def resolve_speed_settings(trainer: TrainerConfig) -> SpeedSettings:
    """``trainer.precision`` and ``trainer.channels_last``, "auto" decided by ``resnet_fpn.machine`` for the device
    of ``trainer.accelerator`` (``auto_precision``: bf16-mixed with native bf16, else 32-true;
    ``auto_channels_last``: GPUs and AVX-512 CPUs). Explicit values are kept as given.

    Args:
        trainer: the trainer section.

    Returns:
        The `SpeedSettings`; where the machine cannot be described (no CUDA device for ``accelerator: gpu``,
        another accelerator), "auto" means 32-true and contiguous.
    """
    accelerator = str(trainer.accelerator).lower()
    device = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "auto": None}.get(accelerator, "other")
    machine: Optional[Machine] = None
    if device != "other":
        try:
            machine = this_machine(device)
        except ValueError:
            machine = None
    precision_auto = str(trainer.precision) == "auto"
    channels_last_auto = trainer.channels_last == "auto"
    precision = (auto_precision(machine) if machine is not None else "32-true") if precision_auto \
        else _precision(trainer.precision)
    channels_last = (auto_channels_last(machine) if machine is not None else False) if channels_last_auto \
        else bool(trainer.channels_last)
    return SpeedSettings(machine, precision, channels_last, precision_auto, channels_last_auto)


def _raw_weights_kept_at_train_end(base: type) -> type:
    """``EMAWeightAveraging`` whose checkpoints written after training ends still hold the raw weights.

    Lightning runs ModelCheckpoint callbacks after all others, so ``save_last``'s checkpoint at the end of
    training (when the final step is not a multiple of ``every_n_train_steps``) is written after
    ``EMAWeightAveraging.on_train_end`` has copied the average into the module: its ``current_model_state`` would
    be the average too, and a run resumed from it (to train longer) would continue from the averaged weights and
    mix them into the average again. Here the raw weights are kept at that moment and written as
    ``current_model_state``, as in every checkpoint written during training.
    """

    class EMAKeepingRawWeights(base):
        _raw_at_train_end: Optional[Dict[str, torch.Tensor]] = None

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._raw_at_train_end = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            super().on_train_end(trainer, pl_module)

        def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            if self._raw_at_train_end is not None and "current_model_state" in checkpoint:
                checkpoint["current_model_state"] = self._raw_at_train_end

    return EMAKeepingRawWeights


def ema_callback(ema: EMAConfig) -> Callback:
    """Lightning's ``EMAWeightAveraging`` for ``trainer.ema`` (Lightning >= 2.6).

    It keeps ``AveragedModel(decay)`` of the LightningModule (parameters and buffers), updated after every
    ``update_every_n_steps``-th optimizer step from ``start_step`` on (the first update copies the weights);
    swaps the averaged weights in for each validation and copies them in when training ends (so the final
    evaluation is the EMA's); writes them as the checkpoint's ``state_dict`` (the inference weights that
    ``detector_from_checkpoint`` and ``resnet-fpn evaluate`` load) with the raw weights under
    ``current_model_state`` (also in the checkpoint written when training ends, see
    `_raw_weights_kept_at_train_end`) and restores both on resume.

    Args:
        ema: the ``trainer.ema`` section.

    Returns:
        The callback.

    Raises:
        ValueError: the installed Lightning has no EMAWeightAveraging (before 2.6): the version named.
    """
    try:
        from lightning.pytorch.callbacks import EMAWeightAveraging
    except ImportError:
        raise ValueError(f"trainer.ema needs Lightning >= 2.6 (lightning.pytorch.callbacks.EMAWeightAveraging); "
                         f"this is Lightning {L.__version__}: upgrade it (pip install 'lightning>=2.6') or remove "
                         f"trainer.ema") from None
    return _raw_weights_kept_at_train_end(EMAWeightAveraging)(
        decay=ema.decay, update_every_n_steps=ema.update_every_n_steps, update_starting_at_step=ema.start_step)


def build_trainer(config: TrainConfig, *, output_dir: Path, history: Optional[ValidationHistory],
                  precision: Optional[str] = None) -> L.Trainer:
    """Lightning's Trainer for `config`: checkpoints (last, best by bbox AP), CSV logs, step-based validation,
    and the EMA of the weights with ``trainer.ema``.

    Args:
        config: the run's configuration (its ``trainer`` section).
        output_dir: where checkpoints and logs go.
        history: the AP-vs-time recorder, or None.
        precision: the precision decided by `resolve_speed_settings` (None: decide it here).

    Returns:
        The Trainer.

    Raises:
        ValueError: Lightning refuses the hardware settings here (no GPU for ``accelerator: gpu``, more devices
            than the machine has, ...): its message, with the settings named; ``trainer.ema`` on Lightning < 2.6.
    """
    t = config.trainer
    if precision is None:
        precision = resolve_speed_settings(t).precision
    # No version counter: last.ckpt is always the last one (Lightning would write last-v1.ckpt beside a
    # last.ckpt it did not write itself, e.g. an unreadable one a resumed run went past).
    last = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="step{step:06d}", save_last=True,
                           save_top_k=0, every_n_train_steps=t.checkpoint_every_n_steps, auto_insert_metric_name=False,
                           enable_version_counter=False)
    best = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="best", monitor="val/bbox_AP", mode="max",
                           save_top_k=1, save_on_train_epoch_end=False, auto_insert_metric_name=False,
                           enable_version_counter=False)
    callbacks: List[Callback] = [last, best, LearningRateMonitor(logging_interval="step")]
    if history is not None:
        callbacks.append(history)
    if t.ema is not None:
        callbacks.append(ema_callback(t.ema))
    val_every = t.val_every_n_steps
    try:
        return L.Trainer(
            default_root_dir=str(output_dir),
            max_steps=t.max_steps,
            max_epochs=t.max_epochs if t.max_epochs is not None else (-1 if t.max_steps > 0 else None),
            accelerator=t.accelerator,
            devices=t.devices,
            strategy=t.strategy,
            num_nodes=t.num_nodes,
            precision=precision,
            logger=CSVLogger(str(output_dir), name="logs"),
            callbacks=callbacks,
            log_every_n_steps=t.log_every_n_steps,
            # Step-based validation across epochs (detectron2's EVAL_PERIOD); None validates once per epoch.
            val_check_interval=val_every,
            check_val_every_n_epoch=None if val_every else 1,
            num_sanity_val_steps=0,  # a partial COCO evaluation would only cost time
            gradient_clip_val=t.gradient_clip_val,
            # Our own samplers handle DDP (DistributedSampler inside the aspect-ratio batch sampler).
            use_distributed_sampler=False,
            enable_progress_bar=True,
            # Checkpoints renamed into place from beside the target, not moved in from /tmp (see checkpoint_io).
            plugins=[AtomicCheckpointIO()],
        )
    except MisconfigurationException as exc:
        raise ValueError(
            f"Lightning cannot run trainer.accelerator={t.accelerator!r}, devices={t.devices!r}, "
            f"strategy={t.strategy!r}, num_nodes={t.num_nodes}, precision={precision!r} on this machine: "
            f"{exc} (--accelerator cpu runs anywhere)"
        ) from exc


def train(config: TrainConfig, *, resume: Union[bool, str, None] = None) -> TrainResult:
    """Train a detector as `config` says, then evaluate it on the val split and write the reports.

    Writes under ``config.output_dir``: ``checkpoints/`` (``last.ckpt`` every N steps, ``best.ckpt`` by
    bbox AP; written atomically), ``metrics.json`` (the final COCO metrics), ``config.yaml``,
    ``history.json`` and ``ap_vs_time.png`` (AP after each validation), ``predictions/`` (pictures of
    val images with the final model's detections), ``logs/`` (CSV logs of losses and LR).

    Args:
        config: the run's configuration (see ``load_config``).
        resume: True to continue from ``checkpoints/last.ckpt`` (or, when it cannot be read, the newest
            readable checkpoint there; see `find_resume_checkpoint`), or a checkpoint path.

    Returns:
        A `TrainResult` with the final metrics.

    Raises:
        ValueError: bad configuration or data (the file and entry are named), e.g. Mask R-CNN on a data set
            without masks, hardware settings Lightning refuses here, or no readable checkpoint to resume from;
            all before any training.
        FileNotFoundError: missing data or checkpoint files.
    """
    output_dir = Path(config.output_dir)
    resume_point = find_resume_checkpoint(output_dir, resume)
    L.seed_everything(config.trainer.seed, workers=True)
    history_path = output_dir / "history.json"
    history = ValidationHistory(history_path, resume=resume_point is not None)
    speed = resolve_speed_settings(config.trainer)
    # The Trainer first: hardware settings this machine cannot run fail before any data is read.
    trainer = build_trainer(config, output_dir=output_dir, history=history, precision=speed.precision)
    if trainer.is_global_zero:
        print(speed.describe(), flush=True)
    model_name = config.model["model"]
    with_masks = "segm" in iou_types_of(model_name)
    datamodule = DetectionDataModule(config.data, with_masks=with_masks, seed=config.trainer.seed,
                                     val_targets_with_masks=with_masks and config.trainer.val_loss)
    # Setup before the Trainer: num_classes comes from the data, and bad data fails before any training.
    datamodule.prepare_data()
    datamodule.setup("fit")
    categories = datamodule.categories()
    module = DetectionModule(
        model={**config.model, "num_classes": len(categories) + 1},
        optim=vars(config.optim),
        categories=[vars(c) for c in categories],
        max_steps=config.trainer.max_steps,
        eval_backend=config.trainer.eval_backend,
        channels_last=speed.channels_last,
        val_loss=config.trainer.val_loss,
        seed=config.trainer.seed,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    if resume_point is None and history_path.exists() and trainer.is_global_zero:
        history_path.unlink()  # a fresh run starts a fresh curve
    if trainer.is_global_zero:
        import yaml

        (output_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if trainer.is_global_zero:
        remove_partial_checkpoints(output_dir / "checkpoints")
    if resume_point is not None and trainer.is_global_zero:
        print(f"resuming from {resume_point.path} at step {resume_point.step}", flush=True)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_point.path if resume_point is not None else None)

    # Final evaluation of the model as trained (the last weights, or their EMA with trainer.ema: the callback
    # copies the average in when training ends), as detectron2's train_net does; skipped when the last
    # validation already ran at the final step (every rank takes the same branch).
    if module.last_metrics is None or module.last_metrics_step != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = module.last_metrics
    tta_metrics = None
    if config.evaluation.tta is not None:
        tta_metrics = evaluate_with_tta(trainer, module, datamodule, config.evaluation.tta)
        module.last_metrics = metrics
    result = TrainResult(metrics=metrics, output_dir=str(output_dir),
                         checkpoint=str(output_dir / "checkpoints" / "last.ckpt"))
    if tta_metrics is not None:
        result["metrics_tta"] = tta_metrics
    if trainer.is_global_zero:
        atomic_write_json(output_dir / "metrics.json", metrics)
        print(format_metrics_table(metrics))
        print(f"metrics written to {output_dir / 'metrics.json'}")
        if tta_metrics is not None:
            atomic_write_json(output_dir / "metrics_tta.json", tta_metrics)
            print("with test-time augmentation (evaluation.tta):")
            print(format_metrics_table(tta_metrics))
            print(f"metrics written to {output_dir / 'metrics_tta.json'}")
        if history.rows:
            plot_history(history.rows, output_dir / "ap_vs_time.png", title=f"{model_name} {config.model['backbone']}")
        if config.num_pictures > 0:
            write_prediction_pictures(module, datamodule, output_dir / "predictions", count=config.num_pictures)
    return result


def evaluate_with_tta(trainer: L.Trainer, module: DetectionModule, datamodule: DetectionDataModule,
                      tta: TTAConfig) -> Dict[str, Dict[str, float]]:
    """COCO metrics of the module's detector under test-time augmentation (``evaluation.tta``), on the val split.

    Args:
        trainer: the run's Trainer (validation runs through it, on every process).
        module: the trained module.
        datamodule: its data.
        tta: the augmentations.

    Returns:
        The metrics, as ``module.last_metrics``.
    """
    from ..tta import TTADetector

    module.tta = TTADetector(module.model, min_sizes=tta.min_sizes, max_size=tta.max_size, flip=tta.flip,
                             nms_thresh=tta.nms_thresh)
    try:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        module.tta = None
    return module.last_metrics


def plot_history(rows: List[Dict[str, float]], path: Path, *, title: str) -> Path:
    """AP against wall-clock minutes, one line per IoU type; beside it, the validation loss (total and per term)
    when the rows have it."""
    from matplotlib.figure import Figure

    loss_keys = [k for k in rows[0] if k.startswith("val_loss")]
    fig = Figure(figsize=(11 if loss_keys else 6, 4), dpi=100)
    ax = fig.add_subplot(1, 2 if loss_keys else 1, 1)
    minutes = [r["seconds"] / 60 for r in rows]
    for key in [k for k in rows[0] if k.endswith("_AP")]:
        ax.plot(minutes, [r[key] for r in rows], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("wall-clock minutes (training + validation)")
    ax.set_ylabel("COCO AP @[.50:.95]")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    if loss_keys:
        lx = fig.add_subplot(1, 2, 2)
        for key in loss_keys:
            values = [r.get(key, float("nan")) for r in rows]
            lx.plot(minutes, values, marker="o" if key == "val_loss" else None,
                    linewidth=2.0 if key == "val_loss" else 1.0, label=key.replace("val_", "val "))
        lx.set_xlabel("wall-clock minutes (training + validation)")
        lx.set_ylabel("validation loss")
        lx.grid(alpha=0.3)
        lx.legend(fontsize="small")
        lx.set_title("validation loss")
    fig.tight_layout()
    fig.savefig(path)
    return path


@torch.no_grad()
def write_prediction_pictures(module: DetectionModule, datamodule: DetectionDataModule, out_dir: Path, *,
                              count: int, score_threshold: float = 0.5) -> List[Path]:
    """Draw the model's detections on the first `count` val images into `out_dir`."""
    from ..visualize import draw_predictions, save_image

    out_dir.mkdir(parents=True, exist_ok=True)
    model = module.model.eval()
    names = {c.label: c.name for c in module.categories}
    written = []
    dataset = datamodule.val_dataset
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        prediction = model([image.to(module.device)])[0]
        picture = draw_predictions(image, prediction, score_threshold=score_threshold, label_names=names)
        path = out_dir / f"{int(target['image_id']):06d}.png"
        save_image(picture, path)
        written.append(path)
    return written
