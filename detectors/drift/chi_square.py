"""Chi-square test of homogeneity of a categorical feature, window against reference.

A 2 x k contingency table (reference counts, window counts) over the
categories seen in either; the value is Pearson's statistic (no continuity
correction), ``detail`` has its p-value with ``k - 1`` degrees of freedom and
Cramér's V (``sqrt(stat / n_total)``, an effect size that does not grow with
the sample). It equals :func:`scipy.stats.chi2_contingency` with
``correction=False``. Unlike Evidently's ``chisquare`` (a goodness-of-fit
test that treats the reference shares as exact), the reference's own
sampling noise is accounted for, so the false alarm rate is what the
threshold says even with a small baseline.

Drift when ``p_value < threshold``; default 0.001, about 0.2 false alarms
per 100k events with 500-event windows.

>>> import numpy as np
>>> from llmpulse.detectors.base import Batch
>>> rng = np.random.default_rng(0)
>>> d = ChiSquare(["lang"])
>>> d.set_reference({"lang": rng.choice(["en", "de", "fr"], 2000)})
>>> [s] = d.update(Batch({"lang": rng.choice(["en", "de", "fr"], 500, p=[0.5, 0.25, 0.25]).astype(object)}, start=0, end=60))
>>> s.signal, round(s.value, 1), s.detail["dof"], s.detail["p_value"] < 1e-6
('drift.chi_square', 63.7, 2, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from llmpulse.detectors.drift.base import (
    Kind,
    WindowDriftTest,
    cached_reference_counts,
    value_counts,
)

__all__ = ["ChiSquare"]


class ChiSquare(WindowDriftTest):
    """``drift.chi_square`` per categorical feature; drift when ``p_value < threshold`` (0.001)."""

    signal_name = "drift.chi_square"
    signals = ("drift.chi_square",)
    kinds: tuple[Kind, ...] = ("categorical",)
    threshold_on = "p_value"

    default_threshold = 0.001

    def score(
        self, reference: np.ndarray, current: np.ndarray, kind: Kind, cache: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        ref_counts = cached_reference_counts(cache, reference)
        cur_counts = value_counts(current)
        keys = list(ref_counts.keys() | cur_counts.keys())
        observed = np.array(
            [[ref_counts.get(k, 0) for k in keys], [cur_counts.get(k, 0) for k in keys]],
            dtype=np.float64,
        )
        total = observed.sum()
        expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
        stat = float(np.sum((observed - expected) ** 2 / expected))
        dof = len(keys) - 1
        p_value = float(special.chdtrc(dof, stat)) if dof > 0 else 1.0
        return stat, {
            "method": "chi_square",
            "p_value": p_value,
            "dof": dof,
            "cramers_v": float(np.sqrt(stat / total)),
        }
