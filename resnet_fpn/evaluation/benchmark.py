"""Time the two COCO evaluation backends on the same inputs and check they agree."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from .coco import (
    BACKENDS,
    _check_iou_types,
    _check_results,
    _entries_for,
    _get_backend,
    _load_ground_truth,
    _load_results_files,
)

__all__ = ["benchmark_backends", "format_benchmark_table"]

PathLike = Union[str, "os.PathLike[str]"]
# Stats are "identical" when they agree to this; the C++ accumulate sums in another order, which
# moves the last bit of a float64 (measured 1.1e-16 on coco_val2014_100).
_AGREEMENT = 1e-12


def benchmark_backends(
    gt_path: PathLike,
    results_paths: Union[PathLike, Sequence[PathLike]],
    *,
    iou_types: Union[str, Sequence[str]],
    repeats: int = 5,
) -> List[Dict[str, Any]]:
    """Time pycocotools against faster-coco-eval on one ground truth and results set.

    One timed run is what each library does for a full evaluation: load the ground-truth file with its
    own ``COCO``, then for each iou type ``loadRes`` + ``evaluate`` + ``accumulate`` + ``summarize``.
    The results JSON is parsed and checked once beforehand (that part is the same for both). Backends
    alternate within each repeat and swap order between repeats so machine noise hits both alike.

    Args:
        gt_path: COCO instances JSON.
        results_paths: one results JSON or several (concatenated); every entry must carry the fields of
            every iou type.
        iou_types: ``"bbox"`` and/or ``"segm"``.
        repeats: timed runs per backend; the median is reported.

    Returns:
        One row per backend, pycocotools first: ``{"backend", "median_s", "times_s", "speedup" (pycocotools
        median / this median), "stats" ({iou type: 12 floats}), "max_abs_diff" (largest difference of any
        stat from pycocotools'), "identical" (all stats within 1e-12 of pycocotools')}``.

    Raises:
        ValueError: ``repeats`` < 1, or the inputs fail the checks of ``evaluate_results``.
        ImportError: faster-coco-eval is not installed.
    """
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    iou_types = _check_iou_types(iou_types)
    paths = [results_paths] if isinstance(results_paths, (str, os.PathLike)) else list(results_paths)
    gt = _load_ground_truth(gt_path, iou_types)
    entries, sources = _load_results_files(paths)
    _check_results(entries, gt, iou_types, sources)
    adapters = {name: _get_backend(name) for name in BACKENDS}

    times: Dict[str, List[float]] = {name: [] for name in BACKENDS}
    stats: Dict[str, Dict[str, List[float]]] = {}
    for rep in range(repeats):
        order = BACKENDS if rep % 2 == 0 else tuple(reversed(BACKENDS))
        for name in order:
            adapter = adapters[name]
            # loadRes adds keys to the dicts it gets: fresh copies, made before the clock starts.
            inputs = {t: _entries_for(entries, t) for t in iou_types}
            start = time.perf_counter()
            coco_gt = adapter.coco_from_file(gt_path)
            run_stats = {}
            for t in iou_types:
                coco_dt = adapter.load_res(coco_gt, inputs[t])
                s, _ = adapter.evaluate(coco_gt, coco_dt, t, gt.image_ids)
                run_stats[t] = [float(v) for v in s]
            times[name].append(time.perf_counter() - start)
            stats[name] = run_stats

    reference = stats[BACKENDS[0]]
    ref_median = statistics.median(times[BACKENDS[0]])
    rows = []
    for name in BACKENDS:
        diff = max(
            float(np.max(np.abs(np.asarray(stats[name][t]) - np.asarray(reference[t])))) for t in iou_types
        )
        median = statistics.median(times[name])
        rows.append({
            "backend": name,
            "median_s": median,
            "times_s": times[name],
            "speedup": ref_median / median,
            "stats": stats[name],
            "max_abs_diff": diff,
            "identical": diff <= _AGREEMENT,
        })
    return rows


def format_benchmark_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Render the rows of :func:`benchmark_backends` as a text table.

    Args:
        rows: the list returned by :func:`benchmark_backends`.

    Returns:
        One line per backend: median seconds, speed-up over pycocotools, agreement of the stats.
    """
    header = f"{'backend':<18} {'median s':>9} {'speedup':>8} {'max |diff|':>11} identical"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['backend']:<18} {r['median_s']:>9.3f} {r['speedup']:>7.2f}x "
            f"{r['max_abs_diff']:>11.1e} {r['identical']}"
        )
    return "\n".join(lines)
