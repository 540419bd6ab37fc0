#!/usr/bin/env python
"""Download, verify, safely extract (and convert) a benchmark into an MVTec AD layout folder.

    python data_scripts/download.py mvtec --root data/mvtec
    python data_scripts/download.py visa  --root data/visa    # converted to the 1-class split
    python data_scripts/download.py dagm  --root data/dagm    # Zenodo 12750201, converted
    python data_scripts/download.py dtd   --root data/dtd     # anomaly source: data/dtd/dtd/images
    python data_scripts/download.py mpdd  --root data/mpdd    # prints the manual steps, verifies

The same as `python -m dap data download ...` (see `--help`). Exit status: 0 complete,
1 incomplete after the run, 2 error.
"""

import sys

import _bootstrap  # noqa: F401  (makes `import dap` work from a fresh clone)

from dap.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "download", *sys.argv[1:]]))
