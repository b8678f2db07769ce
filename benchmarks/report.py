"""Markdown report of a run, and docs/benchmarks.md's per-machine-class sections.

docs/benchmarks.md holds one section per machine class ("## Machine class: AVX2", "## Machine class: AMX",
...): a run rewrites its own class's section, keeps the others, and rewrites the preamble above them
(which describes how the harness measures). Other "## " sections (written by other tools: "## GPU check" by
``benchmarks.gpu_check``, "## Scale") end the section above them and are kept as they are, after the machine
classes; ``replace_block`` rewrites one of them by its heading.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from resnet_fpn.files import atomic_write_text

from .results import RunResult, TimingRow

__all__ = ["SECTION_PREFIX", "PREAMBLE", "format_section", "split_sections", "split_blocks", "replace_section",
           "replace_block", "write_report"]

SECTION_PREFIX = "## Machine class: "
PREAMBLE = """# Benchmarks: ours vs torchvision

Written by `python -m benchmarks` (`make benchmark`; the code is in `benchmarks/` at the repository root).
torchvision's model is built as its `*_resnet50_fpn` builders do with pretrained weights (FrozenBatchNorm2d,
three trainable stages), its norm statistics randomised, and its `state_dict()` loaded into ours. Candidates
alternate in one process (the order reverses on every repeat, so a slow spell of a shared machine hits each
alike); each measurement is `torch.utils.benchmark.Timer.blocked_autorange(min_run_time=0)` (one untimed
call, then one timed call); medians are shown. "ours optimized" is `resnet_fpn.optimize_for_inference(model)`.
Peak memory is the RSS high-water mark of one call in fresh processes (Linux). The tables give figures and
ratios; the issues and notes that quote them judge them.

One section per machine class (AVX2, AVX-512, AVX-512 + bf16, AMX): a run rewrites its own machine's section
and keeps the others, which may come from other dates and versions (each section says which).
"""


def _fmt_s(seconds: float) -> str:
    # 4 significant digits: a 30 ms quick-run call and a 90 s bf16 training step both keep their precision.
    return f"{seconds:.4g}"


def _cell(text: str) -> str:
    # A bare "|" inside a cell would end it and shift every later column.
    return text.replace("|", "\\|")


def _fmt_diff(row: TimingRow) -> str:
    return "" if row.diff is None else _cell(f"{row.diff:.1e} ({row.diff_kind})")


def format_section(result: RunResult) -> str:
    """The Markdown section of one run: heading, machine, timing, memory and evaluator tables.

    Args:
        result: what ``run_benchmarks`` returned.

    Returns:
        Text starting with ``SECTION_PREFIX + machine class``.
    """
    machine_class = result.machine["machine class"]
    details = [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}"
               for key, value in result.machine.items() if key != "machine class"]
    out = [f"{SECTION_PREFIX}{machine_class}", "", f"Sizes: {result.sizes}.", "", *details]
    if result.timings:
        out += ["", "### Timings (median seconds per call of alternating measurements)", "",
                "| case | torchvision | ours | torchvision s | ours s | speed-up | difference |",
                "|---|---|---|---:|---:|---:|---|"]
        for r in result.timings:
            out.append(f"| {_cell(r.case)} | {_cell(r.reference)} | {_cell(r.ours)} | {_fmt_s(r.reference_s)} | "
                       f"{_fmt_s(r.ours_s)} | {r.speedup:.2f}x | {_fmt_diff(r)} |")
        notes = [f"- {r.case}, {r.ours}: {r.note}" for r in result.timings if r.note]
        if notes:
            out += ["", *notes]
        out += ["", "speed-up: torchvision's median over ours (above 1: ours is faster)."]
    if result.memory:
        out += ["", "### Peak memory (RSS increase during one call, fresh process each)", "",
                "| case | ours | torchvision MiB | ours MiB | ours / torchvision | resolution MiB |",
                "|---|---|---:|---:|---:|---:|"]
        for m in result.memory:
            out.append(f"| {m.case} | {m.ours_setting} | {m.reference_median:.1f} | {m.ours_median:.1f} | "
                       f"{m.ratio:.3f} | {m.resolution_mib:.1f} |")
        processes = len(result.memory[0].reference_mib)
        out += ["", f"Median of {processes} alternating fresh processes per side; resolution: the largest spread of "
                "either side's processes (smaller differences are not measurable)."]
    if result.evaluator:
        out += ["", "### COCO evaluator backends (coco_val2014_100, `evaluate_results(..., backend=...)`)", "",
                "| iou type | backend | median s | speed-up | max abs stat diff |",
                "|---|---|---:|---:|---:|"]
        for e in result.evaluator:
            out.append(f"| {e.iou_type} | {e.backend} | {_fmt_s(e.median_s)} | {e.speedup:.2f}x | "
                       f"{e.max_abs_diff:.1e} |")
        out += ["", "speed-up: pycocotools' median over the backend's; stat diff: the largest difference of the 12 "
                "COCO stats from pycocotools'."]
    for skipped in result.skipped:
        out += ["", f"Skipped: {skipped}"]
    return "\n".join(out) + "\n"


def split_blocks(document: str) -> Tuple[str, List[Tuple[str, str]]]:
    """Split a Markdown document at its "## " headings.

    Args:
        document: the text.

    Returns:
        ``(preamble, blocks)``: the text above the first "## " heading, and ``(heading line without its
        newline, block text)`` pairs in order, each block running to the next "## " heading.
    """
    lines = document.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    preamble = "".join(lines[:starts[0]] if starts else lines)
    return preamble, [(lines[a].rstrip("\n"), "".join(lines[a:b])) for a, b in zip(starts, starts[1:] + [len(lines)])]


def split_sections(document: str) -> Tuple[str, List[Tuple[str, str]]]:
    """Split a benchmarks.md into its preamble and its ``(machine class, section text)`` pairs, in order.

    A section runs to the next "## " heading (another tool's section, such as "## GPU check", is not part of
    it; see ``split_blocks``).

    Args:
        document: the file's text.

    Returns:
        ``(preamble, sections)``; each section's text starts with its heading line.

    Raises:
        ValueError: two sections for the same machine class.
    """
    preamble, blocks = split_blocks(document)
    sections: List[Tuple[str, str]] = []
    for heading, text in blocks:
        if not heading.startswith(SECTION_PREFIX):
            continue
        name = heading[len(SECTION_PREFIX):].strip()
        if any(name == existing for existing, _ in sections):
            raise ValueError(f"two sections for machine class {name!r}: merge them by hand first")
        sections.append((name, text))
    return preamble, sections


def replace_block(document: str, block: str) -> str:
    """`document` with `block` in place of the block with the same "## " heading line (appended if absent).

    Args:
        document: the Markdown text.
        block: text starting with a "## " heading line.

    Returns:
        The new text; every other block and the preamble unchanged.

    Raises:
        ValueError: `block` does not start with "## ".
    """
    if not block.startswith("## "):
        raise ValueError(f"block must start with a '## ' heading, got {block[:60]!r}")
    heading = block.splitlines()[0]
    preamble, blocks = split_blocks(document)
    texts = [block if h == heading else text for h, text in blocks]
    if all(h != heading for h, _ in blocks):
        texts.append(block)
    return (preamble.rstrip("\n") + "\n\n" if preamble.strip() else "") + "\n".join(
        t.rstrip("\n") + "\n" for t in texts)


def replace_section(document: str, section: str, *, preamble: str = PREAMBLE) -> str:
    """`document` with `section` in place of the section of the same machine class (appended if absent).

    Args:
        document: the current benchmarks.md text ("" for a new file).
        section: one section, as ``format_section`` writes it.
        preamble: the text above the sections.

    Returns:
        The new text: `preamble`, then the sections in their order, the other classes' unchanged, then the
        document's other "## " sections unchanged.

    Raises:
        ValueError: `section` does not start with a machine-class heading, or `document` has duplicates.
    """
    if not section.startswith(SECTION_PREFIX):
        raise ValueError(f"section must start with {SECTION_PREFIX!r}, got {section[:60]!r}")
    name = section.splitlines()[0][len(SECTION_PREFIX):].strip()
    _, sections = split_sections(document)
    replaced = [(n, section if n == name else text) for n, text in sections]
    if all(n != name for n, _ in sections):
        replaced.append((name, section))
    # Other tools' sections ("## GPU check", "## Scale") follow the machine classes, as they were.
    others = [text for heading, text in split_blocks(document)[1] if not heading.startswith(SECTION_PREFIX)]
    return preamble.rstrip("\n") + "\n\n" + "\n".join(
        text.rstrip("\n") + "\n" for text in [t for _, t in replaced] + others)


def write_report(path: Path, result: RunResult) -> str:
    """Rewrite this run's machine-class section of the Markdown file at `path` (created if absent).

    Args:
        path: e.g. docs/benchmarks.md.
        result: what ``run_benchmarks`` returned.

    Returns:
        The machine class whose section was written.
    """
    document = path.read_text() if path.is_file() else ""
    section = format_section(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: an interrupted write must not lose the other machine classes' sections.
    atomic_write_text(path, replace_section(document, section))
    return result.machine["machine class"]
