"""Inference copies of backbones and detectors: BN folded into convs, channels_last, optional bf16/compile.

Folding a batch norm that directly follows a convolution into that convolution's weight and bias is exact
in real arithmetic (Ioffe & Szegedy, 2015; the "batch normalization folding" of Jacob et al., 2018,
section 3.2): with ``s = gamma / sqrt(var + eps)``,

    BN(conv(x; W, b)) = conv(x; s * W, s * (b - mean) + beta).

It removes one full read and write of every normalised activation. Which norms directly follow a conv is
read from the module's ``torch.fx`` graph, not from attribute names, so pre-activation blocks (BN *before*
the conv, with a ReLU between: not foldable) are never folded wrongly, while their BN that does follow a
conv (``conv1 -> bn2`` in ``PreActBasicBlock``) is. Modules whose forward cannot be traced (torchvision's
detectors, with their data-dependent control flow) are searched child by child.
"""
from __future__ import annotations

import copy
import operator
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d

__all__ = [
    "optimize_for_inference", "fold_batchnorm", "fuse_conv_pointwise", "norms_after_convs", "InferenceWrapper",
    "ConvPointwise", "LOWER_PRECISION_DTYPES",
]

# Exact types only: subclasses change the maths. timm's BatchNormAct2d (a BatchNorm2d subclass) applies an
# activation after the affine map, and its StdConv2d (a Conv2d subclass) standardises its weight in forward,
# which would undo the scaling folded into it.
_FOLDABLE_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)
_FOLDABLE_CONVS = (nn.Conv2d,)
LOWER_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


class _LeafTracer(torch.fx.Tracer):
    """fx tracer that keeps torchvision's FrozenBatchNorm2d as one node (it is not in torch.nn)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, FrozenBatchNorm2d) or super().is_leaf_module(m, module_qualified_name)


_MODULE_STATE = ("_parameters", "_buffers", "_modules")


def _trace(module: nn.Module) -> torch.fx.Graph:
    """fx-trace `module`, then restore every plain attribute its forward assigned while tracing.

    Tracing runs forward with proxies; a forward that caches something on itself (torchvision's
    MultiScaleRoIAlign stores its scales on first call) would keep a proxy, breaking later real calls. So
    the non-tensor attributes of every submodule are saved before and put back after, trace failed or not.
    """
    saved = [(m, dict(m.__dict__)) for m in module.modules()]
    try:
        return _LeafTracer().trace(module)
    finally:
        for m, attributes in saved:
            for key in [k for k in m.__dict__ if k not in attributes]:
                del m.__dict__[key]
            for key, value in attributes.items():
                if key not in _MODULE_STATE:
                    m.__dict__[key] = value


def _norm_affine(norm: nn.Module) -> Tuple[Tensor, Tensor]:
    """(scale, shift) of an eval-mode norm as float64: ``norm(y) = scale * y + shift`` per channel."""
    mean = norm.running_mean.detach().double()
    var = norm.running_var.detach().double()
    weight = torch.ones_like(mean) if norm.weight is None else norm.weight.detach().double()
    bias = torch.zeros_like(mean) if norm.bias is None else norm.bias.detach().double()
    scale = weight * torch.rsqrt(var + norm.eps)
    return scale, bias - mean * scale


def _fold_pair(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Fold `norm` (which directly follows `conv`) into `conv`'s weight and bias, in place.

    Computed in float64 and rounded once to the conv's dtype, so the folded weights are as close to the
    exact product as that dtype allows.
    """
    scale, shift = _norm_affine(norm)
    weight = conv.weight.detach()
    folded_weight = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    conv_bias = torch.zeros_like(scale) if conv.bias is None else conv.bias.detach().double()
    folded_bias = conv_bias * scale + shift
    conv.weight = nn.Parameter(folded_weight.to(weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(folded_bias.to(weight.dtype), requires_grad=False)


def _is_foldable_norm(module: nn.Module, conv: nn.Module) -> bool:
    if type(module) not in _FOLDABLE_NORMS:
        return False
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        # Only running statistics can be folded: in training mode, or without tracked statistics, BN
        # normalises with the batch's own statistics.
        if module.training or module.running_mean is None or module.running_var is None:
            return False
    return module.running_mean.numel() == conv.out_channels


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


def _fold_traced(root: nn.Module, graph: torch.fx.Graph) -> int:
    """Fold every conv -> norm pair of `graph` (traced from `root`) whose conv output feeds only the norm."""
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        norm, conv = root.get_submodule(node.target), root.get_submodule(source.target)
        if type(conv) not in _FOLDABLE_CONVS or not _is_foldable_norm(norm, conv):
            continue
        # The conv's raw output must not be read by anything else, and neither module may be called twice
        # (a shared module folded for one call site would be wrong at the other).
        if len(source.users) != 1 or calls[node.target] != 1 or calls[source.target] != 1:
            continue
        _fold_pair(conv, norm)
        _set_submodule(root, node.target, nn.Identity())
        folded += 1
    return folded


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d / SyncBatchNorm / FrozenBatchNorm2d that directly follows a Conv2d.

    "Directly follows" is read from the ``torch.fx`` graph: the conv's output feeds the norm and nothing
    else. The norm is replaced by ``nn.Identity`` and the conv gains a bias. BN layers must be in eval mode
    (their running statistics are folded); BN layers in training mode are left alone. Modules that fx
    cannot trace are searched child by child, so a whole torchvision detector works.

    Args:
        module: the module to modify in place.

    Returns:
        The number of norms folded.

    Raises:
        TypeError: `module` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(module).__name__}")
    try:
        graph = _trace(module)
    except Exception:  # noqa: BLE001 - any trace failure (data-dependent control flow, unsupported ops)
        # Tracing is only a way to read the data flow; where it fails, look one level down.
        return sum(fold_batchnorm(child) for child in module.children())
    return _fold_traced(module, graph)


def _to_float32(value: Any) -> Any:
    """Cast every lower-precision floating tensor in a (nested) dict/list/tuple output back to float32."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in LOWER_PRECISION_DTYPES else value
    if isinstance(value, dict):
        return type(value)((k, _to_float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def _mkldnn_fusion_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class ConvPointwise(nn.Module):
    """A Conv2d with its following ReLU, or its residual add (+ ReLU), as one oneDNN primitive (CPU).

    oneDNN applies the add and the ReLU as post-ops while the convolution's output tile is still in cache
    (the ``_convolution_pointwise`` ops that inductor emits for the same patterns), which saves one read and
    one write of the activation per fused op, and the allocation (page faults) of the add's output.

    Args:
        conv: the convolution (shared with the unfused model: its parameters are read on every call).
        binary: None, or "add": ``forward(x, other)`` returns ``conv(x) + other``.
        unary: "relu" or "none": applied last.
    """

    def __init__(self, conv: nn.Conv2d, *, binary: Optional[str], unary: str) -> None:
        super().__init__()
        self.conv = conv
        self.binary = binary
        self.unary = unary

    def forward(self, x: Tensor, other: Optional[Tensor] = None) -> Tensor:
        conv = self.conv
        geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        if self.binary is None:
            return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, *geometry, self.unary,
                                                            [None], None)
        # The binary op takes None, not "none", for "no unary post-op".
        unary = None if self.unary == "none" else self.unary
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, conv.weight, conv.bias, *geometry, self.binary, 1.0, unary, [None], None
        )

    def extra_repr(self) -> str:
        return f"binary={self.binary}, unary={self.unary}"


def _is_relu(root: nn.Module, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return type(root.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu, torch.relu_) and len(node.args) == 1
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


# The residual add: ``out += shortcut`` (torchvision's blocks and ours) traces as operator.iadd.
_ADDS = (operator.add, operator.iadd, torch.add)


def _fusable_conv(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)  # "same"/"valid" are resolved inside F.conv2d
    )


def fuse_conv_pointwise(module: nn.Module) -> Optional[torch.fx.GraphModule]:
    """A ``torch.fx.GraphModule`` computing `module` with conv+ReLU and conv+add(+ReLU) fused (CPU, fp32).

    Patterns, read from the fx graph: a Conv2d whose output feeds only a ReLU; a Conv2d whose output feeds
    only an add (the residual add of every ResNet block), optionally followed by a ReLU that is the add's
    only user. ``nn.Identity`` nodes (folded norms) are dropped first. The graph module shares its
    submodules (and so its parameters) with `module`.

    Args:
        module: a module in eval mode, already BN-folded for best effect (a norm between conv and ReLU
            blocks the pattern).

    Returns:
        The fused graph module, or None when `module` cannot be traced, nothing matched, or this PyTorch
        build has no oneDNN.
    """
    if not _mkldnn_fusion_available():
        return None
    try:
        graph = _trace(module)
    except Exception:  # noqa: BLE001 - any trace failure means "run the module as it is"
        return None
    root = torch.fx.GraphModule(module, graph)
    graph = root.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and type(root.get_submodule(node.target)) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    fused = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or len(node.users) != 1 or node.kwargs or len(node.args) != 1:
            continue
        conv = root.get_submodule(node.target)
        if not _fusable_conv(conv):
            continue
        user = next(iter(node.users))
        if _is_relu(root, user):
            binary, other, last = None, None, user
        elif (user.op == "call_function" and user.target in _ADDS and not user.kwargs
              and len(user.args) == 2 and user.args[0] is not user.args[1]):
            other = user.args[1] if user.args[0] is node else user.args[0]
            if not isinstance(other, torch.fx.Node):
                continue
            binary, last = "add", user
            if len(user.users) == 1 and _is_relu(root, next(iter(user.users))):
                last = next(iter(user.users))
        else:
            continue
        unary = "relu" if _is_relu(root, last) else "none"
        name = f"_fused_conv_{fused}"
        root.add_submodule(name, ConvPointwise(conv, binary=binary, unary=unary))
        with graph.inserting_after(last):
            replacement = graph.call_module(name, (node.args[0],) if other is None else (node.args[0], other))
        last.replace_all_uses_with(replacement)
        for dead in ([last, user] if last is not user else [last]) + [node]:
            graph.erase_node(dead)
        fused += 1
    if not fused:
        return None
    graph.eliminate_dead_code()
    graph.lint()
    root.recompile()
    return root


class InferenceWrapper(nn.Module):
    """Runs a module on channels_last input, with fused convs or under autocast; float32 outputs.

    The wrapped module is ``.module``; other attributes (``out_channels``, ``output_shape()``, ``body``,
    ``fpn``...) are looked up on it, so the wrapper stands in for a backbone inside torchvision's detectors.
    Outputs keep the memory format the convs produce (channels_last for 4-d maps): ``reshape`` works on
    them, ``view`` across channels may not.

    Args:
        module: the module to run.
        channels_last: convert 4-d inputs to ``torch.channels_last`` before the call.
        dtype: None (as the module is) or the autocast dtype (``torch.bfloat16``, ``torch.float16``).
        fuse: on CPU in float32, run the graph of ``fuse_conv_pointwise(module)`` (conv+ReLU, conv+add+ReLU
            as single oneDNN ops) when it exists. Elsewhere (CUDA, autocast, other dtypes, an input that
            requires grad) the module runs as it is.
    """

    def __init__(self, module: nn.Module, *, channels_last: bool, dtype: Optional[torch.dtype],
                 fuse: bool = False) -> None:
        super().__init__()
        self.module = module
        self.channels_last = channels_last
        self.dtype = dtype
        # Kept in a tuple, not as a submodule: it shares every parameter with `module`, and registering it
        # would list each tensor twice in state_dict().
        self._fused: Tuple[torch.fx.GraphModule, ...] = ()
        if fuse and dtype is None:
            graph_module = fuse_conv_pointwise(module)
            self._fused = () if graph_module is None else (graph_module,)

    @property
    def fused(self) -> bool:
        """Whether a fused graph exists (it runs for float32 CPU inputs)."""
        return bool(self._fused)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def forward(self, x: Tensor) -> Any:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            # The oneDNN fused ops have no autograd formula and no CUDA kernel: use them only where the
            # plain module would compute the same thing without a graph.
            if (self._fused and x.device.type == "cpu" and x.dtype == torch.float32
                    and not torch.is_autocast_enabled("cpu") and not (torch.is_grad_enabled() and x.requires_grad)):
                return self._fused[0](x)
            return self.module(x)
        # Autocast rather than casting the weights: convs and matmuls run in the low dtype, while the ops
        # autocast keeps in float32 (group/layer norm, softmax...) stay accurate in timm or GN backbones.
        # Casting the folded weights on each call costs one pass over 25M parameters for a ResNet-50,
        # negligible next to the convolutions.
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.module(x)
        # Heads (torchvision's roi_align, nms, box coders) run in float32.
        return _to_float32(out)

    def extra_repr(self) -> str:
        return f"channels_last={self.channels_last}, dtype={self.dtype}, fused={self.fused}"


def _is_detector(model: nn.Module) -> bool:
    """torchvision's R-CNNs, RetinaNet and FCOS: a resize/normalise transform feeding a backbone."""
    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform) and isinstance(
        getattr(model, "backbone", None), nn.Module
    )


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


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
    device = _model_device(model)
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


# Heads of torchvision's detectors that are plain conv(-ReLU) stacks: the RPN's shared 3x3 conv (run on
# every pyramid level, about a third of Faster R-CNN's FLOPs at 800 px) and Mask R-CNN's four mask convs.
_DETECTOR_CONV_HEADS = ("rpn.head.conv", "roi_heads.mask_head")


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    dtype: Optional[torch.dtype] = None,
    fuse: bool = True,
    compile: bool = False,
) -> nn.Module:
    """An inference-only copy of a backbone or a torchvision detector: BN folded, channels_last, fused convs.

    The input model is not modified (the work is done on a ``copy.deepcopy``). The copy is put in eval mode,
    its parameters stop requiring gradients, and:

    1. every BatchNorm2d / SyncBatchNorm / FrozenBatchNorm2d that directly follows a Conv2d is folded into
       it (see ``fold_batchnorm``); BatchNorm2d uses its running statistics, as in eval mode;
    2. ``channels_last``: 4-d weights are converted to ``torch.channels_last`` and inputs are converted by
       an ``InferenceWrapper`` (oneDNN and cuDNN run NHWC convolutions without layout reorders);
    3. ``fuse`` (float32 on CPU): conv+ReLU and conv+residual-add(+ReLU) run as single oneDNN ops (see
       ``fuse_conv_pointwise``); on other devices and dtypes the unfused module runs;
    4. ``dtype``: convs and matmuls run under ``torch.autocast`` in that dtype; outputs come back float32;
    5. ``compile``: the backbone goes through ``torch.compile`` (inductor, compiled on the first call and
       again for each new input shape); ``fuse`` is then left to inductor, which fuses the same patterns.

    For a torchvision detector (anything with a ``GeneralizedRCNNTransform`` ``transform`` and a
    ``backbone``: Faster/Mask R-CNN, RetinaNet, FCOS), norms are folded everywhere, the whole detector is
    made channels_last, ``detector.backbone`` is wrapped (input conversion, fusion, autocast, compile) and
    the conv stacks of the RPN and mask heads are fused; the heads run in float32, as torchvision's
    ``roi_align``, ``nms`` and box coding expect. The detector itself is returned (same class and call
    signature). For any other module the result is an ``InferenceWrapper`` (or its compiled form), or the
    folded copy itself when no option asks for a wrapper.

    Limits: the copy is for inference only. The folded norms are gone, so training it (or calling
    ``.train()`` and expecting BN to adapt) is not the original model; fused graphs have no autograd
    (inputs that require grad run the unfused module); ``state_dict()`` keys differ (no BN tensors, conv
    biases, a ``module.`` prefix under a wrapper); assigning new weights to the copy's modules is seen by the
    fused graph (it shares them), replacing modules is not. On CPUs without native bf16 (no AVX512-BF16 or
    AMX) ``torch.bfloat16`` is accepted but slower than float32 (a ``UserWarning`` says so).

    Args:
        model: a backbone (e.g. from ``build_backbone``), a ResNet, a timm model or a torchvision detector.
        channels_last: use the channels_last memory format.
        dtype: None or ``torch.float32`` (full precision), ``torch.bfloat16`` (CPU or CUDA) or
            ``torch.float16`` (CUDA only).
        fuse: fuse conv+ReLU and conv+add+ReLU into oneDNN ops for float32 CPU inference.
        compile: wrap with ``torch.compile`` (the backbone only, for a detector).

    Returns:
        The optimised copy (see above for its type).

    Raises:
        TypeError: `model` is not an ``nn.Module``, or an option has the wrong type.
        ValueError: `dtype` is not one of the supported dtypes, or float16 for a model not on CUDA.

    Example:
        >>> fast = optimize_for_inference(build_backbone("resnet50-fpn", weights=state_dict))
        >>> with torch.inference_mode():
        ...     features = fast(images)
    """
    _check_options(model, {"channels_last": channels_last, "fuse": fuse, "compile": compile}, dtype)
    autocast_dtype = None if dtype in (None, torch.float32) else dtype
    fuse = fuse and autocast_dtype is None and not compile
    optimized = copy.deepcopy(model).eval()
    for parameter in optimized.parameters():
        parameter.requires_grad_(False)
    fold_batchnorm(optimized)
    if channels_last:
        # Module.to converts every 4-d parameter and buffer (conv weights) and leaves the others alone.
        optimized = optimized.to(memory_format=torch.channels_last)

    def wrap(module: nn.Module) -> nn.Module:
        if channels_last or autocast_dtype is not None or fuse:
            module = InferenceWrapper(module, channels_last=channels_last, dtype=autocast_dtype, fuse=fuse)
            if not (channels_last or autocast_dtype is not None or module.fused):
                module = module.module
        if compile:
            # Freezing lets inductor treat the (folded, grad-free) weights as constants: it pre-packs them
            # for oneDNN and fuses conv + pointwise ops, as fuse_conv_pointwise does in eager mode.
            module = torch.compile(module, options={"freezing": True})
        return module

    if _is_detector(optimized):
        optimized.backbone = wrap(optimized.backbone)
        if fuse:
            for name in _DETECTOR_CONV_HEADS:
                try:
                    head = optimized.get_submodule(name)
                except AttributeError:
                    continue
                wrapper = InferenceWrapper(head, channels_last=False, dtype=None, fuse=True)
                if wrapper.fused:
                    _set_submodule(optimized, name, wrapper)
        return optimized
    return wrap(optimized)


def norms_after_convs(module: nn.Module) -> List[str]:
    """Names of the BatchNorm2d / SyncBatchNorm / FrozenBatchNorm2d that directly follow a Conv2d in `module`.

    Read from the ``torch.fx`` graph as ``fold_batchnorm`` does (untraceable modules child by child), with
    no other condition: a folded model should give an empty list.

    Args:
        module: the module to inspect (not modified).

    Returns:
        Qualified names of those norms, relative to `module`.
    """
    try:
        graph = _trace(module)
    except Exception:  # noqa: BLE001 - same fallback as fold_batchnorm
        found: List[str] = []
        for name, child in module.named_children():
            found += [f"{name}.{n}" for n in norms_after_convs(child)]
        return found
    names = []
    for node in graph.nodes:
        if node.op == "call_module" and node.args and isinstance(node.args[0], torch.fx.Node):
            source = node.args[0]
            if source.op == "call_module" and isinstance(module.get_submodule(source.target), nn.Conv2d):
                if type(module.get_submodule(node.target)) in _FOLDABLE_NORMS:
                    names.append(node.target)
    return names
