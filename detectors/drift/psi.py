"""Population Stability Index of a feature, window against reference.

``PSI = sum_i (p_i - q_i) * ln(p_i / q_i)`` over bins, ``p`` the reference
shares and ``q`` the window shares. Binning is Evidently's (see
:mod:`llmpulse.detectors.drift.base`): Sturges edges over reference and window for
numeric features with more than 20 distinct reference values, one bin per
value otherwise, empty bins filled with a small share. With the same data the
value equals Evidently's ``ValueDrift(method="psi")`` to floating-point
rounding (the tests hold it to 1e-9).

Default threshold 0.15. Evidently's 0.1 is the 99.9th percentile of the
stationary PSI for 500-event windows against a 2,000-value baseline (mean
0.03, seeded Gaussian and log-normal streams), too close for the 1 false
alarm per 100k events budget; 0.15 clears it while a 0.5 sd mean shift
still scores about 0.25-0.3 (see ``llmpulse.bench.detectors_drift``). A
distance does not shrink with the sample, so smaller windows need a higher
threshold: the stationary mean is about ``(bins - 1) * (1/n + 1/m)``.
Tests numeric and categorical features.

>>> import numpy as np
>>> from llmpulse.detectors.base import Batch
>>> from llmpulse.detectors.drift.base import ReferencePolicy
>>> rng = np.random.default_rng(0)
>>> d = PopulationStabilityIndex(["x"], reference=ReferencePolicy.fixed(2000))
>>> d.update(Batch({"x": rng.normal(0, 1, 2000)}, start=0, end=60))
[]
>>> [s] = d.update(Batch({"x": rng.normal(0.5, 1, 500)}, start=60, end=120))
>>> s.signal, s.dimension, round(s.value, 3), s.detail["drift"], s.detail["bins"]
('drift.psi', 'x', 0.298, True, 13)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmpulse.detectors.drift.base import (
    Kind,
    WindowDriftTest,
    binned_percents,
    cached_reference_counts,
)

__all__ = ["PopulationStabilityIndex"]


class PopulationStabilityIndex(WindowDriftTest):
    """``drift.psi`` per feature; drift when ``value >= threshold`` (0.15)."""

    signal_name = "drift.psi"
    signals = ("drift.psi",)
    kinds: tuple[Kind, ...] = ("numeric", "categorical")

    default_threshold = 0.15

    def score(
        self, reference: np.ndarray, current: np.ndarray, kind: Kind, cache: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        counts = cached_reference_counts(cache, reference)
        p, q = binned_percents(reference, current, kind, reference_distinct=len(counts), reference_counts=counts)
        psi = float(np.sum((p - q) * np.log(p / q)))
        return psi, {"method": "psi", "bins": int(p.size)}
