"""Page-Hinkley (river) on standardised values, recalibrated.

Page-Hinkley accumulates ``x - mean_so_far - delta`` and declares a change
when the accumulation leaves its running extreme by more than ``threshold``.
River's defaults (``delta=0.005``, ``threshold=50``, fading ``alpha=0.9999``)
alarm every couple of thousand values on a standardised stationary stream,
since ``delta`` is tiny against a unit sd. The shipped defaults make it a
CUSUM in all but the mean estimate: ``delta = 0.25`` (half of 0.5 sd),
``threshold = 24``, ``alpha = 1`` (no fading), ``min_instances = 30``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.concatenate([rng.normal(0, 1, 5000), rng.normal(1, 1, 1000)])
>>> PageHinkley().update_many(x)[:1]
[5027]
"""

from __future__ import annotations

from river import drift

from llmpulse.detectors.drift._river import RiverChangeDetector

__all__ = ["PageHinkley"]


class PageHinkley(RiverChangeDetector):
    """:class:`river.drift.PageHinkley` behind the ``ChangeDetector`` protocol."""

    def __init__(
        self,
        *,
        delta: float = 0.25,
        threshold: float = 24.0,
        alpha: float = 1.0,
        min_instances: int = 30,
        mean: float = 0.0,
        sd: float = 1.0,
    ) -> None:
        super().__init__(mean=mean, sd=sd)
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.min_instances = min_instances
        self._river = drift.PageHinkley(
            min_instances=min_instances, delta=delta, threshold=threshold, alpha=alpha, mode="both"
        )
