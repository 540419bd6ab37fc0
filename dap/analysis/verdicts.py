"""The rules by which notebooks 02-04 compare a measurement with a claim of the paper.

Each function takes what a sweep measured, applies one explicit rule fixed before the run, and
returns a :class:`Verdict`: ``agrees``, ``partly agrees`` or ``does not agree``, the facts the
rule looked at, and the lines a notebook prints. Keeping the rules here (instead of in ~25-line
notebook cells) means they are read once, tested on small made-up numbers
(``tests/test_verdicts.py``), and the same on every run.

* :func:`observation_one` -- DiffusionAD Sec. III-B, Fig. 4
  (``notebooks/02_one_step_vs_iterative``);
* :func:`observation_two` -- Sec. III-C (``notebooks/03_noise_scales``);
* :func:`norm_guidance_verdict` -- eqs. 7-8, the w ablation (``notebooks/04_norm_guidance``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from dap.analysis.iterative import IterativeSweep
from dap.analysis.repair import first_t_below
from dap.analysis.stats import auroc_standard_error, median_iqr

VERDICTS: tuple[str, ...] = ("agrees", "partly agrees", "does not agree")


@dataclass(frozen=True)
class Verdict:
    """A claim checked by a rule: the verdict, the facts it rests on, the lines to print."""

    claim: str
    verdict: str
    facts: dict[str, Any] = field(default_factory=dict)
    lines: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "\n".join([*self.lines, f"{self.claim}: {self.verdict} on this run"])


def _grade(holds: Sequence[bool]) -> str:
    """``agrees`` when every part holds, ``partly agrees`` when some do, else ``does not agree``."""
    return VERDICTS[0] if all(holds) else VERDICTS[1] if any(holds) else VERDICTS[2]


def observation_one(sweep: IterativeSweep, image_variance: float, ddim: str | None = None,
                    low_until: int = 400, high_from: int = 500) -> Verdict:
    """Observation I (Fig. 4): MSE(one-step, DDPM) is low up to t = 400 and grows after 500.

    Rule, two parts on the median over images of MSE(one-step, DDPM) at each t of the grid:

    1. *grows*: it increases at every step of the grid, and its mean over t >= ``high_from`` is
       at least twice its mean over t <= ``low_until``;
    2. *low up to 400*: at t = ``low_until`` it is below ``image_variance`` (the MSE a flat
       image at the mean would have: the test images' own pixel variance, in [-1, 1] units).

    ``agrees`` when both hold, ``partly agrees`` when one does.

    Parameters
    ----------
    sweep : IterativeSweep with ``"ddpm"``; its grid must contain ``low_until``
    image_variance : float, e.g. the median over images of ``images.var(dim=(1, 2, 3))``
    ddim : name of a DDIM reconstruction (``"ddim30"``) to print beside DDPM, optional
    """
    ts = np.asarray(sweep.ts)
    ddpm = median_iqr(sweep.mse_to_one_step["ddpm"]).median
    low, high = ddpm[ts <= low_until], ddpm[ts >= high_from]
    i_low = sweep.index(low_until)
    growth = float(high.mean() / low.mean()) if len(low) and len(high) else float("nan")
    monotone = bool(np.all(np.diff(ddpm) >= 0))
    low_there = bool(ddpm[i_low] < image_variance)
    grows = bool(growth >= 2 and monotone)
    lines = []
    other = median_iqr(sweep.mse_to_one_step[ddim]).median if ddim else None
    for i, t in enumerate(ts):
        line = (f"t = {t:3d}: median MSE(one-step, DDPM) = {ddpm[i]:.4f} "
                f"({ddpm[i] / image_variance:6.1%} of the image variance)")
        if other is not None:
            line += f";  MSE(one-step, {ddim}) = {other[i]:.4f}"
        lines.append(line)
    lines.append(f"mean over t <= {low_until}: {low.mean():.4f}; over t >= {high_from}: "
                 f"{high.mean():.4f} (x{growth:.1f}); increasing at every step: {monotone}")
    evals = int(sweep.evals_per_image["ddpm"][i_low])
    speedup = float(sweep.seconds_per_image["ddpm"][i_low] /
                    sweep.seconds_per_image["one_step"][i_low])
    lines.append(f"cost at t = {low_until}: DDPM {evals} evaluations per image against 1; "
                 f"measured {speedup:.0f}x slower than one step")
    lines.append(f"grows after {low_until}: {grows}; still low at t = {low_until}: {low_there}")
    return Verdict("Observation I", _grade([grows, low_there]),
                   {"growth": growth, "monotone": monotone, "grows": grows,
                    "low_at_400": low_there, "evals_at_400": evals, "speedup": speedup},
                   tuple(lines))


def observation_two(ts: Sequence[int], residual: np.ndarray, groups: Mapping[str, np.ndarray],
                    t_s: int, t_b: int, repaired_below: float) -> Verdict:
    """Observation II: small defects are repaired from t_s, large ones only from t_b.

    A group counts as *repaired from t* at the first t of the grid where the median over its
    images of ``residual`` is <= ``repaired_below`` (:func:`dap.analysis.first_t_below`).
    Rule: ``agrees`` when the small group is repaired by t_s and the large one after t_s but by
    t_b; ``partly agrees`` when the large group needs a larger t than the small one (or is
    never repaired while the small one is), but the steps differ from t_s / t_b; else
    ``does not agree``.

    Parameters
    ----------
    ts : the grid, ``(T,)``
    residual : ``(T, N)``, e.g. :attr:`dap.analysis.RepairSweep.residual`
    groups : two boolean masks over the N images, small first, then large (name -> mask)
    t_s, t_b : the paper's steps (200, 400)
    repaired_below : the threshold, fixed before the run
    """
    if len(groups) != 2:
        raise ValueError(f"groups must be two masks (small, large), got {len(groups)}")
    reps = {name: first_t_below(ts, np.asarray(residual)[:, np.asarray(g)], repaired_below)
            for name, g in groups.items()}
    t_small, t_large = reps.values()
    small_ok = t_small is not None and t_small <= t_s
    large_ok = t_large is not None and t_s < t_large <= t_b
    ordered = t_small is not None and (t_large is None or t_large > t_small)
    verdict = VERDICTS[0] if small_ok and large_ok else VERDICTS[1] if ordered else VERDICTS[2]
    lines = tuple(f"{name}: repaired (median residual <= {repaired_below:.0%}) from t = {t}"
                  for name, t in reps.items())
    return Verdict("Observation II", verdict,
                   {"repaired_from": reps, "small_by_t_s": small_ok, "large_by_t_b": large_ok,
                    "ordered": ordered}, lines)


def norm_guidance_verdict(ws: Sequence[float], metrics: Mapping[str, np.ndarray],
                          n_defective: int, n_normal: int,
                          names: Sequence[str] = ("image_auroc", "pixel_auroc", "pixel_ap")
                          ) -> Verdict:
    """Norm guidance (w = 1) against one-step reconstruction from t_s (w = 0).

    Rule: ``agrees`` when w = 1 beats w = 0 on all of ``names``, ``partly agrees`` on some,
    ``does not agree`` on none. When the image AUROC difference is below one Hanley-McNeil
    standard error for this test set (:func:`dap.analysis.auroc_standard_error`) the verdict
    says so: such a difference is not measurable here.

    Parameters
    ----------
    ws : the guidance weights swept; must contain 0 and 1
    metrics : name -> ``(W,)`` values at each w (``GuidanceSweep.metrics``)
    n_defective, n_normal : the test set's class sizes
    """
    ws = [float(w) for w in ws]
    if 0.0 not in ws or 1.0 not in ws:
        raise ValueError(f"the w grid must contain 0 and 1, got {ws}")
    i0, i1 = ws.index(0.0), ws.index(1.0)
    gains = {k: float(metrics[k][i1] - metrics[k][i0]) for k in names}
    lines = []
    for k in names:
        best = int(np.argmax(metrics[k]))
        lines.append(f"{k:>12}: w=0 {metrics[k][i0]:.3f}  w=1 {metrics[k][i1]:.3f} "
                     f"(gain {gains[k]:+.3f}); best on the grid w = {ws[best]:g} "
                     f"({metrics[k][best]:.3f})")
    facts: dict[str, Any] = {"gains": gains}
    verdict = _grade([g > 0 for g in gains.values()])
    if "image_auroc" in gains:
        se = auroc_standard_error(metrics["image_auroc"][i1], n_defective, n_normal)
        facts["image_auroc_se"] = se
        lines.append(f"image AUROC standard error on {n_defective + n_normal} images "
                     f"(Hanley-McNeil): {se:.3f}; the w=0 vs w=1 difference is "
                     + (f"{abs(gains['image_auroc']) / se:.1f} standard errors" if se > 0
                        else "not comparable (a standard error of 0)"))
        if abs(gains["image_auroc"]) < se:
            verdict += " (the image AUROC difference is below one standard error: not " \
                       "measurable here)"
    return Verdict("norm guidance (w = 1 vs w = 0)", verdict, facts, tuple(lines))


def norm_guidance_across(results: Mapping[str, tuple[Sequence[float], Mapping[str, np.ndarray],
                                                     int, int]],
                         names: Sequence[str] = ("image_auroc", "pixel_auroc", "pixel_ap")
                         ) -> Verdict:
    """Norm guidance (w = 1) against w = 0 on several categories, with standard errors.

    ``results``: category -> (ws, metrics, n_defective, n_normal), one
    :func:`norm_guidance_verdict` input per category (each its own model and test set).

    Per category the gain of each metric, w = 1 minus w = 0, and the Hanley-McNeil standard
    error of the image AUROC at w = 1. Over the C categories the mean gain and its standard
    error from the spread of the categories' gains, sd / sqrt(C) (sample sd, C - 1 in the
    denominator). Rule: ``agrees`` when the mean gain is positive on all of ``names``,
    ``partly agrees`` on some, ``does not agree`` on none; when the mean image AUROC gain is
    smaller than its standard error, the verdict says it is not measurable here.
    """
    if len(results) < 2:
        raise ValueError(f"need at least two categories, got {list(results)}")
    gains: dict[str, list[float]] = {k: [] for k in names}
    lines = [f"{'category':>10}  " + "  ".join(f"{k + ' w=0 -> w=1':>26}" for k in names)
             + "  image AUROC SE"]
    for cat, (ws, metrics, n_def, n_norm) in results.items():
        ws = [float(w) for w in ws]
        if 0.0 not in ws or 1.0 not in ws:
            raise ValueError(f"{cat}: the w grid must contain 0 and 1, got {ws}")
        i0, i1 = ws.index(0.0), ws.index(1.0)
        cells = []
        for k in names:
            g = float(metrics[k][i1] - metrics[k][i0])
            gains[k].append(g)
            cells.append(f"{metrics[k][i0]:.3f} -> {metrics[k][i1]:.3f} ({g:+.3f})")
        se = auroc_standard_error(metrics["image_auroc"][i1], n_def, n_norm) \
            if "image_auroc" in metrics else float("nan")
        lines.append(f"{cat:>10}  " + "  ".join(f"{c:>26}" for c in cells) + f"  {se:.3f}")
    c = len(results)
    # mean gain over categories and its standard error sd / sqrt(C)
    mean = {k: float(np.mean(v)) for k, v in gains.items()}
    sem = {k: float(np.std(v, ddof=1) / np.sqrt(c)) for k, v in gains.items()}
    lines.append(f"{'mean':>10}  " + "  ".join(f"{f'gain {mean[k]:+.3f} +- {sem[k]:.3f}':>26}"
                                              for k in names))
    verdict = _grade([mean[k] > 0 for k in names])
    if "image_auroc" in mean and abs(mean["image_auroc"]) < sem["image_auroc"]:
        verdict += " (the mean image AUROC gain is below its standard error: not measurable here)"
    return Verdict(f"norm guidance (w = 1 vs w = 0) on {c} categories", verdict,
                   {"gains": gains, "mean_gain": mean, "sem_gain": sem}, tuple(lines))


__all__ = ["VERDICTS", "Verdict", "observation_one", "observation_two", "norm_guidance_verdict",
           "norm_guidance_across"]
