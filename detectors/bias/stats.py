"""Small, vectorised statistics shared by the bias and reliability detectors.

Everything takes and returns numpy arrays (or floats), so a detector computes
intervals and p-values for all segments of a window in one call.

* :func:`wilson_interval`: score interval for a proportion. Unlike the normal
  (Wald) interval it stays inside [0, 1] and keeps its coverage for rare
  events and small ``n``, which is the regime of small segments and of error
  rates of a few percent.
* :func:`newcombe_interval`: Newcombe's hybrid score interval for a
  difference of two independent proportions, built from the two Wilson
  intervals (no continuity correction).
* :func:`fisher_pvalues`: two-sided Fisher exact test per 2x2 table; exact,
  so a segment of 30 events with a rare outcome cannot produce the tiny
  p-values a z-test would.
* :func:`welch_test`: Welch's unequal-variance t-test and interval from
  summary statistics (means that merge as sums).
* :func:`adjust_pvalues`: Holm (family-wise error) or Benjamini-Hochberg
  (false discovery rate) adjustment.

>>> lo, hi = wilson_interval(np.array([3]), np.array([30]))
>>> round(float(lo[0]), 4), round(float(hi[0]), 4)
(0.0346, 0.2562)
>>> adjust_pvalues(np.array([0.01, 0.04, 0.03]), "holm").round(3).tolist()
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import special, stats

__all__ = [
    "adjust_pvalues",
    "fisher_pvalues",
    "newcombe_interval",
    "welch_test",
    "wilson_interval",
]


@functools.lru_cache(maxsize=16)
def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(
    k: np.ndarray, n: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``k`` successes out of ``n`` (NaN where n = 0).

    >>> lo, hi = wilson_interval(np.array([0, 10]), np.array([10, 10]))
    >>> lo.round(4).tolist(), hi.round(4).tolist()
    ([0.0, 0.7225], [0.2775, 1.0])
    """
    z = _z(confidence)
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        center = (p + z * z / (2.0 * n)) / denom
        half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    lo = np.clip(center - half, 0.0, 1.0)
    hi = np.clip(center + half, 0.0, 1.0)
    # The closed form is exact at the boundaries; clip only removes rounding.
    lo = np.where(k == 0, 0.0, lo)
    hi = np.where(k == n, 1.0, hi)
    empty = n <= 0
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def newcombe_interval(
    k1: np.ndarray,
    n1: np.ndarray,
    k2: np.ndarray,
    n2: np.ndarray,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Interval for ``k1/n1 - k2/n2`` (Newcombe 1998, method 10).

    >>> lo, hi = newcombe_interval(np.array([30]), np.array([100]), np.array([20]), np.array([100]))
    >>> round(float(lo[0]), 4), round(float(hi[0]), 4)
    (-0.0202, 0.2167)
    """
    k1, n1, k2, n2 = (np.asarray(a, dtype=np.float64) for a in (k1, n1, k2, n2))
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return lo, hi


def fisher_pvalues(k1: np.ndarray, n1: np.ndarray, k2: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Two-sided Fisher exact p-value of each table ``[[k1, n1-k1], [k2, n2-k2]]``.

    Vectorised over tables: the hypergeometric log-pmf of every table's
    support is laid out on one grid, and the p-value sums the probabilities
    not above the observed one (relative tolerance 1e-7, as R does), which
    is ``scipy.stats.fisher_exact``'s definition.

    >>> fisher_pvalues(np.array([9, 5]), np.array([10, 10]), np.array([1, 5]), np.array([10, 10])).round(4).tolist()
    [0.0011, 1.0]
    """
    k1, n1, k2, n2 = (np.asarray(a, dtype=np.int64).ravel() for a in (k1, n1, k2, n2))
    shape = np.shape(k1)
    if k1.size == 0:
        return np.zeros(shape)
    K = k1 + k2
    N = n1 + n2
    lo = np.maximum(0, K - n2)
    hi = np.minimum(K, n1)
    width = int((hi - lo).max()) + 1
    x = lo[:, None] + np.arange(width)[None, :]
    valid = x <= hi[:, None]
    xs = np.where(valid, x, lo[:, None])
    log_pmf = (
        _log_comb(n1[:, None], xs)
        + _log_comb(n2[:, None], K[:, None] - xs)
        - _log_comb(N, K)[:, None]
    )
    obs = _log_comb(n1, k1) + _log_comb(n2, k2) - _log_comb(N, K)
    take = valid & (log_pmf <= obs[:, None] + 1e-7)
    p = np.minimum(1.0, np.where(take, np.exp(log_pmf), 0.0).sum(axis=1))
    # An empty row or column makes the table uninformative.
    degenerate = (n1 == 0) | (n2 == 0) | (K == 0) | (K == N)
    return np.where(degenerate, 1.0, p)


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    return special.gammaln(n + 1.0) - special.gammaln(k + 1.0) - special.gammaln(n - k + 1.0)


def welch_test(
    mean1: np.ndarray,
    var1: np.ndarray,
    n1: np.ndarray,
    mean2: np.ndarray,
    var2: np.ndarray,
    n2: np.ndarray,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch's t-test of ``mean1 - mean2`` from sample means and variances (ddof=1).

    Returns ``(p_value, ci_low, ci_high)``; NaN where a side has fewer than
    two values or both variances are zero.

    >>> p, lo, hi = welch_test(np.array([1.0]), np.array([1.0]), np.array([50]),
    ...                        np.array([0.5]), np.array([1.0]), np.array([50]))
    >>> round(float(p[0]), 4), round(float(lo[0]), 3), round(float(hi[0]), 3)
    (0.0141, 0.103, 0.897)
    """
    m1, v1, c1, m2, v2, c2 = (
        np.asarray(a, dtype=np.float64) for a in (mean1, var1, n1, mean2, var2, n2)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        a, b = v1 / c1, v2 / c2
        se = np.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (c1 - 1.0) + b * b / (c2 - 1.0))
        t = (m1 - m2) / se
        p = 2.0 * stats.t.sf(np.abs(t), df)
        half = stats.t.ppf(0.5 + confidence / 2.0, df) * se
    bad = (c1 < 2) | (c2 < 2) | ~(se > 0)
    p = np.where(bad, np.nan, p)
    d = m1 - m2
    return p, np.where(bad, np.nan, d - half), np.where(bad, np.nan, d + half)


def adjust_pvalues(p: np.ndarray, method: str = "holm") -> np.ndarray:
    """Holm or Benjamini-Hochberg adjusted p-values (NaN stays NaN, not counted).

    >>> adjust_pvalues(np.array([0.01, 0.04, 0.03, np.nan]), "bh").round(3).tolist()
    [0.03, 0.04, 0.04, nan]
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ps))
    elif method in ("bh", "fdr_bh"):
        adj = np.minimum.accumulate((m / np.arange(1, m + 1) * ps)[::-1])[::-1]
        adj = np.minimum(adj, 1.0)
    else:
        raise ValueError(f"method: expected 'holm' or 'bh', got {method!r}")
    out[order] = adj
    return out
