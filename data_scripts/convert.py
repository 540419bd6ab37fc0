#!/usr/bin/env python
"""Convert a VisA or DAGM copy you unpacked yourself into the MVTec AD layout.

    python data_scripts/convert.py visa --src VisA_20220922 --dst data/visa

The same as `python -m dap data convert ...`.
"""

import sys

import _bootstrap  # noqa: F401  (makes `import dap` work from a fresh clone)

from dap.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "convert", *sys.argv[1:]]))
