"""The machine a report was measured on, and the machine class its section is filed under.

Figures from an AVX2 CPU and from an AMX one answer different questions (bf16 is several times slower than
float32 on the first, faster on the second), so docs/benchmarks.md keeps one section per machine class.
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Dict, FrozenSet

import torch

__all__ = ["FLAGS_THAT_MATTER", "cpu_model", "cpu_flags", "onednn_native_bf16", "machine_class", "machine_info"]

# One definition of the machine classes: the package's (its "auto" speed defaults go by the same classes).
from resnet_fpn.machine import FLAGS_THAT_MATTER, cpu_flags, cpu_model, machine_class, onednn_native_bf16  # noqa: E402


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
