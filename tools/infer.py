#!/usr/bin/env python
"""`resnet-fpn infer` (the path the README and docs use); `resnet-fpn infer --help` lists the options."""
import sys

from resnet_fpn.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
