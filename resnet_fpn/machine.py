"""What this machine can do, and the speed defaults ("auto") decided from it.

A choice that wins on one CPU loses on another: measured on 2-core machines here (docs/benchmarks.md),
channels_last training ran 0.78x (Faster R-CNN) and 0.85x (Mask R-CNN) of contiguous on an AVX2 CPU but 1.07x
and 1.14x on an AVX-512 one; bf16 autocast ran at a fraction of fp32's speed without native bf16 kernels and
several times faster with them (AVX512-BF16; AMX more still). So ``"auto"`` is decided here, from the CPU's
flags and what oneDNN reports (or the CUDA device's capability), and printed where it is used.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import FrozenSet, Optional, Union

import torch

__all__ = ["FLAGS_THAT_MATTER", "Machine", "cpu_model", "cpu_flags", "onednn_native_bf16", "machine_class",
           "this_machine", "auto_precision", "auto_channels_last"]

# The x86 features that decide which oneDNN kernels run: AVX2 (the baseline fp32 kernels), AVX-512
# (wider fp32), AVX512-BF16 (native bf16 dot products), AMX (bf16 tile matrix multiply).
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
_CPUINFO = "/proc/cpuinfo"


def _read_cpuinfo(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model(*, cpuinfo: Optional[str] = None) -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere).

    Args:
        cpuinfo: the text of /proc/cpuinfo (None: read it).

    Returns:
        e.g. "AMD EPYC 9454", or "unknown".
    """
    text = _read_cpuinfo(_CPUINFO) if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags(*, cpuinfo: Optional[str] = None) -> FrozenSet[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` ("flags" on x86, "Features" on Arm).

    Args:
        cpuinfo: the text of /proc/cpuinfo (None: read it; empty where there is none, e.g. macOS).

    Returns:
        The set of flags.
    """
    text = _read_cpuinfo(_CPUINFO) if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def onednn_native_bf16() -> Optional[bool]:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); None when torch cannot say."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        # A torch built without oneDNN, or an older one without the query.
        return None


def machine_class(flags: FrozenSet[str], *, machine: Optional[str] = None) -> str:
    """The CPU class speed defaults and benchmark sections go by: "AMX", "AVX-512 + bf16", "AVX-512", "AVX2",
    else "<arch> CPU".

    Args:
        flags: the CPU flags (``cpu_flags()``).
        machine: the architecture for CPUs with none of those flags (None: ``platform.machine()``).
    """
    if {"amx_bf16", "amx_tile"} <= flags:
        return "AMX"
    if {"avx512f", "avx512_bf16"} <= flags:
        return "AVX-512 + bf16"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return f"{machine or platform.machine() or 'unknown'} CPU"


@dataclass(frozen=True)
class Machine:
    """The device a run uses, as far as speed defaults care.

    Attributes:
        device: "cpu" or "cuda".
        name: the CPU model or the CUDA device name.
        machine_class: "AVX2", "AVX-512", "AVX-512 + bf16", "AMX", "<arch> CPU", or "GPU".
        native_bf16: bf16 matrix kernels in hardware (oneDNN's AVX512-BF16/AMX; CUDA ``is_bf16_supported()``).
    """

    device: str
    name: str
    machine_class: str
    native_bf16: bool

    def describe(self) -> str:
        """One line for logs, e.g. "cpu AMD EPYC (AVX-512 + bf16, native bf16)"."""
        return f"{self.device} {self.name} ({self.machine_class}, {'native' if self.native_bf16 else 'no native'} bf16)"


def this_machine(device: Union[str, torch.device, None] = None) -> Machine:
    """The machine a run on `device` uses.

    Args:
        device: "cpu", "cuda", "gpu" (Lightning's name) or a torch.device; None means "cuda" when available.

    Raises:
        ValueError: another device type.
    """
    kind = torch.device(device).type if isinstance(device, torch.device) else (device or (
        "cuda" if torch.cuda.is_available() else "cpu"))
    kind = "cuda" if kind == "gpu" else kind
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
        return Machine("cuda", torch.cuda.get_device_name(0), "GPU", bool(torch.cuda.is_bf16_supported()))
    if kind != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda' (or 'gpu'), got {device!r}")
    flags = cpu_flags()
    native = onednn_native_bf16()
    cls = machine_class(flags)
    # Trust oneDNN where it answers; the flags otherwise.
    has_bf16 = native if native is not None else cls in ("AMX", "AVX-512 + bf16")
    return Machine("cpu", cpu_model(), cls, bool(has_bf16))


def auto_precision(machine: Machine) -> str:
    """Lightning precision for ``trainer.precision: auto``: "bf16-mixed" with native bf16, else "32-true".

    Measured here: a bf16 training step of Faster R-CNN R50-FPN ran 6.6x faster than fp32 on an AVX512-BF16 CPU,
    and several times slower than fp32 on an AVX2 one (reference kernels).
    """
    return "bf16-mixed" if machine.native_bf16 else "32-true"


def auto_channels_last(machine: Machine) -> bool:
    """channels_last for training: on GPUs (tensor cores run NHWC) and AVX-512 CPUs (measured 1.07x/1.14x), not on
    AVX2 and other CPUs (measured 0.78x/0.85x of contiguous: oneDNN's AVX2 NHWC kernels lose)."""
    return machine.machine_class in ("GPU", "AMX", "AVX-512 + bf16", "AVX-512")
