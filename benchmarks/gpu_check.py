"""The GPU check (`make gpu-check`): training and inference throughput of Faster / Mask R-CNN R50-FPN on one GPU.

    python -m benchmarks.gpu_check                      # on a CUDA machine: writes "## GPU check" of docs/benchmarks.md
    python -m benchmarks.gpu_check --dry-run            # CPU, tiny sizes, seconds: the code path, no figures kept

What it measures, on synthetic COCO-like batches (random images at 800x1333, 1-8 random boxes of random classes
each, masks filling their boxes; the detector resizes them as torchvision's transform does):

* training images/s: ours (``build_detector`` on resnet50-fpn) and torchvision's model with the same weights
  (built as ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` build it for fine-tuning: FrozenBatchNorm2d,
  three trainable stages; ``benchmarks.models.reference_models``), batch 8, bf16 autocast (fp16 with a GradScaler
  where the GPU lacks bf16), channels_last, SGD;
* inference images/s: ours through ``optimize_for_inference(model, dtype=fp16 / bf16, runtime="torch")``,
  torchvision's eager under ``torch.autocast`` in the same dtype (what its users run), batch 8;
* peak memory: ``torch.cuda.max_memory_allocated`` over each side's timed steps, with only that side's model on
  the GPU (the other is parked on the CPU).

The two sides alternate (``ROUNDS`` rounds, the order reversed each round; ``--warmup`` untimed steps first,
one after each move back to the GPU, then ``--steps`` timed ones); the median round is reported.

The anchor is NVIDIA's Mask R-CNN reference (DeepLearningExamples PyTorch, 24 img/s training on one A100 with
AMP); the issue's goal is >= 40 img/s on an H100/H200. The section written names the device, date, versions and
the command. A dry run uses resnet18-fpn (torchvision's resnet18 FPN beside it) at 64x96, batch 2, one step on
the CPU in float32: it proves that the script runs, writes only where --out points (nothing by default) and is
part of the test suite.
On a GPU the defaults (5 warm-up and 20 timed steps, two rounds) are sized for under 8 minutes.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
DOCS_REPORT = REPO / "docs" / "benchmarks.md"
HEADING = "## GPU check"
MODELS = ("faster_rcnn", "mask_rcnn")
SIDES = ("torchvision", "ours")
ROUNDS = 2
ANCHOR = "NVIDIA DeepLearningExamples Mask R-CNN (PyTorch): 24 img/s training on one A100, AMP"

__all__ = ["GpuCheckSettings", "GpuRow", "synthetic_batch", "run_gpu_check", "format_gpu_section", "main"]


@dataclass(frozen=True)
class GpuCheckSettings:
    """Sizes of a GPU check.

    Attributes:
        device: "cuda" (the check) or "cpu" (a dry run).
        size: (height, width) of the synthetic images.
        batch: images per step.
        warmup: untimed steps (cuDNN autotuning, allocator growth).
        steps: timed steps per case.
        arch: torchvision's ResNet name; ours is ``f"{arch}-fpn"``.
        dry_run: tiny CPU run.
    """

    device: str
    size: Tuple[int, int]
    batch: int
    warmup: int
    steps: int
    arch: str
    dry_run: bool

    @classmethod
    def for_run(cls, *, dry_run: bool, batch: int = 8, steps: int = 20, warmup: int = 5) -> "GpuCheckSettings":
        """The check's settings (a dry run: CPU, resnet18-fpn, 64x96, batch 2, 1 step, no warm-up).

        Raises:
            ValueError: a count that is not a positive int (warmup: >= 0); no CUDA device without `dry_run`.
        """
        for name, value, low in (("batch", batch, 1), ("steps", steps, 1), ("warmup", warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if dry_run:
            return cls("cpu", (64, 96), 2, 0, 1, "resnet18", True)
        if not torch.cuda.is_available():
            raise ValueError("no CUDA device: the GPU check needs one (use --dry-run to check the script on a CPU)")
        return cls("cuda", (800, 1333), batch, warmup, steps, "resnet50", False)


@dataclass
class GpuRow:
    """One case: model, what ran, and per side (`SIDES`) images per second and peak memory (GiB; None on the CPU)."""

    model: str
    mode: str
    images_per_s: Dict[str, float]
    peak_gib: Dict[str, Optional[float]]

    @property
    def speedup(self) -> float:
        """Ours over torchvision's images per second."""
        return self.images_per_s["ours"] / self.images_per_s["torchvision"]


def synthetic_batch(batch: int, size: Tuple[int, int], *, num_classes: int, masks: bool, device: str,
                    seed: int = 0) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    """COCO-like images and targets: random pixels, 1-8 boxes each (at least 8 px a side), masks filling boxes.

    Args:
        batch: images.
        size: (height, width).
        num_classes: labels are drawn from 1..num_classes-1.
        masks: add ``masks`` (N, H, W) uint8 to the targets.
        device: where the tensors go.
        seed: generator seed.

    Returns:
        ``(images, targets)`` as torchvision's detectors take them in training.
    """
    g = torch.Generator().manual_seed(seed)
    height, width = size
    images, targets = [], []
    for _ in range(batch):
        n = int(torch.randint(1, 9, (1,), generator=g))
        x1 = torch.rand(n, generator=g) * (width - 16)
        y1 = torch.rand(n, generator=g) * (height - 16)
        x2 = torch.minimum(x1 + 8 + torch.rand(n, generator=g) * width / 2, torch.tensor(float(width)))
        y2 = torch.minimum(y1 + 8 + torch.rand(n, generator=g) * height / 2, torch.tensor(float(height)))
        boxes = torch.stack([x1, y1, x2, y2], dim=1)
        target = {"boxes": boxes.to(device), "labels": torch.randint(1, num_classes, (n,), generator=g).to(device)}
        if masks:
            m = torch.zeros(n, height, width, dtype=torch.uint8)
            for i, (a, b, c, d) in enumerate(boxes.round().long().tolist()):
                m[i, b:d, a:c] = 1
            target["masks"] = m.to(device)
        images.append(torch.rand(3, height, width, generator=g).to(device))
        targets.append(target)
    return images, targets


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class _Side:
    """One side of a comparison: a call to time, and how to move its model off and back onto the device."""

    run: Callable[[], object]
    park: Callable[[], None]
    unpark: Callable[[], None]


def _timed(fn: Callable[[], object], settings: GpuCheckSettings, *, warmup: int) -> Tuple[float, Optional[float]]:
    """(seconds per call after `warmup` untimed calls, peak GiB over the timed ones) of `fn`."""
    for _ in range(warmup):
        fn()
    _sync(settings.device)
    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(settings.steps):
        fn()
    _sync(settings.device)
    seconds = (time.perf_counter() - start) / settings.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if settings.device == "cuda" else None
    return seconds, peak


def _compare(sides: Dict[str, _Side],
             settings: GpuCheckSettings) -> Tuple[Dict[str, float], Dict[str, Optional[float]]]:
    """Images per second (median round) and peak GiB (largest round) of each side, alternating, one on the device."""
    seconds: Dict[str, List[float]] = {name: [] for name in sides}
    peaks: Dict[str, List[float]] = {name: [] for name in sides}
    for round_ in range(ROUNDS):
        for name in (SIDES if round_ % 2 == 0 else SIDES[::-1]):
            side = sides[name]
            side.unpark()
            # the full warm-up once (autotuning, allocator growth); one call after each later move back
            took, peak = _timed(side.run, settings, warmup=settings.warmup if round_ == 0 else min(1, settings.warmup))
            side.park()
            seconds[name].append(took)
            if peak is not None:
                peaks[name].append(peak)
    rate = {name: settings.batch / statistics.median(values) for name, values in seconds.items()}
    return rate, {name: (max(values) if values else None) for name, values in peaks.items()}


def _parking(settings: GpuCheckSettings, model: nn.Module,
             optimizer: Optional[torch.optim.Optimizer] = None) -> Tuple[Callable[[], None], Callable[[], None]]:
    """(park, unpark) for `model`: to the CPU and back to the check's device; on the CPU, nothing to do."""
    if settings.device == "cpu":
        return (lambda: None), (lambda: None)

    def park() -> None:
        model.to("cpu")
        if optimizer is not None:
            optimizer.state.clear()  # momentum buffers live on the device; throughput does not need them kept
        torch.cuda.empty_cache()

    return park, (lambda: model.to(settings.device))


def _low_precision(settings: GpuCheckSettings) -> List[torch.dtype]:
    if settings.dry_run:
        return []  # CPU float32 only: the dry run checks the code path, not a speed
    return [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])


def _train_dtype(settings: GpuCheckSettings) -> Optional[torch.dtype]:
    if settings.dry_run:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def run_gpu_check(settings: GpuCheckSettings, *, log: Callable[[str], None] = print) -> List[GpuRow]:
    """Training and inference throughput of each model of `MODELS`, ours beside torchvision's.

    Args:
        settings: sizes and device.
        log: one line per case.

    Returns:
        The rows: per model, inference (each precision), then training.
    """
    from resnet_fpn import optimize_for_inference

    from .models import reference_models

    rows: List[GpuRow] = []
    height, width = settings.size
    # cudnn.benchmark stays off (torch's default), as detectron2 keeps it: the images have one size, but the mask
    # head's batch is the number of positive RoIs, new at almost every training step, and each new shape would
    # be autotuned again inside the timed steps.
    train_dtype = _train_dtype(settings)
    for kind in MODELS:
        theirs, ours = reference_models(kind, size=height, max_size=width, arch=settings.arch)
        models = {"torchvision": theirs, "ours": ours}
        images, targets = synthetic_batch(settings.batch, settings.size, num_classes=91, masks=kind == "mask_rcnn",
                                          device=settings.device)
        # Inference first, while both sides hold the same weights (training steps would part them, and with
        # them the number of detections the heads go on to process).
        for dtype in _low_precision(settings) or [None]:
            sides: Dict[str, _Side] = {}
            for name, model in models.items():
                model.to(settings.device)
                if name == "ours":
                    run_model = optimize_for_inference(model, dtype=dtype, runtime="torch")
                    model.to("cpu")
                    infer = _inference(run_model, images, settings.device, None)
                else:
                    run_model = model
                    infer = _inference(model, images, settings.device, dtype)
                sides[name] = _Side(infer, *_parking(settings, run_model))
                sides[name].park()
            rate, peak = _compare(sides, settings)
            mode = (f"inference {_name(dtype)} (ours: optimize_for_inference; torchvision: "
                    f"{'autocast' if dtype is not None else 'eager'}), batch {settings.batch}")
            rows.append(GpuRow(kind, mode, rate, peak))
            log(f"{kind} inference {_name(dtype)}: torchvision {rate['torchvision']:.1f} img/s, "
                f"ours {rate['ours']:.1f} img/s")
        # Training, both sides alike: channels_last weights, autocast in the low dtype (fp32 in a dry run), SGD.
        sides = {}
        for name, model in models.items():
            model.to(memory_format=torch.channels_last).train()
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
            sides[name] = _Side(_train_step(model, optimizer, images, targets, settings.device, train_dtype),
                                *_parking(settings, model, optimizer))
            sides[name].park()
        rate, peak = _compare(sides, settings)
        mode = (f"train {_name(train_dtype)}{'' if train_dtype is None else ' autocast'}, channels_last, "
                f"batch {settings.batch}")
        rows.append(GpuRow(kind, mode, rate, peak))
        log(f"{kind} {mode}: torchvision {rate['torchvision']:.1f} img/s, ours {rate['ours']:.1f} img/s")
        del theirs, ours, models, sides
        if settings.device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _name(dtype: Optional[torch.dtype]) -> str:
    return "fp32" if dtype is None else {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: List[Tensor],
                targets: List[Dict[str, Tensor]], device: str, dtype: Optional[torch.dtype]) -> Callable[[], None]:
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)

    def step() -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _inference(model: nn.Module, images: List[Tensor], device: str,
               autocast: Optional[torch.dtype]) -> Callable[[], object]:
    def infer() -> object:
        with torch.inference_mode(), torch.autocast(device, dtype=autocast or torch.float32,
                                                    enabled=autocast is not None):
            return model(images)

    return infer


def format_gpu_section(rows: Sequence[GpuRow], settings: GpuCheckSettings, *, command: str) -> str:
    """The "## GPU check" section: device, date, versions, command, then one table row per case."""
    import torchvision

    from resnet_fpn.machine import cpu_model

    device = torch.cuda.get_device_name(0) if settings.device == "cuda" else f"CPU {cpu_model()} (dry run)"
    lines = [HEADING, "", f"Written by `{command}` (`make gpu-check`, benchmarks/gpu_check.py).", "",
             f"- device: {device}", f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
             f"- torch: {torch.__version__} (CUDA {torch.version.cuda}), torchvision: {torchvision.__version__}",
             f"- images: synthetic, {settings.size[0]}x{settings.size[1]}, batch {settings.batch}; "
             f"{settings.warmup} warm-up steps, {settings.steps} timed, {ROUNDS} rounds alternating; "
             f"ours {settings.arch}-fpn, torchvision's {settings.arch} FPN with the same weights",
             f"- anchor: {ANCHOR}; goal >= 40 img/s on an H100/H200", "",
             "| model | mode | torchvision images/s | ours images/s | ours / torchvision "
             "| torchvision peak GiB | ours peak GiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        peaks = [("" if r.peak_gib[side] is None else f"{r.peak_gib[side]:.1f}") for side in SIDES]
        lines.append(f"| {r.model} | {r.mode} | {r.images_per_s['torchvision']:.1f} | {r.images_per_s['ours']:.1f} "
                     f"| {r.speedup:.2f}x | {peaks[0]} | {peaks[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see the module docstring).

    Returns:
        0; bad options exit with status 2 (argparse), as does a missing GPU without --dry-run.
    """
    from .report import replace_block

    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, one step: check the script runs")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"Markdown file whose '{HEADING}' section is rewritten (default {DOCS_REPORT.relative_to(REPO)}"
                        "; a dry run writes nothing unless --out is given, and never the docs)")
    args = p.parse_args(argv)
    out = args.out if args.out is not None or args.dry_run else DOCS_REPORT
    if args.dry_run and out is not None and out.resolve() == DOCS_REPORT.resolve():
        p.error(f"a dry run's figures do not go into {DOCS_REPORT.relative_to(REPO)}: pass --out elsewhere")
    try:
        settings = GpuCheckSettings.for_run(dry_run=args.dry_run, batch=args.batch, steps=args.steps,
                                            warmup=args.warmup)
    except ValueError as exc:
        p.error(str(exc))
    command = " ".join(["python -m benchmarks.gpu_check",
                        *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    start = time.perf_counter()
    rows = run_gpu_check(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    section = format_gpu_section(rows, settings, command=command)
    print(section)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        from resnet_fpn.files import atomic_write_text

        atomic_write_text(out, replace_block(out.read_text() if out.is_file() else "", section))
        print(f"wrote '{HEADING}' of {out} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
