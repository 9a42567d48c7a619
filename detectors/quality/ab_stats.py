"""Two-sample tests behind the A/B comparison: one function per metric kind.

Each returns an :class:`ArmComparison` of treatment against control: the two
arms' values, the effect (treatment minus control), a standardised effect
size, a confidence interval of the effect and a two-sided p-value. They are
checked against scipy and statsmodels on the same data in
``tests/detectors/test_ab.py``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> c = mean_scores(rng.normal(0.5, 0.3, 200), rng.normal(0.3, 0.3, 200))
>>> round(c.effect, 3), c.p_value < 1e-6, c.test
(-0.231, True, 'mann-whitney')
>>> c = proportions(90, 100, 75, 100)
>>> round(c.effect, 2), round(c.p_value, 4)
(-0.15, 0.0052)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from llmpulse.detectors.bias.stats import newcombe_interval, welch_test

__all__ = [
    "ArmComparison",
    "bootstrap_quantile",
    "mean_scores",
    "mean_values",
    "proportions",
]


@dataclass(frozen=True, slots=True)
class ArmComparison:
    """Treatment against control for one metric."""

    control: float
    treatment: float
    effect: float
    """treatment - control, in the metric's unit."""
    effect_size: float
    """Standardised: rank-biserial (scores), Cohen's h (rates), Cohen's d
    (means), log ratio (quantiles)."""
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    n_control: int
    n_treatment: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}


def mean_scores(control: np.ndarray, treatment: np.ndarray, confidence: float = 0.95) -> ArmComparison:
    """Feedback scores: Mann-Whitney U test (two-sided, scipy's default
    method), the effect as the difference of means with Welch's interval,
    the effect size as the rank-biserial correlation (positive: treatment
    ranks higher)."""
    x = np.asarray(control, dtype=np.float64)
    y = np.asarray(treatment, dtype=np.float64)
    nx, ny = x.size, y.size
    if nx == 0 or ny == 0:
        return _empty("mann-whitney", nx, ny)
    if np.ptp(np.concatenate([x, y])) == 0:
        p = 1.0  # every score equal: no evidence either way (scipy returns NaN)
        u = nx * ny / 2.0
    else:
        res = stats.mannwhitneyu(y, x, alternative="two-sided")
        u, p = float(res.statistic), float(res.pvalue)
    _, lo, hi = welch_test(
        np.array([y.mean()]), np.array([_var(y)]), np.array([ny]),
        np.array([x.mean()]), np.array([_var(x)]), np.array([nx]), confidence,
    )
    return ArmComparison(
        float(x.mean()), float(y.mean()), float(y.mean() - x.mean()),
        2.0 * u / (nx * ny) - 1.0, float(lo[0]), float(hi[0]), p, "mann-whitney", nx, ny,
    )


def proportions(
    k_control: int, n_control: int, k_treatment: int, n_treatment: int, confidence: float = 0.95
) -> ArmComparison:
    """A rate (accuracy, hallucination): pooled two-proportion z-test (as
    ``statsmodels.stats.proportion.proportions_ztest``), Newcombe's
    interval of the difference, Cohen's h as the effect size."""
    if n_control == 0 or n_treatment == 0:
        return _empty("two-proportion-z", n_control, n_treatment)
    p1, p2 = k_control / n_control, k_treatment / n_treatment
    pooled = (k_control + k_treatment) / (n_control + n_treatment)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_control + 1.0 / n_treatment))
    p = 1.0 if se == 0 else float(2.0 * stats.norm.sf(abs(p2 - p1) / se))
    lo, hi = newcombe_interval(
        np.array([k_treatment]), np.array([n_treatment]),
        np.array([k_control]), np.array([n_control]), confidence,
    )
    h = 2.0 * math.asin(math.sqrt(p2)) - 2.0 * math.asin(math.sqrt(p1))
    return ArmComparison(p1, p2, p2 - p1, h, float(lo[0]), float(hi[0]), p,
                         "two-proportion-z", n_control, n_treatment)


def mean_values(control: np.ndarray, treatment: np.ndarray, confidence: float = 0.95) -> ArmComparison:
    """A per-request amount (cost): Welch's t-test, Cohen's d (pooled SD)."""
    x = np.asarray(control, dtype=np.float64)
    y = np.asarray(treatment, dtype=np.float64)
    nx, ny = x.size, y.size
    if nx < 2 or ny < 2:
        return _empty("welch-t", nx, ny)
    vx, vy = _var(x), _var(y)
    p, lo, hi = welch_test(
        np.array([y.mean()]), np.array([vy]), np.array([ny]),
        np.array([x.mean()]), np.array([vx]), np.array([nx]), confidence,
    )
    pooled = math.sqrt(((nx - 1) * vx + (ny - 1) * vy) / (nx + ny - 2))
    d = float((y.mean() - x.mean()) / pooled) if pooled > 0 else 0.0
    pv = float(p[0]) if not math.isnan(p[0]) else (1.0 if y.mean() == x.mean() else 0.0)
    return ArmComparison(float(x.mean()), float(y.mean()), float(y.mean() - x.mean()), d,
                         float(lo[0]), float(hi[0]), pv, "welch-t", nx, ny)


def bootstrap_quantile(
    control: np.ndarray,
    treatment: np.ndarray,
    rng: np.random.Generator,
    *,
    q: float = 0.95,
    resamples: int = 2000,
    confidence: float = 0.95,
) -> ArmComparison:
    """A quantile (latency p95): each arm resampled with replacement
    ``resamples`` times, independently; the percentile interval of the
    difference of quantiles, and the two-sided bootstrap p-value
    ``2 * min(P(d* <= 0), P(d* >= 0))`` (the smallest level at which the
    percentile interval excludes zero). The effect size is the log ratio.

    Quantiles are numpy's default (linear), as ``np.quantile``.

    >>> rng = np.random.default_rng(1)
    >>> x = rng.lognormal(6.4, 0.5, 300); y = x * 1.5
    >>> c = bootstrap_quantile(x, y, np.random.default_rng(7))
    >>> c.p_value < 0.05, c.ci_low > 0
    (True, True)
    """
    x = np.asarray(control, dtype=np.float64)
    y = np.asarray(treatment, dtype=np.float64)
    nx, ny = x.size, y.size
    if nx == 0 or ny == 0:
        return _empty("bootstrap", nx, ny)
    qx, qy = float(np.quantile(x, q)), float(np.quantile(y, q))
    diffs = np.empty(resamples)
    step = max(1, 4_000_000 // max(nx, ny))  # bound the resample matrix to ~32 MB
    for lo in range(0, resamples, step):
        m = min(step, resamples - lo)
        bx = np.quantile(x[rng.integers(0, nx, (m, nx))], q, axis=1)
        by = np.quantile(y[rng.integers(0, ny, (m, ny))], q, axis=1)
        diffs[lo:lo + m] = by - bx
    alpha = 1.0 - confidence
    ci_lo, ci_hi = np.quantile(diffs, [alpha / 2.0, 1.0 - alpha / 2.0])
    p = min(1.0, 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    ratio = math.log(qy / qx) if qx > 0 and qy > 0 else math.nan
    return ArmComparison(qx, qy, qy - qx, ratio, float(ci_lo), float(ci_hi), p,
                         "bootstrap", nx, ny)


def _var(a: np.ndarray) -> float:
    return float(a.var(ddof=1)) if a.size > 1 else math.nan


def _empty(test: str, nx: int, ny: int) -> ArmComparison:
    nan = math.nan
    return ArmComparison(nan, nan, nan, nan, nan, nan, nan, test, int(nx), int(ny))
