"""Load checkpoints from paths, URLs or state dicts into this project's models, with a report.

Sources: a path, an http(s) URL (cached as torch.hub caches it), a weights name (``torchvision://resnet50``,
``timm://seresnet50.a1_in1k``, ``detectron2://ImageNetPretrained/MSRA/R-50.pkl``: see `resnet_fpn.hub`) or a
state dict.

Layouts understood without any conversion step by the user:
- torchvision and timm ImageNet classifiers (``conv1.weight``, ``layer1.0...``, ``fc``),
- detectron2's ImageNet pickles (``.pkl``, Caffe2 names ``conv1_w``, ``res2_0_branch2a_w``...), converted by
  `resnet_fpn.detectron2_names` (first conv made RGB, AffineChannel as BatchNorm),
- timm's pre-activation ResNetV2 (``stem.conv``, ``stages.N.blocks.M``, ``head.fc``), renamed to ours,
- torchvision detection models (``backbone.body.*``, ``backbone.fpn.*``, heads) and this project's
  detectors, which share that layout,
- wrappers: ``{"state_dict": ...}`` (Lightning), ``{"model": ...}`` (detectron2, torchvision references),
  ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes.

The prefix that aligns a checkpoint with a model (``body.`` for an ImageNet checkpoint loaded into a
backbone, ``backbone.`` stripped for a detection checkpoint loaded into one) is found by matching key
sets, not by a list of special cases.
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from . import hub
from .detectron2_names import RefusedPickleError, convert_detectron2_names, is_caffe2_names, read_detectron2_pickle

__all__ = ["LoadReport", "load_weights", "read_state_dict"]

log = logging.getLogger(__name__)

WeightsSource = Union[str, os.PathLike, Mapping[str, object]]
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
# DataParallel/DDP wrap models in `module.`, torch.compile in `_orig_mod.`.
_NOISE = re.compile(r"(^|\.)(?:module|_orig_mod)\.")
# Counters, not weights: BatchNorm's num_batches_tracked is absent from FrozenBatchNorm2d and irrelevant
# to outputs, so it never makes a checkpoint "not fit".
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


@dataclass
class LoadReport:
    """What `load_weights` did.

    Attributes:
        source: a description of the checkpoint (path, URL or "state dict").
        loaded: model keys that received a tensor.
        missing: model keys the checkpoint did not provide.
        unexpected: checkpoint keys (after renaming) the model does not have.
        unexpected_targets: for the unexpected keys inside the part of the checkpoint that aligns with the
            model, the model key each would have had (``layer3.5.conv1.weight`` of a ResNet-34 loaded into a
            ResNet-18 backbone -> ``body.layer3.5.conv1.weight``): where a caller can tell a tensor the model
            lacks from another network's heads (``rpn.*`` of a detector loaded into a backbone, absent here).
        converted: (checkpoint key, model key) pairs that were renamed to fit.
        mismatched: (model key, checkpoint shape, model shape) left at their init with ``skip_mismatched``.
    """

    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    unexpected_targets: Dict[str, str] = field(default_factory=dict)
    converted: List[Tuple[str, str]] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, and the first keys of each non-empty list."""
        parts = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.converted:
            parts.append(f"{len(self.converted)} renamed (e.g. {self.converted[0][0]} -> {self.converted[0][1]})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({_first(self.missing)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({_first(self.unexpected)})")
        if self.mismatched:
            parts.append(f"{len(self.mismatched)} skipped for their shape ({_first([m[0] for m in self.mismatched])})")
        return "; ".join(parts)


def _first(keys: List[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... and {len(keys) - n} more" if len(keys) > n else "")


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def read_state_dict(source: WeightsSource) -> Tuple[Dict[str, Tensor], str]:
    """Read a checkpoint into a flat ``{key: tensor}`` dict.

    Args:
        source: a local path (``.pth``/``.pt``/``.ckpt``/``.bin`` read with ``torch.load(weights_only=True)``,
            ``.safetensors``, or a detectron2 ``.pkl`` read with numpy-only unpickling), an http(s) URL
            (downloaded once into torch.hub's cache, checked against the hash prefix in its file name), a weights
            name (``torchvision://...``, ``timm://...``, ``detectron2://...``: `resnet_fpn.hub`), or a mapping.
            A ``.pkl`` with Caffe2 names is converted to ours; given by path, it is taken to expect BGR input
            (detectron2's default ``INPUT.FORMAT``), which is logged.

    Returns:
        (state dict, description of the source: the path, or the name or URL with its cached file).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: an unknown weights name or scheme; the file cannot be downloaded (the URL, the cache path
            to put it at by hand and the environment variable that moves the cache are named) or does not match
            its hash; the file cannot be read (a cached one: delete it, it is named); no tensors are found.
        TypeError: `source` is of another type.
    """
    if isinstance(source, Mapping):
        return _unwrap(source, "state dict"), "state dict"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"weights must be a path, a URL or a state dict, got {type(source).__name__}")
    text = os.fspath(source)
    if hub.is_weights_name(text) or _is_url(text):
        channels = hub.get_weights(text).preprocessing.channels if hub.is_weights_name(text) else None
        name = hub.get_weights(text).name if hub.is_weights_name(text) else text
        path = hub.fetch_weights(text)
        where = f"{name} ({path})"
        return _unwrap(_read_file(path, channels=channels, cached=True), where), where
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise ValueError(f"unknown weights scheme in {text!r}; known: {', '.join(hub.SCHEMES)}, http://, https://")
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return _unwrap(_read_file(path, channels=None, cached=False), str(path)), str(path)


def _read_file(path: Path, *, channels: Optional[str], cached: bool) -> object:
    """The contents of a weights file, by its suffix; `channels` is the order a ``.pkl``'s first conv expects
    (None: detectron2's default, BGR)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if path.suffix == ".pkl" and not zipfile.is_zipfile(path):
            return _read_pickle(path, channels=channels)
        return torch.load(path, map_location="cpu", weights_only=True)
    except RefusedPickleError:
        raise  # names the file and the global already; not a download problem
    except Exception as exc:  # a corrupt file or a pickle weights_only refuses: name the file
        if cached:
            raise ValueError(
                f"could not read the cached weights file {path}: {exc}. A partial or corrupt download? Delete it "
                f"and it will be downloaded again"
            ) from exc
        raise ValueError(f"could not read weights file {path}: {exc}") from exc


def _read_pickle(path: Path, *, channels: Optional[str]) -> Dict[str, Tensor]:
    blobs = read_detectron2_pickle(path)
    if not is_caffe2_names(blobs):  # e.g. detectron2's own model_final pickles: arrays as they are
        return {k: torch.from_numpy(v.copy()) for k, v in blobs.items()}
    if channels is None:
        channels = "BGR"
        log.info("%s: Caffe2 names; converted assuming BGR input (detectron2's default INPUT.FORMAT): the first "
                 "conv's input channels are reversed so that the network takes RGB", path)
    return convert_detectron2_names(blobs, channels=channels)


def _unwrap(raw: object, where: str) -> Dict[str, Tensor]:
    if isinstance(raw, nn.Module):
        raw = raw.state_dict()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a state dict (a mapping of names to tensors), got {type(raw).__name__}")
    tensors = {k: v for k, v in raw.items() if isinstance(v, Tensor)}
    if tensors and len(tensors) >= len(raw) / 2:
        return tensors
    for key in _WRAPPER_KEYS:
        if isinstance(raw.get(key), Mapping):
            return _unwrap(raw[key], f"{where}[{key!r}]")
    raise ValueError(
        f"{where}: no tensors found; top-level keys are {sorted(map(str, raw))[:10]} "
        f"(expected a state dict, or one under {list(_WRAPPER_KEYS)})"
    )


def _rename_timm_resnetv2(key: str) -> str:
    """timm ResNetV2 (pre-activation) names -> this project's torchvision-style names."""
    match = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
    if match:
        stage, block, rest = match.groups()
        rest = re.sub(r"^norm(\d)\.", r"bn\1.", rest)
        rest = rest.replace("downsample.conv.", "downsample.0.")
        return f"layer{int(stage) + 1}.{block}.{rest}"
    if key.startswith("stem.conv."):
        return "conv1." + key[len("stem.conv."):]
    if key.startswith("head.fc."):
        return "fc." + key[len("head.fc."):]
    return key


def _prefixes(keys, depth: int = 3) -> List[str]:
    found = {""}
    for key in keys:
        parts = key.split(".")
        for n in range(1, min(depth, len(parts) - 1) + 1):
            found.add(".".join(parts[:n]) + ".")
    return sorted(found, key=len)


def _count(keys, strip: str, add: str, model_keys: set) -> int:
    return sum(1 for k in keys if k.startswith(strip) and add + k[len(strip):] in model_keys)


def _align(source_keys: List[str], model_keys: set) -> Tuple[str, str]:
    """The (prefix to strip, prefix to add) that maps the most checkpoint keys onto model keys."""
    model_by_add = {
        add: {k[len(add):] for k in model_keys if k.startswith(add)} for add in _prefixes(model_keys)
    }
    best, best_count = ("", ""), -1
    for strip in _prefixes(source_keys):
        stripped = {k[len(strip):] for k in source_keys if k.startswith(strip)}
        for add, suffixes in model_by_add.items():
            count = len(stripped & suffixes)
            # Prefixes come shortest first and ties keep the earlier pair: no renaming unless it helps.
            if count > best_count:
                best, best_count = (strip, add), count
    return best


def load_weights(
    model: nn.Module, source: WeightsSource, *, strict: bool = True, skip_mismatched: bool = False
) -> LoadReport:
    """Load a checkpoint into `model`, renaming keys where a known layout needs it.

    Args:
        model: any module of this project (a ResNet, a backbone, a detector) or another module.
        source: a path, an http(s) URL (cached by torch.hub; offline gives an error naming the URL and where
            to put the file), a weights name (``"torchvision://resnet50"``; see `resnet_fpn.hub`), or a state dict, possibly wrapped (``{"state_dict": ...}``, ``{"model": ...}``, a Lightning
            checkpoint).
        strict: raise if any model key is missing or any checkpoint key is left over.
        skip_mismatched: leave tensors whose shapes differ at their init and report them (fine-tuning a
            detector on another number of classes, as detectron2 does) instead of raising. They count as
            missing for `strict`.

    Returns:
        A `LoadReport` (loaded, missing, unexpected, mismatched and renamed keys); also logged at INFO level.
        With ``strict=False`` deciding what a missing or unexpected key means is the caller's: backbones
        (``build_backbone``) and detectors (``build_detector``) each have their rule.

    Raises:
        ValueError: a shape mismatch (the key and both shapes), or, with `strict`, missing/unexpected keys
            (the first few and the counts); also unreadable files and unreachable URLs.
        FileNotFoundError: the path does not exist.

    Example:
        >>> import torchvision
        >>> model = build_resnet("resnet50")
        >>> report = load_weights(model, torchvision.models.resnet50().state_dict())
        >>> report.missing, report.unexpected
        ([], [])
    """
    raw, where = read_state_dict(source)
    report = LoadReport(source=where)
    model_state = model.state_dict()
    model_keys = {k for k in model_state if not _IGNORED.search(k)}

    renamed = {k: _NOISE.sub(r"\1", k) for k in raw if not _IGNORED.search(k)}
    strip, add = _align(list(renamed.values()), model_keys)
    # timm's pre-activation layout is renamed only when that fits the model better.
    v2 = {k: _rename_timm_resnetv2_nested(v) for k, v in renamed.items()}
    if v2 != renamed:
        v2_strip, v2_add = _align(list(v2.values()), model_keys)
        if _count(v2.values(), v2_strip, v2_add, model_keys) > _count(renamed.values(), strip, add, model_keys):
            renamed, strip, add = v2, v2_strip, v2_add

    to_load: Dict[str, Tensor] = {}
    for key, new in renamed.items():
        if not new.startswith(strip):
            report.unexpected.append(key)
            continue
        target = add + new[len(strip):]
        if target not in model_keys:
            report.unexpected.append(key)
            report.unexpected_targets[key] = target
            continue
        expected = model_state[target].shape
        tensor = raw[key]
        if tensor.dim() == 4 and tensor.shape[2:] == (1, 1) and tensor.shape[:2] == expected:
            tensor = tensor.flatten(1)  # timm's ResNetV2 head is a 1x1 conv; ours is a Linear
        if tensor.shape != expected and skip_mismatched:
            report.mismatched.append((target, tuple(tensor.shape), tuple(expected)))
            continue
        if tensor.shape != expected:
            raise ValueError(
                f"{where}: shape mismatch for {target!r}: checkpoint {key!r} has {tuple(raw[key].shape)}, "
                f"model expects {tuple(expected)}"
            )
        if target != key:
            report.converted.append((key, target))
        to_load[target] = tensor
    report.loaded = sorted(to_load)
    report.missing = sorted(model_keys - set(to_load))
    report.unexpected.sort()
    if strict and (report.missing or report.unexpected):
        raise ValueError(
            f"{where} does not fit {type(model).__name__} (strict=True): "
            f"{len(report.missing)} missing keys [{_first(report.missing)}], "
            f"{len(report.unexpected)} unexpected keys [{_first(report.unexpected)}]"
        )
    if not to_load:
        raise ValueError(
            f"{where}: no key of the checkpoint fits {type(model).__name__}; checkpoint keys look like "
            f"[{_first(sorted(raw))}], model keys like [{_first(sorted(model_keys))}]"
        )
    model.load_state_dict(to_load, strict=False)
    log.info("load_weights: %s", report.summary())
    return report


def _rename_timm_resnetv2_nested(key: str) -> str:
    """Apply the ResNetV2 renaming after any leading prefix such as ``backbone.body.``."""
    match = re.search(r"(^|\.)(stem\.conv\.|stages\.\d+\.blocks\.|head\.fc\.)", key)
    if not match:
        return key
    start = match.start(2)
    return key[:start] + _rename_timm_resnetv2(key[start:])
