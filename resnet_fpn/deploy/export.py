"""Export backbones (ResNet + FPN) and whole detectors to ONNX and TorchScript, and check the files.

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
two sizes is what proves it for a given model.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "FORMATS",
    "DEFAULT_TOLERANCES",
    "INSTALL_HINT",
    "ExportedModel",
    "OutputDiff",
    "ParityCase",
    "ParityReport",
    "check_format",
    "require_onnx",
    "is_detector",
    "export_onnx",
    "export_torchscript",
    "export_model",
    "parity_inputs",
    "check_parity",
]

FORMATS: Tuple[str, ...] = ("onnx", "torchscript")
#: Largest allowed difference, relative to the largest magnitude of each eager output (see `OutputDiff`).
#: ONNX Runtime fuses and reorders float32 arithmetic (1e-6 typical); TorchScript runs the same kernels as
#: eager. Detector boxes go through the resize, box decoding and NMS, hence the looser 1e-3.
DEFAULT_TOLERANCES: Dict[Tuple[str, str], float] = {
    ("onnx", "backbone"): 1e-4,
    ("torchscript", "backbone"): 1e-5,
    ("onnx", "detector"): 1e-3,
    ("torchscript", "detector"): 1e-5,
}
INSTALL_HINT = "pip install 'resnet_fpn[export]'  (or: pip install onnx onnxruntime)"
DETECTION_KEYS: Tuple[str, ...] = ("boxes", "scores", "labels", "masks")
DEFAULT_OPSET = 17
# The smallest opset torchvision's detectors export to (RoIAlign, NonMaxSuppression); the backbone needs less.
MIN_OPSET = 11

PathLike = Union[str, "os.PathLike[str]"]


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


def is_detector(model: nn.Module) -> bool:
    """True for torchvision's detectors (Faster/Mask R-CNN, RetinaNet, FCOS), which `export_*` handle whole.

    Args:
        model: any module.

    Returns:
        Whether `model` is one of torchvision's detection models.
    """
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    return isinstance(model, (GeneralizedRCNN, RetinaNet, FCOS))


def _has_masks(detector: nn.Module) -> bool:
    roi_heads = getattr(detector, "roi_heads", None)
    return roi_heads is not None and roi_heads.has_mask()


def _check_size(name: str, size: Sequence[int]) -> Tuple[int, int]:
    if (
        isinstance(size, (str, bytes))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 32 for s in size)
    ):
        raise ValueError(f"{name} must be (height, width), two ints >= 32, got {size!r}")
    return int(size[0]), int(size[1])


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


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
        path: output ``.onnx`` file (its folder is created).
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
    """
    onnx, _ = require_onnx()
    size = _check_size("example_size", example_size)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET}, got {opset!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    kind = "detector" if is_detector(model) else "backbone"
    example = _example_input(kind, size, _device_of(model))
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
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one (which needs the onnxscript
        # package), and tracing warns at every shape turned into a Python number; the parity check is what
        # tells whether the file is right, so these warnings would only bury its result.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit's notices, from inside the exporter
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=names,
                dynamic_axes=axes or None,
            )
    onnx.checker.check_model(str(path))
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit's deprecation notices
        with torch.no_grad():
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
        path: output file (``.pt``; its folder is created).
        example_size: (height, width) of the trace input. Any size works afterwards (see the module notes);
            a detector's backbone is traced at this size rounded up to a multiple of 32, as the detector pads.

    Returns:
        The `ExportedModel`. Load with ``torch.jit.load(path)``: a backbone returns the eager dict, a detector
        maps a list of ``(3, H, W)`` images in [0, 1] to a list of detection dicts.

    Raises:
        ValueError: bad `example_size`.
        RuntimeError: TorchScript cannot compile the detector's heads (torch's message is kept).
    """
    size = _check_size("example_size", example_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = _device_of(model)
    if is_detector(model):
        detector = copy.deepcopy(model)
        padded = tuple(int(math.ceil(s / 32) * 32) for s in size)
        detector.backbone = _trace_backbone(detector.backbone, _example_input("backbone", padded, device))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)  # torch.jit.script's deprecation notice
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.jit.save(module, str(path))
    return exported


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
    """Export `model` in `format`, optionally after ``optimize_for_inference`` (frozen BN folded into convs).

    Args:
        model: a backbone or a detector (unchanged: optimisation works on a copy).
        path: output file.
        format: "onnx" or "torchscript".
        example_size: see `export_onnx` / `export_torchscript`.
        opset: ONNX opset (ignored for TorchScript).
        dynamic: ONNX only: free height and width (TorchScript always accepts any size).
        optimize: fold BN into the convolutions first (``resnet_fpn.deploy.optimize``); compare the result
            with the original eager model in `check_parity`, which measures what the folding changed.

    Returns:
        The `ExportedModel`.

    Raises:
        ValueError: unknown `format`, bad sizes or opset.
        ImportError: ONNX requested without onnx/onnxruntime.
    """
    check_format(format)
    if format == "onnx":
        require_onnx()  # fail before the (slow) optimisation
    if optimize:
        from resnet_fpn.deploy.optimize import optimize_for_inference

        # channels_last is a memory layout of eager tensors; neither an ONNX graph nor a trace keeps it, so the
        # export gets plain NCHW weights. The fused oneDNN conv ops are eager-only (no ONNX symbolic): the
        # export keeps the folded convs and lets the runtime fuse them.
        model = optimize_for_inference(model, channels_last=False, fuse=False)
    if format == "onnx":
        return export_onnx(model, path, example_size=example_size, opset=opset, dynamic=dynamic)
    return export_torchscript(model, path, example_size=example_size)


# --------------------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputDiff:
    """How far one exported output is from eager on one input.

    Attributes:
        name: the output's name (``feat_0``, ``boxes``...).
        shape: the eager output's shape.
        max_abs: largest absolute difference (float outputs), or the count of differing values (integers).
        max_rel: ``max_abs / max|eager|`` for floats (``max_abs`` when the eager output is all zero), 0 or inf
            for integers (labels must be equal).
        ok: ``max_rel <= tolerance`` and the shapes agree.
        note: why it failed, or how detections were paired.
    """

    name: str
    shape: Tuple[int, ...]
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class ParityCase:
    """All outputs for one input (``description`` like ``"320x480"`` or an image file name)."""

    description: str
    diffs: Tuple[OutputDiff, ...]

    @property
    def ok(self) -> bool:
        """Every output within tolerance."""
        return all(d.ok for d in self.diffs)


@dataclass
class ParityReport:
    """Exported vs eager outputs on every input of `check_parity`.

    Attributes:
        exported: the file checked.
        tolerance: the largest `OutputDiff.max_rel` accepted.
        cases: one per input.
    """

    exported: ExportedModel
    tolerance: float
    cases: List[ParityCase] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every output of every input within tolerance (and at least one input checked)."""
        return bool(self.cases) and all(case.ok for case in self.cases)

    @property
    def max_rel(self) -> float:
        """The largest relative difference over all inputs and outputs."""
        return max((d.max_rel for case in self.cases for d in case.diffs), default=0.0)

    def lines(self) -> List[str]:
        """One line per input and output, then a verdict line.

        Returns:
            Lines such as ``"[320x480] feat_0 (1, 256, 80, 120): max abs 3.1e-06, rel 3.6e-06  ok"``.
        """
        out = []
        for case in self.cases:
            for d in case.diffs:
                note = f"; {d.note}" if d.note else ""
                verdict = "ok" if d.ok else "FAIL"
                out.append(
                    f"[{case.description}] {d.name} {d.shape}: max abs {d.max_abs:.3g}, rel {d.max_rel:.3g}  "
                    f"{verdict}{note}"
                )
        verdict = "PASSED" if self.ok else "FAILED"
        out.append(
            f"parity {verdict}: {self.exported.format} {self.exported.kind} {self.exported.path.name}, max rel "
            f"difference {self.max_rel:.3g} over {len(self.cases)} input(s), tolerance {self.tolerance:g}"
        )
        return out


def parity_inputs(
    kind: str,
    *,
    sizes: Sequence[Tuple[int, int]] = ((320, 480), (384, 256)),
    images: Sequence[Tensor] = (),
    seed: int = 0,
) -> List[Tuple[str, Tensor]]:
    """Inputs for `check_parity`: the given images, or random ones of the given sizes.

    Args:
        kind: "backbone" (inputs ``(1, 3, H, W)``, standard normal like normalised images) or "detector"
            (``(3, H, W)`` in [0, 1]).
        sizes: (height, width) of the random inputs, used when `images` is empty.
        images: ``(3, H, W)`` float images in [0, 1] (e.g. ``Predictor``-loaded photos); for a backbone they are
            normalised with ImageNet's mean and std, as the detector's transform does.
        seed: seed of the random inputs.

    Returns:
        ``(description, tensor)`` pairs.

    Raises:
        ValueError: unknown kind, bad sizes, or an image that is not ``(3, H, W)``.
    """
    if kind not in ("backbone", "detector"):
        raise ValueError(f"kind must be 'backbone' or 'detector', got {kind!r}")
    out: List[Tuple[str, Tensor]] = []
    if images:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"parity images must be (3, H, W) tensors, got {getattr(image, 'shape', image)!r}")
            image = image.float()
            x = image if kind == "detector" else ((image - mean.to(image)) / std.to(image))[None]
            out.append((f"image {index} {image.shape[1]}x{image.shape[2]}", x))
        return out
    generator = torch.Generator().manual_seed(seed)
    for size in sizes:
        h, w = _check_size("size", size)
        x = torch.rand(3, h, w, generator=generator) if kind == "detector" else torch.randn(
            1, 3, h, w, generator=generator)
        out.append((f"{h}x{w}", x))
    return out


def _runner(exported: ExportedModel) -> Callable[[Tensor], Dict[str, np.ndarray]]:
    """A function running the exported file on one input, returning its outputs by eager key."""
    keys = list(exported.output_keys)
    if exported.format == "onnx":
        _, ort = require_onnx()
        session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])

        def run_onnx(x: Tensor) -> Dict[str, np.ndarray]:
            outputs = session.run(list(exported.output_names), {exported.input_name: x.detach().cpu().numpy()})
            return OrderedDict(zip(keys, outputs))

        return run_onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        module = torch.jit.load(str(exported.path), map_location="cpu")
    module.eval()

    def run_script(x: Tensor) -> Dict[str, np.ndarray]:
        with torch.no_grad(), warnings.catch_warnings():
            # "RCNN always returns a (Losses, Detections) tuple in scripting": _ScriptedDetector handles that.
            warnings.simplefilter("ignore", category=UserWarning)
            out = module([x.cpu()])[0] if exported.kind == "detector" else module(x.cpu())
        if isinstance(out, Tensor):
            out = {"output": out}
        return OrderedDict((k, out[k].numpy()) for k in keys)

    return run_script


def _eager_outputs(model: nn.Module, exported: ExportedModel, x: Tensor) -> Dict[str, np.ndarray]:
    device = _device_of(model)
    with torch.no_grad():
        if exported.kind == "detector":
            out = model([x.to(device)])[0]
        else:
            out = model(x.to(device))
    if isinstance(out, Tensor):
        out = {"output": out}
    return OrderedDict((k, out[k].detach().cpu().numpy()) for k in exported.output_keys)


def _float_diff(name: str, ref: np.ndarray, got: np.ndarray, tolerance: float, note: str = "") -> OutputDiff:
    shape = tuple(int(s) for s in ref.shape)
    if ref.shape != got.shape:
        return OutputDiff(name, shape, math.inf, math.inf, False, f"exported shape {tuple(got.shape)}")
    if ref.size == 0:
        return OutputDiff(name, shape, 0.0, 0.0, True, note)
    if not np.issubdtype(ref.dtype, np.floating):
        wrong = int(np.count_nonzero(ref != got))
        return OutputDiff(name, shape, float(wrong), 0.0 if wrong == 0 else math.inf, wrong == 0,
                          note or ("" if wrong == 0 else f"{wrong} values differ"))
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    max_abs = float(np.max(np.abs(ref64 - got64)))
    scale = float(np.max(np.abs(ref64)))
    max_rel = max_abs / scale if scale > 0 else max_abs
    return OutputDiff(name, shape, max_abs, max_rel, bool(max_rel <= tolerance), note)


def _match_detections(
    ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], tolerance: float
) -> Tuple[List[Tuple[int, int]], List[int], List[int]]:
    """Pair eager and exported detections: same label, boxes and scores within tolerance.

    Detections are sorted by score, and scores that agree to 1e-7 can swap places between two runtimes
    (random heads score everything alike), so pairing by position would report a mismatch that is none.
    """
    ref_boxes, got_boxes = ref["boxes"].astype(np.float64), got["boxes"].astype(np.float64)
    scale = max(float(np.max(np.abs(ref_boxes))) if ref_boxes.size else 0.0, 1.0)
    if len(ref_boxes) == 0 or len(got_boxes) == 0:
        return [], list(range(len(ref_boxes))), list(range(len(got_boxes)))
    box_cost = np.max(np.abs(ref_boxes[:, None, :] - got_boxes[None, :, :]), axis=2) / scale
    score_cost = np.abs(ref["scores"].astype(np.float64)[:, None] - got["scores"].astype(np.float64)[None, :])
    allowed = (ref["labels"][:, None] == got["labels"][None, :]) & (box_cost <= tolerance) & (score_cost <= tolerance)
    cost = np.where(allowed, box_cost + score_cost, np.inf)
    pairs, used = [], np.zeros(len(got_boxes), dtype=bool)
    for i in range(len(ref_boxes)):  # eager order: highest scores claim their partner first
        row = np.where(used, np.inf, cost[i])
        j = int(np.argmin(row))
        if np.isfinite(row[j]):
            pairs.append((i, j))
            used[j] = True
    matched_ref = {i for i, _ in pairs}
    return pairs, [i for i in range(len(ref_boxes)) if i not in matched_ref], [int(j) for j in np.where(~used)[0]]


def _detection_diffs(ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray], tolerance: float) -> List[OutputDiff]:
    pairs, lost, extra = _match_detections(ref, got, tolerance)
    # A detection present on one side only is acceptable at the cut-off (the lowest kept scores, where a 1e-7
    # score difference decides whether it makes the top-k or the score threshold), nowhere else.
    kept = [ref["scores"][i] for i, _ in pairs]
    floor = (min(kept) if kept else -math.inf) + tolerance
    unmatched_scores = [float(ref["scores"][i]) for i in lost] + [float(got["scores"][j]) for j in extra]
    boundary_only = all(s <= floor for s in unmatched_scores) and (bool(pairs) or not unmatched_scores)
    in_order = all(i == j for i, j in pairs)
    note = (
        f"{len(pairs)}/{len(ref['boxes'])} eager detections paired"
        + (f", {len(extra)} exported unpaired" if extra else "")
        + ("" if in_order else ", order differs (near-equal scores)")
    )
    ref_idx = np.array([i for i, _ in pairs], dtype=np.int64)
    got_idx = np.array([j for _, j in pairs], dtype=np.int64)
    diffs = []
    for key in ref:
        diff = _float_diff(key, ref[key][ref_idx], got[key][got_idx], tolerance, note if key == "boxes" else "")
        # Report the shape of all detections, not of the paired subset compared.
        diff = replace(diff, shape=tuple(int(s) for s in ref[key].shape))
        if key == "boxes" and not boundary_only:
            shown = ", ".join(f"{s:.4g}" for s in sorted(unmatched_scores, reverse=True)[:5])
            diff = replace(diff, max_rel=math.inf, ok=False,
                           note=f"{note}; unpaired detections scoring {shown} above the cut-off {floor:.4g}")
        diffs.append(diff)
    return diffs


def check_parity(
    model: nn.Module,
    exported: ExportedModel,
    *,
    inputs: Sequence[Tuple[str, Tensor]],
    tolerance: Optional[float] = None,
) -> ParityReport:
    """Run the exported file (onnxruntime on the CPU, or ``torch.jit.load``) and `model` on each input; compare.

    Float outputs are compared by ``max|exported - eager| / max|eager|`` per output (scale-free: feature maps
    are O(1), boxes O(image size)); integer outputs (labels) must be equal. Detections are paired by label,
    box and score before comparing, since near-equal scores may come out in another order (see
    ``OutputDiff.note``).

    Args:
        model: the eager model the file was exported from (the original, also when the export was optimised).
        exported: what `export_onnx` / `export_torchscript` / `export_model` returned.
        inputs: ``(description, tensor)`` pairs, e.g. from `parity_inputs`.
        tolerance: largest accepted relative difference (default `DEFAULT_TOLERANCES` for the format and kind).

    Returns:
        The `ParityReport` (``report.ok``, ``report.lines()``).

    Raises:
        ValueError: no inputs, or a non-positive tolerance.
        ImportError: an ONNX file without onnxruntime.
    """
    if not inputs:
        raise ValueError("check_parity needs at least one input")
    tol = DEFAULT_TOLERANCES[(exported.format, exported.kind)] if tolerance is None else float(tolerance)
    if not tol > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    model.eval()
    run = _runner(exported)
    report = ParityReport(exported=exported, tolerance=tol)
    for description, x in inputs:
        ref = _eager_outputs(model, exported, x)
        got = run(x)
        if exported.kind == "detector":
            diffs = _detection_diffs(ref, got, tol)
        else:
            diffs = [_float_diff(name, ref[key], got[key], tol)
                     for name, key in zip(exported.output_names, exported.output_keys)]
        report.cases.append(ParityCase(description, tuple(diffs)))
    return report
