#!/usr/bin/env python
"""dfkd entry point: `python train.py recipe=NAME [key=value ...]` (see `python train.py --help`)."""
import sys

from dfkd.runs.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
