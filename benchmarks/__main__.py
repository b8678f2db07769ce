"""python -m benchmarks: ours against torchvision (inference, training steps, peak memory) and the COCO evaluator
backends. Prints this machine's Markdown section and rewrites that section of --out.

    python -m benchmarks                                      # everything; docs/benchmarks.md
    python -m benchmarks --quick --out /tmp/bench.md          # small sizes, a smoke run
    python -m benchmarks --cases backbone detector --repeats 7 --threads 2 --out /tmp/bench.md
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from .report import format_section, write_report
from .run import run_benchmarks
from .settings import CASES, BenchmarkSettings

REPO = Path(__file__).resolve().parents[1]
DOCS_REPORT = REPO / "docs" / "benchmarks.md"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see the module docstring).

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        0 (bad options exit through argparse with status 2).
    """
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed measurements per candidate; the median is reported")
    p.add_argument("--slow-repeats", type=int, default=2,
                   help="timed measurements for bf16 cases on CPUs without native bf16 kernels "
                        "(tens of seconds a call)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for every case")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                   help="a subset of the cases (the section written holds only these)")
    p.add_argument("--quick", action="store_true", help="small sizes (128x192 inference, 128 px training): a smoke run")
    p.add_argument("--coco-dir", type=Path, default=REPO.parent / "shared" / "data" / "coco_val2014_100",
                   help="coco_val2014_100 for the evaluator case (skipped when absent)")
    p.add_argument("--out", type=Path, default=None,
                   help="Markdown file whose machine-class section is rewritten (default: "
                        f"{DOCS_REPORT.relative_to(REPO)}; with --quick: none, the section is only printed)")
    args = p.parse_args(argv)
    out = args.out if args.out is not None or args.quick else DOCS_REPORT
    if args.quick and out is not None and out.resolve() == DOCS_REPORT.resolve():
        p.error(f"--quick figures are a smoke run and do not go into {DOCS_REPORT.relative_to(REPO)}: "
                "pass --out elsewhere")
    try:
        settings = BenchmarkSettings(repeats=args.repeats, threads=args.threads, cases=tuple(args.cases),
                                     quick=args.quick, slow_repeats=args.slow_repeats, coco_dir=args.coco_dir)
    except ValueError as exc:
        p.error(str(exc))
    command = " ".join(["python -m benchmarks", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    result = run_benchmarks(settings, command=command, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_section(result))
    if out is not None:
        machine_class = write_report(out, result)
        print(f"wrote the {machine_class!r} section of {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
