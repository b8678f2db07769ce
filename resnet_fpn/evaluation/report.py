"""Human-readable views of COCO metrics: a printed table and precision-recall plots."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .coco import IOU_TYPES, STAT_NAMES

__all__ = ["format_metrics_table", "precision_recall_curves", "plot_precision_recall"]

# detectron2 prints per-category AP as three (category, AP) pairs per row.
_PAIRS_PER_ROW = 3


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _pipe_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """Render a metrics dict as text tables.

    For each iou type present: the 12 COCO statistics (AP row, then AR row), then the per-category
    AP in three (category, AP) column pairs per row. Values are pycocotools' fractions with 4
    decimals; -1 (undefined: no ground truth there) is printed as ``-1.0000`` like pycocotools does.

    Args:
        metrics: the dict returned by ``evaluate_results`` or ``COCOEvaluator.compute``.

    Returns:
        The table as one string (no trailing newline).

    Raises:
        ValueError: the dict holds none of the iou types ``bbox``/``segm`` or misses one of the 12 stats.
    """
    iou_types = [t for t in IOU_TYPES if t in metrics]
    if not iou_types:
        raise ValueError(f"metrics holds none of the iou types {IOU_TYPES}; keys are {sorted(metrics)}")
    lines: List[str] = []
    for iou_type in iou_types:
        stats = metrics[iou_type]
        missing = [k for k in STAT_NAMES if k not in stats]
        if missing:
            raise ValueError(f"metrics[{iou_type!r}] lacks {missing}; expected the 12 keys {STAT_NAMES}")
        half = len(STAT_NAMES) // 2
        lines.append(f"COCO {iou_type} evaluation")
        for names in (STAT_NAMES[:half], STAT_NAMES[half:]):
            lines.extend(_pipe_table(names, [[_fmt(stats[k]) for k in names]]))
        per_category = metrics.get("per_category", {}).get(iou_type)
        if per_category:
            items = [(name, _fmt(ap)) for name, ap in per_category.items()]
            rows = []
            for start in range(0, len(items), _PAIRS_PER_ROW):
                chunk = items[start:start + _PAIRS_PER_ROW]
                chunk += [("", "")] * (_PAIRS_PER_ROW - len(chunk))
                rows.append([cell for pair in chunk for cell in pair])
            lines.append(f"Per-category {iou_type} AP")
            lines.extend(_pipe_table(["category", "AP"] * _PAIRS_PER_ROW, rows))
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def _check_precision(precision: Any) -> np.ndarray:
    array = np.asarray(precision, dtype=np.float64)
    if array.ndim != 5 or array.shape[0] != 10 or array.shape[3] < 1 or array.shape[4] < 1:
        raise ValueError(
            "precision must be COCOeval's eval['precision'] array [T=10 IoU thresholds, R recall points, "
            f"K categories, A area ranges, M maxDets], got shape {array.shape}"
        )
    return array


def precision_recall_curves(precision: Any) -> Dict[str, np.ndarray]:
    """Mean precision over categories at each recall point (area=all, maxDets=100).

    Only categories with ground truth enter the mean (pycocotools marks the others -1). With the
    standard 101 recall points the mean of each curve is exactly the AP pycocotools reports.

    Args:
        precision: COCOeval ``eval["precision"]`` [T, R, K, A, M] with the standard 10 IoU thresholds
            0.50:0.05:0.95 (index 0 is IoU 0.50).

    Returns:
        ``{"IoU=0.50": (R,), "IoU=0.50:0.95": (R,)}``; the second averages over the 10 thresholds.

    Raises:
        ValueError: the array does not have that shape, or no category has ground truth.
    """
    p = _check_precision(precision)[:, :, :, 0, -1]  # [T, R, K]
    has_gt = (p > -1).any(axis=(0, 1))
    if not has_gt.any():
        raise ValueError("no category has ground truth in the evaluated images: every precision is -1")
    p = p[:, :, has_gt]
    return {"IoU=0.50": p[0].mean(axis=1), "IoU=0.50:0.95": p.mean(axis=0).mean(axis=1)}


def plot_precision_recall(
    source: Any,
    out_dir: Union[str, "os.PathLike[str]"],
    *,
    iou_type: str,
    category_names: Optional[Sequence[str]] = None,
) -> List[Path]:
    """Write precision-recall plots (area=all, maxDets=100) as PNG files.

    Two files: ``pr_<iou_type>_iou50.png`` (IoU 0.50) and ``pr_<iou_type>_iou50-95.png`` (precision
    averaged over IoU 0.50:0.95). Each draws every category with ground truth as a thin line and the
    mean over categories (whose area is the AP) as a thick line.

    Args:
        source: COCOeval's ``eval["precision"]`` array [T, R, K, A, M] (e.g. ``COCOEvaluator.precision
            [iou_type]``), or an evaluated pycocotools / faster-coco-eval ``COCOeval`` object.
        out_dir: folder for the PNGs (created if needed).
        iou_type: ``"bbox"`` or ``"segm"``; used in titles and file names.
        category_names: names of the K axis, for the legend of the best and worst category; taken from
            the COCOeval object when one is given.

    Returns:
        The paths of the two PNG files.

    Raises:
        ValueError: a bad iou type, a precision array of the wrong shape, no category with ground truth,
            or ``category_names`` of the wrong length.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if hasattr(source, "eval") and hasattr(source, "params"):
        if category_names is None and getattr(source, "cocoGt", None) is not None:
            category_names = [c.get("name", str(c["id"])) for c in source.cocoGt.loadCats(source.params.catIds)]
        source = source.eval["precision"]
    precision = _check_precision(source)
    k = precision.shape[2]
    if category_names is not None and len(category_names) != k:
        raise ValueError(f"category_names has {len(category_names)} names but precision has {k} categories")
    curves = precision_recall_curves(precision)
    recall = np.linspace(0.0, 1.0, precision.shape[1])

    # Figure + Agg canvas directly: no pyplot, so the caller's matplotlib backend and state are untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_cat = precision[:, :, :, 0, -1]
    written = []
    for label, suffix, per_k in (
        ("IoU=0.50", "iou50", per_cat[0]),
        ("IoU=0.50:0.95", "iou50-95", per_cat.mean(axis=0)),
    ):
        fig = Figure(figsize=(6, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        aps = []
        for kk in range(k):
            curve = per_k[:, kk]
            if (curve > -1).any():
                ax.plot(recall, curve, color="0.75", linewidth=0.6)
                aps.append((float(curve.mean()), kk))
        mean_curve = curves[label]
        ax.plot(recall, mean_curve, color="C0", linewidth=2.5,
                label=f"mean of {len(aps)} categories (AP={mean_curve.mean():.3f})")
        if category_names is not None and aps:
            for (ap, kk), color in ((max(aps), "C2"), (min(aps), "C3")):
                ax.plot(recall, per_k[:, kk], color=color, linewidth=1.2, label=f"{category_names[kk]} (AP={ap:.3f})")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{iou_type} precision-recall, {label}, area=all, maxDets=100")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
        path = out / f"pr_{iou_type}_{suffix}.png"
        fig.savefig(path)
        written.append(path)
    return written

