"""Gradient checkpointing (``ResNetOptions.grad_checkpointing``): peak memory and time of one training step,
with and without, each setting in a fresh Python process. Not a timed test: a measurement to record.

    python -m benchmarks.checkpointing                                   # Mask R-CNN R101-FPN, 1024x1024, batch 2
    python -m benchmarks.checkpointing --backbone resnet50-fpn --size 512 --steps 3

Prints a Markdown table (and the command, date, CPU) for docs/backbones.md. Each child builds the detector as
it is fine-tuned from pretrained weights (frozen BN, freeze_at=2; the weights themselves are random: the cost
does not depend on them), resets the kernel's RSS high-water mark (``/proc/self/clear_refs``, Linux, as
``benchmarks.memory``), runs `steps` SGD steps on the same random batch, and reports the peak RSS increase
over the steps and the time of each step (wall clock, and the process's CPU time). The first step allocates the gradients and the optimizer's momentum,
so its time is reported apart; the peak covers every step.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .memory import _read_status_kib, require_linux_proc
from .training import DETECTOR_KINDS, train_step_fn, training_batch

__all__ = ["SETTINGS", "measure", "format_table", "main"]

SETTINGS = ("off", "on")
_REPO_ROOT = Path(__file__).resolve().parents[1]


def _child(args: argparse.Namespace) -> Dict[str, object]:
    """One setting in this process: build, reset the peak, run the steps; the figures as a dict."""
    from resnet_fpn import build_detector

    require_linux_proc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, targets = training_batch(args.model, args.size, seed=3)
    common = dict(num_classes=91, backbone=args.backbone, min_size=args.size, max_size=args.size)
    # Frozen BN with fresh statistics is an identity, and a random ResNet-101 then overflows (NaN losses, which
    # change what the heads compute). The statistics are set to the batch's own, as a pretrained network's
    # roughly are: one forward in training mode with momentum 1 (running = batch statistics).
    calibrated = build_detector(args.model, norm="bn", freeze_at=0, **common).train()
    for m in calibrated.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        calibrated.backbone(calibrated.transform(images)[0].tensors)
    state = calibrated.state_dict()
    del calibrated
    model = build_detector(args.model, weights=state, norm="frozen_bn", freeze_at=2,
                           backbone_options={"grad_checkpointing": args.child == "on"}, **common).train()
    del state
    step = train_step_fn(model, images, targets, autocast=False)
    gc.collect()
    baseline = _read_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) back to the current RSS: what follows is the steps' own
    times, cpu_times, losses = [], [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        losses.append(sum(loss.values()))
    peak = _read_status_kib("VmHWM")
    return {"setting": args.child, "increase_mib": (peak - baseline) / 1024, "baseline_mib": baseline / 1024,
            "step_s": times, "cpu_s": cpu_times, "loss": losses}


def measure(*, model: str, backbone: str, size: int, steps: int, threads: int) -> List[Dict[str, object]]:
    """Both settings, each in a fresh process (``python -m benchmarks.checkpointing --child SETTING``).

    Raises:
        RuntimeError: not Linux, or a child failed (its stderr included).
    """
    require_linux_proc()
    rows = []
    # As benchmarks.memory: a fixed mmap threshold returns freed tensors to the OS, so the peak counts live ones.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    for setting in SETTINGS:
        command = [sys.executable, "-m", "benchmarks.checkpointing", "--child", setting, "--model", model,
                   "--backbone", backbone, "--size", str(size), "--steps", str(steps), "--threads", str(threads)]
        result = subprocess.run(command, cwd=_REPO_ROOT, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def format_table(rows: Sequence[Dict[str, object]], *, command: str, model: str, backbone: str, size: int,
                 threads: int) -> str:
    """The Markdown block: what was measured, the table, the saving and the time cost."""
    off, on = (next(r for r in rows if r["setting"] == s) for s in SETTINGS)

    def later(row, key: str = "step_s") -> float:  # steps after the first (which allocates grads and momentum)
        times = row[key]
        return sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]

    lines = [
        f"`{command}` ({datetime.date.today().isoformat()}, {_cpu_name()}, {threads} threads, torch "
        f"{torch.__version__}): one SGD step of {model} {backbone}, batch 2 at {size}x{size}, frozen BN, "
        f"freeze_at=2, fp32.",
        "",
        "| grad_checkpointing | peak RSS increase (MiB) | first step (s) | later steps (s) | later steps, CPU time (s) "
        "| loss |",
        "|---|---|---|---|---|---|",
    ]
    for row in (off, on):
        lines.append(f"| {row['setting']} | {row['increase_mib']:.0f} | {row['step_s'][0]:.1f} | {later(row):.1f} | "
                     f"{later(row, 'cpu_s'):.1f} | {row['loss'][-1]:.6f} |")
    saving = 100 * (1 - on["increase_mib"] / off["increase_mib"])
    cost = 100 * (later(on) / later(off) - 1)
    cpu_cost = 100 * (later(on, "cpu_s") / later(off, "cpu_s") - 1)
    lines += ["", f"Memory saved: {saving:.0f}% of the step's peak; time cost: {cost:+.0f}% per step "
                  f"({cpu_cost:+.0f}% in CPU time, which other processes on the machine disturb less)."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see the module docstring).

    Returns:
        0 (bad options exit through argparse with status 2).
    """
    p = argparse.ArgumentParser(prog="python -m benchmarks.checkpointing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=DETECTOR_KINDS, default="mask_rcnn")
    p.add_argument("--backbone", default="resnet101-fpn")
    p.add_argument("--size", type=int, default=1024, help="square image side (min_size = max_size)")
    p.add_argument("--steps", type=int, default=2, help="SGD steps per setting (the first allocates grads)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.size < 32 or args.threads < 1:
        p.error(f"need --steps >= 1, --size >= 32 and --threads >= 1, got {args.steps}, {args.size}, {args.threads}")
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    rows = measure(model=args.model, backbone=args.backbone, size=args.size, steps=args.steps, threads=args.threads)
    command = " ".join(["python -m benchmarks.checkpointing",
                        *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    print(format_table(rows, command=command, model=args.model, backbone=args.backbone, size=args.size,
                       threads=args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
