"""What a benchmark run measures, and at which sizes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

__all__ = ["CASES", "MEMORY_CASES", "BenchmarkSettings"]

CASES = ("backbone", "backbone_bf16", "detector", "detector_bf16", "train_faster_rcnn", "train_mask_rcnn", "memory", "evaluator")
MEMORY_CASES = ("backbone", "detector", "train_faster_rcnn", "train_mask_rcnn")


def _positive_int(name: str, value: object) -> None:
    # bool is an int subclass: True would silently mean 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class BenchmarkSettings:
    """What to run and at which sizes.

    Attributes:
        repeats: timed measurements per candidate (the median is reported).
        threads: torch threads for the whole run, the timers and the memory subprocesses.
        cases: a non-empty subset of ``CASES``.
        quick: small inputs (a smoke run): inference at 128x192, training batch 2 at 128 px.
        slow_repeats: timed measurements for the bf16 cases on CPUs without native bf16 kernels in oneDNN,
            where one call takes tens of seconds (None: ``repeats``).
        coco_dir: the ``coco_val2014_100`` folder for the evaluator case (the case is skipped when absent).

    Raises:
        ValueError: a count that is not a positive int, or cases outside ``CASES``.
    """

    repeats: int = 5
    threads: int = 2
    cases: Tuple[str, ...] = CASES
    quick: bool = False
    slow_repeats: Optional[int] = 2
    coco_dir: Optional[Path] = None

    def __post_init__(self) -> None:
        _positive_int("repeats", self.repeats)
        _positive_int("threads", self.threads)
        if self.slow_repeats is not None:
            _positive_int("slow_repeats", self.slow_repeats)
        if isinstance(self.cases, str):
            raise ValueError(f"cases must be a sequence of case names from {CASES}, got the string {self.cases!r}")
        unknown = [c for c in self.cases if c not in CASES]
        if unknown or not self.cases:
            raise ValueError(f"cases must be a non-empty subset of {CASES}, got {list(self.cases)}")

    @property
    def inference_size(self) -> Tuple[int, int]:
        """(height, width) of the backbone and detector inputs."""
        return (128, 192) if self.quick else (800, 1216)

    @property
    def train_size(self) -> int:
        """Side of the square training images (batch 2)."""
        return 128 if self.quick else 512

    def repeats_for(self, *, slow: bool) -> int:
        """Timed measurements for a case: ``repeats``, capped by ``slow_repeats`` when the case is slow here."""
        if slow and self.slow_repeats is not None:
            return min(self.repeats, self.slow_repeats)
        return self.repeats

    def describe_sizes(self) -> str:
        """The sizes, for the report header."""
        height, width = self.inference_size
        kind = "quick (smoke run)" if self.quick else "full"
        return f"{kind}: inference {height}x{width} batch 1, training batch 2 at {self.train_size}x{self.train_size}"
