#!/usr/bin/env python
"""Export a backbone + FPN, or a trained detector, to ONNX or TorchScript; then check the file against eager.

    python tools/export.py --backbone resnet50-fpn --weights resnet50.pth --format onnx --out r50fpn.onnx --dynamic
    python tools/export.py --checkpoint best.ckpt --format torchscript --out detector.pt
    python tools/export.py --checkpoint best.ckpt --backbone-only --format onnx --out fpn.onnx --dynamic --optimize

After writing, the file is loaded (onnxruntime on the CPU, or torch.jit.load) and run next to the eager model
on two inputs (random ones of --check-sizes, or the --check-images photos); the largest difference of every
output is printed, relative to the output's magnitude. Exit status: 0 when within --tolerance, 1 when not,
2 for bad arguments (including a missing onnx/onnxruntime, with the command that installs them).
All logic lives in resnet_fpn.deploy.export.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_fpn.deploy.export import (  # noqa: E402
    DEFAULT_OPSET,
    check_format,
    check_parity,
    export_model,
    is_detector,
    parity_inputs,
)


def size(text: str) -> Tuple[int, int]:
    """Parse ``HxW`` (e.g. ``320x480``).

    Args:
        text: the argument.

    Returns:
        (height, width).

    Raises:
        argparse.ArgumentTypeError: not two positive integers joined by ``x``.
    """
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH like 320x480, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"sizes must be at least 32x32, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface.

    Returns:
        The parser.
    """
    p = argparse.ArgumentParser(prog="export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", help="a backbone name with FPN (resnet50-fpn) or without (resnet50)")
    source.add_argument("--checkpoint", type=Path, help="a detector checkpoint of tools/train_det.py")
    p.add_argument("--weights", help="with --backbone: weights to load (path, URL; ImageNet or detection layout)")
    p.add_argument("--backbone-only", action="store_true", help="with --checkpoint: export its backbone + FPN")
    p.add_argument("--format", required=True, help="onnx or torchscript")
    p.add_argument("--out", required=True, type=Path, help="output file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--dynamic", action="store_true",
                   help="ONNX: free batch/height/width (backbone), free height/width (detector); TorchScript "
                        "always accepts any size")
    p.add_argument("--optimize", action="store_true",
                   help="fold frozen BN into the convolutions first (optimize_for_inference)")
    p.add_argument("--check-sizes", nargs="+", type=size, default=[(320, 480), (384, 256)],
                   help="HxW of the random parity inputs (default 320x480 384x256)")
    p.add_argument("--check-images", nargs="+", type=Path,
                   help="image files to check parity on instead of random inputs")
    # The first parity input is also the example the exporter traces; a static ONNX file (no --dynamic) only
    # accepts that size, so it is checked on the first input alone.
    p.add_argument("--tolerance", type=float,
                   help="largest accepted relative difference (default: 1e-4 ONNX backbone, 1e-3 ONNX detector, "
                        "1e-5 TorchScript)")
    return p


def run(args: argparse.Namespace) -> int:
    """Build or load the model, export it, check parity and print the differences.

    Args:
        args: parsed arguments of `build_parser`.

    Returns:
        0 when every output is within tolerance, else 1.

    Raises:
        ValueError: bad format, sizes, options or weights.
        FileNotFoundError: missing checkpoint, weights or images.
        ImportError: ONNX without onnx/onnxruntime.
    """
    check_format(args.format)
    if args.checkpoint is not None:
        if args.weights is not None:
            raise ValueError("--weights goes with --backbone; a --checkpoint holds its own weights")
        from resnet_fpn.checkpoint import detector_from_checkpoint

        model, _, _ = detector_from_checkpoint(args.checkpoint)
        if args.backbone_only:
            model = model.backbone
    else:
        if args.backbone_only:
            raise ValueError("--backbone-only goes with --checkpoint")
        from resnet_fpn.backbone import build_backbone

        model = build_backbone(args.backbone, weights=args.weights)
    model.eval()
    kind = "detector" if is_detector(model) else "backbone"
    if args.check_images:
        from resnet_fpn.predictor import to_float_image

        inputs = parity_inputs(kind, images=[to_float_image(p) for p in args.check_images])
    else:
        inputs = parity_inputs(kind, sizes=args.check_sizes)
    example_size = tuple(inputs[0][1].shape[-2:])
    exported = export_model(
        model, args.out, format=args.format, example_size=example_size, opset=args.opset,
        dynamic=args.dynamic, optimize=args.optimize,
    )
    print(f"wrote {exported.path} ({exported.kind}, {exported.exporter}; inputs {exported.input_name}, "
          f"outputs {', '.join(exported.output_names)})")
    if not exported.dynamic:
        inputs = inputs[:1]  # a static ONNX graph only takes the size it was exported at
    report = check_parity(model, exported, inputs=inputs, tolerance=args.tolerance)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    """Parse arguments and run; input errors end with exit status 2 and a one-line message.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
