"""Focal, smooth L1 and masked noise losses against float64 closed forms written out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dap.losses import focal_loss, masked_noise_loss, smooth_l1_loss
from dap.methods.diffusionad.ops import joint_noise_loss, mask_loss


def _focal_by_hand(p: float, y: int, alpha: float, gamma: float) -> float:
    """FL = -alpha_t (1 - p_t)^gamma log p_t for one pixel (Lin et al. 2017)."""
    p_t = p if y == 1 else 1.0 - p
    alpha_t = alpha if y == 1 else 1.0 - alpha
    return -alpha_t * (1.0 - p_t) ** gamma * math.log(p_t)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# --------------------------------------------------------------------------------------------
# Focal loss
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p, y, alpha, gamma", [
    (0.8, 1, 0.5, 4.0),
    (0.3, 0, 0.5, 4.0),
    (0.05, 1, 0.25, 2.0),
    (0.9, 0, 0.25, 2.0),
    (0.5, 1, 0.5, 0.0),
])
def test_focal_scalar_closed_form(p, y, alpha, gamma):
    expected = _focal_by_hand(p, y, alpha, gamma)
    target = torch.tensor([float(y)])
    got_p = focal_loss(torch.tensor([p]), target, alpha, gamma, from_logits=False)
    got_z = focal_loss(torch.tensor([_logit(p)]), target, alpha, gamma, from_logits=True)
    assert got_p.item() == pytest.approx(expected, rel=1e-5)
    assert got_z.item() == pytest.approx(expected, rel=1e-5)


def test_focal_random_tensor_closed_form():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) * 3
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.7).double()
    p = torch.sigmoid(logits)
    terms = [_focal_by_hand(pi, int(yi), 0.5, 4.0) for pi, yi in zip(p.flatten().tolist(),
                                                                     target.flatten().tolist())]
    expected = sum(terms) / len(terms)
    got_z = focal_loss(logits.float(), target.float(), from_logits=True)
    got_p = focal_loss(p.float(), target.float(), from_logits=False)
    assert got_z.dtype == torch.float32
    assert got_z.item() == pytest.approx(expected, rel=1e-4)
    assert got_p.item() == pytest.approx(expected, rel=1e-4)


def test_focal_soft_targets_follow_the_official_form():
    # official: alpha * (1 - exp(-BCE))^gamma * BCE, mean (alpha = 0.5 for both classes)
    g = torch.Generator().manual_seed(2)
    p = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    y = torch.rand(64, generator=g, dtype=torch.float64)
    bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    expected = (0.5 * (1 - torch.exp(-bce)) ** 4 * bce).mean().item()
    assert focal_loss(p.float(), y.float(), from_logits=False).item() == pytest.approx(expected,
                                                                                       rel=1e-4)


def test_focal_with_gamma_zero_is_half_bce():
    g = torch.Generator().manual_seed(3)
    p = torch.rand(4, 1, 16, 16, generator=g) * 0.98 + 0.01
    y = (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float()
    bce = F.binary_cross_entropy(p, y)
    torch.testing.assert_close(focal_loss(p, y, alpha=0.5, gamma=0.0, from_logits=False),
                               0.5 * bce, rtol=1e-5, atol=1e-7)


def test_focal_is_stable_on_saturated_logits():
    z = torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0], requires_grad=True)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    loss = focal_loss(z, y, from_logits=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # the confidently wrong pixels (logit -200 for y = 1, +200 for y = 0) dominate: ~0.5 * 200
    assert loss.item() == pytest.approx((0.5 * 200 + 0.5 * 30 + 0.5 * 0.5**4 * math.log(2)
                                         + 0.5 * 30 + 0.5 * 200) / 5, rel=1e-3)


def test_focal_requires_from_logits():
    with pytest.raises(TypeError):
        focal_loss(torch.zeros(1), torch.zeros(1))  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------------
# Smooth L1
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d, expected", [(0.0, 0.0), (0.5, 0.125), (-0.9, 0.405), (2.0, 1.5),
                                         (-3.0, 2.5)])
def test_smooth_l1_scalar_closed_form(d, expected):
    got = smooth_l1_loss(torch.tensor([d]), torch.tensor([0.0]))
    assert got.item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_smooth_l1_random_tensor_closed_form():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2
    b = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    terms = []
    for x, y in zip(a.flatten().tolist(), b.flatten().tolist()):
        d = abs(x - y)
        terms.append(0.5 * d * d if d < 1.0 else d - 0.5)
    expected = sum(terms) / len(terms)
    assert smooth_l1_loss(a.float(), b.float()).item() == pytest.approx(expected, rel=1e-5)
    # on logits the sigmoid comes first
    assert smooth_l1_loss(a.float(), b.float(), from_logits=True).item() == pytest.approx(
        smooth_l1_loss(torch.sigmoid(a).float(), b.float()).item(), rel=1e-6)


def test_mask_loss_is_smooth_l1_plus_five_focal():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 1, 8, 8, generator=g)
    y = (torch.rand(2, 1, 8, 8, generator=g) > 0.8).float()
    out = mask_loss(z, y)          # DiffusionAD's L_mask (dap.methods.diffusionad.ops)
    torch.testing.assert_close(out.smooth_l1, smooth_l1_loss(torch.sigmoid(z), y))
    torch.testing.assert_close(out.focal, focal_loss(z, y, alpha=0.5, gamma=4.0, from_logits=True))
    torch.testing.assert_close(out.total, out.smooth_l1 + 5 * out.focal)
    # the focal term from logits agrees with the official probability path away from saturation
    probs_total = (smooth_l1_loss(torch.sigmoid(z), y)
                   + 5 * focal_loss(torch.sigmoid(z), y, from_logits=False))
    torch.testing.assert_close(probs_total, out.total, rtol=1e-4, atol=1e-6)


def test_joint_noise_loss_is_the_mean_of_the_two_scales_over_normal_samples():
    g = torch.Generator().manual_seed(6)
    e = [torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    normal = torch.tensor([True, False, True])
    # float64 reference: per-sample MSE of each scale, mean over normal samples, halved sum
    ref = sum(((e[0][i] - e[1][i]) ** 2).mean() + ((e[2][i] - e[3][i]) ** 2).mean()
              for i in (0, 2)) / 2 / 2
    torch.testing.assert_close(joint_noise_loss(e[0], e[1], e[2], e[3], normal), ref)
    assert joint_noise_loss(e[0], e[1], e[2], e[3], torch.zeros(3, dtype=torch.bool)) == 0


# --------------------------------------------------------------------------------------------
# Masked noise loss
# --------------------------------------------------------------------------------------------
def test_masked_noise_loss_equals_mse_when_all_normal():
    g = torch.Generator().manual_seed(6)
    pred, true = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    got = masked_noise_loss(pred, true, torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(got, F.mse_loss(pred, true))


def test_masked_noise_loss_averages_normal_samples_only():
    g = torch.Generator().manual_seed(7)
    pred, true = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    normal = torch.tensor([1, 0, 1, 0])
    pred[1] = float("nan")  # an anomalous sample's garbage must not leak in
    got = masked_noise_loss(pred, true, normal)
    expected = F.mse_loss(pred[[0, 2]].double(), true[[0, 2]].double()).item()
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(got, masked_noise_loss(pred, true, normal.bool()))


def test_masked_noise_loss_all_anomalous_is_exactly_zero_with_finite_grads():
    pred = torch.randn(3, 3, 8, 8, requires_grad=True)
    loss = masked_noise_loss(pred, torch.randn(3, 3, 8, 8), torch.zeros(3))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.requires_grad
    loss.backward()
    assert torch.isfinite(pred.grad).all() and torch.equal(pred.grad, torch.zeros_like(pred))


def test_two_scales_average_equals_concatenated_batch():
    g = torch.Generator().manual_seed(8)
    ps, ts, pb, tb = (torch.randn(4, 3, 4, 4, generator=g) for _ in range(4))
    normal = torch.tensor([True, False, True, True])
    paper = (masked_noise_loss(ps, ts, normal) + masked_noise_loss(pb, tb, normal)) / 2
    joint = masked_noise_loss(torch.cat([ps, pb]), torch.cat([ts, tb]), torch.cat([normal, normal]))
    torch.testing.assert_close(paper, joint)


def test_masked_noise_loss_checks_shapes():
    with pytest.raises(ValueError, match="entries"):
        masked_noise_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.ones(3))
    with pytest.raises(ValueError, match="shape"):
        masked_noise_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5), torch.ones(2))
