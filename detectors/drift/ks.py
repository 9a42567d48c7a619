"""Two-sample Kolmogorov-Smirnov test of a numeric feature, window against reference.

The value is the KS statistic ``D = sup |F_ref - F_window|``; ``detail``
carries the two-sided p-value of :func:`scipy.stats.ks_2samp` (exact for
samples up to 10,000, asymptotic above), which is also what Evidently's
``ValueDrift(method="ks")`` reports, so the two agree exactly on the same data.

``exact=False`` computes the statistic against a cached sorted reference
and the asymptotic p-value (scipy's ``method="asymp"``: ``kstwo.sf(D,
round(n m / (n + m)))``), several times faster; it then agrees with
``ks_2samp(..., method="asymp")`` rather than with the exact default.

Drift when ``p_value < threshold``; the default 0.001 (Evidently uses 0.05)
keeps false alarms at about ``0.001 * 100_000 / window`` per 100k events, 0.2
with 500-event windows, and a 0.5 sd shift is still found in the first full
window after it (p ~ 1e-15 at 500 against 2,000).

>>> import numpy as np
>>> from llmpulse.detectors.base import Batch
>>> rng = np.random.default_rng(0)
>>> d = KolmogorovSmirnov(["x"])
>>> d.set_reference({"x": rng.normal(0, 1, 2000)})
>>> [s] = d.update(Batch({"x": rng.normal(0.5, 1, 500)}, start=0, end=60))
>>> s.signal, round(s.value, 3), s.detail["p_value"] < 1e-10, s.detail["drift"]
('drift.ks', 0.193, True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from llmpulse.detectors.drift.base import Kind, ReferencePolicy, WindowDriftTest

__all__ = ["KolmogorovSmirnov"]


class KolmogorovSmirnov(WindowDriftTest):
    """``drift.ks`` per numeric feature; drift when ``p_value < threshold`` (0.001)."""

    signal_name = "drift.ks"
    signals = ("drift.ks",)
    kinds: tuple[Kind, ...] = ("numeric",)
    threshold_on = "p_value"

    def __init__(
        self,
        features: Sequence[str] | None = None,
        *,
        threshold: float = 0.001,
        reference: ReferencePolicy | None = None,
        min_window: int = 50,
        reporter: Any = None,
        exact: bool = True,
    ) -> None:
        self.exact = bool(exact)
        super().__init__(
            features, threshold=threshold, reference=reference, min_window=min_window, reporter=reporter
        )

    def score(
        self, reference: np.ndarray, current: np.ndarray, kind: Kind, cache: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        if self.exact:
            res = stats.ks_2samp(reference, current)
            return float(res.statistic), {"method": "ks", "p_value": float(res.pvalue)}
        if "sorted" not in cache:
            cache["sorted"] = np.sort(reference)
        ref = cache["sorted"]
        cur = np.sort(current)
        both = np.concatenate([ref, cur])
        d = float(np.max(np.abs(
            np.searchsorted(ref, both, "right") / ref.size - np.searchsorted(cur, both, "right") / cur.size
        )))
        en = ref.size * cur.size / (ref.size + cur.size)
        p_value = float(np.clip(stats.kstwo.sf(d, np.round(en)), 0.0, 1.0))
        return d, {"method": "ks", "p_value": p_value, "p_value_method": "asymp"}
