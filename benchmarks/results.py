"""What the cases return: figures only (whether a figure is good enough is for the issues to judge)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .timing import median

__all__ = ["TimingRow", "MemoryRow", "EvaluatorRow", "RunResult"]


@dataclass
class TimingRow:
    """One timed comparison: torchvision's model (the reference) against ours.

    Attributes:
        case: e.g. "backbone fp32".
        reference: what torchvision ran, e.g. "torchvision fp32 eager".
        ours: what we ran, e.g. "ours optimized fp32".
        reference_times: seconds per call of every measurement.
        ours_times: the same for ours.
        diff: how far our output is from torchvision's (meaning in `diff_kind`); None when not compared.
        diff_kind: e.g. "max rel / level".
        note: anything else to know about the row.
    """

    case: str
    reference: str
    ours: str
    reference_times: List[float]
    ours_times: List[float]
    diff: Optional[float] = None
    diff_kind: str = ""
    note: str = ""

    @property
    def reference_s(self) -> float:
        """torchvision's median seconds per call."""
        return median(self.reference_times)

    @property
    def ours_s(self) -> float:
        """Our median seconds per call."""
        return median(self.ours_times)

    @property
    def speedup(self) -> float:
        """torchvision's median over ours (above 1: ours is faster)."""
        return self.reference_s / self.ours_s


@dataclass
class MemoryRow:
    """Peak RSS increase (MiB) of one call, torchvision's model against ours, each in fresh processes.

    Attributes:
        case: one of ``MEMORY_CASES``.
        ours_setting: what ours ran, e.g. "optimized fp32".
        reference_mib: torchvision's increase in every process.
        ours_mib: ours in every process.
    """

    case: str
    ours_setting: str
    reference_mib: List[float] = field(default_factory=list)
    ours_mib: List[float] = field(default_factory=list)

    @property
    def reference_median(self) -> float:
        return median(self.reference_mib)

    @property
    def ours_median(self) -> float:
        return median(self.ours_mib)

    @property
    def ratio(self) -> float:
        """Ours over torchvision (below 1: ours needs less); nan when torchvision's increase is not positive."""
        return self.ours_median / self.reference_median if self.reference_median > 0 else float("nan")

    @property
    def resolution_mib(self) -> float:
        """The largest spread (max - min) of either side's processes: smaller differences are not measurable."""
        return max(max(self.reference_mib) - min(self.reference_mib), max(self.ours_mib) - min(self.ours_mib))


@dataclass
class EvaluatorRow:
    """One COCO evaluation backend on one iou type.

    Attributes:
        iou_type: "bbox" or "segm".
        backend: one of ``resnet_fpn.evaluation.BACKENDS``.
        times: seconds per evaluation of every measurement.
        reference_s: the first backend's (pycocotools') median, which `speedup` divides.
        max_abs_diff: largest difference of any of the 12 COCO stats from the first backend's.
    """

    iou_type: str
    backend: str
    times: List[float]
    reference_s: float
    max_abs_diff: float

    @property
    def median_s(self) -> float:
        return median(self.times)

    @property
    def speedup(self) -> float:
        """The reference backend's median over this one's."""
        return self.reference_s / self.median_s


@dataclass
class RunResult:
    """Everything one run produced, as ``benchmarks.report`` formats it.

    Attributes:
        machine: ``machine_info()``'s name -> value (its "machine class" names the report section).
        sizes: the sizes and repeats run, in words.
        timings: rows of the inference and training cases.
        memory: rows of the memory case.
        evaluator: rows of the evaluator case.
        skipped: one line per case that was selected but could not run here, with why.
    """

    machine: Dict[str, str]
    sizes: str
    timings: List[TimingRow] = field(default_factory=list)
    memory: List[MemoryRow] = field(default_factory=list)
    evaluator: List[EvaluatorRow] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
