"""The convolutions a ResNet body can be built with: plain, weight-standardised, deformable (v1/v2).

Every kind keeps the plain conv's parameter name (``weight``) and shape, so a checkpoint of the plain network
loads into any of them. A deformable conv adds one submodule, ``offset`` (zero-initialised), which a plain
checkpoint does not have; loaders treat its tensors as legitimately new (see `is_new_when_loading`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

__all__ = [
    "CONVS",
    "WS_EPS",
    "WSConv2d",
    "DeformConv2d",
    "OffsetConv2d",
    "make_conv",
    "standardize_weight",
    "is_new_when_loading",
    "DEFORM_CONV_MIN_OPSET",
]

# "plain": torch's Conv2d; "ws": weight standardisation (Qiao et al. 2019).
CONVS = ("plain", "ws")

# mmcv's ConvWS2d (mmcv/cnn/bricks/conv_ws.py, ``conv_ws_2d``): W_hat = (W - mean) / (std + eps), per output
# channel over (in/groups, kh, kw), ``std`` being torch.std (unbiased, Bessel's n - 1), eps = 1e-5. mmdetection's
# GN+WS recipes (configs/gn+ws) use it; following it exactly keeps their checkpoints computing the same here.
WS_EPS = 1e-5


def standardize_weight(weight: Tensor, eps: float = WS_EPS) -> Tensor:
    """Weight standardisation (Qiao et al. 2019, eq. 5), as mmcv's ``conv_ws_2d``.

    ``W_hat[o] = (W[o] - mean(W[o])) / (std(W[o]) + eps)`` over each output channel's (in, kh, kw), with the
    unbiased std (n - 1) and `eps` added to the std, not the variance.

    Args:
        weight: a conv weight ``(out, in/groups, kh, kw)``.
        eps: added to the std (``WS_EPS``).

    Returns:
        The standardised weight, same shape: per output channel mean 0 and unbiased std ``std / (std + eps)``.

    Example:
        >>> w = standardize_weight(torch.randn(8, 4, 3, 3))
        >>> w.shape, bool(w.flatten(1).mean(1).abs().max() < 1e-6)
        (torch.Size([8, 4, 3, 3]), True)
    """
    flat = weight.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1, 1)
    return (weight - mean) / (std + eps)


class WSConv2d(nn.Conv2d):
    """A Conv2d whose weight is standardised in every forward (Qiao et al. 2019; mmcv's ``ConvWS2d``).

    Meant with GroupNorm (``norm="gn"``), as mmdetection's GN+WS recipes: WS smooths the loss landscape where
    batch statistics are unavailable (micro-batches). The parameter stays ``weight`` (the raw weight), so a
    plain checkpoint loads, though a network trained without WS computes something else through it.
    Not folded with a following BN by ``optimize_for_inference`` (the standardisation would undo the fold).

    Args:
        as ``nn.Conv2d``; `eps` see ``WS_EPS``.

    Example:
        >>> WSConv2d(16, 32, 3, padding=1, bias=False)(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
    """

    def __init__(self, *args, eps: float = WS_EPS, **kwargs) -> None:  # noqa: D107 - nn.Conv2d's arguments
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, standardize_weight(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


class OffsetConv2d(nn.Conv2d):
    """The conv predicting a deformable conv's sampling offsets (and modulation), initialised to zeros.

    Zero weight and bias, as detectron2's ``DeformBottleneckBlock`` (``conv2_offset``) and mmcv's
    ``DeformConv2dPack``: every offset starts at 0, so the deformable conv starts as the plain conv. Its
    tensors are new when a plain checkpoint is loaded (`is_new_when_loading`).
    """

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class DeformConv2d(nn.Module):
    """A deformable convolution (Dai et al. 2017, DCNv1; Zhu et al. 2019, DCNv2 "modulated") on torchvision's
    ``deform_conv2d``, with the plain conv's ``weight`` and its own offset predictor ``offset``.

    ``offset`` is a conv of the same kernel, stride, padding and dilation on the same input, predicting
    ``2 * deform_groups * kh * kw`` offsets (plus ``deform_groups * kh * kw`` modulation scalars for DCNv2),
    zero-initialised. The modulation is ``2 * sigmoid(m)``, not DCNv2's ``sigmoid(m)``: with the zero init
    the plain conv is then computed *exactly* at initialisation (offsets 0, modulation 1), so a plain
    checkpoint gives the plain network's outputs until training moves the offsets. detectron2 and mmcv use
    ``sigmoid(m)`` (0.5 at init: the block starts at half its pretrained response); their DCNv2 checkpoints
    load here (same shapes) but their modulation scalars mean half as much.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as ``nn.Conv2d`` (square).
        deform_groups: offset groups (detectron2's ``DEFORM_NUM_GROUPS``): channels split into this many
            groups, each with its own offsets; must divide `in_channels`.
        modulated: DCNv2 (offsets and modulation) instead of DCNv1 (offsets only).
        standardize: weight-standardise ``weight`` in forward (``conv="ws"``).

    Raises:
        ValueError: `deform_groups` not a positive int dividing `in_channels`.

    Example:
        >>> conv = DeformConv2d(16, 16, 3, padding=1)
        >>> conv(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, deform_groups: int = 1, modulated: bool = True,
                 standardize: bool = False) -> None:
        super().__init__()
        if isinstance(deform_groups, bool) or not isinstance(deform_groups, int) or deform_groups < 1 \
                or in_channels % deform_groups:
            raise ValueError(f"deform_groups must be a positive int dividing the {in_channels} input channels, "
                             f"got {deform_groups!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.groups, self.deform_groups, self.modulated = groups, deform_groups, modulated
        self.eps: Optional[float] = WS_EPS if standardize else None
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.register_parameter("bias", None)  # bias-free as the body's convs (a BN follows)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default; ResNet re-inits it
        taps = deform_groups * kernel_size * kernel_size
        self.offset = OffsetConv2d(in_channels, taps * (3 if modulated else 2), kernel_size, stride=stride,
                                   padding=padding, dilation=dilation, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        predicted = self.offset(x)
        taps = self.deform_groups * self.kernel_size * self.kernel_size
        offset, mask = predicted[:, : 2 * taps], None
        if self.modulated:
            mask = 2 * torch.sigmoid(predicted[:, 2 * taps:])  # 1 at init: the plain conv (see the class doc)
        if x.device.type == "cpu" and not bool(torch.isfinite(predicted).all()):
            # torchvision's CPU kernel turns a NaN/inf sampling position into an out-of-bounds read (a segfault,
            # torchvision 0.29): refuse instead. (Diverged training, or activations that overflow: e.g. conv="ws"
            # under frozen BN at random init, whose outputs grow by the fan-in at every layer.)
            raise FloatingPointError(
                f"deformable conv {self.extra_repr()}: its offset predictor gave non-finite values (NaN/inf); "
                f"non-finite input: {not bool(torch.isfinite(x).all())}"
            )
        weight = self.weight if self.eps is None else standardize_weight(self.weight, self.eps)
        # Always outside autocast, in float32 (float64 stays): torchvision's deform_conv2d has no CPU autocast
        # rule, and its CPU kernel's inner matrix products would otherwise run under autocast in bfloat16 while
        # it reads their results as float (wrong results, or a segfault: seen with torchvision 0.29 on a
        # ResNet-50's c3-c5). On CUDA, torchvision's own autocast rule does the same (csrc/ops/autocast/
        # deform_conv2d_kernel.cpp: every input cast to float, the output back to the input's dtype).
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            out = deform_conv2d(x.to(dtype), offset.to(dtype), weight.to(dtype), self.bias, stride=self.stride,
                                padding=self.padding, dilation=self.dilation,
                                mask=None if mask is None else mask.to(dtype))
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"deform_groups={self.deform_groups}, modulated={self.modulated}, ws={self.eps is not None}")


# ONNX: opset 19 added DeformConv (torchvision's deform_conv2d semantics: offsets as (y, x) pairs per kernel tap
# and offset group, optional mask); torchvision registers no exporter for its op, so it is registered here, for
# torch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``, what resnet_fpn.deploy uses).
# Below opset 19 there is no such ONNX op: the symbolic registered for 11..18 refuses with the reason.
DEFORM_CONV_MIN_OPSET = 19


def _deform_conv_symbolic(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dilation_h,
                          dilation_w, groups, offset_groups, use_mask):
    from torch.onnx import symbolic_helper

    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, offset_groups = (
        symbolic_helper._get_const(v, "i", name) for v, name in (
            (stride_h, "stride_h"), (stride_w, "stride_w"), (pad_h, "pad_h"), (pad_w, "pad_w"),
            (dilation_h, "dilation_h"), (dilation_w, "dilation_w"), (groups, "groups"),
            (offset_groups, "offset_groups")))
    use_mask = symbolic_helper._get_const(use_mask, "b", "use_mask")
    kernel = symbolic_helper._get_tensor_sizes(weight)[2:]
    inputs = [input, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op("DeformConv", *inputs, kernel_shape_i=kernel, strides_i=[stride_h, stride_w],
                pads_i=[pad_h, pad_w, pad_h, pad_w], dilations_i=[dilation_h, dilation_w], group_i=groups,
                offset_group_i=offset_groups)


def _deform_conv_before_opset19(g, *args):
    raise RuntimeError(
        f"deformable convolutions (ResNetOptions.deform_stages) export to ONNX from opset "
        f"{DEFORM_CONV_MIN_OPSET} on, whose DeformConv op they map to (earlier opsets have no such op): pass "
        f"opset={DEFORM_CONV_MIN_OPSET} (resnet-fpn export --opset {DEFORM_CONV_MIN_OPSET})"
    )


def _register_onnx_symbolics() -> None:
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv_before_opset19, 11)
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv_symbolic,
                                           DEFORM_CONV_MIN_OPSET)


_register_onnx_symbolics()


def make_conv(kind: str, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
              padding: int = 0, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free conv of kind "plain" (``nn.Conv2d``) or "ws" (``WSConv2d``), as the body's convs.

    Raises:
        ValueError: `kind` not in ``CONVS``.

    Example:
        >>> type(make_conv("ws", 3, 64, 7, stride=2, padding=3)).__name__
        'WSConv2d'
    """
    if kind not in CONVS:
        raise ValueError(f"conv must be one of {CONVS}, got {kind!r}")
    cls = WSConv2d if kind == "ws" else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
               groups=groups, bias=False)


def is_new_when_loading(module: nn.Module) -> bool:
    """Whether `module`'s tensors are legitimately absent from a checkpoint of the plain network (a deformable
    conv's zero-initialised offset predictor), so loaders leave them at their init instead of refusing."""
    return isinstance(module, OffsetConv2d)
