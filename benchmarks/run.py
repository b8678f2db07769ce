"""run_benchmarks: the selected cases, in order."""
from __future__ import annotations

import time
from typing import Callable

import torch

from .evaluator import COCO_VAL2014_100, benchmark_coco_val2014_100
from .inference import benchmark_backbone, benchmark_detector
from .machine import machine_info
from .memory import measure_peak_memory, require_linux_proc
from .results import RunResult
from .settings import BenchmarkSettings
from .training import benchmark_train_step

__all__ = ["run_benchmarks"]


def run_benchmarks(settings: BenchmarkSettings, *, command: str,
                   log: Callable[[str], None] = print) -> RunResult:
    """Run the cases of `settings`, in its order.

    Args:
        settings: what to run.
        command: the command line, for the report.
        log: progress messages (one line per case, with its duration).

    Returns:
        The rows of every case, the machine and the cases skipped here (evaluator data absent).

    Raises:
        RuntimeError: "memory" is selected on a platform without Linux's /proc (before anything runs).
    """
    if "memory" in settings.cases:
        require_linux_proc()  # now, not after the timing cases have run for half an hour
    torch.set_num_threads(settings.threads)
    sizes = f"{settings.describe_sizes()}; {settings.repeats} measurements per candidate"
    if settings.slow_repeats is not None:
        sizes += f" ({min(settings.repeats, settings.slow_repeats)} for bf16 without native bf16 kernels)"
    result = RunResult(machine=machine_info(settings.threads, command), sizes=sizes)
    for case in settings.cases:
        start = time.perf_counter()
        if case in ("backbone", "backbone_bf16", "detector", "detector_bf16"):
            bf16 = case.endswith("_bf16")
            rows, skipped = (benchmark_detector(settings, bf16=bf16) if case.startswith("detector")
                             else benchmark_backbone(settings, bf16=bf16))
            result.timings += rows
            result.skipped += [f"{case}: peer {line}" for line in skipped]
        elif case in ("train_faster_rcnn", "train_mask_rcnn"):
            result.timings += benchmark_train_step(case[len("train_"):], settings)
        elif case == "memory":
            result.memory = measure_peak_memory(settings)
        elif case == "evaluator":
            coco_dir = settings.coco_dir
            if coco_dir is None or not (coco_dir / COCO_VAL2014_100["gt"]).is_file():
                result.skipped.append(f"evaluator: coco_val2014_100 not found at {coco_dir}")
            else:
                result.evaluator = benchmark_coco_val2014_100(coco_dir, repeats=settings.repeats,
                                                              num_threads=settings.threads)
        log(f"{case}: {time.perf_counter() - start:.0f} s")
    return result
