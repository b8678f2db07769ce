"""Inference cases: resnet50-FPN and Faster R-CNN R50-FPN, torchvision eager against ours and the peers.

Ours: eager, ``optimize_for_inference(model, runtime="torch")`` (folded BN, channels_last), with
``compile=True``, and the default ``optimize_for_inference(model)`` (``runtime="auto"``: what a user gets; its
row names the runtime it chose). Peers: ONNX Runtime and OpenVINO on the ONNX file our export writes
(``benchmarks.runtimes``). All candidates of a case alternate in one ``time_alternating`` call.
"""
from __future__ import annotations

import time
import warnings
from typing import List, Tuple

import torch

import resnet_fpn

from .agreement import compare_detections, max_relative_difference
from .machine import onednn_native_bf16
from .models import reference_models
from .results import TimingRow
from .roofline import ceiling_row, count_macs, matmul_candidate
from .runtimes import load_peers, peer_outputs
from .settings import BenchmarkSettings
from .timing import time_alternating

__all__ = ["benchmark_backbone", "benchmark_detector", "PEER_PREFIX", "DEFAULT_LABEL"]

PEER_PREFIX = "peer: "
DEFAULT_LABEL = "ours default"


def _default_copy(ours, **options):
    """``optimize_for_inference(ours, **options)`` as a user gets it (runtime="auto"), first call made (the
    parity check of an external runtime runs there), and the row name saying which runtime it chose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return resnet_fpn.optimize_for_inference(ours, **options)

_LEVEL_DIFF = "max rel / level"
_BOX_DIFF = "max abs box diff, px"


def benchmark_backbone(settings: BenchmarkSettings, *, bf16: bool = False) -> Tuple[List[TimingRow], List[str]]:
    """resnet50-FPN at ``settings.inference_size``, batch 1: torchvision eager against ours.

    Args:
        settings: sizes, repeats, threads.
        bf16: compare ``optimize_for_inference(ours, dtype=torch.bfloat16)`` against torchvision in float32
            (otherwise: ours eager, ``optimize_for_inference(ours)`` and ``optimize_for_inference(ours,
            compile=True)``, all float32).

    Returns:
        ``(rows, skipped)``: rows "backbone fp32" (ours eager, torch-optimized, compiled, default, one per
        peer) or "backbone bf16" (ours torch bf16, default bf16, the bf16 peers); the difference is the largest
        per-level relative difference of the FPN outputs from torchvision's. ``skipped``: peers not run, why.
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
                fast = resnet_fpn.optimize_for_inference(ours, dtype=torch.bfloat16, runtime="torch")
            default = _default_copy(ours, dtype=torch.bfloat16)
            default(x)
            peers, skipped = load_peers(ours, bf16=True)
            candidates = {"theirs": lambda: theirs(x), "ours": lambda: fast(x), "default": lambda: default(x)}
            candidates.update({p.name: (lambda p=p: p(x)) for p in peers})
            repeats = settings.repeats_for(slow=slow)
            times = time_alternating(candidates, repeats=repeats, num_threads=settings.threads, label=label + " bf16")
            note = ("optimize_for_inference(model, dtype=torch.bfloat16, runtime='torch'); difference relative to "
                    "each level's max |value|")
            if slow:
                note += f"; no native bf16 kernels in oneDNN here, {repeats} timed runs"
            rows = [TimingRow("backbone bf16", "torchvision fp32 eager", "ours optimized bf16, torch", times["theirs"],
                              times["ours"], max_relative_difference(fast(x), reference), _LEVEL_DIFF, note),
                    TimingRow("backbone bf16", "torchvision fp32 eager", f"{DEFAULT_LABEL} bf16 ({default.runtime})",
                              times["theirs"], times["default"], max_relative_difference(default(x), reference),
                              _LEVEL_DIFF, f"optimize_for_inference(model, dtype=torch.bfloat16): {default.choice}")]
            rows += [TimingRow("backbone bf16", "torchvision fp32 eager", PEER_PREFIX + p.name, times["theirs"],
                               times[p.name], max_relative_difference(peer_outputs(p, x), reference), _LEVEL_DIFF,
                               "the ONNX file of export_model(ours, optimize=True, dynamic=True)") for p in peers]
            return rows, skipped
        fast = resnet_fpn.optimize_for_inference(ours, runtime="torch")
        compiled = resnet_fpn.optimize_for_inference(ours, compile=True)
        default = _default_copy(ours)
        default(x)
        peers, skipped = load_peers(ours)
        start = time.perf_counter()
        compiled(x)  # compiles (inductor); later calls at this size reuse the compiled code
        compile_s = time.perf_counter() - start
        macs = count_macs(lambda: ours(x))
        matmul = matmul_candidate()
        candidates = {"theirs": lambda: theirs(x), "eager": lambda: ours(x), "optimized": lambda: fast(x),
                      "compiled": lambda: compiled(x), "default": lambda: default(x), "matmul": matmul}
        candidates.update({p.name: (lambda p=p: p(x)) for p in peers})
        times = time_alternating(candidates, repeats=settings.repeats, num_threads=settings.threads, label=label)
        diffs = {name: max_relative_difference(model(x), reference)
                 for name, model in (("eager", ours), ("optimized", fast), ("compiled", compiled),
                                     ("default", default))}
        diffs.update({p.name: max_relative_difference(peer_outputs(p, x), reference) for p in peers})
    rows = [
        TimingRow("backbone fp32", "torchvision fp32 eager", "ours fp32 eager", times["theirs"], times["eager"],
                  diffs["eager"], _LEVEL_DIFF, "same architecture, no optimisation (parity check)"),
        TimingRow("backbone fp32", "torchvision fp32 eager", "ours optimized fp32, torch", times["theirs"],
                  times["optimized"], diffs["optimized"], _LEVEL_DIFF, "optimize_for_inference(model, runtime='torch')"),
        TimingRow("backbone fp32", "torchvision fp32 eager", "ours optimized fp32, compile=True", times["theirs"],
                  times["compiled"], diffs["compiled"], _LEVEL_DIFF,
                  f"optimize_for_inference(model, compile=True); first call (compilation) {compile_s:.0f} s"),
        TimingRow("backbone fp32", "torchvision fp32 eager", f"{DEFAULT_LABEL} fp32 ({default.runtime})",
                  times["theirs"], times["default"], diffs["default"], _LEVEL_DIFF,
                  f"optimize_for_inference(model): {default.choice}"),
    ]
    rows += [TimingRow("backbone fp32", "torchvision fp32 eager", PEER_PREFIX + p.name, times["theirs"], times[p.name],
                       diffs[p.name], _LEVEL_DIFF, "the ONNX file of export_model(ours, optimize=True, dynamic=True)")
             for p in peers]
    rows.append(ceiling_row("backbone fp32", "torchvision fp32 eager", times["theirs"], macs, times["matmul"]))
    return rows, skipped


def benchmark_detector(settings: BenchmarkSettings, *, bf16: bool = False) -> Tuple[List[TimingRow], List[str]]:
    """Faster R-CNN R50-FPN inference on one ``settings.inference_size`` image (eval, score threshold 0).

    Args:
        settings: sizes, repeats, threads.
        bf16: the bf16 rows instead (see `_detector_bf16`).

    Returns:
        ``(rows, skipped)``: rows "detector fp32": ours eager, ``optimize_for_inference(ours, runtime="torch")``,
        the default ``optimize_for_inference(ours)`` and one per peer (the whole detector's ONNX file), each with
        the largest box difference (pixels) of the detections paired by label and nearest box
        (``agreement.compare_detections``).
    """
    height, width = settings.inference_size
    theirs, ours = reference_models("faster_rcnn", size=min(height, width), max_size=max(height, width))
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(2))
    if bf16:
        return _detector_bf16(settings, theirs, ours, image)
    fast = resnet_fpn.optimize_for_inference(ours, runtime="torch")
    default = _default_copy(ours)
    peers, skipped = load_peers(ours)
    macs = count_macs(lambda: ours([image]))
    matmul = matmul_candidate()
    with torch.inference_mode():
        default([image])
        candidates = {"theirs": lambda: theirs([image]), "eager": lambda: ours([image]),
                      "optimized": lambda: fast([image]), "default": lambda: default([image]), "matmul": matmul}
        candidates.update({p.name: (lambda p=p: p(image)) for p in peers})
        times = time_alternating(candidates, repeats=settings.repeats, num_threads=settings.threads,
                                 label=f"detector {height}x{width}")
        reference = theirs([image])[0]
        eager_diff, eager_note = compare_detections(ours([image])[0], reference)
        diff, note = compare_detections(fast([image])[0], reference)
        default_diff, default_note = compare_detections(default([image])[0], reference)
        peer_diffs = {p.name: compare_detections(peer_outputs(p, image), reference) for p in peers}
    model = "torchvision fasterrcnn_resnet50_fpn"
    rows = [
        TimingRow("detector fp32", model, "ours eager", times["theirs"], times["eager"], eager_diff, _BOX_DIFF,
                  eager_note),
        TimingRow("detector fp32", model, "ours optimized, torch", times["theirs"], times["optimized"], diff,
                  _BOX_DIFF, note + "; optimize_for_inference(model, runtime='torch')"),
        TimingRow("detector fp32", model, f"{DEFAULT_LABEL} ({default.runtime})", times["theirs"], times["default"],
                  default_diff, _BOX_DIFF, f"{default_note}; optimize_for_inference(model): {default.choice}"),
    ]
    rows += [TimingRow("detector fp32", model, PEER_PREFIX + p.name, times["theirs"], times[p.name],
                       peer_diffs[p.name][0], _BOX_DIFF,
                       peer_diffs[p.name][1] + "; the whole detector's ONNX file (export_model(ours, optimize=True, "
                                               "dynamic=True)), one image per call")
             for p in peers]
    rows.append(ceiling_row("detector fp32", model, times["theirs"], macs, times["matmul"]))
    return rows, skipped


def _detector_bf16(settings: BenchmarkSettings, theirs: torch.nn.Module, ours: torch.nn.Module,
                   image: torch.Tensor) -> Tuple[List[TimingRow], List[str]]:
    """Rows "detector bf16", all against torchvision's float32 eager call: torchvision under bf16 autocast (what
    its users run), ``optimize_for_inference(ours, dtype=torch.bfloat16, runtime="torch")``, the bf16 default
    and the bf16 peers (OpenVINO; ONNX Runtime has no bf16 CPU kernels); box differences from float32."""
    height, width = image.shape[-2:]
    slow = onednn_native_bf16() is not True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the no-native-bf16 warning: the note says so
        fast = resnet_fpn.optimize_for_inference(ours, dtype=torch.bfloat16, runtime="torch")
    default = _default_copy(ours, dtype=torch.bfloat16)
    peers, skipped = load_peers(ours, bf16=True)

    def autocast_theirs():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return theirs([image])

    with torch.inference_mode():
        default([image])
        candidates = {"theirs": lambda: theirs([image]), "autocast": autocast_theirs, "ours": lambda: fast([image]),
                      "default": lambda: default([image])}
        candidates.update({p.name: (lambda p=p: p(image)) for p in peers})
        repeats = settings.repeats_for(slow=slow)
        times = time_alternating(candidates, repeats=repeats, num_threads=settings.threads,
                                 label=f"detector {height}x{width} bf16")
        reference = theirs([image])[0]
        diffs = {"autocast": compare_detections(autocast_theirs()[0], reference),
                 "ours": compare_detections(fast([image])[0], reference),
                 "default": compare_detections(default([image])[0], reference)}
        diffs.update({p.name: compare_detections(peer_outputs(p, image), reference) for p in peers})
    model = "torchvision fasterrcnn_resnet50_fpn fp32"
    slow_note = f"; no native bf16 kernels in oneDNN here, {repeats} timed runs" if slow else ""
    rows = [
        TimingRow("detector bf16", model, "torchvision bf16 autocast", times["theirs"], times["autocast"],
                  diffs["autocast"][0], _BOX_DIFF, diffs["autocast"][1] + "; torch.autocast('cpu', torch.bfloat16)"
                  + slow_note),
        TimingRow("detector bf16", model, "ours optimized bf16, torch", times["theirs"], times["ours"],
                  diffs["ours"][0], _BOX_DIFF, diffs["ours"][1] + "; optimize_for_inference(model, "
                  "dtype=torch.bfloat16, runtime='torch')" + slow_note),
        TimingRow("detector bf16", model, f"{DEFAULT_LABEL} bf16 ({default.runtime})", times["theirs"],
                  times["default"], diffs["default"][0], _BOX_DIFF,
                  f"{diffs['default'][1]}; optimize_for_inference(model, dtype=torch.bfloat16): {default.choice}"),
    ]
    rows += [TimingRow("detector bf16", model, PEER_PREFIX + p.name, times["theirs"], times[p.name],
                       diffs[p.name][0], _BOX_DIFF, diffs[p.name][1] + "; the whole detector's ONNX file, bf16 "
                       "inference precision, one image per call") for p in peers]
    return rows, skipped
