"""Check a COCO-format data set: every problem of its JSON and its images, in one report.

    resnet-fpn check-data --data-root DIR --out REPORT_DIR            every split found under DIR
    resnet-fpn check-data --ann instances.json --images DIR --out R   one annotation file
    resnet-fpn check-data ... --quick                                 image headers only, no decode
    resnet-fpn check-data ... --config configs/x.yaml                 compare boxes with its anchor sizes

Writes REPORT_DIR/report.json (every finding with its code, severity and ids; statistics),
REPORT_DIR/summary.md and PNG plots (instances per class, box sizes and aspect ratios against the anchor
sizes, image sizes), and prints a one-paragraph summary per split. Exit status 1 when an error was found,
0 otherwise (warnings and infos do not fail); 2 for a bad argument. See docs/data.md "Checking a data set".
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..data.doctor import CODES, DEFAULT_ANCHOR_SIZES, MASK_BOX_MIN_IOU, TINY_BOX_SIDE, DataReport, check_dataset
from ..data.layout import LAYOUTS
from ..files import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["add_arguments", "run", "find_splits", "write_report"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check-data subcommand's flags."""
    parser.add_argument("--data-root", type=Path, default=None,
                        help="data root in a known layout (annotations/instances_{train,val}.json + images/, or "
                             "COCO 2017's); every split found is checked")
    parser.add_argument("--ann", type=Path, default=None, help="one COCO instances JSON (with --images)")
    parser.add_argument("--images", type=Path, default=None, help="the folder --ann's file_name entries are in")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.json, summary.md and the plots")
    parser.add_argument("--quick", action="store_true",
                        help="read image headers only (no decode): seconds, but a truncated file passes")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes decoding images (0: none; default: the CPU count, at most 8)")
    parser.add_argument("--config", type=Path, default=None,
                        help="a training YAML whose model.anchor_sizes the box plots show (default torchvision's "
                             f"{list(DEFAULT_ANCHOR_SIZES)})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def find_splits(args: argparse.Namespace) -> List[Tuple[str, Path, Path]]:
    """The ``(split, annotation file, image folder)`` triples to check, from ``--ann/--images`` or ``--data-root``.

    Args:
        args: the parsed flags.

    Returns:
        One triple for ``--ann``, or one per split of the first layout of ``resnet_fpn.data.LAYOUTS`` of
        which at least one split exists under ``--data-root``.

    Raises:
        ValueError: neither or both ways given, ``--ann`` without ``--images``, or a root with no split.
        FileNotFoundError: ``--ann`` or ``--images`` does not exist.
    """
    if (args.data_root is None) == (args.ann is None):
        raise ValueError("give either --data-root DIR or --ann FILE --images DIR")
    if args.ann is not None:
        if args.images is None:
            raise ValueError("--ann needs --images, the folder its file_name entries are relative to")
        if not args.ann.is_file():
            raise FileNotFoundError(f"--ann: annotation file not found: {args.ann}")
        if not args.images.is_dir():
            raise FileNotFoundError(f"--images: folder not found: {args.images}")
        return [(args.ann.stem, args.ann, args.images)]
    if args.images is not None:
        raise ValueError("--images goes with --ann; with --data-root the layout gives the image folders")
    root = args.data_root
    if not root.is_dir():
        raise FileNotFoundError(f"--data-root: folder not found: {root}")
    looked: List[str] = []
    for name, (train_ann, train_images, val_ann, val_images) in LAYOUTS.items():
        found = [(split, root / ann, root / images)
                 for split, ann, images in (("train", train_ann, train_images), ("val", val_ann, val_images))
                 if (root / ann).is_file() and (root / images).is_dir()]
        if found:
            return found
        looked.append(f"{name}: {train_ann} + {train_images}/, {val_ann} + {val_images}/")
    raise ValueError(f"--data-root {root}: no split found; looked for " + "; ".join(looked)
                     + ". Pass --ann FILE --images DIR for another layout.")


def _anchor_sizes(config: Optional[Path]) -> Optional[Sequence[int]]:
    if config is None:
        return None
    from ..training.config import load_config  # only with --config: it imports the training stack

    sizes = load_config(config).model.get("anchor_sizes")
    return None if sizes is None else [int(s) for s in sizes]


def _plot(report: DataReport, out: Path, split: str) -> Dict[str, str]:
    """Four PNG plots of the statistics; returns title -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: Dict[str, str] = {}

    def save(fig, name: str, title: str) -> None:
        path = out / f"{split}_{name}.png"
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        written[title] = path.name

    counts = report.instances_per_category
    if counts:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(counts)), 4))
        names = [report.category_names.get(c, str(c)) for c in counts]
        ax.bar(range(len(counts)), list(counts.values()), color="tab:blue")
        ax.set_xticks(range(len(counts)))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_ylabel("instances (non-crowd)")
        ax.set_title(f"{split}: instances per class")
        save(fig, "instances_per_class", "Instances per class")
    if report.box_sides:
        sides = np.asarray(report.box_sides)
        fig, ax = plt.subplots(figsize=(7, 4))
        bins = np.logspace(np.log10(max(sides.min(), 0.5)), np.log10(max(sides.max(), 2 * max(report.anchor_sizes))), 50)
        ax.hist(sides, bins=bins, color="tab:blue")
        ax.set_xscale("log")
        for size in report.anchor_sizes:
            ax.axvline(size, color="tab:red", linestyle="--", linewidth=1)
        ax.axvline(TINY_BOX_SIDE, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("box side sqrt(w*h), px (red: anchor sizes; gray: tiny)")
        ax.set_ylabel("boxes")
        ax.set_title(f"{split}: box sizes against anchor sizes {list(report.anchor_sizes)}")
        save(fig, "box_sizes", "Box sizes")
        fig, ax = plt.subplots(figsize=(7, 4))
        aspects = np.asarray(report.box_aspects)
        ax.hist(aspects, bins=np.logspace(np.log10(aspects.min()), np.log10(aspects.max()) + 1e-6, 50), color="tab:blue")
        ax.set_xscale("log")
        for ratio in (0.5, 1.0, 2.0):  # torchvision's anchor aspect ratios (h / w)
            ax.axvline(ratio, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xlabel("aspect ratio h / w (red: anchor ratios 0.5, 1, 2)")
        ax.set_ylabel("boxes")
        ax.set_title(f"{split}: box aspect ratios")
        save(fig, "box_aspects", "Box aspect ratios")
    if report.image_sizes:
        sizes = np.asarray(report.image_sizes, dtype=np.float64)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(sizes[:, 0], sizes[:, 1], s=8, alpha=0.5)
        ax.set_xlabel("width, px")
        ax.set_ylabel("height, px")
        ax.set_title(f"{split}: image sizes ({len(sizes)})")
        save(fig, "image_sizes", "Image sizes")
    return written


def _markdown(reports: Dict[str, DataReport], plots: Dict[str, Dict[str, str]]) -> str:
    lines = ["# Data check", "",
             f"Thresholds: tiny box side < {TINY_BOX_SIDE:g} px; mask/box IoU < {MASK_BOX_MIN_IOU}. "
             "Severities: error (exit 1), warning, info. See docs/data.md \"Checking a data set\".", ""]
    for split, report in reports.items():
        lines += [f"## {split}: {report.ann_file}", "", report.summary(), ""]
        counts = report.counts()
        if counts:
            lines += ["| code | severity | count | meaning | first ids |", "|---|---|---:|---|---|"]
            for code, n in counts.items():
                first = ", ".join(_ids(f) for f in report.of(code=code)[:5])
                lines.append(f"| {code} | {CODES[code][0]} | {n} | {CODES[code][1]} | {first} |")
            lines.append("")
        for finding in (report.errors + report.warnings)[:50]:
            lines.append(f"- **{finding.code}** ({finding.severity}): {finding.message}")
        if len(report.errors) + len(report.warnings) > 50:
            lines.append(f"- ... and {len(report.errors) + len(report.warnings) - 50} more in report.json")
        lines.append("")
        for title, name in plots.get(split, {}).items():
            lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)


def _ids(f) -> str:
    parts = [f"{label} {getattr(f, key)}" for key, label in
             (("image_id", "img"), ("annotation_id", "ann"), ("category_id", "cat")) if getattr(f, key) is not None]
    return " / ".join(parts) or (f"entry {f.index}" if f.index is not None else "-")


def write_report(reports: Dict[str, DataReport], out: Path, *, plots: bool = True) -> List[Path]:
    """Write ``report.json``, ``summary.md`` and (with ``plots``) the PNG plots of each split into ``out``.

    Args:
        reports: split name -> its report.
        out: the folder (created).
        plots: draw the PNG plots with matplotlib.

    Returns:
        The files written.

    Raises:
        OSError: ``out`` cannot be written (the message names the path).
    """
    drawn = {split: _plot(report, out, split) for split, report in reports.items()} if plots else {}
    files = [atomic_write_json(out / "report.json", {
        "ok": all(r.ok for r in reports.values()),
        "splits": {split: report.to_dict() for split, report in reports.items()},
    })]
    files.append(atomic_write_text(out / "summary.md", _markdown(reports, drawn)))
    files += [out / name for split_plots in drawn.values() for name in split_plots.values()]
    return files


def run(args: argparse.Namespace) -> int:
    """Check each split, write the report, print the summaries; 1 when an error was found, else 0."""
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    splits = find_splits(args)
    anchors = _anchor_sizes(args.config)
    reports: Dict[str, DataReport] = {}
    for split, ann, images in splits:
        reports[split] = check_dataset(ann, images, decode=not args.quick, workers=args.workers,
                                       anchor_sizes=anchors, progress=not args.no_progress)
        print(f"[{split}] {reports[split].summary()}")
    write_report(reports, args.out)
    ok = all(r.ok for r in reports.values())
    print(f"wrote {args.out / 'report.json'} and {args.out / 'summary.md'}: "
          + ("no error" if ok else f"{sum(len(r.errors) for r in reports.values())} error(s)"))
    return 0 if ok else 1
