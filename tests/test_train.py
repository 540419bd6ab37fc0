"""The training loop: determinism, exact resume, atomic checkpoints, config checks, DDP."""

import os
import socket

import pytest
import torch
from torch import nn

from dap.config import ConfigError
from dap.methods.base import AnomalyMethod, Prediction
from dap.engine.checkpoint import check_same_config, load_checkpoint, save_checkpoint
from dap.engine.train import TrainConfig, TrainData, TrainingDiverged, train


class TinyMethod(AnomalyMethod):
    """A linear 'denoiser' with dropout: the loss uses the step generator and the global RNG."""

    name = "tiny"

    def __init__(self, width: int = 4):
        super().__init__()
        self.width = width
        self.conv = nn.Conv2d(3, 3, 1)
        self.drop = nn.Dropout(0.2)

    def config_dict(self):
        return {"width": self.width}

    def forward(self, batch, generator=None):
        x = batch.images
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        loss = ((self.drop(self.conv(x + noise)) - x) ** 2).mean()
        return {"loss": loss}

    @torch.no_grad()
    def predict(self, images):
        m = (self.conv(images) - images).abs().mean(1)
        return Prediction(m, m.flatten(1).amax(1), images)


def _data(n=10, size=8):
    g = torch.Generator().manual_seed(0)
    return TrainData(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8))


def _cfg(**kw):
    base = dict(steps=8, batch_size=3, lr=1e-2, val_every=4, log_every=1, select_metric="val_mean")
    base.update(kw)
    return TrainConfig(**base)


def _validate(m):
    return {"val_mean": -float(sum(p.detach().abs().sum() for p in m.parameters()))}


def test_index_stream_is_a_pure_function_and_covers_every_image():
    d = _data(10)
    a = torch.cat([d.indices(s, 5, seed=3) for s in range(2)])
    assert sorted(a.tolist()) == list(range(10))  # one epoch = a permutation
    assert torch.equal(d.indices(7, 5, seed=3), d.indices(7, 5, seed=3))
    r0, r1 = d.indices(0, 2, 3, rank=0, world=2), d.indices(0, 2, 3, rank=1, world=2)
    assert torch.equal(torch.cat([r0, r1]), d.indices(0, 4, 3))


def test_same_seed_same_losses(tmp_path):
    torch.manual_seed(0)
    a = train(TinyMethod(), _data(), _cfg(), progress=False)
    torch.manual_seed(0)
    b = train(TinyMethod(), _data(), _cfg(), progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_interrupted_and_resumed_run_reproduces_the_losses(tmp_path):
    torch.manual_seed(0)
    full = train(TinyMethod(), _data(), _cfg(), tmp_path / "full", validate=_validate,
                 progress=False)
    torch.manual_seed(0)
    part = train(TinyMethod(), _data(), _cfg(), tmp_path / "cut", validate=_validate,
                 stop_after=5, progress=False)
    assert len(part.history) == 5
    torch.manual_seed(123)  # a different process state: resume must not depend on it
    rest = train(TinyMethod(), _data(), _cfg(), tmp_path / "cut", validate=_validate,
                 progress=False)
    assert [h["loss"] for h in rest.history] == [h["loss"] for h in full.history]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_contents_and_selection(tmp_path):
    res = train(TinyMethod(), _data(), _cfg(), tmp_path, validate=_validate, progress=False)
    ck = load_checkpoint(tmp_path / "last.pt")
    for key in ("method_config", "train_config", "git_commit", "step", "metrics", "model",
                "optimizer", "history"):
        assert key in ck
    assert ck["step"] == 8 and len(res.validations) == 2
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["metrics"]["val_mean"] == max(v["val_mean"] for v in res.validations)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_resume_with_another_config_is_a_clear_error(tmp_path):
    train(TinyMethod(), _data(), _cfg(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="another config"):
        train(TinyMethod(width=5), _data(), _cfg(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="another TrainConfig"):
        train(TinyMethod(), _data(), _cfg(lr=1e-3), tmp_path, progress=False)


def test_resume_ignores_the_memory_layout(tmp_path):
    """channels_last (now None = by device) changes rounding only: a run saved with an explicit
    layout resumes under the default."""
    train(TinyMethod(), _data(), _cfg(channels_last=True), tmp_path, stop_after=4, progress=False)
    rest = train(TinyMethod(), _data(), _cfg(), tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 8 and len(rest.history) == 8


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable dap checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "other.pt", {"format": "something-else"})
    with pytest.raises(ValueError, match="not a dap checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="holds a 'a' model"):
        check_same_config({"method": "a", "method_config": {}}, "b", {}, "x.pt")


def test_nan_loss_stops_with_advice():
    class Broken(TinyMethod):
        def forward(self, batch, generator=None):
            return {"loss": self.conv.weight.sum() * float("nan")}

    with pytest.raises(TrainingDiverged, match="grad_clip"):
        train(Broken(), _data(), _cfg(steps=2), progress=False)


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="CUDA"):
        train(TinyMethod(), _data(), _cfg(amp="fp16"), progress=False)


# --------------------------------------------------------------------------------------------
# DDP with gloo on the CPU, 2 processes
# --------------------------------------------------------------------------------------------
class LinearMethod(AnomalyMethod):
    """Deterministic loss, mean over the batch: DDP(2 x B) must equal one process with 2B (in
    float32, amp="off": bf16 autocast rounds a batch of 2B and two of B differently)."""

    name = "linear"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def config_dict(self):
        return {}

    def forward(self, batch, generator=None):
        return {"loss": ((self.conv(batch.images) - batch.images.flip(1)) ** 2).mean()}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = LinearMethod()
        train(m, _data(12), _cfg(steps=4, batch_size=2, val_every=0, amp="off"), progress=False,
              device="cpu")
        torch.save({k: v.clone() for k, v in m.state_dict().items()}, f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one_process_with_the_global_batch(tmp_path):
    port = _free_port()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    single = LinearMethod()
    train(single, _data(12), _cfg(steps=4, batch_size=4, val_every=0, amp="off"),
          progress=False, device="cpu")
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6)
