"""The ``resnet-fpn`` command: one entry point, a subcommand per task.

    resnet-fpn train   --config configs/demo_cpu.yaml        train, then evaluate (Lightning)
    resnet-fpn eval    --checkpoint last.ckpt --data-root D  COCO mAP of a checkpoint, or of results files
    resnet-fpn infer   --checkpoint last.ckpt --images D     pictures and a COCO results JSON
    resnet-fpn export  --backbone resnet50-fpn --format onnx ONNX / TorchScript, checked against eager
    resnet-fpn bench   --backbone resnet50-fpn               time a model here (or profile a training step)
    resnet-fpn zoo                                           the model zoo table
    resnet-fpn weights 'torchvision://resnet50*'             the named pretrained weights

Each subcommand is a module of this package with ``add_arguments(parser)`` and ``run(args) -> int``; this
file owns what they share: parsing, and turning expected failures into one line on stderr with exit status 2
(the traceback only with ``--debug``). The scripts in tools/ call `main` with their subcommand's name.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional, Sequence

__all__ = ["COMMANDS", "main", "build_parser"]

# Subcommand -> module in this package. Imported only when chosen: `resnet-fpn zoo` does not load Lightning.
COMMANDS = {
    "train": "train",
    "eval": "evaluate",
    "infer": "infer",
    "export": "export",
    "bench": "bench",
    "zoo": "zoo",
    "check-data": "check_data",
    "weights": "weights",
}
# One line each for `resnet-fpn --help` (the modules' docstrings hold the long help).
SUMMARIES = {
    "train": "train a detector on COCO-format data, then evaluate it",
    "eval": "score COCO results files, or a trained checkpoint on a split (COCO mAP)",
    "infer": "run a trained detector on pictures: drawn pictures and a COCO results JSON",
    "export": "export a backbone or detector to ONNX/TorchScript and check it against eager",
    "bench": "time a backbone or detector on this machine, or profile a training step",
    "zoo": "print the model zoo table (parameters, GMACs, channels); --markdown writes docs/model_zoo.md",
    "check-data": "check a COCO data set (JSON and images): report.json, summary.md, plots; exit 1 on errors",
    "weights": "list the named pretrained weights (torchvision://, timm://, detectron2://): accuracy, input, options",
}


def _expected_errors() -> tuple:
    """Failures that are the user's input, not our bug: reported in one line."""
    errors: List[type] = [ValueError, TypeError, OSError, ImportError, KeyboardInterrupt]
    try:  # Lightning's configuration errors (bad --devices, a GPU asked for on a machine without one)
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        errors.append(MisconfigurationException)
    except ImportError:
        pass
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    """The ``resnet-fpn`` parser with every subcommand's arguments.

    Returns:
        The parser; ``args.command`` names the subcommand, ``args.module`` is its module.
    """
    parser = argparse.ArgumentParser(
        prog="resnet-fpn", description="ResNet-FPN detection: train, evaluate, infer, export, benchmark.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        command = sub.add_parser(name, help=SUMMARIES[name], description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
        module.add_arguments(command)
        command.set_defaults(module=module, parser=command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``resnet-fpn`` with `argv` (default ``sys.argv[1:]``).

    Args:
        argv: the subcommand and its arguments, e.g. ``["eval", "--gt", "gt.json", "--results", "r.json"]``.

    Returns:
        The exit status: the subcommand's (0 on success), 2 for a bad argument or an expected error (one line
        on stderr, ``resnet-fpn <command>: error: ...``).
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask PyPI for updates
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed by argparse)
        return int(exc.code or 0)
    try:
        return int(args.module.run(args))
    except SystemExit as exc:  # a subcommand's parser.error(): usage and message already printed
        return int(exc.code or 0)
    except _expected_errors() as exc:
        if args.debug:
            raise
        message = str(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        print(f"{args.parser.prog}: error: {message}", file=sys.stderr)
        return 2


def console_main() -> None:
    """The ``resnet-fpn`` console script (pyproject.toml ``[project.scripts]``)."""
    sys.exit(main())
