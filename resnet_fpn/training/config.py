"""Training configuration: YAML recipes plus command-line overrides, checked key by key."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import yaml

from ..detectors import build_detector

__all__ = ["TrainConfig", "DataConfig", "OptimConfig", "TrainerConfig", "load_config", "config_from_dict"]

# The model section is build_detector's keyword arguments (and `model`, its first one): nothing repeats them.
MODEL_KEYS = [p for p in inspect.signature(build_detector).parameters if p != "num_classes"]


@dataclass
class SyntheticConfig:
    """The embedded synthetic data set (used when no data root or annotation paths are given)."""

    num_train: int = 400
    num_val: int = 100
    image_size: List[int] = field(default_factory=lambda: [160, 160])
    num_classes: int = 3
    seed: int = 0


@dataclass
class DataConfig:
    """Where the data is and how it is batched and augmented.

    `root` finds `annotations/instances_{train,val}.json` + `images/`, or COCO 2017's layout; the four
    explicit paths override it. With neither, the synthetic set is generated into `cache_dir`.
    """

    root: Optional[str] = None
    train_ann: Optional[str] = None
    train_images: Optional[str] = None
    val_ann: Optional[str] = None
    val_images: Optional[str] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    cache_dir: Optional[str] = None
    batch_size: int = 2
    val_batch_size: int = 2
    num_workers: int = 2
    augment: List[Dict[str, Any]] = field(default_factory=lambda: [{"name": "HorizontalFlip", "p": 0.5}])
    aspect_ratio_grouping: bool = True


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warm-up, then multi-step, cosine or constant)."""

    name: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    warmup_steps: int = 1000
    warmup_factor: float = 0.001
    schedule: str = "multistep"
    steps: List[int] = field(default_factory=lambda: [60000, 80000])
    gamma: float = 0.1


@dataclass
class TrainerConfig:
    """What Lightning's Trainer is given."""

    max_steps: int = 90000
    max_epochs: Optional[int] = None
    val_every_n_steps: Optional[int] = None
    checkpoint_every_n_steps: int = 5000
    accelerator: str = "auto"
    devices: Union[int, str, List[int]] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    # Convolutions in NHWC (torch.channels_last): faster on CPU (oneDNN) and on tensor-core GPUs (cuDNN).
    channels_last: bool = False
    seed: int = 42
    log_every_n_steps: int = 20
    gradient_clip_val: Optional[float] = None
    eval_backend: str = "pycocotools"


@dataclass
class TrainConfig:
    """A whole training run: model (build_detector options), data, optim, trainer, output_dir."""

    model: Dict[str, Any] = field(default_factory=lambda: {"model": "faster_rcnn", "backbone": "resnet50-fpn"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output_dir: str = "outputs/run"
    num_pictures: int = 8

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")


def _build(cls, data: Any, where: str):
    """Instantiate dataclass `cls` from a mapping, refusing unknown keys (named with their place)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of options, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = cls.__dataclass_fields__[name].default_factory  # type: ignore[misc]
        nested = default() if default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(nested):
            kwargs[name] = _build(type(nested), value, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
    """Build and check a `TrainConfig` from a plain dict (a parsed YAML file).

    Raises:
        ValueError: an unknown key anywhere (named with its path and the valid keys), or a bad value.
    """
    config = _build(TrainConfig, data, where)
    model = dict(TrainConfig().model)
    model.update(config.model or {})
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"{where}.model: unknown key(s) {unknown}; valid keys are build_detector's: {MODEL_KEYS}")
    config.model = model
    if config.optim.name not in OPTIMIZERS:
        raise ValueError(f"{where}.optim.name must be one of {OPTIMIZERS}, got {config.optim.name!r}")
    if config.optim.schedule not in SCHEDULES:
        raise ValueError(f"{where}.optim.schedule must be one of {SCHEDULES}, got {config.optim.schedule!r}")
    if str(config.trainer.precision) not in PRECISIONS:
        raise ValueError(f"{where}.trainer.precision must be one of {PRECISIONS}, got {config.trainer.precision!r}")
    if not isinstance(config.trainer.channels_last, bool):
        raise ValueError(f"{where}.trainer.channels_last must be true or false, got {config.trainer.channels_last!r}")
    return config


def load_config(path: Optional[Union[str, Path]] = None, *, overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Read a YAML recipe and apply dotted overrides (``{"trainer.max_steps": 100}``; None values skipped).

    Raises:
        FileNotFoundError: no such recipe.
        ValueError: malformed YAML (the file and position), unknown keys, bad values.
    """
    data: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(data, where=str(path) if path is not None else "config")
