"""Parity of exported files with the eager model: run both on the same inputs and compare every output.

Float outputs are compared by ``max|exported - eager| / max|eager|`` per output (scale-free: feature maps are
O(1), boxes O(image size)); integer outputs (labels) must be equal. Detections are paired by label, box and
score before comparing, since near-equal scores may come out in another order in another runtime.

ONNX files run in onnxruntime on the CPU, TorchScript files through ``torch.jit.load``; the files and how to
call them are described by ``resnet_fpn.deploy.export.ExportedModel``.
"""
from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..detectors import is_detector
from .export import ExportedModel, check_size, require_onnx
from .optimize import model_device

__all__ = [
    "DEFAULT_TOLERANCES",
    "IMAGENET_MEAN_STD",
    "OutputDiff",
    "ParityCase",
    "ParityReport",
    "input_normalization",
    "parity_inputs",
    "check_parity",
    "compare_outputs",
]

#: Largest allowed difference, relative to the largest magnitude of each eager output (see `OutputDiff`).
#: ONNX Runtime fuses and reorders float32 arithmetic (1e-6 typical); TorchScript runs the same kernels as
#: eager. Detector boxes go through the resize, box decoding and NMS, hence the looser 1e-3.
DEFAULT_TOLERANCES: Dict[Tuple[str, str], float] = {
    ("onnx", "backbone"): 1e-4,
    ("torchscript", "backbone"): 1e-5,
    ("onnx", "detector"): 1e-3,
    ("torchscript", "detector"): 1e-5,
}
#: ImageNet's per-channel (mean, std) of RGB images in [0, 1]. A bare backbone has no transform of its own:
#: by torchvision's convention it expects images normalised as its ImageNet weights were trained, which is
#: also what torchvision's detectors default ``GeneralizedRCNNTransform``'s ``image_mean``/``image_std`` to.
IMAGENET_MEAN_STD: Tuple[Tuple[float, ...], Tuple[float, ...]] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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


def input_normalization(model: nn.Module) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The (mean, std) with which `model`'s backbone expects its input images normalised.

    Args:
        model: a detector of ``is_detector`` (its transform's ``image_mean`` and ``image_std``, what it applies
            in front of its backbone), or anything else (`IMAGENET_MEAN_STD`, see there).

    Returns:
        ``(mean, std)``, one value per channel each.
    """
    if is_detector(model):
        return tuple(float(v) for v in model.transform.image_mean), tuple(float(v) for v in model.transform.image_std)
    return IMAGENET_MEAN_STD


def parity_inputs(
    kind: str,
    *,
    sizes: Sequence[Tuple[int, int]] = ((320, 480), (384, 256)),
    images: Sequence[Tensor] = (),
    seed: int = 0,
    normalization: Tuple[Sequence[float], Sequence[float]] = IMAGENET_MEAN_STD,
) -> List[Tuple[str, Tensor]]:
    """Inputs for `check_parity`: the given images, or random ones of the given sizes.

    Args:
        kind: "backbone" (inputs ``(1, 3, H, W)``, standard normal like normalised images) or "detector"
            (``(3, H, W)`` in [0, 1]).
        sizes: (height, width) of the random inputs, used when `images` is empty.
        images: ``(3, H, W)`` float images in [0, 1] (e.g. ``Predictor``-loaded photos); for a backbone they are
            normalised with `normalization`, as the detector's transform does in front of it.
        seed: seed of the random inputs.
        normalization: ``(mean, std)`` per channel for backbone images: ``input_normalization(detector)`` for
            a detector's backbone, ImageNet's (the default) for a backbone built alone.

    Returns:
        ``(description, tensor)`` pairs.

    Raises:
        ValueError: unknown kind, bad sizes, an image that is not ``(3, H, W)``, or a normalisation that is not
            three means and three positive stds.
    """
    if kind not in ("backbone", "detector"):
        raise ValueError(f"kind must be 'backbone' or 'detector', got {kind!r}")
    if len(normalization) != 2 or any(len(v) != 3 for v in normalization) or not all(s > 0 for s in normalization[1]):
        raise ValueError(f"normalization must be (mean, std) of 3 values each, std > 0, got {normalization!r}")
    mean, std = (torch.tensor([float(v) for v in values]).view(3, 1, 1) for values in normalization)
    out: List[Tuple[str, Tensor]] = []
    if images:
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"parity images must be (3, H, W) tensors, got {getattr(image, 'shape', image)!r}")
            image = image.float()
            x = image if kind == "detector" else ((image - mean.to(image)) / std.to(image))[None]
            out.append((f"image {index} {image.shape[1]}x{image.shape[2]}", x))
        return out
    generator = torch.Generator().manual_seed(seed)
    for size in sizes:
        h, w = check_size("size", size)
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
        # torch >= 2.9 marks torch.jit deprecated; TorchScript is the format asked for (see export.py's notes).
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        module = torch.jit.load(str(exported.path), map_location="cpu")
    module.eval()

    def run_script(x: Tensor) -> Dict[str, np.ndarray]:
        with torch.no_grad(), warnings.catch_warnings():
            # Scripted torchvision detectors say so on every call; export's _ScriptedDetector unwraps the tuple.
            warnings.filterwarnings("ignore", message=r"RCNN always returns a \(Losses, Detections\) tuple",
                                    category=UserWarning)
            out = module([x.cpu()])[0] if exported.kind == "detector" else module(x.cpu())
        if isinstance(out, Tensor):
            out = {"output": out}
        return OrderedDict((k, out[k].numpy()) for k in keys)

    return run_script


def _eager_outputs(model: nn.Module, exported: ExportedModel, x: Tensor) -> Dict[str, np.ndarray]:
    device = model_device(model)
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


def compare_outputs(kind: str, ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray],
                    tolerance: float) -> List[OutputDiff]:
    """Compare one input's outputs of two runs of the same model (what `check_parity` does per input).

    Args:
        kind: "backbone" (outputs compared key by key) or "detector" (detections paired by label, box and
            score first, see `check_parity`).
        ref: the reference run's outputs by key (numpy arrays).
        got: the other run's, same keys.
        tolerance: largest accepted relative difference.

    Returns:
        One `OutputDiff` per key of `ref`.

    Raises:
        ValueError: unknown kind, or `got` lacks a key of `ref`.
    """
    if kind not in ("backbone", "detector"):
        raise ValueError(f"kind must be 'backbone' or 'detector', got {kind!r}")
    missing = [k for k in ref if k not in got]
    if missing:
        raise ValueError(f"outputs {missing} missing from the run compared (it has {list(got)})")
    if kind == "detector":
        return _detection_diffs(ref, got, tolerance)
    return [_float_diff(key, ref[key], got[key], tolerance) for key in ref]


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
