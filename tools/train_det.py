#!/usr/bin/env python
"""`resnet-fpn train` (the path the README and docs use); `resnet-fpn train --help` lists the options."""
import sys

from resnet_fpn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
