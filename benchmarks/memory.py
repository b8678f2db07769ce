"""Peak memory of one call, torchvision's model against ours, each in a fresh Python process.

The parent (``measure_peak_memory``) starts ``python -m benchmarks.memory CASE IMPL ...`` with the
repository root as working directory (``-m`` puts it on ``sys.path``); the child builds the models,
runs the case once and prints one JSON line.

The figure is the kernel's RSS high-water mark, read from ``/proc/self/status`` (``VmHWM``) after resetting
it through ``/proc/self/clear_refs``: Linux only. Elsewhere ``measure_peak_memory`` refuses with a
RuntimeError rather than report a figure measured another way.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

import resnet_fpn

from .models import reference_models
from .results import MemoryRow
from .settings import MEMORY_CASES, BenchmarkSettings
from .timing import alternation_order
from .training import train_step_fn, training_batch

__all__ = ["IMPLEMENTATIONS", "require_linux_proc", "measure_peak_memory", "main"]

IMPLEMENTATIONS = ("theirs", "ours")
# The folder holding the `benchmarks` package: the children's working directory.
_REPO_ROOT = Path(__file__).resolve().parents[1]
_SETTINGS = {"backbone": "optimized fp32", "detector": "optimized fp32",
             "train_faster_rcnn": "fp32 train step", "train_mask_rcnn": "fp32 train step"}


def require_linux_proc() -> None:
    """Refuse, with a RuntimeError naming the platform, where /proc/self/clear_refs and VmHWM do not exist."""
    if not sys.platform.startswith("linux") or not Path("/proc/self/clear_refs").exists():
        raise RuntimeError(
            f"peak memory is read from Linux's /proc/self/status (VmHWM, reset through /proc/self/clear_refs); "
            f"this platform ({sys.platform}) has no such files: leave 'memory' out of --cases"
        )


def _read_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _build_case(case: str, impl: str, settings: BenchmarkSettings) -> Callable[[], None]:
    """The call to measure: torchvision eager or ours optimized for inference, the plain fp32 step for training."""
    height, width = settings.inference_size
    if case == "backbone":
        theirs, ours = reference_models("backbone")
        model = theirs if impl == "theirs" else resnet_fpn.optimize_for_inference(ours)
        x = torch.rand(1, 3, height, width)

        def run() -> None:
            with torch.inference_mode():
                model(x)
    elif case == "detector":
        theirs, ours = reference_models("faster_rcnn", size=min(height, width))
        theirs.transform.max_size = ours.transform.max_size = max(height, width)
        model = theirs if impl == "theirs" else resnet_fpn.optimize_for_inference(ours)
        image = torch.rand(3, height, width)

        def run() -> None:
            with torch.inference_mode():
                model([image])
    else:
        kind = case[len("train_"):]
        theirs, ours = reference_models(kind, size=settings.train_size)
        model = (theirs if impl == "theirs" else ours).train()
        images, targets = training_batch(kind, settings.train_size, seed=3)
        step = train_step_fn(model, images, targets, autocast=False)

        def run() -> None:
            step()
    return run


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Child process: build one case, measure its first call, print ``{"baseline_kib", "peak_kib", "increase_mib"}``.

    Args:
        argv: ``CASE IMPL [--quick] [--threads N]`` (None: ``sys.argv[1:]``).

    Returns:
        0 (errors raise).
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=main.__doc__)
    parser.add_argument("case", choices=MEMORY_CASES)
    parser.add_argument("impl", choices=IMPLEMENTATIONS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    require_linux_proc()
    settings = BenchmarkSettings(quick=args.quick, threads=args.threads)
    torch.set_num_threads(settings.threads)
    run = _build_case(args.case, args.impl, settings)
    # Both models were built (ours from torchvision's state dict); the unused one is freed before the baseline.
    gc.collect()
    baseline = _read_status_kib("VmRSS")
    # Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS (Linux >= 4.0), so the peak read
    # afterwards is the call's own, not the model build's (deepcopy, state dict copies).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run()
    peak = _read_status_kib("VmHWM")
    print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "increase_mib": (peak - baseline) / 1024}))
    return 0


def _run_child(case: str, impl: str, settings: BenchmarkSettings) -> float:
    # glibc's malloc keeps freed blocks below a threshold that adapts to the program's history, so the RSS
    # high-water mark depends on what was allocated and freed before (about +-40 MiB run to run for a
    # training step). A fixed mmap threshold puts every tensor over 128 KiB in its own mapping, returned to
    # the OS when freed: the peak then counts live tensors, and repeated runs agree to about 0.2 MiB.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    command = [sys.executable, "-m", "benchmarks.memory", case, impl, "--threads", str(settings.threads)]
    if settings.quick:
        command.append("--quick")
    result = subprocess.run(command, cwd=_REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory subprocess {case}/{impl} failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["increase_mib"])


def measure_peak_memory(settings: BenchmarkSettings, cases: Sequence[str] = MEMORY_CASES, *,
                        repeats: int = 3) -> List[MemoryRow]:
    """Peak RSS increase of one call, torchvision's model against ours, each in a fresh Python process.

    In each process the models are built, the RSS high-water mark is reset, the case runs once (the first
    call, so one-time allocations count alike for both sides) and ``VmHWM - VmRSS(before)`` is the figure:
    the memory the call itself needed, as the operating system saw it. Inference cases compare torchvision
    eager with ``optimize_for_inference(ours)``; training cases the plain fp32 steps. The sides alternate,
    `repeats` processes each.

    Args:
        settings: sizes and threads.
        cases: a subset of ``MEMORY_CASES``.
        repeats: processes per side and case.

    Returns:
        One row per case, with every process's figure.

    Raises:
        ValueError: `repeats` is not a positive int, or an unknown case.
        RuntimeError: not Linux (no /proc/self/clear_refs), or a subprocess failed (its stderr is included).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    unknown = [c for c in cases if c not in MEMORY_CASES]
    if unknown:
        raise ValueError(f"cases must be a subset of {MEMORY_CASES}, got {list(cases)}")
    require_linux_proc()
    rows = []
    for case in cases:
        row = MemoryRow(case, _SETTINGS[case])
        for order in alternation_order(IMPLEMENTATIONS, repeats):
            for impl in order:
                figure = _run_child(case, impl, settings)
                (row.reference_mib if impl == "theirs" else row.ours_mib).append(figure)
        rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
