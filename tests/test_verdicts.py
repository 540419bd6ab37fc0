"""The notebooks' verdict rules (dap.analysis.verdicts) and the residual fraction, on small
made-up numbers whose answer is known by hand."""

import numpy as np
import pytest
import torch

from dap.analysis import RepairSweep, remaining_fraction, repair_errors, residual_fraction
from dap.analysis.iterative import IterativeSweep
from dap.analysis.verdicts import (norm_guidance_across, norm_guidance_verdict, observation_one,
                                   observation_two)


def _sweep(ddpm_median: list[float], ts=(50, 200, 400, 600), seconds_ddpm=None) -> IterativeSweep:
    """A sweep over two images whose per-image MSEs straddle the given medians (+-10 %)."""
    med = np.asarray(ddpm_median, dtype=float)
    per_image = np.stack([med * 0.9, med * 1.1], axis=1)          # (T, 2); median = med
    ts = np.asarray(ts)
    evals = {"one_step": np.ones(len(ts), int), "ddpm": ts + 1, "ddim10": np.full(len(ts), 10)}
    secs = {"one_step": np.full(len(ts), 0.01),
            "ddpm": np.asarray(seconds_ddpm if seconds_ddpm is not None else (ts + 1) * 0.01),
            "ddim10": np.full(len(ts), 0.1)}
    return IterativeSweep(ts, ("one_step", "ddpm", "ddim10"),
                          {"ddpm": per_image, "ddim10": per_image / 2},
                          {}, evals, secs)


def test_observation_one_agrees_when_both_parts_hold():
    v = observation_one(_sweep([0.001, 0.01, 0.02, 0.2]), image_variance=0.05, ddim="ddim10")
    # growth: mean(t >= 500) / mean(t <= 400) = 0.2 / (0.031 / 3)
    assert v.facts["growth"] == pytest.approx(0.2 / (0.031 / 3))
    assert v.facts["monotone"] and v.facts["low_at_400"] and v.verdict == "agrees"
    assert v.facts["evals_at_400"] == 401
    assert v.facts["speedup"] == pytest.approx(401 * 0.01 / 0.01)
    assert "Observation I: agrees on this run" in str(v)
    assert "MSE(one-step, ddim10) = 0.0100" in str(v)          # half of DDPM's 0.02 at t = 400


def test_observation_one_partly_when_high_at_400():
    v = observation_one(_sweep([0.001, 0.01, 0.1, 0.9]), image_variance=0.05)
    assert v.facts["grows"] and not v.facts["low_at_400"] and v.verdict == "partly agrees"


def test_observation_one_not_monotone_and_high_does_not_agree():
    v = observation_one(_sweep([0.2, 0.1, 0.3, 0.25]), image_variance=0.05)
    assert not v.facts["monotone"] and v.verdict == "does not agree"


def test_observation_one_needs_400_in_the_grid():
    with pytest.raises(KeyError, match="400"):
        observation_one(_sweep([0.1, 0.2, 0.3], ts=(50, 300, 600)), image_variance=0.05)


def test_observation_two_three_outcomes():
    ts = [100, 200, 300, 400]
    small, large = np.array([True, True, False, False]), np.array([False, False, True, True])
    groups = {"small": small, "large": large}
    #  residual (T, N): small images drop below 0.5 at t = 200, large ones at 400
    res = np.array([[0.8, 0.9, 1.0, 1.0], [0.3, 0.4, 0.9, 0.9], [0.2, 0.2, 0.6, 0.7],
                    [0.1, 0.1, 0.3, 0.4]])
    v = observation_two(ts, res, groups, 200, 400, 0.5)
    assert v.facts["repaired_from"] == {"small": 200, "large": 400} and v.verdict == "agrees"
    # both groups only at 400: large is not later than small
    v = observation_two(ts, np.maximum(res, [[0], [0.6], [0.6], [0]]), groups, 200, 400, 0.5)
    assert v.facts["repaired_from"] == {"small": 400, "large": 400}
    assert v.verdict == "does not agree"
    # small at 100, large at 300: ordered but not the paper's steps
    res2 = np.array([[0.3, 0.3, 0.9, 0.9], [0.2, 0.2, 0.6, 0.6], [0.1, 0.1, 0.4, 0.4],
                     [0.1, 0.1, 0.3, 0.3]])
    v = observation_two(ts, res2, groups, 150, 250, 0.5)
    assert v.facts["repaired_from"] == {"small": 100, "large": 300}
    assert v.verdict == "partly agrees"
    with pytest.raises(ValueError, match="two masks"):
        observation_two(ts, res, {"all": small | large}, 200, 400, 0.5)


def test_norm_guidance_verdict_counts_wins_and_the_standard_error():
    ws = [0.0, 0.5, 1.0]
    metrics = {"image_auroc": np.array([0.80, 0.85, 0.90]),
               "pixel_auroc": np.array([0.9, 0.9, 0.95]), "pixel_ap": np.array([0.5, 0.5, 0.4])}
    v = norm_guidance_verdict(ws, metrics, n_defective=30, n_normal=30)
    assert v.facts["gains"]["image_auroc"] == pytest.approx(0.10)
    assert v.verdict.startswith("partly agrees")                      # two wins of three
    # Hanley-McNeil at A = 0.9, 30 + 30 images, computed by hand
    a, q1, q2 = 0.9, 0.9 / 1.1, 2 * 0.81 / 1.9
    se = np.sqrt((a * (1 - a) + 29 * (q1 - a * a) + 29 * (q2 - a * a)) / 900)
    assert v.facts["image_auroc_se"] == pytest.approx(se)
    assert "not measurable" not in v.verdict                          # 0.10 > se ~ 0.04
    small = {k: np.array([m[0], m[1], m[0] + 0.001]) for k, m in metrics.items()}
    v = norm_guidance_verdict(ws, small, 30, 30)
    assert v.verdict == "agrees (the image AUROC difference is below one standard error: " \
                        "not measurable here)"
    with pytest.raises(ValueError, match="contain 0 and 1"):
        norm_guidance_verdict([0.0, 2.0], metrics, 30, 30)


def test_residual_fraction_does_not_call_a_uniformly_bad_reconstruction_repaired():
    clean = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1                                             # 4 of 16 pixels
    defect = clean.clone()
    defect[..., :2, :2] = 0.8                                         # strength 0.8 (mae)
    uniform = clean + 0.6                                             # bad everywhere
    perfect, copied = clean.clone(), defect.clone()
    (strength,), _ = repair_errors(defect, clean, mask)
    assert strength == pytest.approx(0.8)
    for recon, remaining, residual in ((uniform, 0.0, 0.75), (perfect, 0.0, 0.0),
                                       (copied, 1.0, 1.0)):
        (inside,), (outside,) = repair_errors(recon, clean, mask)
        assert remaining_fraction(inside, outside, strength) == pytest.approx(remaining)
        assert residual_fraction(inside, strength) == pytest.approx(residual)
    # a region reconstructed better than its surroundings: negative remaining, residual >= 0
    better = clean + 0.2
    better[..., :2, :2] = 0.1
    (inside,), (outside,) = repair_errors(better, clean, mask)
    assert remaining_fraction(inside, outside, strength) == pytest.approx((0.1 - 0.2) / 0.8)
    assert residual_fraction(inside, strength) == pytest.approx(0.1 / 0.8)
    sweep = RepairSweep(np.array([100]), np.array([[inside]]), np.array([[outside]]),
                        np.array([strength]))
    assert sweep.residual == pytest.approx(sweep.remaining + outside / strength)


def test_norm_guidance_across_categories_means_gains_with_their_standard_error():
    ws = [0.0, 1.0]

    def cat(i0, i1, p0, p1):
        return ws, {"image_auroc": np.array([i0, i1]), "pixel_auroc": np.array([p0, p1]),
                    "pixel_ap": np.array([0.5, 0.5])}, 30, 30

    # image AUROC gains +0.02, +0.04, +0.06: mean 0.04, sd 0.02, SE 0.02 / sqrt(3)
    v = norm_guidance_across({"a": cat(0.80, 0.82, 0.9, 0.8), "b": cat(0.80, 0.84, 0.9, 0.8),
                              "c": cat(0.80, 0.86, 0.9, 0.8)})
    assert v.facts["mean_gain"]["image_auroc"] == pytest.approx(0.04)
    assert v.facts["sem_gain"]["image_auroc"] == pytest.approx(0.02 / np.sqrt(3))
    assert v.facts["mean_gain"]["pixel_auroc"] == pytest.approx(-0.1)
    assert v.verdict == "partly agrees"        # image AUROC up; pixel AUROC down; AP flat
    # gains +0.01, -0.01: mean 0 < SE -> not measurable
    v = norm_guidance_across({"a": cat(0.8, 0.81, 0.8, 0.7), "b": cat(0.8, 0.79, 0.8, 0.7)})
    assert v.verdict.startswith("does not agree") and "not measurable" in v.verdict
    with pytest.raises(ValueError, match="two categories"):
        norm_guidance_across({"a": cat(0.8, 0.9, 0.8, 0.9)})
