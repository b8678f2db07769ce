#!/usr/bin/env python
"""`resnet-fpn bench` (the path the README and docs use); `resnet-fpn bench --help` lists the options."""
import sys

from resnet_fpn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
