"""Training configuration: YAML recipes plus command-line overrides, checked key by key before anything is built.

Every value is checked against its declaration: the dataclass field types below (and, for the ``model``
section, the annotations of ``build_detector``), plus the range or choices a field declares in its metadata.
An error names the key path (``config.optim.lr``, ``recipe.yaml: optim.lr``, or ``--lr (optim.lr)`` for a
command-line flag), what was expected and what was given.

Numbers written as strings are read as numbers where a number is expected. PyYAML follows YAML 1.1, where a
float needs a dot: ``lr: 1e-3`` is the *string* "1e-3" (``lr: 1.0e-3`` is a float); so are quoted values
(``max_steps: '2'``). An integer key also takes a whole number written as a float (``max_steps: 1e5``);
fractions, booleans, ``.nan`` and ``.inf`` are refused.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ..backbone import NORMS, TOP_BLOCKS, check_backbone_name
from ..backbone.features import ResNetOptions
from ..detectors import build_detector, list_detectors
from ..evaluation import BACKENDS

__all__ = ["TrainConfig", "DataConfig", "OptimConfig", "TrainerConfig", "EMAConfig", "EvaluationConfig", "TTAConfig",
           "Range", "load_config", "config_from_dict"]

# The model section is build_detector's keyword arguments (and `model`, its first one): nothing repeats them.
MODEL_KEYS = [p for p in inspect.signature(build_detector).parameters if p != "num_classes"]


@dataclass(frozen=True)
class Range:
    """The numbers a config value may take (every number of a list value).

    Attributes:
        low, high: the bounds (None: unbounded).
        low_open: `low` itself is excluded (``lr > 0``).
    """

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"<= {self.high:g}" if self.high is not None else ""


# trainer.precision: "auto" (machine.auto_precision) or one of Lightning's names.
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")

AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)


def _option(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
            within: Optional[Range] = None, choices: Optional[Sequence[str]] = None) -> Any:
    """A dataclass field declaring the range of its numbers (`within`) or the choices of its value."""
    return field(default=default, default_factory=factory, metadata={"range": within, "choices": choices})


@dataclass
class SyntheticConfig:
    """The embedded synthetic data set (used when no data root or annotation paths are given)."""

    num_train: int = _option(400, within=AT_LEAST_1)
    num_val: int = _option(100, within=AT_LEAST_1)
    image_size: List[int] = _option(factory=lambda: [160, 160], within=AT_LEAST_1)
    num_classes: int = _option(3, within=AT_LEAST_1)
    seed: int = _option(0, within=NON_NEGATIVE)


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
    batch_size: int = _option(2, within=AT_LEAST_1)
    val_batch_size: int = _option(2, within=AT_LEAST_1)
    num_workers: int = _option(2, within=NON_NEGATIVE)
    augment: List[Dict[str, Any]] = field(default_factory=lambda: [{"name": "HorizontalFlip", "p": 0.5}])
    aspect_ratio_grouping: bool = True
    # What to do with image files that are missing, cannot be decoded or have another size than the JSON says:
    # "error" stops before training (the quick check names them), "skip" leaves them out and counts them.
    bad_images: str = _option("error", choices=("error", "skip"))


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warm-up, then multi-step, cosine or constant)."""

    name: str = _option("sgd", choices=("sgd", "adamw"))
    lr: float = _option(0.02, within=POSITIVE)
    momentum: float = _option(0.9, within=FRACTION)
    weight_decay: float = _option(1e-4, within=NON_NEGATIVE)
    weight_decay_norm: float = _option(0.0, within=NON_NEGATIVE)
    warmup_steps: int = _option(1000, within=NON_NEGATIVE)
    warmup_factor: float = _option(0.001, within=FRACTION)
    schedule: str = _option("multistep", choices=("multistep", "cosine", "constant"))
    steps: List[int] = _option(factory=lambda: [60000, 80000], within=AT_LEAST_1)
    gamma: float = _option(0.1, within=POSITIVE)


@dataclass
class EMAConfig:
    """An exponential moving average of the weights (``trainer.ema``), kept by Lightning's ``EMAWeightAveraging``.

    After every optimizer step ``ema = decay * ema + (1 - decay) * weights`` (parameters and buffers, BN
    statistics included); the first update copies the weights. Validation, the final metrics and the checkpoints'
    ``state_dict`` (the inference weights) are the EMA's; the raw weights ride in the checkpoint for resuming.
    """

    # 0.9998 per step: the decay of the LSJ recipes (timm/YOLO-style EMA; an average over ~5000 steps).
    decay: float = _option(0.9998, within=Range(0, 1, low_open=True))
    update_every_n_steps: int = _option(1, within=AT_LEAST_1)
    start_step: int = _option(0, within=NON_NEGATIVE)


@dataclass
class TrainerConfig:
    """What Lightning's Trainer is given."""

    max_steps: int = _option(90000, within=AT_LEAST_1)
    max_epochs: Optional[int] = _option(None, within=AT_LEAST_1)
    val_every_n_steps: Optional[int] = _option(None, within=AT_LEAST_1)
    checkpoint_every_n_steps: int = _option(5000, within=AT_LEAST_1)
    accelerator: str = "auto"
    devices: Union[int, str, List[int]] = "auto"
    strategy: str = "auto"
    num_nodes: int = _option(1, within=AT_LEAST_1)
    # YAML reads `precision: 32` as an int; Lightning takes both. "auto": bf16-mixed where bf16 is native (CUDA
    # bf16, AVX512-BF16/AMX CPUs), else 32-true (resnet_fpn.machine.auto_precision), printed at start.
    precision: Union[str, int] = _option("auto", choices=PRECISIONS)
    # Convolutions in NHWC (torch.channels_last): faster on AVX-512 CPUs (oneDNN) and tensor-core GPUs (cuDNN),
    # slower on AVX2 CPUs. "auto" decides from the machine (resnet_fpn.machine.auto_channels_last).
    channels_last: Union[bool, str] = _option("auto", choices=(True, False, "auto"))
    seed: int = _option(42, within=NON_NEGATIVE)
    log_every_n_steps: int = _option(20, within=AT_LEAST_1)
    gradient_clip_val: Optional[float] = _option(None, within=POSITIVE)
    eval_backend: str = _option("pycocotools", choices=BACKENDS)
    # EMA of the weights (null: none), e.g. {decay: 0.9998}; needs Lightning >= 2.6 (EMAWeightAveraging).
    ema: Optional[EMAConfig] = None
    # The validation loss (val/loss and each val/loss_* term) beside mAP, from the same forward pass.
    val_loss: bool = True


@dataclass
class TTAConfig:
    """Test-time augmentation of the final evaluation (``evaluation.tta``); the default is detectron2's set
    (``TEST.AUG``: min sizes 400-1200 step 100, max size 4000, horizontal flip)."""

    min_sizes: List[int] = _option(factory=lambda: list(range(400, 1201, 100)), within=AT_LEAST_1)
    max_size: int = _option(4000, within=AT_LEAST_1)
    flip: bool = True
    # Detections of all augmentations merged per class by NMS at this IoU (detectron2: the box head's 0.5).
    nms_thresh: float = _option(0.5, within=FRACTION)

    def __post_init__(self) -> None:
        if not self.min_sizes:
            raise ValueError(f"evaluation.tta.min_sizes must list at least one size, got {self.min_sizes!r}")


@dataclass
class EvaluationConfig:
    """The final evaluation: ``tta`` adds a test-time-augmented evaluation (metrics_tta.json) to the plain one."""

    tta: Optional[TTAConfig] = None


@dataclass
class TrainConfig:
    """A whole training run: model (build_detector options), data, optim, trainer, output_dir."""

    model: Dict[str, Any] = field(default_factory=lambda: {"model": "faster_rcnn", "backbone": "resnet50-fpn"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output_dir: str = "outputs/run"
    num_pictures: int = _option(8, within=NON_NEGATIVE)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)




# The model section's numbers and names, checked before build_detector runs (its annotations give the types).
MODEL_RANGES: Dict[str, Range] = {
    "freeze_at": Range(0, 5),
    "fpn_channels": AT_LEAST_1,
    "min_size": AT_LEAST_1,
    "max_size": AT_LEAST_1,
    "anchor_sizes": AT_LEAST_1,  # one size per pyramid level (build_detector checks the count)
    "rpn_batch_size_per_image": AT_LEAST_1,
    "rpn_pre_nms_top_n_train": AT_LEAST_1,
    "rpn_post_nms_top_n_train": AT_LEAST_1,
    "rpn_pre_nms_top_n_test": AT_LEAST_1,
    "rpn_post_nms_top_n_test": AT_LEAST_1,
    "box_batch_size_per_image": AT_LEAST_1,
    "box_head_dim": AT_LEAST_1,
    "mask_head_dim": AT_LEAST_1,
    "score_thresh": FRACTION,
    "detections_per_img": AT_LEAST_1,
    "num_keypoints": AT_LEAST_1,
    # torchvision's transform normalises RGB pixels in [0, 1]: a mean outside them, or a std <= 0, is a mistake.
    "image_mean": FRACTION,
    "image_std": POSITIVE,
}
# Only the detectors `resnet-fpn train` can train: keypoint R-CNN is loading and inference only (the data path
# carries no keypoints), so it is refused here with that reason (see _check_model).
MODEL_CHOICES: Dict[str, Tuple[str, ...]] = {"model": tuple(list_detectors(trainable=True)), "norm": tuple(NORMS),
                                             "top_block": tuple(TOP_BLOCKS)}
# What an error adds about a model key whose checks cannot say it all.
MODEL_HINTS: Dict[str, str] = {"anchor_sizes": " (one size per pyramid level, e.g. [32, 64, 128, 256, 512] for P2-P6)"}


class _Mismatch(Exception):
    """A value that does not conform to an annotation (turned into a ValueError naming the key)."""


def _number(value: Any, *, integer: bool, coerce: bool) -> Union[int, float]:
    """`value` as an int or float; with `coerce`, also a numeric string, and a whole float for an int."""
    if isinstance(value, bool):
        raise _Mismatch
    number: Union[int, float]
    if isinstance(value, str):
        if not coerce:
            raise _Mismatch
        try:
            number = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise _Mismatch from None
    elif isinstance(value, (int, float)):
        number = value
    else:
        raise _Mismatch
    if isinstance(number, float) and not math.isfinite(number):
        raise _Mismatch
    if not integer:
        return float(number)
    if isinstance(number, float):
        if not (coerce and number.is_integer()):
            raise _Mismatch
        number = int(number)
    return number


def _conform(value: Any, annotation: Any, rng: Optional[Range], *, coerce: bool) -> Any:
    """`value` checked against `annotation` (and each number against `rng`); raises `_Mismatch`."""
    if annotation is Any:
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        for passing_coerce in (False, True) if coerce else (False,):  # an exact match wins over a conversion
            for member in args:
                try:
                    return _conform(value, member, rng, coerce=passing_coerce)
                except _Mismatch:
                    pass
        raise _Mismatch
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation in (int, float):
        number = _number(value, integer=annotation is int, coerce=coerce)
        if rng is not None and number not in rng:
            raise _Mismatch
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = args[0] if args else Any
        # YAML has no tuples: a list stays a list (config.yaml is written with yaml.safe_dump).
        return [_conform(v, item, rng, coerce=coerce) for v in value]
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise _Mismatch
    raise TypeError(f"config checks do not know the annotation {annotation!r}")


_NOUNS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings"), os.PathLike: ("a path", "paths")}


def _describe(annotation: Any, rng: Optional[Range], *, plural: bool = False) -> str:
    """What `_conform` accepts, in words: "an integer >= 1", "null or a number > 0", "a list of integers"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        words = [_describe(m, rng, plural=plural) for m in args if m is not type(None)]
        return " or ".join((["null"] if type(None) in args else []) + words)
    if annotation in _NOUNS:
        noun = _NOUNS[annotation][int(plural)]
        return f"{noun} {rng}" if rng is not None and annotation in (int, float) else noun
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        return "a list of " + _describe(args[0] if args else Any, rng, plural=True)
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        return "mappings" if plural else "a mapping"
    if annotation is Any:
        return "anything"
    return f"{getattr(annotation, '__name__', annotation)}{'s' if plural else ''}"


@dataclass(frozen=True)
class _Names:
    """How an error names a key: ``config.optim.lr``, ``recipe.yaml: optim.lr`` or ``--lr (optim.lr)``."""

    where: str
    flags: Mapping[str, str]

    def __call__(self, path: Tuple[str, ...]) -> str:
        dotted = ".".join(path)
        if dotted in self.flags:
            return f"{self.flags[dotted]} ({dotted})"
        if self.where == "config":
            return ".".join(("config",) + path)
        return f"{self.where}: {dotted}" if dotted else self.where


def _check(value: Any, annotation: Any, metadata: Mapping[str, Any], name: str) -> Any:
    """`value` conformed to `annotation` and the field's range and choices, or a ValueError naming `name`."""
    rng, choices = metadata.get("range"), metadata.get("choices")
    try:
        conformed = _conform(value, annotation, rng, coerce=True)
    except _Mismatch:
        takes_str = annotation is str or str in typing.get_args(annotation)
        hint = ""
        if takes_str and isinstance(value, (int, float)) and not isinstance(value, bool):
            hint = f" (YAML read a number: quote it, '{value}', to give a string)"
        raise ValueError(f"{name} must be {_describe(annotation, rng)}{metadata.get('hint') or ''}, got {value!r}"
                         f"{hint}") from None
    # A bool is its own choice (channels_last: true/false/"auto"); other values by text (precision 32 -> "32").
    if choices is not None and (conformed if isinstance(conformed, bool) else str(conformed)) not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return conformed


def _build(cls: type, data: Any, path: Tuple[str, ...], names: _Names) -> Any:
    """Instantiate dataclass `cls` from a mapping: unknown keys refused, every value checked (named with its path)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{names(path)}: expected a mapping of options, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ValueError(f"{names(path)}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        section = _optional_section(hints[key])
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, path + (key,), names)
        elif section is not None:
            # An optional section (trainer.ema, evaluation.tta): null/false is off, true its defaults.
            if value is None or value is False:
                kwargs[key] = None
            else:
                kwargs[key] = _build(section, {} if value is True else value, path + (key,), names)
        elif cls is TrainConfig and key == "model":
            kwargs[key] = _check_model(value, names)
        else:
            kwargs[key] = _check(value, hints[key], fields[key].metadata, names(path + (key,)))
    return cls(**kwargs)


def _optional_section(annotation: Any) -> Optional[type]:
    """The dataclass of an ``Optional[<dataclass>]`` annotation, else None."""
    if typing.get_origin(annotation) is Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1 and dataclasses.is_dataclass(members[0]):
            return members[0]
    return None


def _check_model(section: Any, names: _Names) -> Dict[str, Any]:
    """The model section over its defaults, each key checked against build_detector's annotations."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ValueError(
            f"{names(('model',))}: expected a mapping of options, got {type(section).__name__} {section!r}")
    model = dict(TrainConfig().model)
    model.update(section)
    unknown = sorted(set(map(str, model)) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(
            f"{names(('model',))}: unknown key(s) {unknown}; valid keys are build_detector's: {MODEL_KEYS}")
    not_trainable = list_detectors(trainable=False)
    if model.get("model") in not_trainable:
        raise ValueError(
            f"{names(('model', 'model'))}: {model['model']!r} is for loading and inference only (the training data "
            f"path has no keypoints); resnet-fpn train trains {list_detectors(trainable=True)}")
    hints = typing.get_type_hints(build_detector)
    for key, value in model.items():
        metadata = {"range": MODEL_RANGES.get(key), "choices": MODEL_CHOICES.get(key), "hint": MODEL_HINTS.get(key)}
        model[key] = _check(value, hints[key], metadata, names(("model", key)))
    try:
        check_backbone_name(model["backbone"])
    except ValueError as exc:
        raise ValueError(f"{names(('model', 'backbone'))}: {exc}") from None
    if model.get("backbone_options") is not None:
        _check_backbone_options(model["backbone_options"], names)
    return model


def _check_backbone_options(options: Mapping[str, Any], names: _Names) -> None:
    """``model.backbone_options`` checked by ``ResNetOptions`` itself (THE declaration), key by key, so an error
    names ``model.backbone_options.<key>`` (or the ``--backbone-opt`` that set it) and the allowed values.

    Raises:
        ValueError: an unknown key (the valid keys listed) or a value ``ResNetOptions`` refuses.
    """
    valid = [f.name for f in dataclasses.fields(ResNetOptions)]
    unknown = sorted(set(map(str, options)) - set(valid))
    if unknown:
        raise ValueError(f"{names(('model', 'backbone_options'))}: unknown key(s) {unknown}; valid keys are "
                         f"ResNetOptions' fields: {valid}")
    for key, value in options.items():
        try:
            ResNetOptions(**{key: value})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{names(('model', 'backbone_options', key))}: {exc}") from None
    ResNetOptions.coerce(options)  # every field alone is fine; the whole must be too


def config_from_dict(data: Mapping[str, Any], *, where: str = "config",
                     override_names: Optional[Mapping[str, str]] = None) -> TrainConfig:
    """Build and check a `TrainConfig` from a plain dict (a parsed YAML file), before anything is built.

    Every value is checked against its field's type (the ``model`` section against ``build_detector``'s
    annotations) and declared range or choices. Numeric strings are read as numbers where a number is expected
    (YAML 1.1 reads ``1e-3`` as a string); an integer key takes a whole float (``1e5``).

    Args:
        data: the sections (``model``, ``data``, ``optim``, ``trainer``, ``output_dir``, ``num_pictures``);
            what is left out keeps its default.
        where: the source, for messages: "config" names keys ``config.optim.lr``, a file name ``FILE: optim.lr``.
        override_names: dotted key -> how the user set it (``{"trainer.max_steps": "--max-steps"}``), for messages.

    Returns:
        The checked `TrainConfig` (numbers converted to their declared types).

    Raises:
        ValueError: an unknown key anywhere (named with its path and the valid keys), or a value of the wrong
            type, out of its range or not one of its choices (the key, what was expected and what was given).
    """
    names = _Names(where, dict(override_names or {}))
    config = _build(TrainConfig, data, (), names)
    if "model" not in data:
        config.model = _check_model({}, names)
    return config


def load_config(path: Optional[Union[str, Path]] = None, *, overrides: Optional[Mapping[str, Any]] = None,
                override_names: Optional[Mapping[str, str]] = None) -> TrainConfig:
    """Read a YAML recipe, apply dotted overrides and check everything (see `config_from_dict`).

    Args:
        path: the YAML recipe, or None for the defaults.
        overrides: ``{"trainer.max_steps": 100}``; None values are skipped. They go through the same checks.
        override_names: dotted key -> the flag that set it, so that errors name the flag (``--max-steps``).

    Returns:
        The checked `TrainConfig`.

    Raises:
        FileNotFoundError: no such recipe.
        ValueError: malformed YAML (the file and position), unknown keys, bad values (the key named).
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
    where = str(path) if path is not None else "config"
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                section = ".".join(parents[: depth + 1])
                raise ValueError(f"{where}: {section} must be a mapping of options, got {node[part]!r}")
            node = node[part]
        node[leaf] = value
    return config_from_dict(data, where=where, override_names=override_names)
