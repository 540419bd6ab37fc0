"""One-off conversion of the shipped models from the old zoo format to the one checkpoint format.

Before the redesign the zoo had its own format (``"format": "dap-zoo-v1"``: method,
method_config, float16 model). Since then every checkpoint, the zoo's included, is a
``dap-checkpoint-v1`` file read by :func:`dap.engine.checkpoint.load_checkpoint`. The payload is
the same; only the format tag changes. Run once: ``python tools/convert_zoo_v1.py``; a file
already converted is left alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dap.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from dap.zoo import ZOO_DIR

OLD_FORMAT = "dap-zoo-v1"


def convert(path: Path) -> bool:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        return False
    if ckpt.get("format") != OLD_FORMAT:
        raise ValueError(f"{path}: unknown format {ckpt.get('format')!r}")
    save_checkpoint(path, {**ckpt, "format": CHECKPOINT_FORMAT})
    return True


def main() -> int:
    for path in sorted(ZOO_DIR.glob("*.pt")):
        print(f"{path.name}: {'converted' if convert(path) else 'already converted'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
