"""The GPU check (`make gpu-check`): training and inference throughput of Faster / Mask R-CNN R50-FPN on one GPU.

    python -m benchmarks.gpu_check                      # on a CUDA machine: writes "## GPU check" of docs/benchmarks.md
    python -m benchmarks.gpu_check --dry-run            # CPU, tiny sizes, seconds: the code path, no figures kept

What it measures, on synthetic COCO-like batches (random images at 800x1333, 1-8 random boxes of random classes
each, masks filling their boxes; the detector resizes them as torchvision's transform does):

* training images/s: ``build_detector(..., backbone="resnet50-fpn")``, batch 8, bf16 autocast (fp16 where the
  GPU lacks bf16), channels_last, SGD; ``--warmup`` untimed steps then ``--steps`` timed ones;
* inference images/s: ``optimize_for_inference(model, dtype=fp16 / bf16, runtime="torch")``, batch 8;
* peak memory: ``torch.cuda.max_memory_allocated`` of each case.

The anchor is NVIDIA's Mask R-CNN reference (DeepLearningExamples PyTorch, 24 img/s training on one A100 with
AMP); the issue's goal is >= 40 img/s on an H100/H200. The section written names the device, date, versions and
the command. A dry run uses resnet18-fpn at 64x96, batch 2, one step on the CPU in float32: it proves that the
script runs, writes only where --out points (nothing by default) and is part of the test suite.
"""
from __future__ import annotations

import argparse
import datetime
import shlex
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
        backbone: the backbone name.
        dry_run: tiny CPU run.
    """

    device: str
    size: Tuple[int, int]
    batch: int
    warmup: int
    steps: int
    backbone: str
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
            return cls("cpu", (64, 96), 2, 0, 1, "resnet18-fpn", True)
        if not torch.cuda.is_available():
            raise ValueError("no CUDA device: the GPU check needs one (use --dry-run to check the script on a CPU)")
        return cls("cuda", (800, 1333), batch, warmup, steps, "resnet50-fpn", False)


@dataclass
class GpuRow:
    """One case: model, what ran, images per second, peak memory (GiB; None on the CPU)."""

    model: str
    mode: str
    images_per_s: float
    peak_gib: Optional[float]


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


def _timed(fn: Callable[[], object], settings: GpuCheckSettings) -> Tuple[float, Optional[float]]:
    """(seconds per call after the warm-up, peak GiB) of `fn`."""
    for _ in range(settings.warmup):
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


def _low_precision(settings: GpuCheckSettings) -> List[torch.dtype]:
    if settings.dry_run:
        return []  # CPU float32 only: the dry run checks the code path, not a speed
    return [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])


def _train_dtype(settings: GpuCheckSettings) -> Optional[torch.dtype]:
    if settings.dry_run:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def run_gpu_check(settings: GpuCheckSettings, *, log: Callable[[str], None] = print) -> List[GpuRow]:
    """Training and inference throughput of each model of `MODELS`.

    Args:
        settings: sizes and device.
        log: one line per case.

    Returns:
        The rows, training then inference per model.
    """
    from resnet_fpn import build_detector, optimize_for_inference

    rows: List[GpuRow] = []
    height, width = settings.size
    if settings.device == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size throughout: autotuned kernels pay off
    for kind in MODELS:
        torch.manual_seed(0)
        model = build_detector(kind, num_classes=91, backbone=settings.backbone, min_size=height,
                               max_size=width).to(settings.device)
        images, targets = synthetic_batch(settings.batch, settings.size, num_classes=91, masks=kind == "mask_rcnn",
                                          device=settings.device)
        # Training: channels_last weights, autocast in the low dtype (fp32 in a dry run), SGD as the recipes.
        model = model.to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        train_dtype = _train_dtype(settings)
        scaler = torch.amp.GradScaler(enabled=train_dtype == torch.float16)

        def step() -> None:
            with torch.autocast(settings.device, dtype=train_dtype or torch.float32, enabled=train_dtype is not None):
                loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        seconds, peak = _timed(step, settings)
        mode = f"train {'fp32' if train_dtype is None else str(train_dtype).split('.')[-1]} channels_last"
        rows.append(GpuRow(kind, f"{mode}, batch {settings.batch}", settings.batch / seconds, peak))
        log(f"{kind} {mode}: {settings.batch / seconds:.1f} img/s")
        model.eval()
        for dtype in _low_precision(settings) or [None]:
            fast = optimize_for_inference(model, dtype=dtype, runtime="torch")

            def infer() -> None:
                with torch.inference_mode():
                    fast(images)

            seconds, peak = _timed(infer, settings)
            name = "fp32" if dtype is None else str(dtype).split(".")[-1]
            rows.append(GpuRow(kind, f"inference {name} (optimize_for_inference), batch {settings.batch}",
                               settings.batch / seconds, peak))
            log(f"{kind} inference {name}: {settings.batch / seconds:.1f} img/s")
        del model, optimizer
        if settings.device == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_gpu_section(rows: Sequence[GpuRow], settings: GpuCheckSettings, *, command: str) -> str:
    """The "## GPU check" section: device, date, versions, command, then one table row per case."""
    import torchvision

    from resnet_fpn.machine import cpu_model

    device = torch.cuda.get_device_name(0) if settings.device == "cuda" else f"CPU {cpu_model()} (dry run)"
    lines = [HEADING, "", f"Written by `{command}` (`make gpu-check`, benchmarks/gpu_check.py).", "",
             f"- device: {device}", f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
             f"- torch: {torch.__version__} (CUDA {torch.version.cuda}), torchvision: {torchvision.__version__}",
             f"- images: synthetic, {settings.size[0]}x{settings.size[1]}, batch {settings.batch}; "
             f"{settings.warmup} warm-up steps, {settings.steps} timed; backbone {settings.backbone}",
             f"- anchor: {ANCHOR}; goal >= 40 img/s on an H100/H200", "",
             "| model | mode | images/s | peak memory GiB |", "|---|---|---:|---:|"]
    for r in rows:
        peak = "" if r.peak_gib is None else f"{r.peak_gib:.1f}"
        lines.append(f"| {r.model} | {r.mode} | {r.images_per_s:.1f} | {peak} |")
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
