#!/usr/bin/env python
"""`resnet-fpn zoo` (the path the README and docs use); `resnet-fpn zoo --help` lists the options."""
import sys

from resnet_fpn.cli import main

if __name__ == "__main__":
    sys.exit(main(["zoo", *sys.argv[1:]]))
