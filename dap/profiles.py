"""The one profile switch (``DAP_PROFILE``) and the one table of what each profile sizes.

``ci``
    seconds to a few minutes per notebook on 2 CPU cores (tiny images, few steps);
``cpu``
    a laptop, minutes;
``full``
    the paper's configuration, on a GPU.

Default: ``full`` when CUDA is available, else ``cpu``. The profile is read here and only here
(:func:`get_profile`); every profile runs the same code path, only smaller. Everything that
changes with the profile is a field of :class:`Profile` in :data:`TABLE` — the model preset, the
image size, the training defaults of ``python -m dap train`` and of the notebooks, and the sizes
of the notebooks' demonstrations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dap.config import ConfigError

PROFILES: tuple[str, ...] = ("ci", "cpu", "full")
PROFILE_ENV = "DAP_PROFILE"


@dataclass(frozen=True)
class Profile:
    """What one profile sizes; the code path never changes.

    Attributes
    ----------
    name : ``ci``, ``cpu`` or ``full``
    preset : the model preset every method builds (``ci``, ``cpu``, ``paper``)
    image_size : side of the square images (the preset's input size)
    batch_size, train_steps, val_every : the training defaults of ``python -m dap train`` and
        of every model trained by ``dap.experiments`` (DiffusionAD trains 3000 epochs at batch
        16; ``full`` approximates that in steps for a ~250-image category)
    notebook_train_steps : the steps a notebook trains a model for when it trains one
    num_images : how many images a notebook demonstration uses
    grid_points : how many t values a sweep over t visits
    """

    name: str
    preset: str
    image_size: int
    batch_size: int
    train_steps: int
    val_every: int
    notebook_train_steps: int
    num_images: int
    grid_points: int

    def train_defaults(self) -> dict[str, Any]:
        """The :class:`dap.engine.train.TrainConfig` fields this profile sets."""
        return {"steps": self.train_steps, "batch_size": self.batch_size,
                "val_every": self.val_every}


TABLE: dict[str, Profile] = {
    "ci": Profile("ci", preset="ci", image_size=64, batch_size=8, train_steps=40, val_every=20,
                  notebook_train_steps=40, num_images=4, grid_points=6),
    "cpu": Profile("cpu", preset="cpu", image_size=128, batch_size=16, train_steps=3000,
                   val_every=500, notebook_train_steps=1500, num_images=16, grid_points=12),
    "full": Profile("full", preset="paper", image_size=256, batch_size=16, train_steps=48000,
                    val_every=4000, notebook_train_steps=48000, num_images=64, grid_points=19),
}


def get_profile(name: str | None = None) -> str:
    """Return the active profile: ``name`` if given, else ``$DAP_PROFILE``, else the default.

    The default is ``full`` when a CUDA device is visible and ``cpu`` otherwise.

    Raises
    ------
    ConfigError
        If the profile is not one of :data:`PROFILES`.
    """
    if name is None:
        name = os.environ.get(PROFILE_ENV, "").strip() or None
    if name is None:
        import torch

        return "full" if torch.cuda.is_available() else "cpu"
    name = name.strip().lower()
    if name not in PROFILES:
        raise ConfigError(
            f"Unknown profile {name!r} (from {PROFILE_ENV} or the profile argument). "
            f"Valid profiles: {', '.join(PROFILES)}. Example: {PROFILE_ENV}=ci make test"
        )
    return name


def profile(name: str | None = None) -> Profile:
    """The :class:`Profile` of the active (or named) profile."""
    return TABLE[get_profile(name)]


__all__ = ["PROFILES", "PROFILE_ENV", "Profile", "TABLE", "get_profile", "profile"]
