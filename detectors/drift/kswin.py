"""KSWIN (river) on standardised values, recalibrated.

KSWIN runs a Kolmogorov-Smirnov test, at every value, between the newest
``stat_size`` values of a sliding window and a random sample of the older
ones. River's defaults (``alpha=0.005``, ``window_size=100``,
``stat_size=30``) raise several alarms per thousand stationary values: a test
per value at 0.005 is a false alarm every ~200 values, softened only by the
overlap between tests. Shipped: ``alpha = 1e-7``, ``window_size = 400``,
``stat_size = 100``, seeded. It remains the slowest detector here (a scipy
KS test per value, a few thousand values per second) and the least sensitive
to small shifts; it is kept for comparison and for changes of shape that a
mean-based detector misses.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.concatenate([rng.normal(0, 1, 2000), rng.normal(1, 1, 500)])
>>> Kswin().update_many(x)[:1]
[2062]
"""

from __future__ import annotations

from river import drift

from llmpulse.detectors.drift._river import RiverChangeDetector

__all__ = ["Kswin"]


class Kswin(RiverChangeDetector):
    """:class:`river.drift.KSWIN` behind the ``ChangeDetector`` protocol."""

    def __init__(
        self,
        *,
        alpha: float = 1e-7,
        window_size: int = 400,
        stat_size: int = 100,
        seed: int = 0,
        mean: float = 0.0,
        sd: float = 1.0,
    ) -> None:
        super().__init__(mean=mean, sd=sd)
        self.alpha = alpha
        self.window_size = window_size
        self.stat_size = stat_size
        self.seed = seed
        self._river = drift.KSWIN(
            alpha=alpha, window_size=window_size, stat_size=stat_size, seed=seed
        )
