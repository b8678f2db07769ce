"""detectron2's ImageNet pickles: a reader that runs no code, and Caffe2 names -> this project's names.

detectron2's ``ImageNetPretrained/*.pkl`` files (MSRA's ResNet-50/101, FAIR's ResNeXt-101-32x8d) are Python
pickles of numpy arrays with Caffe2 blob names (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``,
``res2_0_branch1_bn_b``, ``fc1000_w``...), flat or under ``"blobs"``. The rules below are Caffe2's naming as
detectron2's ``c2_model_loading.convert_basic_c2_names`` reads it: ``res<S>_<i>_branch2{a,b,c}`` is block ``i``
of stage ``S`` (our ``layer<S-1>``) and its convs 1..3, ``branch1`` the projection shortcut, ``_bn_s``/``_bn_b``
an AffineChannel's scale and bias, ``_bn_rm``/``_bn_riv`` running mean and variance where a file has them.
"""
from __future__ import annotations

import importlib
import io
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["RefusedPickleError", "read_detectron2_pickle", "is_caffe2_names", "convert_detectron2_names", "BN_EPS", "CHANNELS"]

log = logging.getLogger(__name__)

CHANNELS = ("RGB", "BGR")
# The eps of torch's BatchNorm2d and torchvision's FrozenBatchNorm2d: an AffineChannel (scale and bias only)
# becomes a BatchNorm with running_mean 0 and running_var 1 - eps, so that BN computes exactly x * s + b.
BN_EPS = 1e-5

# The globals a pickle of numpy arrays needs, and nothing else: no file in a weights cache may run code.
# numpy >= 2 moved numpy.core to numpy._core (older pickles name the former); protocol 2 pickles written by
# Python 3 spell bytes as _codecs.encode(str, "latin1"); protocol 5 uses numeric._frombuffer.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"), ("collections", "OrderedDict"),
}


class RefusedPickleError(ValueError):
    """A weights pickle that asks for a global outside numpy's array reconstruction: refused, nothing run."""


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy's array-reconstruction globals (`_ALLOWED_GLOBALS`)."""

    def find_class(self, module: str, name: str):  # noqa: D102 (pickle's protocol)
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _RefusedGlobal(module, name)
        if module.startswith("numpy.core.") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core." + module[len("numpy.core."):]  # the same function, without the warning
        return getattr(importlib.import_module(module), name)


def read_detectron2_pickle(path: Union[str, Path]) -> Dict[str, object]:
    """Read a detectron2/Detectron ``.pkl`` weights file without running any code from it.

    Args:
        path: the file. A pickle whose arrays sit under ``"blobs"`` (Detectron's ImageNet files) or
            ``"model"`` (detectron2's own checkpoints) is unwrapped; Python 2 pickles are read with
            ``encoding="latin1"``, as detectron2 does.

    Returns:
        ``{name: numpy array}`` (other values, such as ``"__author__"``, are left out).

    Raises:
        RefusedPickleError: (a ValueError) the pickle names a global other than numpy's array reconstruction
            (the file and the global are named; nothing of it was run).
        ValueError: the file is corrupt, a torch.save zip, or holds no arrays.
    """
    path = Path(path)
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise ValueError(f"{path} is a torch.save file, not a detectron2 pickle; it is read with torch.load")
    try:
        raw = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise RefusedPickleError(
            f"refused to read {path}: the pickle asks for the global {exc.qualified}, and a weights file may "
            f"only hold numpy arrays (allowed: {', '.join(sorted('.'.join(g) for g in _ALLOWED_GLOBALS))}); "
            f"nothing from it was run"
        ) from None
    except Exception as exc:  # truncated or not a pickle: name the file
        raise ValueError(f"could not read weights file {path} as a detectron2 pickle: {exc}") from exc
    for key in ("blobs", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping of names to arrays, got {type(raw).__name__}")
    arrays = {str(k): v for k, v in raw.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise ValueError(f"{path}: no arrays found; top-level keys are {sorted(map(str, raw))[:10]}")
    return arrays


_BLOCK = re.compile(r"^res(\d+)_(\d+)_branch(1|2[abc])_(.+)$")
_STEM = {"conv1_w": "conv1.weight", "conv1_b": "conv1.bias", "fc1000_w": "fc.weight", "fc1000_b": "fc.bias",
         "pred_w": "fc.weight", "pred_b": "fc.bias"}
_BN_SUFFIX = {"bn_s": "weight", "bn_b": "bias", "bn_rm": "running_mean", "bn_riv": "running_var"}
_CONV_SUFFIX = {"w": "weight", "b": "bias"}


def is_caffe2_names(keys) -> bool:
    """True when `keys` look like Caffe2 ResNet blobs (``conv1_w`` and ``res<S>_<i>_branch...``)."""
    keys = list(keys)
    return "conv1_w" in keys and any(_BLOCK.match(k) for k in keys)


def _rename(key: str) -> str:
    if key in _STEM:
        return _STEM[key]
    if key.startswith("res_conv1_") and key[len("res_conv1_"):] in _BN_SUFFIX:
        return "bn1." + _BN_SUFFIX[key[len("res_conv1_"):]]
    match = _BLOCK.match(key)
    if not match:
        return key  # left as it is: load_weights reports it as unexpected
    stage, block, branch, rest = match.groups()
    prefix = f"layer{int(stage) - 1}.{block}."
    if branch == "1":
        module_conv, module_bn = "downsample.0", "downsample.1"
    else:
        n = "abc".index(branch[1]) + 1
        module_conv, module_bn = f"conv{n}", f"bn{n}"
    if rest in _BN_SUFFIX:
        return f"{prefix}{module_bn}.{_BN_SUFFIX[rest]}"
    if rest in _CONV_SUFFIX:
        return f"{prefix}{module_conv}.{_CONV_SUFFIX[rest]}"
    return key


def convert_detectron2_names(blobs: Mapping[str, object], *, channels: str = "BGR") -> Dict[str, Tensor]:
    """Caffe2-named ResNet blobs -> a torchvision-style state dict that takes RGB input.

    Args:
        blobs: ``{caffe2 name: array or tensor}`` (what `read_detectron2_pickle` returns).
        channels: the channel order the source's first conv expects. ``"BGR"`` (MSRA's and FAIR's Caffe2
            nets, detectron2's default ``INPUT.FORMAT``) reverses ``conv1.weight``'s input channels, so the
            converted network takes RGB and the weights' ``Preprocessing.image_mean``/``image_std`` apply with
            no channel flip at run time (the convention of ``resnet_fpn.preprocessing``).

    Returns:
        ``{name: tensor}`` with ``conv1.weight``, ``bn1.*``, ``layer<N>.<i>.conv<k>.weight``, ``bn<k>.*``,
        ``downsample.0.weight``, ``downsample.1.*`` and ``fc.*``. A BN given only as scale and bias (Caffe2's
        AffineChannel) gets ``running_mean`` 0 and ``running_var`` 1 - `BN_EPS`; ``*_momentum`` blobs (SGD
        state) are dropped; other names are kept unchanged, so a loader reports them.

    Raises:
        ValueError: `channels` is not ``"RGB"`` or ``"BGR"``, or two blobs map to one name.
        TypeError: a value is neither a numpy array nor a tensor.
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    out: Dict[str, Tensor] = {}
    for key, value in blobs.items():
        if key.endswith("_momentum"):
            continue
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise TypeError(f"blob {key!r} must be a numpy array or a tensor, got {type(value).__name__}")
        new = _rename(key)
        if new in out:
            raise ValueError(f"blobs {key!r} and another map to the same name {new!r}")
        out[new] = value
    for scale in [k for k in out if k.endswith(".weight") and (k.startswith("bn1.") or ".bn" in k
                                                               or ".downsample.1." in k)]:
        module = scale[: -len("weight")]
        out.setdefault(module + "running_mean", torch.zeros_like(out[scale]))
        out.setdefault(module + "running_var", torch.full_like(out[scale], 1.0 - BN_EPS))
    if channels == "BGR" and "conv1.weight" in out:
        out["conv1.weight"] = out["conv1.weight"][:, [2, 1, 0]].contiguous()
    return out
