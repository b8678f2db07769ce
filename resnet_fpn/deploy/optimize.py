"""Inference copies of backbones and detectors: BN folded into convs, channels_last, optional bf16/compile.

Folding a batch norm that directly follows a convolution into that convolution's weight and bias is exact
in real arithmetic (Ioffe & Szegedy, 2015; the "batch normalization folding" of Jacob et al., 2018,
section 3.2): with ``s = gamma / sqrt(var + eps)``,

    BN(conv(x; W, b)) = conv(x; s * W, s * (b - mean) + beta).

It removes one full read and write of every normalised activation. The arithmetic is torch's own
(``torch.nn.utils.fusion.fuse_conv_bn_weights``) and the pattern is matched as ``torch.fx``'s
``optimization.fuse`` matches it (``matches_module_pattern``, ``replace_node_module``), on the module's fx
graph rather than on attribute names: pre-activation blocks (BN *before* the conv, with a ReLU between: not
foldable) are never folded wrongly, while their BN that does follow a conv (``conv1 -> bn2`` in
``PreActBasicBlock``) is. Unlike ``optimization.fuse``, the module is changed in place (no GraphModule is
returned) and modules that fx cannot trace (torchvision's detectors, with their data-dependent control
flow) are searched child by child.
"""
from __future__ import annotations

import copy
import itertools
import logging
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import torch
import torch.fx
from torch import Tensor, nn
from torch.fx.experimental.optimization import matches_module_pattern, replace_node_module
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from ..detectors import is_detector

if TYPE_CHECKING:
    from .runtimes import RuntimeModel

logger = logging.getLogger("resnet_fpn.deploy")

__all__ = [
    "optimize_for_inference",
    "fold_batchnorm",
    "norms_after_convs",
    "InferenceWrapper",
    "LowPrecisionHead",
    "DETECTOR_HEADS",
    "model_device",
    "FOLDABLE_NORMS",
    "LOWER_PRECISION_DTYPES",
]

# Exact types only (``matches_module_pattern`` compares ``type(module) is``): subclasses change the maths.
# timm's BatchNormAct2d (a BatchNorm2d subclass) applies an activation after the affine map, and its
# StdConv2d (a Conv2d subclass) standardises its weight in forward, which would undo the scaling folded into
# it. torchvision's FrozenBatchNorm2d is the norm of every pretrained backbone here (the project has no
# subclass of its own: see resnet_fpn/backbone/norms.py).
FOLDABLE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)
_PATTERNS = tuple((nn.Conv2d, norm) for norm in FOLDABLE_NORMS)
LOWER_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


def _has_foldable_norm(module: nn.Module) -> bool:
    return any(type(m) in FOLDABLE_NORMS for m in module.modules())


class _FoldTracer(torch.fx.Tracer):
    """fx tracer that records FrozenBatchNorm2d (not in torch.nn) as one node and does not enter modules
    holding no foldable norm.

    Not entering them is also what keeps tracing free of side effects: tracing runs forward with proxies,
    and a forward that caches something on itself (torchvision's MultiScaleRoIAlign stores its scales on
    its first call) would keep a proxy, breaking later real calls. Such modules hold no norm, so they are
    recorded as one call and their forward never runs.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            type(m) in FOLDABLE_NORMS
            or not _has_foldable_norm(m)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _trace(module: nn.Module) -> Optional[torch.fx.Graph]:
    """`module`'s fx graph, or None where fx cannot trace it (data-dependent control flow, unsupported ops)."""
    try:
        return _FoldTracer().trace(module)
    except Exception:  # noqa: BLE001 - tracing is only a way to read the data flow; any failure means "look lower"
        return None


def _fold_pair(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold `norm` (which directly follows `conv`) into `conv`'s weight and bias, in place.

    In the conv's own dtype, as torch computes it. Folding in float64 and rounding once was measured and
    buys nothing: a resnet50-fpn with random BN statistics (``randomize_norm_statistics``), folded in float32
    vs in float64, differs from the unfolded float32 model by 1.63e-6 vs 1.61e-6 (224x320) and 2.11e-6 vs
    2.20e-6 (800x1216) max relative difference per level, while the unfolded model itself differs from its
    own float64 run by 1.30e-6 and 1.61e-6. One ulp of rounding in a folded weight (6e-8) is lost in the
    rounding of the convolutions' float32 sums.
    """
    with torch.no_grad():
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
        )


def _is_foldable_norm(norm: nn.Module, conv: nn.Conv2d) -> bool:
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        # Only running statistics can be folded: in training mode, or without tracked statistics, BN
        # normalises with the batch's own statistics.
        if norm.training or norm.running_mean is None or norm.running_var is None:
            return False
    return norm.running_mean.numel() == conv.out_channels


def _conv_norm_nodes(graph: torch.fx.Graph, modules: Dict[str, nn.Module]) -> List[torch.fx.Node]:
    """The norm nodes of `graph` that directly follow a Conv2d, of an exact type in `FOLDABLE_NORMS`."""
    return [node for node in graph.nodes if any(matches_module_pattern(p, node, modules) for p in _PATTERNS)]


def _fold_traced(root: nn.Module, graph: torch.fx.Graph) -> int:
    """Fold every conv -> norm pair of `graph` (traced from `root`) whose conv output feeds only the norm."""
    modules = dict(root.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in _conv_norm_nodes(graph, modules):
        source = node.args[0]
        conv, norm = modules[source.target], modules[node.target]
        # The conv's raw output must not be read by anything else (as in optimization.fuse), and neither
        # module may be called twice (a shared module folded for one call site would be wrong at the other).
        if len(source.users) != 1 or calls[node.target] != 1 or calls[source.target] != 1:
            continue
        if not _is_foldable_norm(norm, conv):
            continue
        _fold_pair(conv, norm)
        replace_node_module(node, modules, nn.Identity())
        folded += 1
    return folded


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d / SyncBatchNorm / FrozenBatchNorm2d that directly follows a Conv2d.

    "Directly follows" is read from the ``torch.fx`` graph: the conv's output feeds the norm and nothing
    else. The norm is replaced by ``nn.Identity`` and the conv gets the folded weight and a bias (new
    parameters, requiring grad as the conv's weight did). BN layers must be in eval mode (their running
    statistics are folded); BN layers in training mode are left alone. Modules that fx cannot trace are
    searched child by child, so a whole torchvision detector works.

    Args:
        module: the module to modify in place.

    Returns:
        The number of norms folded.

    Raises:
        TypeError: `module` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(module).__name__}")
    if not _has_foldable_norm(module):
        return 0
    graph = _trace(module)
    if graph is None:
        return sum(fold_batchnorm(child) for child in module.children())
    return _fold_traced(module, graph)


def norms_after_convs(module: nn.Module) -> List[str]:
    """Names of the BatchNorm2d / SyncBatchNorm / FrozenBatchNorm2d that directly follow a Conv2d in `module`.

    Read from the ``torch.fx`` graph as ``fold_batchnorm`` does (untraceable modules child by child), with
    no other condition: a folded model should give an empty list.

    Args:
        module: the module to inspect (not modified).

    Returns:
        Qualified names of those norms, relative to `module`.
    """
    if not _has_foldable_norm(module):
        return []
    graph = _trace(module)
    if graph is None:
        return [f"{name}.{n}" for name, child in module.named_children() for n in norms_after_convs(child)]
    return [node.target for node in _conv_norm_nodes(graph, dict(module.named_modules()))]


def model_device(model: nn.Module) -> torch.device:
    """The device of `model`'s first parameter or buffer (CPU for a module without tensors).

    Args:
        model: any module.

    Returns:
        That device.
    """
    # Lazily: `LowPrecisionHead` asks on every call, and only the first tensor is needed.
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _to_float32(value: Any) -> Any:
    """Cast every lower-precision floating tensor in a (nested) dict/list/tuple output back to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in LOWER_PRECISION_DTYPES else value
    if isinstance(value, dict):
        return type(value)((k, _to_float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


# The heads of torchvision's detectors whose convolutions and matmuls run in the low dtype: what torchvision's
# own autocast inference runs in it, less the box decoding, roi_align and nms between them (see `LowPrecisionHead`).
DETECTOR_HEADS = ("rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head",
                  "roi_heads.mask_predictor", "roi_heads.keypoint_head", "roi_heads.keypoint_predictor", "head")


class LowPrecisionHead(nn.Module):
    """A detector head run under ``torch.autocast(dtype)``, its floating outputs widened to float32.

    The head's convolutions and matmuls (the mask head's four 3x3 convs over every detection, the box head's
    FCs) run in the low dtype; what torchvision does with the outputs (decode boxes, ``roi_align``, ``nms``,
    paste masks) sees float32. Decoding in bf16 would round a box edge to 2 px at 256-512 px, enough to drop
    small boxes (detectron2 decodes in float32: ``Box2BoxTransform.apply_deltas``). Attributes other than
    ``module`` are looked up on the wrapped head.

    Args:
        module: the head (e.g. ``roi_heads.mask_head``).
        dtype: the autocast dtype (one of `LOWER_PRECISION_DTYPES`).
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        assert dtype in LOWER_PRECISION_DTYPES, dtype
        self.module = module
        self.dtype = dtype

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def forward(self, *args: Any) -> Any:
        """The head's output, computed under autocast, lower-precision tensors cast to float32."""
        with torch.autocast(device_type=model_device(self.module).type, dtype=self.dtype):
            out = self.module(*args)
        return _to_float32(out)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


def _heads_in_low_precision(detector: nn.Module, dtype: torch.dtype) -> List[str]:
    """Wrap each of `DETECTOR_HEADS` that `detector` has in a `LowPrecisionHead`, in place; return their paths."""
    wrapped = []
    for path in DETECTOR_HEADS:
        *parents, name = path.split(".")
        owner: Optional[nn.Module] = detector
        for parent in parents:
            owner = getattr(owner, parent, None)
        head = getattr(owner, name, None) if isinstance(owner, nn.Module) else None
        if isinstance(head, nn.Module) and not isinstance(head, LowPrecisionHead):
            setattr(owner, name, LowPrecisionHead(head, dtype))
            wrapped.append(path)
    return wrapped


class InferenceWrapper(nn.Module):
    """An inference copy, called exactly like the model it wraps: channels_last input, autocast, compile.

    * A **backbone** (any module taking an image batch): ``forward(images)`` with ``images`` a
      ``(B, C, H, W)`` tensor returns what the module returns (``build_backbone``'s: an ``OrderedDict`` of
      feature maps), with lower-precision tensors cast back to float32. A 4-d input is converted to
      ``torch.channels_last``; the module runs under ``torch.autocast(dtype)`` and/or compiled.
    * A **torchvision detector** (``resnet_fpn.detectors.is_detector``): ``forward(images)`` with ``images`` a
      list of ``(3, H, W)`` tensors returns the list of detection dicts, as the detector in eval mode. The
      options apply where the image tensors meet the convolutions: the detector's ``backbone`` is replaced
      (in `module`, in place) by an ``InferenceWrapper`` of itself; with `dtype`, each head of
      `DETECTOR_HEADS` by a `LowPrecisionHead` (convs and matmuls in `dtype`, outputs float32). The
      transform, torchvision's ``roi_align``, ``nms``, box coding and mask pasting run in float32.

    The wrapped module is ``.module``; other attributes (``out_channels``, ``output_shape()``, ``body``,
    ``transform``, ``roi_heads``...) are looked up on it, so a backbone wrapper stands in for a backbone
    inside torchvision's detectors. Outputs keep the memory format the convs produce (channels_last for 4-d
    maps): ``reshape`` works on them, ``view`` across channels may not. ``state_dict()`` keys gain a
    ``module.`` prefix (``module.backbone.module.`` inside a detector).

    Args:
        module: a backbone or a detector; put in eval mode by the caller.
        channels_last: convert 4-d inputs to ``torch.channels_last`` before the call (the weights should be
            channels_last too: ``module.to(memory_format=torch.channels_last)``).
        dtype: None (as the module is) or the autocast dtype (``torch.bfloat16``, ``torch.float16``).
        compile: run the backbone through ``torch.compile`` (inductor, weights frozen as constants); it
            compiles on the first call and again for each new input shape. Kept as ``.compiled``.

    Raises:
        TypeError: `module` is not an ``nn.Module``.
        ValueError: `dtype` is neither None nor one of `LOWER_PRECISION_DTYPES`.
    """

    def __init__(self, module: nn.Module, *, channels_last: bool, dtype: Optional[torch.dtype],
                 compile: bool = False) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"InferenceWrapper expects an nn.Module, got {type(module).__name__}")
        if dtype is not None and dtype not in LOWER_PRECISION_DTYPES:
            raise ValueError(f"dtype must be None or one of {LOWER_PRECISION_DTYPES}, got {dtype!r}")
        self.channels_last = channels_last
        self.dtype = dtype
        # Not `self.compile`: that would hide nn.Module.compile().
        self.compiled = compile
        self.is_detector = is_detector(module)
        # What optimize_for_inference chose and why (RuntimeModel has the same two attributes).
        self.runtime = "torch"
        self.choice = "torch"
        if self.is_detector:
            module.backbone = InferenceWrapper(module.backbone, channels_last=channels_last, dtype=dtype,
                                               compile=compile)
            if dtype is not None:
                _heads_in_low_precision(module, dtype)
        self.module = module
        # Kept in a tuple, not as a submodule: the compiled module is `module` again, and registering it
        # would list each tensor twice in state_dict().
        self._compiled: tuple = ()
        if compile and not self.is_detector:
            # Freezing lets inductor treat the (folded, grad-free) weights as constants: it pre-packs them
            # for oneDNN and fuses conv + pointwise ops (conv+ReLU, conv+add+ReLU).
            self._compiled = (torch.compile(module, options={"freezing": True}),)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def forward(self, images: Union[Tensor, Sequence[Tensor]]) -> Any:
        """Run the wrapped module as it is called.

        Args:
            images: a ``(B, C, H, W)`` tensor for a backbone; a list of ``(3, H, W)`` tensors for a detector.

        Returns:
            The module's output (float32 where the module's would be).
        """
        if self.is_detector:
            return self.module(images)
        x = images
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        run = self._compiled[0] if self._compiled else self.module
        if self.dtype is None:
            return run(x)
        # Autocast rather than casting the weights: convs and matmuls run in the low dtype, while the ops
        # autocast keeps in float32 (group/layer norm, softmax...) stay accurate in timm or GN backbones.
        # Casting the folded weights on each call costs one pass over 25M parameters for a ResNet-50,
        # negligible next to the convolutions.
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = run(x)
        return _to_float32(out)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}, dtype={self.dtype}, compiled={self.compiled}"


def _cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX512-BF16 or AMX); without them bf16 convs are slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _check_options(model: object, options: Dict[str, object], dtype: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference expects an nn.Module, got {type(model).__name__} {model!r:.80}")
    for name, value in options.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be None or a torch.dtype, got {type(dtype).__name__} {dtype!r}")
    allowed = (None, torch.float32) + LOWER_PRECISION_DTYPES
    if dtype not in allowed:
        raise ValueError(f"dtype must be one of {allowed}, got {dtype}")
    device = model_device(model)
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(
            f"dtype={dtype} is only supported for models on CUDA (CPU float16 convolutions are emulated); "
            f"this model is on {device}: use torch.bfloat16"
        )
    if dtype == torch.bfloat16 and device.type == "cpu" and not _cpu_has_native_bf16():
        warnings.warn(
            "dtype=torch.bfloat16 on a CPU without native bf16 (AVX512-BF16/AMX) kernels: convolutions fall "
            "back to slow reference code and run several times slower than float32",
            UserWarning,
            stacklevel=3,
        )


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    dtype: Optional[torch.dtype] = None,
    compile: bool = False,
    runtime: str = "auto",
) -> Union[InferenceWrapper, "RuntimeModel"]:
    """An inference-only copy of a backbone or a torchvision detector: BN folded, channels_last, bf16, compile,
    run by the fastest runtime measured for this machine class.

    The input model is not modified (the work is done on a ``copy.deepcopy``). The copy is put in eval mode,
    its parameters stop requiring gradients, and:

    1. every BatchNorm2d / SyncBatchNorm / FrozenBatchNorm2d that directly follows a Conv2d is folded into
       it (see ``fold_batchnorm``); BatchNorm2d uses its running statistics, as in eval mode;
    2. ``channels_last``: 4-d weights are converted to ``torch.channels_last`` and so are the inputs
       (oneDNN and cuDNN run NHWC convolutions without layout reorders);
    3. ``dtype``: convs and matmuls run under ``torch.autocast`` in that dtype; outputs come back float32;
    4. ``compile``: the backbone goes through ``torch.compile`` (inductor with freezing, which also fuses
       conv+ReLU and conv+add+ReLU into single oneDNN ops); compiled on the first call and again for each
       new input shape.

    ``runtime`` decides what runs the copy (``resnet_fpn.deploy.runtimes``): "torch" (the steps above),
    "onnxruntime" or "openvino" (the BN-folded model exported to ONNX with dynamic sizes and run by that
    runtime on the CPU, a ``RuntimeModel``), or "auto": the fastest installed runtime of the measured table
    ``runtimes.FASTEST`` for this machine class, kind and precision (torch on CUDA, with ``compile=True``,
    and on machine classes not measured). The choice and its reason are logged (logger
    ``resnet_fpn.deploy``) and kept as ``result.runtime`` / ``result.choice``. An external runtime is checked
    against the torch copy at its first call (the export issue's tolerances, 0.1 for bf16); if it fails, or
    its export or load fails, the torch copy runs instead and a ``UserWarning`` names why.

    The result is called as `model` is: a backbone takes a ``(B, C, H, W)``
    tensor and returns its output (an ``OrderedDict`` of feature maps for ``build_backbone``); a detector
    (``is_detector``: Faster/Mask R-CNN, RetinaNet, FCOS) takes a list of ``(3, H, W)`` images and returns a
    list of detection dicts (for an external runtime the whole detector runs in it: resize, heads and box
    paste included, outputs in original pixels as torch's). For a torch copy (an ``InferenceWrapper``) of a
    detector, norms are folded everywhere and the whole detector is made
    channels_last, while input conversion, autocast and compile apply to its backbone; with `dtype` its
    heads' convolutions and matmuls run in that dtype too (`LowPrecisionHead`), while ``roi_align``, ``nms``,
    box decoding and mask pasting see float32, as detectron2 decodes. The optimised model itself is
    ``result.module``.

    Limits: the copy is for inference only. The folded norms are gone, so training it (or calling
    ``.train()`` and expecting BN to adapt) is not the original model; ``state_dict()`` keys differ (no BN
    tensors, conv biases, a ``module.`` prefix). On CPUs without native bf16 (no AVX512-BF16 or AMX)
    ``torch.bfloat16`` is accepted but slower than float32 (a ``UserWarning`` says so).

    Args:
        model: a backbone (e.g. from ``build_backbone``), a ResNet, a timm model or a torchvision detector.
        channels_last: use the channels_last memory format.
        dtype: None or ``torch.float32`` (full precision), ``torch.bfloat16`` (CPU or CUDA) or
            ``torch.float16`` (CUDA only).
        compile: run the backbone through ``torch.compile``.
        runtime: "auto" (default), "torch", "onnxruntime" or "openvino".

    Returns:
        The optimised copy: an ``InferenceWrapper`` (torch) or a ``RuntimeModel`` (external runtime).

    Raises:
        TypeError: `model` is not an ``nn.Module``, or an option has the wrong type.
        ValueError: `dtype` is not one of the supported dtypes, or float16 for a model not on CUDA; an
            unknown `runtime`, or a named external runtime that cannot run this model here (not installed,
            CUDA, compile, a dtype it lacks: the reason named).

    Example:
        >>> fast = optimize_for_inference(build_backbone("resnet50-fpn", weights=state_dict))
        >>> with torch.inference_mode():
        ...     features = fast(images)
    """
    from .runtimes import check_runtime, choose_runtime

    _check_options(model, {"channels_last": channels_last, "compile": compile}, dtype)
    check_runtime(runtime)
    kind = "detector" if is_detector(model) else "backbone"
    chosen, reason = choose_runtime(runtime, kind=kind, dtype=dtype, device=model_device(model), compile=compile)
    fallback = _torch_copy(model, channels_last=channels_last, dtype=dtype, compile=compile)
    fallback.choice = reason
    if chosen == "torch":
        logger.info("optimize_for_inference: torch (%s)", reason)
        return fallback
    return _external_copy(model, fallback, chosen, reason=reason, kind=kind, bf16=dtype == torch.bfloat16)


def _external_copy(model: nn.Module, fallback: InferenceWrapper, runtime: str, *, reason: str, kind: str,
                   bf16: bool) -> Union[InferenceWrapper, "RuntimeModel"]:
    """`model` exported and loaded into `runtime` (a ``RuntimeModel``), or `fallback` with a warning saying why."""
    from .parity import DEFAULT_TOLERANCES
    from .runtimes import BF16_TOLERANCE, RuntimeModel, open_session

    try:
        session, exported = open_session(runtime, model, bf16=bf16)
    except Exception as exc:  # noqa: BLE001 - an export or load failure of any kind: run torch and say why
        why = f"{runtime} could not load this model ({type(exc).__name__}: {str(exc)[:300]})"
        warnings.warn(f"optimize_for_inference: {why}; running the torch copy instead", UserWarning, stacklevel=3)
        fallback.choice = f"{reason}; fell back to torch: {why}"
        return fallback
    tolerance = BF16_TOLERANCE if bf16 else DEFAULT_TOLERANCES[("onnx", kind)]
    logger.info("optimize_for_inference: %s (%s)", session.describe(), reason)
    return RuntimeModel(session, exported, fallback, tolerance=tolerance, choice=f"{session.describe()}: {reason}")


def _torch_copy(model: nn.Module, *, channels_last: bool, dtype: Optional[torch.dtype],
                compile: bool) -> InferenceWrapper:
    """The torch steps of `optimize_for_inference` (1-4) on a copy of `model`."""
    optimized = copy.deepcopy(model).eval()
    for parameter in optimized.parameters():
        parameter.requires_grad_(False)
    fold_batchnorm(optimized)
    if channels_last:
        # Module.to converts every 4-d parameter and buffer (conv weights) and leaves the others alone.
        optimized = optimized.to(memory_format=torch.channels_last)
    return InferenceWrapper(optimized, channels_last=channels_last,
                            dtype=None if dtype == torch.float32 else dtype, compile=compile)
