"""The one profile switch (``DAP_PROFILE``) and the one table of what each profile sizes.

``ci``
    seconds to a few minutes per notebook on 2 CPU cores (tiny images, few steps);
``cpu``
    a laptop, minutes;
``full``
    the paper's configuration, on a GPU;
``colab``
    a free Colab session: one 16 GB T4 for about an hour (the paper's model, a short run).

Default: ``colab`` on Colab with a GPU, else ``full`` when CUDA is available, else ``cpu``
(:func:`default_profile`). The profile is read here and only here
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

# "colab" last: error messages list "ci, cpu, full" first, the profiles most people want
PROFILES: tuple[str, ...] = ("ci", "cpu", "full", "colab")
PROFILE_ENV = "DAP_PROFILE"


@dataclass(frozen=True)
class Profile:
    """What one profile sizes; the code path never changes.

    Attributes
    ----------
    name : ``ci``, ``cpu``, ``full`` or ``colab``
    preset : the model preset every method builds (``ci``, ``cpu``, ``paper``)
    image_size : side of the square images (the preset's input size)
    batch_size, train_steps, val_every : the training defaults of ``python -m dap train`` and
        of every model trained by ``dap.experiments`` (DiffusionAD trains 3000 epochs at batch
        16; ``full`` approximates that in steps for a ~250-image category)
    notebook_train_steps : the steps a notebook trains a model for when it trains one
    notebook_preset : the model preset a notebook trains (notebooks 06-09). ``cpu`` uses the
        64 px ``ci`` preset there: one DiffusionAD step of the 128 px ``cpu`` preset takes
        ~25 s on one thread, so a notebook that must finish in 10 minutes could train ~20 of
        them; the ``ci`` preset trains enough steps in that time to see the loss fall
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
    notebook_preset: str

    def train_defaults(self) -> dict[str, Any]:
        """The :class:`dap.engine.train.TrainConfig` fields this profile sets."""
        return {"steps": self.train_steps, "batch_size": self.batch_size,
                "val_every": self.val_every}


TABLE: dict[str, Profile] = {
    "ci": Profile("ci", preset="ci", image_size=64, batch_size=8, train_steps=40, val_every=20,
                  notebook_train_steps=40, num_images=4, grid_points=6, notebook_preset="ci"),
    # notebooks: at most 10 minutes each on one CPU thread (measured: results/notebook-times.json)
    "cpu": Profile("cpu", preset="cpu", image_size=128, batch_size=16, train_steps=3000,
                   val_every=500, notebook_train_steps=60, num_images=16, grid_points=12,
                   notebook_preset="ci"),
    "full": Profile("full", preset="paper", image_size=256, batch_size=16, train_steps=48000,
                    val_every=4000, notebook_train_steps=48000, num_images=64, grid_points=19,
                    notebook_preset="paper"),
    # Sized by estimate, not measured on a T4 (see COLAB_SIZING): the paper's model at batch 2
    # (memory), 2,000 steps (time). Notebook 06 measures the real rate before it trains.
    "colab": Profile("colab", preset="paper", image_size=256, batch_size=2, train_steps=2000,
                     val_every=500, notebook_train_steps=2000, num_images=32, grid_points=19,
                     notebook_preset="paper"),
}

#: How the ``colab`` row was sized: an estimate from counted FLOPs and bytes, not a measurement.
COLAB_SIZING = """\
The paper preset (denoiser 131.7 M, segmenter 28.4 M parameters, 256 px). Counted with
torch.utils.flop_counter on one image: the denoiser's forward pass is 563 GFLOP, the
segmenter's 76 GFLOP. A DiffusionAD training sample runs the denoiser twice (x_ts and x_tb)
and the segmenter once, forward and backward (~3x forward): ~3.6 TFLOP per image.
A T4 peaks at 65 TFLOPS in fp16; U-Net training reaches perhaps 10-25 % of that, so
~0.2-0.55 s per image. The tensors kept for the backward pass are ~7 GB per image in float32
(counted the same way), ~4 GB under fp16 autocast; with the weights, gradients and Adam state
(~2.6 GB) a 15 GB T4 holds batch 2 with a margin (batch 3-4 would be at the limit, the official
code's users report batch 3-4 in 24 GB at fp32). 2,000 steps of batch 2 are then ~15-40 min,
which leaves room in an hour for the data, validation and evaluation. An estimate: notebook 06
times ten steps on the actual card and prints the expected training time before it trains.

Measured since on a GPU (results/gpu.json: an H200, bf16 autocast, batch 16, peak
torch.cuda.max_memory_allocated): 48.3 GB without gradient checkpointing, about 3 GB per image,
and 18.6 GB with it, about 1 GB per image. fp16 activations take as much room as bf16 ones, so
the estimate's margin for batch 2 on a T4 holds; with TrainConfig(gradient_checkpointing=True)
the same card would hold a batch several times larger, at about a third more time per step.
"""


def get_profile(name: str | None = None) -> str:
    """Return the active profile: ``name`` if given, else ``$DAP_PROFILE``, else the default.

    The default is :func:`default_profile`.

    Raises
    ------
    ConfigError
        If the profile is not one of :data:`PROFILES`.
    """
    if name is None:
        name = os.environ.get(PROFILE_ENV, "").strip() or None
    if name is None:
        return default_profile()
    name = name.strip().lower()
    if name not in PROFILES:
        raise ConfigError(
            f"Unknown profile {name!r} (from {PROFILE_ENV} or the profile argument). "
            f"Valid profiles: {', '.join(PROFILES)}. Example: {PROFILE_ENV}=ci make test"
        )
    return name


def default_profile(on_colab: bool | None = None, cuda: bool | None = None) -> str:
    """The profile used when none is named: ``colab`` on Colab with a GPU, else ``full`` with a
    GPU, else ``cpu``.

    ``on_colab`` (default: ``google.colab`` is imported, as it is in every Colab kernel) and
    ``cuda`` (default: ``torch.cuda.is_available()``) are parameters so the rule can be tested.
    A Colab session without a GPU gets ``cpu``: the notebooks then run as on a laptop.
    """
    if on_colab is None:
        import sys

        on_colab = "google.colab" in sys.modules
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return "colab" if on_colab else "full"
    return "cpu"


def profile(name: str | None = None) -> Profile:
    """The :class:`Profile` of the active (or named) profile."""
    return TABLE[get_profile(name)]


__all__ = ["PROFILES", "PROFILE_ENV", "Profile", "TABLE", "COLAB_SIZING", "get_profile",
           "default_profile", "profile"]
