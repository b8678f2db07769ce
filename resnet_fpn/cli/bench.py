"""Time a backbone or detector on this machine, or see where a training step's time goes.

    resnet-fpn bench --backbone resnet50-fpn --size 800x1216                 eager vs optimize_for_inference
    resnet-fpn bench --model faster_rcnn --backbone resnet50-fpn --size 800x1216 --dtype bfloat16
    resnet-fpn bench --config configs/demo_mask_cpu.yaml --set mask_head_dim=256   profile a training step

Inference is timed with torch.utils.benchmark (warm-up, then enough runs for a stable median) for the eager
model and its `optimize_for_inference` copy, same weights, and printed with torch.utils.benchmark.Compare.
This measures *your* model on *your* machine; the comparisons against torchvision and the other runtimes that
docs/benchmarks.md reports come from the repository's benchmarks/ harness (`make benchmark`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

from ..detectors import list_detectors
from .args import image_size

__all__ = ["add_arguments", "run", "time_inference"]

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench subcommand's flags: an inference timing (--backbone/--model) or a step profile (--config)."""
    p.add_argument("--backbone", help="a backbone name (e.g. resnet50-fpn); alone: time the backbone")
    p.add_argument("--model", choices=list_detectors(), help="time this detector on --backbone instead")
    p.add_argument("--num-classes", type=int, default=91, help="detector classes incl. background (default 91)")
    p.add_argument("--size", type=image_size, default=(800, 1216), help="HxW of the input (default 800x1216)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="the optimized copy's dtype")
    p.add_argument("--compile", action="store_true", help="also time optimize_for_inference(..., compile=True)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--min-run-time", type=float, default=5.0, help="seconds of timed runs per candidate")
    p.add_argument("--config", type=Path, help="a training recipe: profile its training step instead")
    p.add_argument("--steps", type=int, default=4, help="with --config: steps timed (the first is a warm-up)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="with --config: build_detector options to change")


def time_inference(candidates: Dict[str, object], example: object, *, label: str, threads: int,
                   min_run_time: float) -> List[object]:
    """Time each candidate callable on `example` with torch.utils.benchmark.

    Args:
        candidates: name -> callable(example).
        example: the input passed to each candidate.
        label: the Compare table's title.
        threads: torch threads of every measurement.
        min_run_time: seconds of timed runs per candidate (after torch's warm-up).

    Returns:
        The ``torch.utils.benchmark.Measurement`` of each candidate, in order.
    """
    import torch
    from torch.utils.benchmark import Timer

    results = []
    with torch.inference_mode():
        for name, fn in candidates.items():
            timer = Timer(stmt="fn(x)", globals={"fn": fn, "x": example}, label=label, description=name,
                          num_threads=threads)
            results.append(timer.blocked_autorange(min_run_time=min_run_time))
    return results


def _profile_step(args: argparse.Namespace) -> int:
    import yaml

    from ..training import load_config
    from ..training.profile import format_step_profile, profile_train_step

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    print(format_step_profile(profile_train_step(load_config(args.config), steps=args.steps,
                                                 model_overrides=overrides)))
    return 0


def run(args: argparse.Namespace) -> int:
    """Profile a training step (--config) or time inference (--backbone [--model]); 0 on success."""
    if args.config is not None:
        return _profile_step(args)
    if args.backbone is None:
        args.parser.error("give --backbone (and optionally --model) to time inference, or --config to profile")
    import torch
    from torch.utils.benchmark import Compare

    from ..backbone import build_backbone
    from ..deploy import optimize_for_inference
    from ..detectors import build_detector

    threads = args.threads or torch.get_num_threads()
    torch.manual_seed(0)
    h, w = args.size
    if args.model is not None:
        # min_size/max_size = the input's sides, so the detector's transform does not resize what is timed.
        model = build_detector(args.model, backbone=args.backbone, num_classes=args.num_classes,
                               min_size=min(h, w), max_size=max(h, w)).eval()
        example = [torch.rand(3, h, w) for _ in range(args.batch_size)]
        label = f"{args.model} {args.backbone} {args.batch_size}x3x{h}x{w}"
    else:
        model = build_backbone(args.backbone).eval()
        example = torch.rand(args.batch_size, 3, h, w)
        label = f"{args.backbone} {args.batch_size}x3x{h}x{w}"
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    candidates = {"eager fp32": model,
                  f"optimize_for_inference {args.dtype}": optimize_for_inference(model, dtype=dtype)}
    if args.compile:
        candidates[f"optimize_for_inference {args.dtype} compile"] = optimize_for_inference(
            model, dtype=dtype, compile=True)
    measurements = time_inference(candidates, example, label=label, threads=threads,
                                  min_run_time=args.min_run_time)
    Compare(measurements).print()
    base = measurements[0].median
    for m in measurements[1:]:
        print(f"{m.task_spec.description}: {base / m.median:.2f}x eager")
    return 0
