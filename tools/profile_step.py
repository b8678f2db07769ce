#!/usr/bin/env python
"""Where a training step's time goes, for a recipe: data loading, step time, top operators.

    python tools/profile_step.py --config configs/demo_mask_cpu.yaml
    python tools/profile_step.py --config configs/demo_mask_cpu.yaml --set mask_head_dim=256 fpn_channels=256
"""
import argparse
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="build_detector options to change")
    args = p.parse_args(argv)
    from resnet_fpn.training import load_config
    from resnet_fpn.training.profile import format_step_profile, profile_train_step

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    try:
        result = profile_train_step(load_config(args.config), steps=args.steps, model_overrides=overrides)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_step_profile(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
