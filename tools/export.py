#!/usr/bin/env python
"""`resnet-fpn export` (the path the README and docs use); `resnet-fpn export --help` lists the options."""
import sys

from resnet_fpn.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
