"""Inference runtimes for ``optimize_for_inference``: torch, ONNX Runtime and OpenVINO, and the "auto" choice.

Measured on one 2-core AVX-512 + bf16 CPU (docs/benchmarks.md, section "AVX-512 + bf16"), the external CPU
runtimes run the very ONNX file ``export_model(..., optimize=True)`` writes faster than our torch path
(folded BN + channels_last): they fuse conv + bias + ReLU/add and pick their own blocked layouts, and for a
detector they also run the heads (RPN, RoI box head) as one graph. So ``runtime="auto"`` picks, per machine
class, the fastest runtime of that measured table that is installed here; machine classes without a
measurement get torch (no claim without a table).

An external runtime runs the exported file with the same call and outputs contract as the torch copy:

* backbone: ``(B, 3, H, W)`` float32 in, the ``OrderedDict`` of feature maps out (the eager keys);
* detector: a list of ``(3, H, W)`` images in [0, 1] in, a list of ``{"boxes", "labels", "scores"(,
  "masks")}`` dicts out, in original image pixels (the ONNX detector holds the resize, the heads and the
  box/mask paste; see ``resnet_fpn.deploy.export``). The whole detector runs in the runtime, not only its
  backbone: the backbone alone in OpenVINO inside the torch detector was measured no faster than our torch
  detector (5.40 s vs 5.28 s, Faster R-CNN R50-FPN 800x1216, one exploratory run), the whole graph in OpenVINO
  3.85 s in that run.

At its first call a ``RuntimeModel`` also runs the torch copy on the same inputs and compares every output
with ``resnet_fpn.deploy.parity.compare_outputs`` (the export issue's tolerances); a runtime that fails, or
that raises, is dropped for the torch copy with a ``UserWarning`` naming the failure.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..machine import Machine, this_machine

__all__ = [
    "RUNTIMES",
    "EXTERNAL_RUNTIMES",
    "FASTEST",
    "BF16_TOLERANCE",
    "check_runtime",
    "runtime_available",
    "available_runtimes",
    "choose_runtime",
    "RuntimeSession",
    "open_session",
    "RuntimeModel",
]

logger = logging.getLogger("resnet_fpn.deploy")

RUNTIMES: Tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
EXTERNAL_RUNTIMES: Tuple[str, ...] = ("onnxruntime", "openvino")
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
_INSTALL = {"onnxruntime": "pip install 'resnet_fpn[export]'", "openvino": "pip install 'resnet_fpn[openvino]'"}

#: machine class -> (kind, precision) -> runtimes fastest first, from one `python -m benchmarks` run per class
#: (docs/benchmarks.md, section "## Machine class: <class>"). "auto" takes the first one installed; a class or
#: case not here gets torch.
#: AVX-512 + bf16: AMD EPYC, 2 cores, run of 2026-12-02 13:29 (subsection "Runtimes ..."), median s at 800x1216:
#:   backbone fp32: OpenVINO 8.82, ONNX Runtime 9.49, ours torch 10.65 (torchvision 20.62);
#:   detector fp32 (Faster R-CNN R50-FPN): ONNX Runtime 7.16, OpenVINO 7.30, ours torch 10.31 (torchvision 21.94);
#:   backbone bf16: OpenVINO bf16 2.67, ours torch bf16 autocast 5.04.
#: AMX: Intel Xeon with AMX + AVX512-BF16, 2 cores, run of 2026-12-02 18:04 (a training job shared the cores),
#: median s at 800x1216:
#:   backbone fp32: OpenVINO 1.73, ONNX Runtime 2.01, ours torch 3.13 (torchvision 5.37);
#:   detector fp32 (Faster R-CNN R50-FPN): OpenVINO 4.53, ours torch 4.70, ONNX Runtime 5.26 (torchvision 12.02);
#:   backbone bf16: OpenVINO bf16 0.51, ours torch bf16 autocast 2.20.
#: No ("detector", "bf16") row anywhere: on AMX (run of 2026-12-06 12:18) OpenVINO bf16 ran the whole Faster
#: R-CNN in 0.31 s against ours torch bf16 0.82 s, but its bf16 detections fail the first-call parity check
#: against the torch copy (trained checkpoints: unpaired detections scoring up to 0.65, masks 0.39 apart), so
#: "auto" would only export, warn and fall back; torch it is.
FASTEST: Dict[str, Dict[Tuple[str, str], Tuple[str, ...]]] = {
    "AMX": {
        ("backbone", "fp32"): ("openvino", "onnxruntime", "torch"),
        ("detector", "fp32"): ("openvino", "torch", "onnxruntime"),
        ("backbone", "bf16"): ("openvino", "torch"),
    },
    "AVX-512 + bf16": {
        ("backbone", "fp32"): ("openvino", "onnxruntime", "torch"),
        ("detector", "fp32"): ("onnxruntime", "openvino", "torch"),
        ("backbone", "bf16"): ("openvino", "torch"),
    },
}

#: Parity tolerance of a bf16 run against the float32 torch copy (relative to each output's max |value|):
#: bf16 keeps 8 bits of mantissa, and our torch bf16 autocast backbone differs from float32 by 2.0e-2 per level
#: (docs/benchmarks.md, "backbone bf16"); two bf16 runs (the runtime's, torch's) can differ by twice that. 0.1
#: still catches a broken graph (wrong layout, a missing fold: differences of O(1)).
BF16_TOLERANCE = 1e-1


def check_runtime(runtime: object) -> str:
    """Validate a runtime name.

    Args:
        runtime: one of `RUNTIMES`.

    Returns:
        The name.

    Raises:
        TypeError: not a str.
        ValueError: another name (the message lists the valid ones).
    """
    if not isinstance(runtime, str):
        raise TypeError(f"runtime must be a str, one of {RUNTIMES}, got {type(runtime).__name__} {runtime!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    return runtime


def runtime_available(runtime: str) -> bool:
    """Whether `runtime` can run here ("torch" always; the others when their package imports, with ``onnx``
    for the export).

    Args:
        runtime: one of `RUNTIMES` but "auto".

    Raises:
        ValueError: an unknown name or "auto".
    """
    if check_runtime(runtime) == "auto":
        raise ValueError("runtime_available needs a concrete runtime, not 'auto'")
    if runtime == "torch":
        return True
    for name in ("onnx", _MODULES[runtime]):
        try:
            __import__(name)
        except ImportError:
            return False
    return True


def available_runtimes() -> Tuple[str, ...]:
    """The concrete runtimes usable here, torch first."""
    return tuple(r for r in RUNTIMES[1:] if runtime_available(r))


def choose_runtime(
    runtime: str,
    *,
    kind: str,
    dtype: Optional[torch.dtype],
    device: Union[str, torch.device],
    compile: bool = False,
    machine: Optional[Machine] = None,
) -> Tuple[str, str]:
    """The runtime a model runs in, and why (one line, for logs and the CLIs).

    "auto": torch for CUDA models, ``compile=True`` (inductor is torch's) and float16; otherwise the first
    runtime of ``FASTEST[machine class][(kind, precision)]`` that is installed; torch where the table has no
    row for this machine class. A named external runtime needs a CPU model, float32 or bfloat16 (OpenVINO
    only), no ``compile``, and its package.

    Args:
        runtime: one of `RUNTIMES`.
        kind: "backbone" or "detector".
        dtype: None/float32, or the lower precision asked for.
        device: the model's device.
        compile: whether ``torch.compile`` was asked for.
        machine: the machine (None: ``this_machine(device)``; a CUDA device skips the look-up).

    Returns:
        ``(runtime, reason)``, runtime one of "torch", "onnxruntime", "openvino".

    Raises:
        ValueError: an unknown runtime, or a named external runtime that cannot run this model here (the
            reason and, for a missing package, the install command are named).
    """
    check_runtime(runtime)
    device_type = torch.device(device).type
    precision = "fp32" if dtype in (None, torch.float32) else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if runtime == "torch":
        return "torch", "runtime='torch' asked for"
    if runtime != "auto":
        problem = None
        if device_type != "cpu":
            problem = f"the model is on {device_type}; {runtime} runs it on the CPU only"
        elif compile:
            problem = "compile=True is torch.compile's option"
        elif precision == "fp16" or (precision == "bf16" and runtime == "onnxruntime"):
            problem = f"{runtime} offers no {precision} CPU kernels here"
        elif not runtime_available(runtime):
            problem = f"{runtime} is not installed: {_INSTALL[runtime]}"
        if problem:
            raise ValueError(f"runtime={runtime!r} cannot run this model: {problem}")
        return runtime, f"runtime={runtime!r} asked for"
    if device_type != "cpu":
        return "torch", f"auto: the model is on {device_type} (external runtimes here are CPU ones)"
    if compile:
        return "torch", "auto: compile=True is torch's"
    if precision == "fp16":
        return "torch", "auto: float16"
    machine = machine if machine is not None else this_machine("cpu")
    ranking = FASTEST.get(machine.machine_class, {}).get((kind, precision))
    if ranking is None:
        return "torch", (f"auto: no measured table for {kind} {precision} on machine class "
                         f"{machine.machine_class!r} (resnet_fpn.deploy.runtimes.FASTEST): torch")
    for name in ranking:
        if runtime_available(name):
            missing = [r for r in ranking[:ranking.index(name)]]
            note = f" ({', '.join(missing)} not installed)" if missing else ""
            return name, (f"auto: fastest installed for {kind} {precision} on {machine.machine_class} "
                          f"(measured order {' > '.join(ranking)}){note}")
    return "torch", f"auto: none of {ranking} installed"


class RuntimeSession:
    """An ONNX file loaded into ONNX Runtime or OpenVINO on the CPU: numpy arrays in, numpy arrays out.

    Args:
        runtime: "onnxruntime" or "openvino".
        path: the ONNX file (read at construction; it may be deleted afterwards).
        bf16: OpenVINO only: ``INFERENCE_PRECISION_HINT=bf16`` (otherwise f32 is set explicitly: on CPUs
            with native bf16 OpenVINO's own default is bf16, which would make an "fp32" row a bf16 one).
        threads: intra-op threads (None: ``torch.get_num_threads()``, so all runtimes of a comparison
            use the same number).

    Raises:
        ValueError: an unknown runtime, or bf16 with onnxruntime.
        ImportError: the runtime's package is missing (the install command named).
    """

    def __init__(self, runtime: str, path: Union[str, "os.PathLike[str]"], *, bf16: bool = False,
                 threads: Optional[int] = None) -> None:
        if runtime not in EXTERNAL_RUNTIMES:
            raise ValueError(f"runtime must be one of {EXTERNAL_RUNTIMES}, got {runtime!r}")
        if bf16 and runtime == "onnxruntime":
            raise ValueError("bf16=True: onnxruntime offers no bf16 CPU kernels; use runtime='openvino'")
        try:
            module = __import__(_MODULES[runtime])
        except ImportError as exc:
            raise ImportError(f"runtime={runtime!r} needs the {_MODULES[runtime]} package: {_INSTALL[runtime]}") from exc
        self.runtime = runtime
        self.bf16 = bool(bf16)
        threads = torch.get_num_threads() if threads is None else int(threads)
        if runtime == "onnxruntime":
            options = module.SessionOptions()
            options.intra_op_num_threads = threads
            options.graph_optimization_level = module.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = module.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in session.get_inputs()]
            self._session = session
        else:
            core = module.Core()
            config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "INFERENCE_NUM_THREADS": threads,
                      "PERFORMANCE_HINT": "LATENCY"}
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
            self.input_names = [i.get_any_name() for i in compiled.inputs]
            self._request = compiled.create_infer_request()
            self._compiled = compiled
        self.version = str(getattr(module, "__version__", "unknown")).split("-")[0]

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        """Run the model on its one input.

        Args:
            x: the input (float32, C-contiguous is made here).

        Returns:
            The outputs in the file's order (arrays owned by the caller).
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.runtime == "onnxruntime":
            return list(self._session.run(None, {self.input_names[0]: x}))
        result = self._request.infer({0: x})
        # Copies: the request's output tensors are reused by its next inference.
        return [np.array(result[output]) for output in self._compiled.outputs]

    def describe(self) -> str:
        """e.g. "openvino 2026.4.1 bf16"."""
        return f"{self.runtime} {self.version} {'bf16' if self.bf16 else 'fp32'}"


def open_session(runtime: str, model: nn.Module, *, bf16: bool = False,
                 example_size: Tuple[int, int] = (320, 480)) -> Tuple[RuntimeSession, Any]:
    """Export `model` (BN folded, dynamic sizes) to a temporary ONNX file and load it into `runtime`.

    Args:
        runtime: "onnxruntime" or "openvino".
        model: a backbone or a detector on the CPU (not modified).
        bf16: see `RuntimeSession`.
        example_size: the export's trace size.

    Returns:
        ``(session, exported)``; ``exported`` is the ``ExportedModel`` (its file is deleted once loaded).

    Raises:
        ImportError, ValueError, RuntimeError: as ``export_model`` and `RuntimeSession` raise them.
    """
    from .export import export_model

    with tempfile.TemporaryDirectory(prefix="resnet_fpn_runtime_") as folder:
        exported = export_model(model, Path(folder) / "model.onnx", format="onnx", example_size=example_size,
                                dynamic=True, optimize=True)
        return RuntimeSession(runtime, exported.path, bf16=bf16), exported


def _to_numpy_outputs(out: Any, keys: Sequence[str]) -> "OrderedDict[str, np.ndarray]":
    if isinstance(out, Tensor):
        out = {"output": out}
    return OrderedDict((k, out[k].detach().float().cpu().numpy() if out[k].is_floating_point()
                        else out[k].detach().cpu().numpy()) for k in keys)


class RuntimeModel(nn.Module):
    """An external runtime (ONNX Runtime, OpenVINO) called exactly like the torch model it was exported from.

    What ``optimize_for_inference(model, runtime=...)`` returns when an external runtime is chosen. It keeps
    the torch copy (``fallback``, an ``InferenceWrapper``) for the parity check at the first call and as the
    model that runs if that check fails (then ``runtime`` becomes "torch" and a ``UserWarning`` names why).

    Attributes:
        runtime: the runtime in use: "onnxruntime", "openvino", or "torch" after a failed parity check.
        session: the `RuntimeSession`.
        exported: the ``ExportedModel`` description (names, keys, kind).
        fallback: the torch copy.
        parity: None before the first call, then the list of ``OutputDiff`` of the first call's inputs.
        tolerance: the parity tolerance used.
        choice: why this runtime was chosen (one line).

    Args:
        session: the loaded file (`open_session`).
        exported: its description.
        fallback: the torch copy (folded, channels_last, same dtype option).
        tolerance: relative tolerance of the first-call parity check.
        choice: the reason line.
    """

    def __init__(self, session: RuntimeSession, exported: Any, fallback: nn.Module, *, tolerance: float,
                 choice: str) -> None:
        super().__init__()
        self.session = session
        self.exported = exported
        self.fallback = fallback
        self.runtime = session.runtime
        self.is_detector = exported.kind == "detector"
        self.tolerance = float(tolerance)
        self.choice = choice
        self.parity: Optional[list] = None

    @property
    def module(self) -> nn.Module:
        """The torch model behind the fallback (as ``InferenceWrapper.module``)."""
        return self.fallback.module

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # out_channels, output_shape(), transform, roi_heads...: the torch model's.
            return getattr(self._modules["fallback"], name)

    def _run_backbone(self, x: Tensor) -> Union[Tensor, "OrderedDict[str, Tensor]"]:
        outputs = self.session.run(x.detach().cpu().numpy())
        if tuple(self.exported.output_keys) == ("output",):  # a module returning one tensor (export's name)
            return torch.from_numpy(outputs[0])
        return OrderedDict((k, torch.from_numpy(v)) for k, v in zip(self.exported.output_keys, outputs))

    def _run_detector(self, images: Sequence[Tensor]) -> List[Dict[str, Tensor]]:
        results = []
        for image in images:
            outputs = self.session.run(image.detach().cpu().numpy())
            results.append({k: torch.from_numpy(v) for k, v in zip(self.exported.output_keys, outputs)})
        return results

    def _run(self, inputs: Any) -> Any:
        return self._run_detector(inputs) if self.is_detector else self._run_backbone(inputs)

    def _first_call(self, inputs: Any) -> Any:
        from .parity import compare_outputs

        keys = self.exported.output_keys
        try:
            got = self._run(inputs)
        except Exception as exc:  # noqa: BLE001 - any runtime error means: use torch, and say why
            return self._fall_back(inputs, f"{self.session.describe()} raised {type(exc).__name__}: {exc}")
        ref = self.fallback(inputs)
        if self.is_detector:
            pairs = list(zip(ref, got))
        else:
            pairs = [(ref, got)]
        diffs = []
        for r, g in pairs:
            diffs += compare_outputs(self.exported.kind, _to_numpy_outputs(r, keys), _to_numpy_outputs(g, keys),
                                     self.tolerance)
        self.parity = diffs
        failed = [d for d in diffs if not d.ok]
        if failed:
            worst = "; ".join(f"{d.name}: max rel {d.max_rel:.3g}{' (' + d.note + ')' if d.note else ''}"
                              for d in failed[:3])
            return self._fall_back(inputs, f"{self.session.describe()} failed its parity check against torch "
                                           f"(tolerance {self.tolerance:g}): {worst}", ref=ref)
        logger.info("%s: parity with torch at first call ok (max rel %.3g, tolerance %g)", self.session.describe(),
                    max((d.max_rel for d in diffs), default=0.0), self.tolerance)
        return got

    def _fall_back(self, inputs: Any, why: str, ref: Any = None) -> Any:
        warnings.warn(f"{why}; running the torch copy instead", UserWarning, stacklevel=4)
        self.runtime = "torch"
        self.choice = f"{self.choice}; fell back to torch: {why}"
        return self.fallback(inputs) if ref is None else ref

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]]) -> Any:
        """Run the model as it is called (see the class).

        Args:
            inputs: a ``(B, 3, H, W)`` tensor (backbone) or a list of ``(3, H, W)`` images (detector).

        Returns:
            The torch model's outputs contract (an ``OrderedDict`` of maps; a list of detection dicts).
        """
        if self.runtime == "torch":
            return self.fallback(inputs)
        if self.parity is None:
            return self._first_call(inputs)
        return self._run(inputs)

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, session={self.session.describe()}"
