"""Jensen-Shannon distance of a feature's distribution, window against reference.

The value is :func:`scipy.spatial.distance.jensenshannon` (natural log, so in
``[0, sqrt(ln 2)]``) between the binned reference and window shares, binned
as Evidently does but without filling empty bins (JS is finite anyway), the
same as Evidently's ``ValueDrift(method="jensenshannon")``.

Default threshold 0.12: stationary 500-event windows against a 2,000-value
baseline score about 0.06 and 0.10 at the 99.9th percentile (seeded
Gaussian streams; Evidently's 0.1 sits right on it); a 0.5 sd shift scores
about 0.18. Tests numeric and categorical features.

>>> import numpy as np
>>> from llmpulse.detectors.base import Batch
>>> rng = np.random.default_rng(0)
>>> d = JensenShannonDistance(["lang"])
>>> d.set_reference({"lang": rng.choice(["en", "de", "fr"], 2000)})
>>> [s] = d.update(Batch({"lang": rng.choice(["en", "de", "fr"], 500, p=[0.6, 0.2, 0.2]).astype(object)}, start=0, end=60))
>>> s.signal, s.dimension, round(s.value, 3), s.detail["drift"]
('drift.jensen_shannon', 'lang', 0.208, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import distance

from llmpulse.detectors.drift.base import (
    Kind,
    WindowDriftTest,
    binned_percents,
    cached_reference_counts,
)

__all__ = ["JensenShannonDistance"]


class JensenShannonDistance(WindowDriftTest):
    """``drift.jensen_shannon`` per feature; drift when ``value >= threshold`` (0.12)."""

    signal_name = "drift.jensen_shannon"
    signals = ("drift.jensen_shannon",)
    kinds: tuple[Kind, ...] = ("numeric", "categorical")

    default_threshold = 0.12

    def score(
        self, reference: np.ndarray, current: np.ndarray, kind: Kind, cache: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        counts = cached_reference_counts(cache, reference)
        p, q = binned_percents(
            reference, current, kind, fill_zeroes=False, reference_distinct=len(counts), reference_counts=counts
        )
        value = float(distance.jensenshannon(p, q))
        return value, {"method": "jensen_shannon", "bins": int(p.size)}
