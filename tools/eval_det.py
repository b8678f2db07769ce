#!/usr/bin/env python
"""`resnet-fpn eval` (the path the README and docs use); `resnet-fpn eval --help` lists the options."""
import sys

from resnet_fpn.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
