#!/usr/bin/env python
"""Count a dataset folder's images per category against the known tables; say what is missing.

    python data_scripts/verify.py mvtec --root data/mvtec
    python data_scripts/verify.py dtd --root data/dtd

The same as `python -m dap data verify ...`. Exit status: 0 complete, 1 something missing,
2 bad arguments.
"""

import sys

import _bootstrap  # noqa: F401  (makes `import dap` work from a fresh clone)

from dap.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "verify", *sys.argv[1:]]))
