"""ADWIN (river) on standardised values.

ADWIN keeps a variable-length window and cuts it where two sub-windows have
means further apart than a Hoeffding-style bound at confidence ``delta``.
River's default ``delta = 0.002`` is already quiet on standardised stationary
streams (no false alarm in the benchmarked streams) and is shipped unchanged;
it finds 1 sd shifts quickly and 0.5 sd shifts more slowly than CUSUM (see
``llmpulse.bench.detectors_drift``). ``clock`` (how often it checks for a
cut) is river's 32.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.concatenate([rng.normal(0, 1, 5000), rng.normal(1, 1, 1000)])
>>> Adwin().update_many(x)[:1]
[5055]
"""

from __future__ import annotations

from river import drift

from llmpulse.detectors.drift._river import RiverChangeDetector

__all__ = ["Adwin"]


class Adwin(RiverChangeDetector):
    """:class:`river.drift.ADWIN` behind the ``ChangeDetector`` protocol."""

    def __init__(
        self,
        *,
        delta: float = 0.002,
        clock: int = 32,
        grace_period: int = 10,
        mean: float = 0.0,
        sd: float = 1.0,
    ) -> None:
        super().__init__(mean=mean, sd=sd)
        self.delta = delta
        self.clock = clock
        self.grace_period = grace_period
        self._river = drift.ADWIN(delta=delta, clock=clock, grace_period=grace_period)
