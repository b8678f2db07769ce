"""Inference cases: resnet50-FPN and Faster R-CNN R50-FPN, torchvision eager against ours."""
from __future__ import annotations

import time
import warnings
from typing import List

import torch

import resnet_fpn

from .agreement import compare_detections, max_relative_difference
from .machine import onednn_native_bf16
from .models import reference_models
from .results import TimingRow
from .settings import BenchmarkSettings
from .timing import time_alternating

__all__ = ["benchmark_backbone", "benchmark_detector"]

_LEVEL_DIFF = "max rel / level"
_BOX_DIFF = "max abs box diff, px"


def benchmark_backbone(settings: BenchmarkSettings, *, bf16: bool = False) -> List[TimingRow]:
    """resnet50-FPN at ``settings.inference_size``, batch 1: torchvision eager against ours.

    Args:
        settings: sizes, repeats, threads.
        bf16: compare ``optimize_for_inference(ours, dtype=torch.bfloat16)`` against torchvision in float32
            (otherwise: ours eager, ``optimize_for_inference(ours)`` and ``optimize_for_inference(ours,
            compile=True)``, all float32).

    Returns:
        Rows "backbone fp32" (three) or "backbone bf16" (one); the difference is the largest per-level
        relative difference of the FPN outputs from torchvision's.
    """
    theirs, ours = reference_models("backbone")
    height, width = settings.inference_size
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    label = f"backbone {height}x{width}"
    with torch.inference_mode():
        reference = theirs(x)
        if bf16:
            slow = onednn_native_bf16() is not True
            with warnings.catch_warnings():
                # The no-native-bf16 warning: the row's note says so.
                warnings.simplefilter("ignore", UserWarning)
                fast = resnet_fpn.optimize_for_inference(ours, dtype=torch.bfloat16)
            repeats = settings.repeats_for(slow=slow)
            times = time_alternating({"theirs": lambda: theirs(x), "ours": lambda: fast(x)}, repeats=repeats,
                                     num_threads=settings.threads, label=label + " bf16")
            note = ("optimize_for_inference(model, dtype=torch.bfloat16); difference relative to each level's "
                    "max |value|")
            if slow:
                note += f"; no native bf16 kernels in oneDNN here, {repeats} timed runs"
            return [TimingRow("backbone bf16", "torchvision fp32 eager", "ours optimized bf16", times["theirs"],
                              times["ours"], max_relative_difference(fast(x), reference), _LEVEL_DIFF, note)]
        fast = resnet_fpn.optimize_for_inference(ours)
        compiled = resnet_fpn.optimize_for_inference(ours, compile=True)
        start = time.perf_counter()
        compiled(x)  # compiles (inductor); later calls at this size reuse the compiled code
        compile_s = time.perf_counter() - start
        times = time_alternating(
            {"theirs": lambda: theirs(x), "eager": lambda: ours(x), "optimized": lambda: fast(x),
             "compiled": lambda: compiled(x)},
            repeats=settings.repeats, num_threads=settings.threads, label=label,
        )
        diffs = {name: max_relative_difference(model(x), reference)
                 for name, model in (("eager", ours), ("optimized", fast), ("compiled", compiled))}
    return [
        TimingRow("backbone fp32", "torchvision fp32 eager", "ours fp32 eager", times["theirs"], times["eager"],
                  diffs["eager"], _LEVEL_DIFF, "same architecture, no optimisation (parity check)"),
        TimingRow("backbone fp32", "torchvision fp32 eager", "ours optimized fp32", times["theirs"],
                  times["optimized"], diffs["optimized"], _LEVEL_DIFF, "optimize_for_inference(model)"),
        TimingRow("backbone fp32", "torchvision fp32 eager", "ours optimized fp32, compile=True", times["theirs"],
                  times["compiled"], diffs["compiled"], _LEVEL_DIFF,
                  f"optimize_for_inference(model, compile=True); first call (compilation) {compile_s:.0f} s"),
    ]


def benchmark_detector(settings: BenchmarkSettings) -> List[TimingRow]:
    """Faster R-CNN R50-FPN inference on one ``settings.inference_size`` image (eval, score threshold 0).

    Args:
        settings: sizes, repeats, threads.

    Returns:
        Rows "detector fp32": ours eager and ``optimize_for_inference(ours)``, each with the largest box
        difference (pixels) of the detections matched by rank and whether the labels agree.
    """
    height, width = settings.inference_size
    theirs, ours = reference_models("faster_rcnn", size=min(height, width))
    theirs.transform.max_size = ours.transform.max_size = max(height, width)
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(2))
    fast = resnet_fpn.optimize_for_inference(ours)
    with torch.inference_mode():
        times = time_alternating(
            {"theirs": lambda: theirs([image]), "eager": lambda: ours([image]), "optimized": lambda: fast([image])},
            repeats=settings.repeats, num_threads=settings.threads, label=f"detector {height}x{width}",
        )
        reference = theirs([image])[0]
        eager_diff, eager_note = compare_detections(ours([image])[0], reference)
        diff, note = compare_detections(fast([image])[0], reference)
    model = "torchvision fasterrcnn_resnet50_fpn"
    return [
        TimingRow("detector fp32", model, "ours eager", times["theirs"], times["eager"], eager_diff, _BOX_DIFF,
                  eager_note),
        TimingRow("detector fp32", model, "ours optimized", times["theirs"], times["optimized"], diff, _BOX_DIFF,
                  note + "; optimize_for_inference(model)"),
    ]
