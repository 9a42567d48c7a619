"""Spend per window: ``cost.usd`` (sum) and ``cost.usd_per_request`` (mean).

Both over the events that carry ``cost_usd``; ``detail["n_events"]`` counts
all events of the window, so a pricing gap (events without cost) shows as
``n < n_events``. Every status counts: failed calls are usually billed too.
No signal when no event in the window carries a cost.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> [(s.signal, round(s.value, 6), s.n) for s in CostTotal().update(synthetic_batch(1000, seed=4))]
[('cost.usd', 1.012853, 1000), ('cost.usd_per_request', 0.001013, 1000)]
"""

from __future__ import annotations

import math

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Mergeable, Signal

__all__ = ["CostTotal"]


class CostTotal(Detector, Mergeable):
    """``cost.usd`` and ``cost.usd_per_request`` per window, mergeable sums.

    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> b = synthetic_batch(200, seed=1)
    >>> a, c = CostTotal(), CostTotal()
    >>> _ = a.update(b.select(np.arange(200) < 50)); _ = c.update(b.select(np.arange(200) >= 50))
    >>> a.merge(c)
    >>> [round(s.value, 12) for s in a.emit()] == [round(s.value, 12) for s in CostTotal().update(b)]
    True
    """

    signals = ("cost.usd", "cost.usd_per_request")

    def __init__(self) -> None:
        self._n = 0
        self._n_events = 0
        self._usd = 0.0
        self._input_tokens = 0.0
        self._output_tokens = 0.0
        self._start = math.inf
        self._end = -math.inf

    def update(self, batch: Batch) -> list[Signal]:
        cost = batch.numeric("cost_usd")
        priced = ~np.isnan(cost)
        self._n = int(np.count_nonzero(priced))
        self._n_events = len(batch)
        self._usd = float(cost[priced].sum())
        self._input_tokens = float(np.nansum(batch.numeric("input_tokens")))
        self._output_tokens = float(np.nansum(batch.numeric("output_tokens")))
        self._start, self._end = batch.start, batch.end
        return self.emit()

    def merge(self, other: CostTotal) -> None:
        """Fold in the sums of ``other``'s window."""
        self._n += other._n
        self._n_events += other._n_events
        self._usd += other._usd
        self._input_tokens += other._input_tokens
        self._output_tokens += other._output_tokens
        self._start = min(self._start, other._start)
        self._end = max(self._end, other._end)

    def emit(self, *, start: float | None = None, end: float | None = None) -> list[Signal]:
        """Signals of the sums currently held."""
        if self._n == 0:
            return []
        window = Batch(
            {},
            start=self._start if start is None else start,
            end=self._end if end is None else end,
        )
        detail = {
            "n_events": self._n_events,
            "input_tokens": self._input_tokens,
            "output_tokens": self._output_tokens,
        }
        return [
            window.signal("cost.usd", self._usd, n=self._n, detail=detail),
            window.signal("cost.usd_per_request", self._usd / self._n, n=self._n, detail=detail),
        ]
