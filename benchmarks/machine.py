"""The machine a report was measured on, and the machine class its section is filed under.

Figures from an AVX2 CPU and from an AMX one answer different questions (bf16 is several times slower than
float32 on the first, faster on the second), so docs/benchmarks.md keeps one section per machine class.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Dict, FrozenSet, Optional

import torch

__all__ = ["FLAGS_THAT_MATTER", "cpu_model", "cpu_flags", "onednn_native_bf16", "machine_class", "machine_info"]

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
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); None when torch cannot say.

    Without native kernels bf16 convolutions fall back to slow reference code, so the bf16 cases take
    tens of seconds a call and run fewer repeats.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        # A torch built without oneDNN, or an older one without the query.
        return None


def machine_class(flags: FrozenSet[str], *, machine: Optional[str] = None) -> str:
    """The class a report section is filed under: "AMX", "AVX-512 + bf16", "AVX-512", "AVX2", else the arch.

    Args:
        flags: the CPU flags (``cpu_flags()``).
        machine: the architecture for CPUs with none of those flags (None: ``platform.machine()``).

    Returns:
        The class name (also the section heading in docs/benchmarks.md).
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


def _describe_flags(flags: FrozenSet[str]) -> str:
    if not flags:
        return "unknown (no /proc/cpuinfo)"
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS_THAT_MATTER)


def machine_info(threads: int, command: str) -> Dict[str, str]:
    """What the report header says about the machine and the run.

    Args:
        threads: torch threads of the run.
        command: the command line that produced the report.

    Returns:
        Ordered name -> value: machine class, CPU, flags, oneDNN bf16, cores, threads, versions, date, command.
    """
    import torchvision

    flags = cpu_flags()
    native = onednn_native_bf16()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "machine class": machine_class(flags),
        "cpu": cpu_model(),
        "cpu flags": _describe_flags(flags),
        "native bf16 (oneDNN)": "unknown" if native is None else str(native),
        "cores available": str(cores),
        "threads": str(threads),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": sys.platform,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": command,
    }
