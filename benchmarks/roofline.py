"""The fp32 ceiling of a run: a model's multiply-accumulates at the rate this machine multiplies matrices.

A direct convolution is a matrix product (im2col or its blocked equivalents: oneDNN's brgemm, MLAS), so no
runtime that computes every multiply-accumulate of a model's convolutions and matmuls in fp32 runs it faster
than ``MACs / (the machine's fp32 matmul rate)``. The rate is measured in the same alternating group as the
models (``time_alternating``), so clock and load spells land on it as on them. A large ``torch.mm`` (MKL or
oneDNN sgemm) is the best-tuned fp32 kernel a CPU has; a convolution kernel may match its rate, not pass it by
more than noise (measured on the AMX Xeon: OpenVINO's convolutions at 140-145 GMAC/s, ``torch.mm`` at 150-167).
Only an algorithm with fewer multiplies (Winograd, FFT) or a lower precision (bf16, int8) can pass the ceiling:
the report says so beside the row.

    >>> macs = count_macs(lambda: model(x))          # e.g. 134.3e9 for resnet50-FPN at 1x3x800x1216
    >>> matmul = matmul_candidate()                   # time matmul() beside the models
    >>> row = ceiling_row("backbone fp32", "torchvision fp32 eager", theirs_times, macs, matmul_times)
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from .results import TimingRow
from .timing import median

__all__ = ["count_macs", "matmul_candidate", "ceiling_row", "CEILING_LABEL", "MATMUL_SIZE"]

CEILING_LABEL = "ceiling: every fp32 MAC at this run's matmul rate"
# 2048^3 MACs: ~0.05 s a call here, large enough for sgemm to reach its blocked steady state.
MATMUL_SIZE = 2048


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of the convolutions and matmuls `fn` runs (``torch.utils.flop_counter``).

    Other operators (pooling, interpolation, roi_align, nms) are not counted: their time is not
    multiply-bound, and leaving them out only lowers the ceiling's seconds.

    Args:
        fn: a zero-argument call of the model, e.g. ``lambda: model(x)``.

    Returns:
        The count (``FlopCounterMode``'s flops / 2: it counts a multiply-accumulate as two).

    Example:
        >>> count_macs(lambda: torchvision.models.resnet50()(torch.rand(1, 3, 224, 224)))  # 4.09e9
    """
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def matmul_candidate(size: int = MATMUL_SIZE, *, seed: int = 0) -> Callable[[], torch.Tensor]:
    """A float32 ``torch.mm`` of two `size` x `size` matrices (``size ** 3`` multiply-accumulates) to time
    beside the models.

    Args:
        size: the matrices' side.
        seed: of the random matrices.

    Returns:
        The zero-argument call.

    Raises:
        ValueError: `size` is not a positive int.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(size, size, generator=generator)
    b = torch.rand(size, size, generator=generator)
    return lambda: torch.mm(a, b)


def ceiling_row(case: str, reference: str, reference_times: Sequence[float], macs: int,
                matmul_times: Sequence[float], *, matmul_size: int = MATMUL_SIZE) -> TimingRow:
    """The row of the ceiling: `macs` at the measured matmul rate, beside torchvision's measured times.

    Each matmul measurement gives one ceiling (``macs / (matmul_size ** 3 / t)``), so the row's median is the
    ceiling at the median rate, and its speed-up is the most any fp32 direct-convolution runtime could show
    against torchvision in this run.

    Args:
        case: e.g. "backbone fp32".
        reference: torchvision's candidate, e.g. "torchvision fp32 eager".
        reference_times: torchvision's measurements (seconds per call).
        macs: the model's multiply-accumulates (``count_macs``).
        matmul_times: the measurements of ``matmul_candidate(matmul_size)``'s call.
        matmul_size: the side of its matrices.

    Returns:
        A ``TimingRow`` whose "ours" column is the ceiling (no output, so no difference) and whose note gives
        the count, the rate and the share of the rate torchvision's eager run reaches.

    Raises:
        ValueError: `macs` or `matmul_size` is not positive, or a list of times is empty.

    Example:
        >>> ceiling_row("backbone fp32", "torchvision fp32 eager", [1.6], 134_300_000_000, [0.055]).ours_s
        0.8599...
    """
    if macs <= 0 or matmul_size <= 0:
        raise ValueError(f"macs and matmul_size must be positive, got {macs} and {matmul_size}")
    if not reference_times or not matmul_times:
        raise ValueError("reference_times and matmul_times must hold at least one measurement each")
    matmul_macs = matmul_size ** 3
    ceilings: List[float] = [macs * t / matmul_macs for t in matmul_times]
    rate = matmul_macs / median(matmul_times)
    share = macs / median(reference_times) / rate
    note = (f"a bound, not a model run: {macs / 1e9:.1f} GMACs (convolutions and matmuls, "
            f"torch.utils.flop_counter) at {rate / 1e9:.0f} GMAC/s (torch.mm {matmul_size}x{matmul_size} fp32, timed in this "
            f"group); no fp32 runtime computing every MAC beats it, only fewer multiplies (Winograd, FFT) or "
            f"lower precision; torchvision eager runs at {100 * share:.0f}% of that rate")
    return TimingRow(case, reference, CEILING_LABEL, list(reference_times), ceilings, None, "", note)
