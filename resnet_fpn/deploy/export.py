"""Export backbones (ResNet + FPN) and whole detectors to ONNX and TorchScript.

Two kinds of model are exported:

* **backbone**: any module returning a dict of feature maps (``build_backbone("resnet50-fpn")``: keys
  ``"0".."3"``, ``"pool"``) or a tensor. Input ``images``: ``(B, 3, H, W)`` float, already normalised (the
  detector's transform does that in front of the backbone). The dict becomes a tuple in the dict's key
  order; the outputs are named ``feat_<key>`` (``feat_0`` ... ``feat_pool``): the TorchScript-based ONNX
  exporter refuses value names made of digits only, so the bare keys cannot be used.
* **detector**: torchvision's Faster/Mask R-CNN, RetinaNet and FCOS (``build_detector``). ONNX input
  ``image``: one ``(3, H, W)`` float image in ``[0, 1]`` at its own size (the graph holds the resize and
  normalisation); outputs ``boxes``, ``scores``, ``labels`` (and ``masks`` for Mask R-CNN), in original
  image pixels. TorchScript: ``model([image, ...]) -> [{"boxes", "labels", "scores"(, "masks")}, ...]``,
  as the eager detector in eval mode.

ONNX uses torch's TorchScript-based exporter, ``torch.onnx.export(..., dynamo=False)``: it exports dynamic
height and width for the backbone and for torchvision's detectors (whose ONNX support is written for this
exporter), and needs only the ``onnx`` package. TorchScript traces the backbone (its ``OrderedDict``
annotations are not scriptable) and scripts the rest of a detector around the traced backbone. A trace
records shape arithmetic as graph operations, so the outputs follow the input size; the parity check at
two sizes is what proves it for a given model (``resnet_fpn.deploy.parity``).
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..detectors import is_detector
from ..files import atomic_path
from .optimize import fold_batchnorm, model_device

__all__ = [
    "FORMATS",
    "INSTALL_HINT",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ExportedModel",
    "check_format",
    "check_size",
    "require_onnx",
    "export_onnx",
    "export_torchscript",
    "export_model",
]

FORMATS: Tuple[str, ...] = ("onnx", "torchscript")
INSTALL_HINT = "pip install 'resnet_fpn[export]'  (or: pip install onnx onnxruntime)"
DETECTION_KEYS: Tuple[str, ...] = ("boxes", "scores", "labels", "masks")
DEFAULT_OPSET = 17
# The smallest opset torchvision's detectors export to (RoIAlign, NonMaxSuppression); the backbone needs less.
MIN_OPSET = 11

PathLike = Union[str, "os.PathLike[str]"]

# What the exporters say on every export, matched by message so that any other warning still shows. None of
# them is about the file written: the parity check (resnet_fpn.deploy.parity) is what says whether it is right.
_EXPORTER_NOTICES: Tuple[Tuple[type, str], ...] = (
    # torch >= 2.9 deprecates the TorchScript-based ONNX exporter and torch.jit; both are chosen on purpose
    # (see the module notes): the dynamo exporter needs onnxscript, and TorchScript is a format asked for.
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),
    (DeprecationWarning, r"The feature will be removed\. Please remove usage of this function"),
    (FutureWarning, r"`torch\.jit\.\w+` is deprecated"),
    # torchvision's detectors call torch.tensor() on tensors (sizes, scales): under the tracer, torch's copy
    # construction advice.
    (UserWarning, r"To copy construct from a tensor, it is recommended to use sourceTensor\.detach\(\)\.clone\(\)"),
    # The exporter describing how it lowered an op: advanced indexing as a Gather/Reshape chain, a strided
    # Slice left unfolded. Both are exact.
    (UserWarning, r"Exporting aten::index operator of advanced indexing"),
    (UserWarning, r"Constant folding - Only steps=1 can be constant folded"),
)


@contextlib.contextmanager
def _exporter_notices_silenced() -> Iterator[None]:
    """Silence `_EXPORTER_NOTICES` and the tracer's TracerWarnings, nothing else.

    TracerWarning is the tracer's own category: "converting a tensor to a Python number/boolean might cause
    the trace to be incorrect" at each shape turned into a constant, dozens per detector. Whether a trace
    generalises is what the parity check at two sizes measures.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        for category, message in _EXPORTER_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


# --------------------------------------------------------------------------------------------------------------
# Checks and optional packages
# --------------------------------------------------------------------------------------------------------------
def check_format(format: str) -> str:
    """Validate an export format name.

    Args:
        format: "onnx" or "torchscript".

    Returns:
        The format.

    Raises:
        ValueError: any other value (the message lists the valid ones).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    return format


def require_onnx() -> Tuple[object, object]:
    """Import the optional ``onnx`` and ``onnxruntime`` packages (the ``export`` extra).

    Returns:
        The ``(onnx, onnxruntime)`` modules.

    Raises:
        ImportError: either is missing; the message names it and the install command.
    """
    modules = []
    for name in ("onnx", "onnxruntime"):
        try:
            modules.append(__import__(name))
        except ImportError as exc:
            raise ImportError(f"ONNX export needs the {name} package, which is not installed: {INSTALL_HINT}") from exc
    return modules[0], modules[1]


def _has_masks(detector: nn.Module) -> bool:
    roi_heads = getattr(detector, "roi_heads", None)
    return roi_heads is not None and roi_heads.has_mask()


def check_size(name: str, size: Sequence[int]) -> Tuple[int, int]:
    """Validate an image size.

    Args:
        name: the argument's name, for the message.
        size: (height, width).

    Returns:
        ``(height, width)`` as ints.

    Raises:
        ValueError: not two ints >= 32.
    """
    if (
        isinstance(size, (str, bytes))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 32 for s in size)
    ):
        raise ValueError(f"{name} must be (height, width), two ints >= 32, got {size!r}")
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------------------------------------------
# Wrappers with fixed tuple outputs (what exporters need)
# --------------------------------------------------------------------------------------------------------------
class _TupleOutputs(nn.Module):
    """A backbone whose dict output becomes a tuple in a fixed key order (a tensor stays a 1-tuple)."""

    def __init__(self, backbone: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.keys = list(keys)

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        out = self.backbone(images)
        if isinstance(out, Tensor):
            return (out,)
        return tuple(out[k] for k in self.keys)


class _DetectorOutputs(nn.Module):
    """One image in, the detections of that image out as a tuple (boxes, scores, labels[, masks])."""

    def __init__(self, detector: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.detector = detector
        self.keys = list(keys)

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        detections = self.detector([image])[0]
        return tuple(detections[k] for k in self.keys)


class _ScriptedDetector(nn.Module):
    """Scripted torchvision detectors return ``(losses, detections)``; this returns the detections only, as
    the eager detector in eval mode does, so that exported and eager models are called the same way."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        _, detections = self.detector(images)
        return detections


def _backbone_keys(backbone: nn.Module, example: Tensor) -> List[str]:
    """Output keys in order: declared by ``output_shape()`` where the module has it, else found by a run."""
    if hasattr(backbone, "output_shape"):
        return [str(k) for k in backbone.output_shape()]
    with torch.inference_mode():
        out = backbone(example)
    if isinstance(out, Tensor):
        return ["output"]
    if isinstance(out, dict):
        return [str(k) for k in out]
    raise TypeError(f"cannot export a backbone returning {type(out).__name__}; expected a dict of tensors or a tensor")


def _output_names(keys: Sequence[str]) -> List[str]:
    return ["output"] if list(keys) == ["output"] else [f"feat_{k}" for k in keys]


def _detection_keys(detector: nn.Module) -> List[str]:
    return [k for k in DETECTION_KEYS if k != "masks" or _has_masks(detector)]


# --------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportedModel:
    """A written export file and how to call it.

    Attributes:
        path: the file.
        format: "onnx" or "torchscript".
        kind: "backbone" or "detector".
        input_name: "images" (backbone, ``(B, 3, H, W)`` normalised) or "image" (detector, ``(3, H, W)`` in
            [0, 1]; TorchScript detectors take a list of such images).
        output_names: ONNX output names in order (``feat_0`` ... for backbones; ``boxes, scores, labels
            [, masks]`` for detectors); for TorchScript, the keys of the returned dicts.
        output_keys: the eager model's keys, aligned with `output_names`.
        dynamic: whether height and width (and the batch of a backbone) are free; TorchScript always is.
        exporter: which exporter wrote it, in words.
    """

    path: Path
    format: str
    kind: str
    input_name: str
    output_names: Tuple[str, ...]
    output_keys: Tuple[str, ...]
    dynamic: bool
    exporter: str


def _example_input(kind: str, size: Tuple[int, int], device: torch.device) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    if kind == "detector":
        return torch.rand(3, *size, generator=generator).to(device)
    return torch.randn(1, 3, *size, generator=generator).to(device)


def export_onnx(
    model: nn.Module,
    path: PathLike,
    *,
    example_size: Tuple[int, int] = (320, 480),
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
) -> ExportedModel:
    """Export a backbone or a whole torchvision detector to ONNX with ``torch.onnx.export(dynamo=False)``.

    Args:
        model: a backbone (dict of feature maps, or a tensor) or a detector of `is_detector`; set to eval mode.
        path: output ``.onnx`` file (its folder is created; written atomically, after ``onnx.checker``).
        example_size: (height, width) of the example input the exporter traces with; with ``dynamic=False``
            the only size the file accepts.
        opset: ONNX opset (>= 11, torchvision's detectors need RoIAlign and NonMaxSuppression).
        dynamic: free batch, height and width for backbones; free height and width for detectors (and a
            free number of detections, always).

    Returns:
        The `ExportedModel` (the file was checked with ``onnx.checker``).

    Raises:
        ImportError: onnx or onnxruntime is missing (the message says what to install).
        ValueError: bad `example_size` or `opset`.
        TypeError: a backbone whose output is neither a dict of tensors nor a tensor.
        OSError: `path` cannot be written (a folder, a file in its way, no permission); the path named.
    """
    onnx, _ = require_onnx()
    size = check_size("example_size", example_size)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET}, got {opset!r}")
    path = Path(path)
    with atomic_path(path) as tmp:  # an unwritable path fails here, before the export's work
        return _export_onnx(model, path, tmp, onnx=onnx, size=size, opset=opset, dynamic=dynamic)


def _export_onnx(model: nn.Module, path: Path, tmp: Path, *, onnx, size: Tuple[int, int], opset: int,
                 dynamic: bool) -> ExportedModel:
    """`export_onnx` into `tmp` (renamed to `path` by the caller once the file passed onnx.checker)."""
    model.eval()
    kind = "detector" if is_detector(model) else "backbone"
    example = _example_input(kind, size, model_device(model))
    if kind == "detector":
        keys = _detection_keys(model)
        wrapper: nn.Module = _DetectorOutputs(model, keys)
        input_name, names = "image", list(keys)
        axes: Dict[str, Dict[int, str]] = {name: {0: "detections"} for name in names}
        if dynamic:
            axes["image"] = {1: "height", 2: "width"}
    else:
        keys = _backbone_keys(model, example)
        wrapper = _TupleOutputs(model, keys)
        input_name, names = "images", _output_names(keys)
        axes = {}
        if dynamic:
            axes["images"] = {0: "batch", 2: "height", 3: "width"}
            axes.update({name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names})
    with _exporter_notices_silenced(), torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=names,
            dynamic_axes=axes or None,
        )
    onnx.checker.check_model(str(tmp))
    return ExportedModel(
        path=path,
        format="onnx",
        kind=kind,
        input_name=input_name,
        output_names=tuple(names),
        output_keys=tuple(keys),
        dynamic=bool(dynamic),
        exporter=f"torch.onnx.export(dynamo=False), TorchScript-based, opset {opset}",
    )


def _trace_backbone(backbone: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    with _exporter_notices_silenced(), torch.no_grad():
        # strict=False: the backbone returns a dict, which a strict trace refuses.
        return torch.jit.trace(backbone, example, strict=False)


def export_torchscript(
    model: nn.Module,
    path: PathLike,
    *,
    example_size: Tuple[int, int] = (320, 480),
) -> ExportedModel:
    """Export a backbone (traced) or a whole detector (scripted around a traced backbone) to TorchScript.

    Args:
        model: a backbone or a detector of `is_detector`; set to eval mode. A detector is copied, the caller's
            module is not changed.
        path: output file (``.pt``; its folder is created; written atomically).
        example_size: (height, width) of the trace input. Any size works afterwards (see the module notes);
            a detector's backbone is traced at this size rounded up to a multiple of 32, as the detector pads.

    Returns:
        The `ExportedModel`. Load with ``torch.jit.load(path)``: a backbone returns the eager dict, a detector
        maps a list of ``(3, H, W)`` images in [0, 1] to a list of detection dicts.

    Raises:
        ValueError: bad `example_size`.
        RuntimeError: TorchScript cannot compile the detector's heads (torch's message is kept).
        OSError: `path` cannot be written (a folder, a file in its way, no permission); the path named.
    """
    size = check_size("example_size", example_size)
    path = Path(path)
    with atomic_path(path) as tmp:  # an unwritable path fails here, before tracing and scripting
        exported, module = _torchscript(model, path, size=size)
        with _exporter_notices_silenced():
            torch.jit.save(module, str(tmp))
    return exported


def _torchscript(model: nn.Module, path: Path, *,
                 size: Tuple[int, int]) -> Tuple[ExportedModel, torch.jit.ScriptModule]:
    """The TorchScript module of `model` and its description (see `export_torchscript`)."""
    model.eval()
    device = model_device(model)
    if is_detector(model):
        detector = copy.deepcopy(model)
        padded = tuple(int(math.ceil(s / 32) * 32) for s in size)
        detector.backbone = _trace_backbone(detector.backbone, _example_input("backbone", padded, device))
        with _exporter_notices_silenced():
            module = torch.jit.script(_ScriptedDetector(detector))
        keys = _detection_keys(model)
        exported = ExportedModel(
            path=path, format="torchscript", kind="detector", input_name="image", output_names=tuple(keys),
            output_keys=tuple(keys), dynamic=True,
            exporter="torch.jit.script of the detector around torch.jit.trace of its backbone",
        )
    else:
        example = _example_input("backbone", size, device)
        keys = _backbone_keys(model, example)
        module = _trace_backbone(model, example)
        exported = ExportedModel(
            path=path, format="torchscript", kind="backbone", input_name="images",
            output_names=tuple(_output_names(keys)), output_keys=tuple(keys), dynamic=True,
            exporter="torch.jit.trace (strict=False)",
        )
    return exported, module


def export_model(
    model: nn.Module,
    path: PathLike,
    *,
    format: str,
    example_size: Tuple[int, int] = (320, 480),
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    optimize: bool = False,
) -> ExportedModel:
    """Export `model` in `format`, optionally with its batch norms folded into the convolutions first.

    Args:
        model: a backbone or a detector (unchanged: folding works on a copy).
        path: output file.
        format: "onnx" or "torchscript".
        example_size: see `export_onnx` / `export_torchscript`.
        opset: ONNX opset (ignored for TorchScript).
        dynamic: ONNX only: free height and width (TorchScript always accepts any size).
        optimize: fold BN into the convolutions first (``fold_batchnorm`` on an eval-mode copy: the step of
            ``optimize_for_inference`` an exported graph keeps; channels_last is a memory layout of eager
            tensors that neither an ONNX graph nor a trace keeps, and autocast and compile are eager-runtime
            options). Compare the file with the original eager model in ``check_parity``, which then also
            measures what the folding changed.

    Returns:
        The `ExportedModel`.

    Raises:
        ValueError: unknown `format`, bad sizes or opset.
        ImportError: ONNX requested without onnx/onnxruntime.
        OSError: `path` cannot be written; the path and the reason named.
    """
    check_format(format)
    if format == "onnx":
        require_onnx()  # fail before the (slow) copy and folding
    if optimize:
        model = copy.deepcopy(model).eval()
        fold_batchnorm(model)
    if format == "onnx":
        return export_onnx(model, path, example_size=example_size, opset=opset, dynamic=dynamic)
    return export_torchscript(model, path, example_size=example_size)
