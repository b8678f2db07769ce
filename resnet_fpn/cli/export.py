"""Export a backbone + FPN, or a trained detector, to ONNX or TorchScript; then check the file against eager.

    resnet-fpn export --backbone resnet50-fpn --weights resnet50.pth --format onnx --out r50fpn.onnx --dynamic
    resnet-fpn export --checkpoint best.ckpt --format torchscript --out detector.pt
    resnet-fpn export --checkpoint best.ckpt --backbone-only --format onnx --out fpn.onnx --dynamic --optimize

After writing, the file is loaded (onnxruntime on the CPU, or torch.jit.load) and run next to the eager model
on two inputs (random ones of --check-sizes, or the --check-images photos); the largest difference of every
output is printed, relative to the output's magnitude. Exit status: 0 when within --tolerance, 1 when not,
2 for bad arguments (including a missing onnx/onnxruntime, with the command that installs them).
All logic lives in resnet_fpn.deploy (export and parity).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from ..backbone import build_backbone
from ..checkpoint import detector_from_checkpoint
from ..deploy import DEFAULT_OPSET, check_format, check_parity, export_model, input_normalization, parity_inputs
from ..detectors import is_detector
from ..predictor import to_float_image
from .args import image_size

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The export subcommand's flags."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--backbone", help="a backbone name with FPN (resnet50-fpn) or without (resnet50)")
    source.add_argument("--checkpoint", type=Path, help="a detector checkpoint of resnet-fpn train")
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
    p.add_argument("--check-sizes", nargs="+", type=image_size, default=[(320, 480), (384, 256)],
                   help="HxW of the random parity inputs (default 320x480 384x256)")
    p.add_argument("--check-images", nargs="+", type=Path,
                   help="image files to check parity on instead of random inputs")
    # The first parity input is also the example the exporter traces; a static ONNX file (no --dynamic) only
    # accepts that size, so it is checked on the first input alone.
    p.add_argument("--tolerance", type=float,
                   help="largest accepted relative difference (default: 1e-4 ONNX backbone, 1e-3 ONNX detector, "
                        "1e-5 TorchScript)")


def run(args: argparse.Namespace) -> int:
    """Build or load the model, export it, check parity and print the differences.

    Args:
        args: parsed arguments (see `add_arguments`).

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
        model = detector_from_checkpoint(args.checkpoint).detector
        normalization = input_normalization(model)  # the detector's own, read before --backbone-only drops it
        if args.backbone_only:
            model = model.backbone
    else:
        if args.backbone_only:
            raise ValueError("--backbone-only goes with --checkpoint")
        model = build_backbone(args.backbone, weights=args.weights)
        normalization = input_normalization(model)
    model.eval()
    kind = "detector" if is_detector(model) else "backbone"
    if args.check_images:
        inputs = parity_inputs(kind, images=[to_float_image(p) for p in args.check_images],
                               normalization=normalization)
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
