"""Alternating timing of candidates with ``torch.utils.benchmark.Timer``.

A shared machine has slow spells (other processes, frequency changes). Timing one candidate's repeats
and then the next would let such a spell land on one of them; here every repeat measures each candidate
once, and the order reverses on every repeat, so the spells are shared out. Medians are reported.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, Sequence

from torch.utils.benchmark import Timer

__all__ = ["alternation_order", "time_alternating", "median"]


def alternation_order(names: Sequence[str], repeats: int) -> List[List[str]]:
    """The order candidates are measured in: as given on even repeats, reversed on odd ones.

    Args:
        names: the candidates.
        repeats: how many repeats.

    Returns:
        One list of names per repeat.
    """
    return [list(names) if rep % 2 == 0 else list(reversed(names)) for rep in range(repeats)]


def time_alternating(
    candidates: Dict[str, Callable[[], Any]], *, repeats: int, num_threads: int, label: str = ""
) -> Dict[str, List[float]]:
    """Measure each candidate `repeats` times, alternating (see ``alternation_order``).

    Each measurement is ``Timer.blocked_autorange(min_run_time=0)``: Timer sizes its block with one
    untimed call (which is also the warm-up of that measurement: oneDNN primitive creation, allocator
    growth), then times one block of one call. The calls measured here take milliseconds to minutes, so one
    call per block keeps the timer overhead negligible, and Timer synchronises an accelerator before
    reading the clock and runs with ``num_threads`` torch threads.

    Args:
        candidates: name -> zero-argument callable. Called in the caller's thread, so a surrounding
            ``torch.inference_mode()`` applies to it.
        repeats: measurements per candidate.
        num_threads: torch threads during the measurements.
        label: a label for the Timers (what is being measured).

    Returns:
        name -> seconds per call, one per repeat, in measurement order.

    Raises:
        ValueError: `repeats` or `num_threads` is not a positive int, or there are no candidates.
    """
    for name, value in (("repeats", repeats), ("num_threads", num_threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not candidates:
        raise ValueError("candidates must name at least one callable, got none")
    timers = {
        name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads, label=label, description=name)
        for name, fn in candidates.items()
    }
    times: Dict[str, List[float]] = {name: [] for name in candidates}
    for order in alternation_order(list(candidates), repeats):
        for name in order:
            times[name].append(timers[name].blocked_autorange(min_run_time=0.0).median)
    return times


def median(values: Sequence[float]) -> float:
    """The median of measurements (what the report shows)."""
    return statistics.median(values)
