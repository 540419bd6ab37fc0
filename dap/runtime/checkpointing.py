"""Memory: activation (gradient) checkpointing of the dap networks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def enable_gradient_checkpointing(module: "nn.Module", enabled: bool = True) -> int:
    """Call ``enable_gradient_checkpointing()`` (or ``disable_...``) on every dap network inside
    ``module`` (a method, a denoiser, a segmenter); return how many networks were switched."""
    nets = [m for m in module.modules() if hasattr(m, "enable_gradient_checkpointing")]
    for m in nets:
        (m.enable_gradient_checkpointing if enabled else m.disable_gradient_checkpointing)()
    return len(nets)



__all__ = ["enable_gradient_checkpointing"]
