"""This project's models against torchvision's, same weights, same process: speed, agreement, peak memory.

Every comparison builds torchvision's model first, randomises its norm statistics (so BN folding is
exercised: fresh FrozenBatchNorm2d layers are identities), and loads its ``state_dict()`` into ours with
``build_backbone`` / ``build_detector``. Candidates are timed in alternation (the order reverses on every
repeat) after a warm-up call each, and the median is reported, so load from other processes on a shared
machine hits every candidate alike. The command line is ``tools/benchmark.py``.
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "CASES",
    "BenchmarkSettings",
    "Row",
    "MemoryRow",
    "machine_info",
    "randomize_norm_statistics",
    "reference_models",
    "time_alternating",
    "max_relative_difference",
    "benchmark_backbone",
    "benchmark_detector",
    "benchmark_train_step",
    "measure_peak_memory",
    "benchmark_evaluator",
    "run_benchmarks",
    "format_report",
]

CASES = ("backbone", "backbone_bf16", "detector", "train_faster_rcnn", "train_mask_rcnn", "memory", "evaluator")
MEMORY_CASES = ("backbone", "detector", "train_faster_rcnn", "train_mask_rcnn")
# The acceptance targets of the "Speed" issue.
TARGETS = {
    "backbone fp32": 1.8,
    "backbone bf16": 3.0,
    "detector fp32": 1.35,
    "train fp32": 1.0,
}
BACKBONE_RTOL = 1e-4  # max |ours - theirs| / max |theirs| on every FPN level
BOX_ATOL = 1e-3  # pixels, and relative: see _compare_detections


@dataclass(frozen=True)
class BenchmarkSettings:
    """What to run and at which sizes.

    Attributes:
        repeats: timed runs per candidate (median reported).
        threads: ``torch.set_num_threads`` for the whole run (and the memory subprocesses).
        cases: a subset of ``CASES``.
        quick: small inputs (smoke run): backbone/detector 128x192, training batch 2 at 128.
        slow_repeats: timed runs for bf16 cases on CPUs without native bf16 kernels, where one call takes
            tens of seconds (None: ``repeats``).
        coco_dir: the ``coco_val2014_100`` folder for the evaluator case (skipped when absent).
    """

    repeats: int = 5
    threads: int = 2
    cases: Tuple[str, ...] = CASES
    quick: bool = False
    slow_repeats: Optional[int] = 2
    coco_dir: Optional[Path] = None

    def __post_init__(self) -> None:
        for name in ("repeats", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.slow_repeats is not None and (not isinstance(self.slow_repeats, int) or self.slow_repeats < 1):
            raise ValueError(f"slow_repeats must be None or a positive int, got {self.slow_repeats!r}")
        unknown = [c for c in self.cases if c not in CASES]
        if unknown or not self.cases:
            raise ValueError(f"cases must be a non-empty subset of {CASES}, got {list(self.cases)}")

    @property
    def backbone_size(self) -> Tuple[int, int]:
        return (128, 192) if self.quick else (800, 1216)

    @property
    def train_size(self) -> int:
        return 128 if self.quick else 512


@dataclass
class Row:
    """One timed comparison: torchvision's model (`reference`) against ours.

    Attributes:
        case: e.g. "backbone fp32".
        reference: what torchvision ran ("torchvision fp32 eager").
        ours: what we ran ("ours optimized fp32").
        reference_s, ours_s: medians in seconds.
        reference_times, ours_times: every timed run.
        diff: agreement (meaning in `diff_kind`), None when not compared.
        diff_kind: e.g. "max rel / level".
        target: the speed-up to reach (None: informational row).
        agrees: whether `diff` is within its tolerance (None: no tolerance).
        note: anything else to know.
    """

    case: str
    reference: str
    ours: str
    reference_s: float
    ours_s: float
    reference_times: List[float] = field(default_factory=list)
    ours_times: List[float] = field(default_factory=list)
    diff: Optional[float] = None
    diff_kind: str = ""
    target: Optional[float] = None
    agrees: Optional[bool] = None
    note: str = ""

    @property
    def speedup(self) -> float:
        """torchvision's median over ours (above 1: ours is faster)."""
        return self.reference_s / self.ours_s

    @property
    def met(self) -> Optional[bool]:
        """Target reached (speed and, where checked, agreement); None for informational rows."""
        if self.target is None:
            return None
        return self.speedup >= self.target and self.agrees is not False


@dataclass
class MemoryRow:
    """Peak RSS increase (MiB) of one call, torchvision's model against ours, each run in fresh processes.

    ``reference_mib`` / ``ours_mib`` are medians over repeated processes; ``resolution_mib`` is the largest
    spread (max - min) of either side's repeats: differences below it are not measurable.
    """

    case: str
    reference_mib: float
    ours_mib: float
    ours_setting: str
    resolution_mib: float = 0.0

    @property
    def met(self) -> bool:
        # Two identical networks measure within the run-to-run spread of each other (the order of equal
        # allocations varies), so "no higher" is judged at the measurement's resolution.
        return self.ours_mib <= self.reference_mib + self.resolution_mib


def machine_info(threads: int) -> Dict[str, str]:
    """CPU model, cores, versions and date, for the report header."""
    import torchvision

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from .optimize import _cpu_has_native_bf16

    return {
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "native bf16 (oneDNN)": str(_cpu_has_native_bf16()),
        "threads": str(threads),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


@torch.no_grad()
def randomize_norm_statistics(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Give every BatchNorm2d / FrozenBatchNorm2d random statistics and affine terms, in place.

    Weights in [0.5, 1.5], biases and means N(0, 0.1), variances in [0.5, 1.5]: far enough from the identity
    that folding them wrongly shows, close enough that a 50-layer net's activations stay finite.

    Args:
        model: the model to modify.
        seed: seed of the generator.

    Returns:
        `model`.
    """
    from torchvision.ops import FrozenBatchNorm2d

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            n = module.running_mean.numel()
            module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def reference_models(kind: str, *, size: Optional[int] = None, seed: int = 0) -> Tuple[nn.Module, nn.Module]:
    """(torchvision's model, ours with the same weights) for "backbone", "faster_rcnn" or "mask_rcnn".

    torchvision's model is built the way its ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` build
    it with pretrained weights (FrozenBatchNorm2d, ``trainable_backbone_layers=3``), which is also what
    ``build_detector(weights=...)`` builds (frozen BN, ``freeze_at=2``); weights are random, norm statistics
    randomised. Detectors get ``min_size = max_size = size`` and a score threshold of 0, and their class
    logits are scaled up (x8) so that random weights still give spread-out scores (the top 100 detections
    are then not decided by near-ties).

    Args:
        kind: "backbone" (resnet50 + FPN), "faster_rcnn" or "mask_rcnn" (R50-FPN, 91 classes).
        size: detector resize size (required for detectors).
        seed: seed for weights and statistics.

    Returns:
        ``(torchvision_model, our_model)``, both in eval mode.
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    from ..backbone import build_backbone
    from ..detectors import build_detector

    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    if kind == "backbone":
        theirs: nn.Module = backbone
    elif kind in ("faster_rcnn", "mask_rcnn"):
        if size is None:
            raise ValueError("detectors need a size")
        cls = FasterRCNN if kind == "faster_rcnn" else MaskRCNN
        theirs = cls(backbone, num_classes=91, min_size=size, max_size=size, box_score_thresh=0.0)
        with torch.no_grad():
            theirs.roi_heads.box_predictor.cls_score.weight.mul_(8.0)
    else:
        raise ValueError(f"kind must be 'backbone', 'faster_rcnn' or 'mask_rcnn', got {kind!r}")
    randomize_norm_statistics(theirs, seed=seed)
    theirs.eval()
    state = theirs.state_dict()
    if kind == "backbone":
        ours = build_backbone("resnet50-fpn", weights=state)
    else:
        ours = build_detector(kind, num_classes=91, weights=state, min_size=size, max_size=size, score_thresh=0.0)
    return theirs, ours.eval()


def time_alternating(
    candidates: Dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1
) -> Dict[str, List[float]]:
    """Time each candidate `repeats` times, alternating, after `warmup` untimed calls each.

    The order reverses on every repeat, so a slow spell of the machine is shared out rather than landing on
    one candidate.

    Args:
        candidates: name -> zero-argument callable.
        repeats: timed calls per candidate.
        warmup: untimed calls per candidate first (oneDNN primitive creation, allocator warm-up).

    Returns:
        name -> list of seconds, in call order.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else reversed(names):
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def max_relative_difference(ours: Dict[str, Tensor], reference: Dict[str, Tensor]) -> float:
    """max over levels of ``max |ours - reference| / max |reference|`` (per-level relative difference).

    Raises:
        ValueError: the two outputs have different keys or shapes.
    """
    if list(ours) != list(reference):
        raise ValueError(f"outputs differ in keys: {list(ours)} vs {list(reference)}")
    worst = 0.0
    for key, ref in reference.items():
        if ours[key].shape != ref.shape:
            raise ValueError(f"level {key!r}: shape {tuple(ours[key].shape)} vs {tuple(ref.shape)}")
        scale = ref.abs().max().clamp_min(1e-30)
        worst = max(worst, ((ours[key].float() - ref).abs().max() / scale).item())
    return worst


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _bf16_is_slow() -> bool:
    from .optimize import _cpu_has_native_bf16

    return not _cpu_has_native_bf16()


def benchmark_backbone(settings: BenchmarkSettings, *, bf16: bool = False) -> List[Row]:
    """resnet50-FPN at ``settings.backbone_size``, batch 1: torchvision eager vs ours (eager and optimized).

    Args:
        settings: sizes and repeats.
        bf16: compare ours optimized with ``dtype=torch.bfloat16`` against torchvision in float32.

    Returns:
        Rows "backbone fp32" (ours eager, informational; ours optimized and ours compiled, target 1.8x) or
        "backbone bf16".
    """
    from .optimize import optimize_for_inference

    theirs, ours = reference_models("backbone")
    height, width = settings.backbone_size
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = theirs(x)
        if bf16:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the no-native-bf16 warning; noted in the row
                fast = optimize_for_inference(ours, dtype=torch.bfloat16)
            repeats = settings.repeats if not _bf16_is_slow() or settings.slow_repeats is None else min(
                settings.repeats, settings.slow_repeats)
            times = time_alternating({"theirs": lambda: theirs(x), "ours": lambda: fast(x)}, repeats=repeats)
            diff = max_relative_difference(fast(x), reference)
            note = "ours: folded BN, channels_last, bf16 autocast; diff relative to each level's max |value|"
            if _bf16_is_slow():
                note += f"; this CPU has no native bf16 kernels (oneDNN), {repeats} timed runs"
            return [Row("backbone bf16", "torchvision fp32 eager", "ours optimized bf16", _median(times["theirs"]),
                        _median(times["ours"]), times["theirs"], times["ours"], diff, "max rel / level",
                        TARGETS["backbone bf16"], None, note)]
        fast = optimize_for_inference(ours)
        compiled = optimize_for_inference(ours, compile=True)
        start = time.perf_counter()
        compiled(x)  # compiles (inductor, weights frozen as constants); later calls of this size reuse it
        compile_s = time.perf_counter() - start
        times = time_alternating(
            {"theirs": lambda: theirs(x), "eager": lambda: ours(x), "ours": lambda: fast(x),
             "compiled": lambda: compiled(x)},
            repeats=settings.repeats,
        )
        eager_diff = max_relative_difference(ours(x), reference)
        diff = max_relative_difference(fast(x), reference)
        compiled_diff = max_relative_difference(compiled(x), reference)
    rows = [
        Row("backbone fp32", "torchvision fp32 eager", "ours fp32 eager", _median(times["theirs"]),
            _median(times["eager"]), times["theirs"], times["eager"], eager_diff, "max rel / level", None,
            eager_diff <= BACKBONE_RTOL, "same architecture, no optimisation (parity check)"),
        Row("backbone fp32", "torchvision fp32 eager", "ours optimized fp32", _median(times["theirs"]),
            _median(times["ours"]), times["theirs"], times["ours"], diff, "max rel / level",
            TARGETS["backbone fp32"], diff <= BACKBONE_RTOL,
            "folded BN, channels_last, fused conv+ReLU / conv+add+ReLU (oneDNN)"),
        Row("backbone fp32", "torchvision fp32 eager", "ours optimized fp32, compile=True",
            _median(times["theirs"]), _median(times["compiled"]), times["theirs"], times["compiled"],
            compiled_diff, "max rel / level", TARGETS["backbone fp32"], compiled_diff <= BACKBONE_RTOL,
            f"folded BN, channels_last, torch.compile (inductor, freezing); first call {compile_s:.0f} s"),
    ]
    return rows


def _compare_detections(ours: Dict[str, Tensor], theirs: Dict[str, Tensor]) -> Tuple[float, bool, str]:
    """(max |box difference|, agreement, description) of two detection dicts, matched by rank.

    Boxes agree when ``|ours - theirs| <= BOX_ATOL + BOX_ATOL * |theirs|`` per coordinate (torch.allclose
    with rtol = atol = 1e-3 px, as torchvision's detection model tests compare boxes): folding BN changes
    float32 rounding by a few 1e-6 of each feature map's range, which moves a 1000-px coordinate by
    hundredths of a pixel, so an absolute-only tolerance of 1e-3 px cannot hold for large boxes.
    """
    n_ours, n_theirs = len(ours["boxes"]), len(theirs["boxes"])
    n = min(n_ours, n_theirs)
    same_labels = torch.equal(ours["labels"][:n], theirs["labels"][:n])
    a, b = ours["boxes"][:n], theirs["boxes"][:n]
    diff = (a - b).abs().max().item() if n else 0.0
    relative = ((a - b).abs() / b.abs().clamp_min(1.0)).max().item() if n else 0.0
    close = torch.allclose(a, b, rtol=BOX_ATOL, atol=BOX_ATOL)
    agrees = n_ours == n_theirs and same_labels and close and n > 0
    return diff, agrees, (f"{n_theirs} vs {n_ours} detections, labels {'equal' if same_labels else 'DIFFER'}, "
                          f"max relative box difference {relative:.1e}")


def benchmark_detector(settings: BenchmarkSettings) -> List[Row]:
    """Faster R-CNN R50-FPN inference at ``settings.backbone_size`` (one image, eval, score threshold 0).

    Returns:
        Rows "detector fp32": ours eager (informational) and ours optimized (target 1.35x), with the box
        difference and label agreement of the 100 detections.
    """
    from .optimize import optimize_for_inference

    height, width = settings.backbone_size
    theirs, ours = reference_models("faster_rcnn", size=min(height, width))
    theirs.transform.max_size = ours.transform.max_size = max(height, width)
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(2))
    fast = optimize_for_inference(ours)
    with torch.inference_mode():
        times = time_alternating(
            {"theirs": lambda: theirs([image]), "eager": lambda: ours([image]), "ours": lambda: fast([image])},
            repeats=settings.repeats,
        )
        reference = theirs([image])[0]
        eager_diff, eager_agrees, eager_note = _compare_detections(ours([image])[0], reference)
        diff, agrees, note = _compare_detections(fast([image])[0], reference)
    return [
        Row("detector fp32", "torchvision fasterrcnn_resnet50_fpn", "ours eager", _median(times["theirs"]),
            _median(times["eager"]), times["theirs"], times["eager"], eager_diff, "max |box diff| px", None,
            eager_agrees, eager_note),
        Row("detector fp32", "torchvision fasterrcnn_resnet50_fpn", "ours optimized", _median(times["theirs"]),
            _median(times["ours"]), times["theirs"], times["ours"], diff, "max |box diff| px",
            TARGETS["detector fp32"], agrees, note + "; folded BN, channels_last, fused backbone/RPN convs"),
    ]


def _training_batch(kind: str, size: int, *, seed: int) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    """Two random images with three random boxes each (and box-shaped masks for Mask R-CNN)."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(2):
        images.append(torch.rand(3, size, size, generator=generator))
        corners = torch.rand(3, 2, generator=generator) * size * 0.6
        sides = torch.rand(3, 2, generator=generator) * size * 0.3 + size * 0.1
        boxes = torch.cat([corners, corners + sides], dim=1)
        target = {"boxes": boxes, "labels": torch.randint(1, 91, (3,), generator=generator)}
        if kind == "mask_rcnn":
            masks = torch.zeros(3, size, size, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            target["masks"] = masks
        targets.append(target)
    return images, targets


def _train_step_fn(model: nn.Module, images, targets, *, autocast: bool) -> Callable[[], Dict[str, float]]:
    """One SGD step (torchvision's reference recipe: momentum 0.9, weight decay 1e-4) as a closure."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step() -> Dict[str, float]:
        # Same seed for both models: the RPN and RoI samplers draw the same proposals.
        torch.manual_seed(0)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses = model(images, targets)
        loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        return {k: v.item() for k, v in losses.items()}

    return step


def _loss_difference(ours: Dict[str, float], theirs: Dict[str, float]) -> float:
    return max(abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in theirs)


def benchmark_train_step(kind: str, settings: BenchmarkSettings) -> List[Row]:
    """One SGD step, batch 2 at ``settings.train_size``: fp32, fp32 channels_last, bf16 autocast.

    fp32 and channels_last candidates (torchvision's and ours) are timed in one alternating group, so their
    ratios are comparable across rows; bf16 in a second group. The difference column is the largest
    relative difference of the losses of the first (warm-up) step, same weights and sampler seeds.

    Args:
        kind: "faster_rcnn" or "mask_rcnn".
        settings: sizes and repeats.

    Returns:
        Rows "train <kind> fp32" (target: no slower than torchvision), "... channels_last", "... bf16".
    """
    size = settings.train_size
    images, targets = _training_batch(kind, size, seed=3)
    models = {}
    for fmt in ("fp32", "channels_last", "bf16"):
        theirs, ours = reference_models(kind, size=size)
        for name, model in (("theirs", theirs), ("ours", ours)):
            model.train()
            if fmt != "fp32":
                model.to(memory_format=torch.channels_last)
            models[(fmt, name)] = _train_step_fn(model, images, targets, autocast=fmt == "bf16")
    first_losses = {key: fn() for key, fn in models.items()}  # the warm-up step, also compared
    rows = []
    groups = [("fp32", "channels_last"), ("bf16",)]
    for group in groups:
        slow = group == ("bf16",) and _bf16_is_slow()
        repeats = settings.repeats if not slow or settings.slow_repeats is None else min(
            settings.repeats, settings.slow_repeats)
        candidates = {f"{fmt}/{name}": models[(fmt, name)] for fmt in group for name in ("theirs", "ours")}
        times = time_alternating(candidates, repeats=repeats, warmup=0)
        for fmt in group:
            theirs_t, ours_t = times[f"{fmt}/theirs"], times[f"{fmt}/ours"]
            label = {"fp32": "fp32", "channels_last": "fp32 channels_last",
                     "bf16": "bf16 autocast, channels_last"}[fmt]
            note = ""
            if fmt == "channels_last":
                note = (f"vs torchvision fp32 (contiguous): "
                        f"{_median(times['fp32/theirs']) / _median(ours_t):.2f}x")
            if slow:
                note = f"this CPU has no native bf16 kernels (oneDNN), {repeats} timed runs"
            rows.append(Row(
                f"train {kind}", f"torchvision {label}", f"ours {label}", _median(theirs_t), _median(ours_t),
                theirs_t, ours_t, _loss_difference(first_losses[(fmt, "ours")], first_losses[(fmt, "theirs")]),
                "max rel loss diff", TARGETS["train fp32"] if fmt == "fp32" else None, None, note,
            ))
    return rows


def _read_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def _memory_child(argv: Sequence[str]) -> int:
    """Entry point of a memory subprocess: ``case impl quick threads``; prints one JSON line."""
    case, impl, quick, threads = argv[0], argv[1], argv[2] == "1", int(argv[3])
    torch.set_num_threads(threads)
    settings = BenchmarkSettings(quick=quick, threads=threads)
    from .optimize import optimize_for_inference

    if case == "backbone":
        theirs, ours = reference_models("backbone")
        height, width = settings.backbone_size
        model = theirs if impl == "theirs" else optimize_for_inference(ours)
        x = torch.rand(1, 3, height, width)

        def run() -> None:
            with torch.inference_mode():
                model(x)
    elif case == "detector":
        height, width = settings.backbone_size
        theirs, ours = reference_models("faster_rcnn", size=min(height, width))
        theirs.transform.max_size = ours.transform.max_size = max(height, width)
        model = theirs if impl == "theirs" else optimize_for_inference(ours)
        image = torch.rand(3, height, width)

        def run() -> None:
            with torch.inference_mode():
                model([image])
    else:
        kind = case[len("train_"):]
        theirs, ours = reference_models(kind, size=settings.train_size)
        model = (theirs if impl == "theirs" else ours).train()
        images, targets = _training_batch(kind, settings.train_size, seed=3)
        step = _train_step_fn(model, images, targets, autocast=False)

        def run() -> None:
            step()
    del theirs, ours
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


def _run_memory_child(case: str, impl: str, settings: BenchmarkSettings) -> float:
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    # glibc's malloc keeps freed blocks below a threshold that adapts to the program's history, so the RSS
    # high-water mark depends on what was allocated and freed before (about +-40 MiB run to run for a
    # training step). A fixed mmap threshold puts every tensor over 128 KiB in its own mapping, returned to
    # the OS when freed: the peak then counts live tensors, and repeated runs agree to 0.1 MiB.
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    code = "import sys; from resnet_fpn.deploy.benchmark import _memory_child; sys.exit(_memory_child(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, case, impl, "1" if settings.quick else "0", str(settings.threads)],
        capture_output=True, text=True, env=env, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory subprocess {case}/{impl} failed:\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["increase_mib"])


def measure_peak_memory(settings: BenchmarkSettings, cases: Sequence[str] = MEMORY_CASES, *,
                        repeats: int = 3) -> List[MemoryRow]:
    """Peak RSS increase of one call, torchvision's model vs ours, each in a fresh Python process.

    In each subprocess the models are built (torchvision's, then ours from its state dict; the unused one
    is deleted), the kernel's RSS high-water mark is reset (``/proc/self/clear_refs``), the case runs once
    (the first call, so one-time allocations count alike for both), and ``VmHWM - VmRSS(before)`` is
    reported: the memory the call itself needed, as the operating system saw it (with a fixed malloc mmap
    threshold, so that freed tensors leave the RSS and the figure is reproducible). Inference cases compare
    torchvision eager with ours optimized; training cases compare the plain fp32 models. Each side runs
    `repeats` times (alternating); medians are reported, with the largest spread as the resolution.

    Args:
        settings: sizes and threads.
        cases: a subset of ``MEMORY_CASES``.
        repeats: processes per side and case.

    Returns:
        One row per case.

    Raises:
        ValueError: `repeats` is below 1.
        RuntimeError: a subprocess failed (its stderr is included), or /proc is not available.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not Path("/proc/self/clear_refs").exists():
        raise RuntimeError("peak memory needs Linux /proc/self/clear_refs and VmHWM")
    rows = []
    for case in cases:
        theirs: List[float] = []
        ours: List[float] = []
        for _ in range(repeats):
            theirs.append(_run_memory_child(case, "theirs", settings))
            ours.append(_run_memory_child(case, "ours", settings))
        setting = "optimized fp32" if case in ("backbone", "detector") else "fp32 train step"
        resolution = max(max(theirs) - min(theirs), max(ours) - min(ours))
        rows.append(MemoryRow(case, _median(theirs), _median(ours), setting, resolution))
    return rows


def benchmark_evaluator(coco_dir: Path, *, repeats: int) -> List[Dict[str, Any]]:
    """pycocotools vs faster-coco-eval on coco_val2014_100 (bbox and segm), via ``benchmark_backends``.

    Returns:
        ``{"iou_type", "rows"}`` per iou type (rows as ``benchmark_backends`` returns them).
    """
    from ..evaluation import benchmark_backends

    gt = coco_dir / "instances_val2014_100.json"
    out = []
    for iou_type, name in (("bbox", "instances_val2014_fakebbox100_results.json"),
                           ("segm", "instances_val2014_fakesegm100_results.json")):
        out.append({"iou_type": iou_type, "rows": benchmark_backends(gt, coco_dir / name, iou_types=[iou_type],
                                                                      repeats=repeats)})
    return out


def run_benchmarks(settings: BenchmarkSettings, *, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the selected cases; returns everything ``format_report`` needs.

    Args:
        settings: what to run.
        log: progress messages (one line per case).

    Returns:
        ``{"machine", "settings", "rows", "memory", "evaluator", "skipped"}``.
    """
    torch.set_num_threads(settings.threads)
    result: Dict[str, Any] = {"machine": machine_info(settings.threads), "settings": settings, "rows": [],
                              "memory": [], "evaluator": [], "skipped": []}
    for case in settings.cases:
        start = time.perf_counter()
        if case == "backbone":
            result["rows"] += benchmark_backbone(settings)
        elif case == "backbone_bf16":
            result["rows"] += benchmark_backbone(settings, bf16=True)
        elif case == "detector":
            result["rows"] += benchmark_detector(settings)
        elif case in ("train_faster_rcnn", "train_mask_rcnn"):
            result["rows"] += benchmark_train_step(case[len("train_"):], settings)
        elif case == "memory":
            result["memory"] = measure_peak_memory(settings)
        elif case == "evaluator":
            if settings.coco_dir is None or not (settings.coco_dir / "instances_val2014_100.json").is_file():
                result["skipped"].append(f"evaluator: coco_val2014_100 not found at {settings.coco_dir}")
            else:
                result["evaluator"] = benchmark_evaluator(settings.coco_dir, repeats=settings.repeats)
        log(f"{case}: {time.perf_counter() - start:.0f} s")
    return result


def _fmt_diff(row: Row) -> str:
    if row.diff is None:
        return ""
    return f"{row.diff:.1e} ({row.diff_kind})"


def _fmt_met(value: Optional[bool]) -> str:
    return "" if value is None else ("yes" if value else "**no**")


def format_report(result: Dict[str, Any]) -> str:
    """Markdown tables of ``run_benchmarks``' result: timings, memory, evaluator, targets."""
    lines = ["| case | torchvision | ours | torchvision s | ours s | speed-up | difference | agrees | target | met |",
             "|---|---|---|---:|---:|---:|---|---|---:|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r.case} | {r.reference} | {r.ours} | {r.reference_s:.3f} | {r.ours_s:.3f} | {r.speedup:.2f}x | "
            f"{_fmt_diff(r)} | {_fmt_met(r.agrees)} | {'' if r.target is None else f'{r.target:.2f}x'} | "
            f"{_fmt_met(r.met)} |"
        )
    notes = [f"- {r.case}, {r.ours}: {r.note}" for r in result["rows"] if r.note]
    out = ["### Timings (median of alternating runs)", "", *lines, "", *notes]
    if result["memory"]:
        out += ["", "### Peak memory (RSS increase during one call, fresh process each)", "",
                "| case | ours | torchvision MiB | ours MiB | ours / torchvision | resolution MiB | no higher |",
                "|---|---|---:|---:|---:|---:|---|"]
        for m in result["memory"]:
            ratio = m.ours_mib / m.reference_mib if m.reference_mib > 0 else float("nan")
            out.append(f"| {m.case} | {m.ours_setting} | {m.reference_mib:.1f} | {m.ours_mib:.1f} | {ratio:.3f} | "
                       f"{m.resolution_mib:.1f} | {_fmt_met(m.met)} |")
        out += ["", "Median of alternating fresh processes; resolution: the largest spread of either side's "
                "repeats (\"no higher\" allows it)."]
    if result["evaluator"]:
        out += ["", "### COCO evaluator backends (coco_val2014_100, `benchmark_backends`)", "",
                "| iou type | backend | median s | speed-up | max abs stat diff | identical |",
                "|---|---|---:|---:|---:|---|"]
        for block in result["evaluator"]:
            for r in block["rows"]:
                out.append(f"| {block['iou_type']} | {r['backend']} | {r['median_s']:.3f} | {r['speedup']:.2f}x | "
                           f"{r['max_abs_diff']:.1e} | {r['identical']} |")
    for skipped in result["skipped"]:
        out += ["", f"Skipped: {skipped}"]
    return "\n".join(out)
