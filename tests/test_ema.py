"""EMA of the weights in the training loop (TrainConfig.ema_decay)."""

import pytest
import torch

from dap.config import ConfigError
from dap.engine.checkpoint import load_checkpoint
from dap.engine.train import TrainConfig, ema_average, ema_decay_at, train
from tests.test_train import TinyMethod, _cfg, _data, _validate


def test_decay_warmup_is_the_tensorflow_rule():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)            # (1 + 0) / (10 + 0)
    assert ema_decay_at(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay_at(0.999, 10**6) == 0.999                     # capped by d
    assert ema_decay_at(0.9, 0, warmup=False) == 0.9


def test_average_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    seq = [torch.randn(5, generator=g) for _ in range(30)]
    avg = [seq[0].clone()]          # AveragedModel's first update copies the weights (n = 0)
    fn = ema_average(0.95)
    ref = seq[0].double().clone()
    for n, p in enumerate(seq[1:], start=1):
        fn(avg, [p], torch.tensor(n))
        d = min(0.95, (1 + n) / (10 + n))
        ref = d * ref + (1 - d) * p.double()
    torch.testing.assert_close(avg[0].double(), ref, rtol=0, atol=1e-6)


def _params(state):
    return torch.cat([v.flatten() for k, v in sorted(state.items()) if v.is_floating_point()])


def test_ema_weights_are_the_average_of_the_raw_trajectory(tmp_path):
    # the raw weights after every step (a run per length: training is deterministic)
    cfg = _cfg(steps=6, val_every=0, select_metric="last", ema_decay=0.5, ema_warmup=False)
    torch.manual_seed(0)
    res = train(TinyMethod(), _data(), cfg, tmp_path / "ema", validate=_validate, progress=False)
    ckpt = load_checkpoint(res.last_path)
    raw = []
    for k in range(7):
        torch.manual_seed(0)
        m = TinyMethod()
        if k:
            plain = TrainConfig(**{**cfg.__dict__, "ema_decay": None, "steps": k})
            train(m, _data(), plain, progress=False)
        raw.append(_params(m.state_dict()).double())
    ref = raw[1]                    # AveragedModel's first update copies the weights
    for w in raw[2:]:
        ref = 0.5 * ref + 0.5 * w
    torch.testing.assert_close(_params(ckpt["model"]).double(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(_params(ckpt["train_model"]).double(), raw[-1], rtol=0, atol=0)
    assert ckpt["ema_num_averaged"] == 6


def test_resumed_ema_run_is_exact(tmp_path):
    cfg = _cfg(ema_decay=0.9)
    torch.manual_seed(0)
    a = TinyMethod()
    full = train(a, _data(), cfg, tmp_path / "full", validate=_validate, progress=False)
    torch.manual_seed(0)
    train(TinyMethod(), _data(), cfg, tmp_path / "cut", validate=_validate, stop_after=5,
          progress=False)
    b = TinyMethod()
    cut = train(b, _data(), cfg, tmp_path / "cut", validate=_validate, progress=False)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in cut.history]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # the returned model and the selected checkpoint carry the averaged weights
    assert torch.equal(_params(a.state_dict()), _params(load_checkpoint(full.last_path)["model"]))
    assert full.validations == cut.validations


def test_validation_scores_the_averaged_weights(tmp_path):
    seen = []
    cfg = _cfg(ema_decay=0.9)

    def validate(m):
        seen.append(_params(m.state_dict()).clone())
        return _validate(m)

    torch.manual_seed(0)
    res = train(TinyMethod(), _data(), cfg, tmp_path / "v", validate=validate, progress=False)
    last = load_checkpoint(res.last_path)
    assert torch.equal(seen[-1], _params(last["model"]))
    assert not torch.equal(seen[-1], _params(last["train_model"]))


def test_resuming_a_plain_run_with_ema_is_refused(tmp_path):
    torch.manual_seed(0)
    train(TinyMethod(), _data(), _cfg(), tmp_path / "r", stop_after=3, progress=False)
    with pytest.raises(ConfigError, match="another TrainConfig"):
        train(TinyMethod(), _data(), _cfg(ema_decay=0.9), tmp_path / "r", progress=False)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, 1.5])
def test_bad_decay_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=bad)
