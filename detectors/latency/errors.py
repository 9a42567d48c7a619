"""Per-window error and timeout rates with Wilson intervals.

``errors.rate`` is the share of events with ``status == "error"`` and
``errors.timeout_rate`` the share with ``status == "timeout"``, both over the
events that carry a status. ``detail`` holds the count, the Wilson score
interval (``ci_low``/``ci_high``, default 95 %) and, for ``errors.rate``, the
most frequent ``error_type`` values.

Wilson rather than the normal interval because error rates live near 0,
where the normal interval collapses to [0, 0] on a window with no errors and
says nothing about how few events that was. Below ``min_n`` events (default
10) no signal is emitted: three failures out of four requests is not yet an
error *rate*.

State is four counters, so partial windows merge exactly (:meth:`ErrorRates.merge`).

>>> from llmpulse.detectors.testing import synthetic_batch
>>> for s in ErrorRates().update(synthetic_batch(1000, seed=2)):
...     print(s.signal, s.value, s.n, round(s.detail["ci_low"], 4), round(s.detail["ci_high"], 4))
errors.rate 0.012 1000 0.0069 0.0209
errors.timeout_rate 0.011 1000 0.0062 0.0196
"""

from __future__ import annotations

import math

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Mergeable, Signal
from llmpulse.detectors.bias.stats import wilson_interval

__all__ = ["ErrorRates"]


class ErrorRates(Detector, Mergeable):
    """``errors.rate`` and ``errors.timeout_rate`` per window, mergeable counts.

    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> b = synthetic_batch(400, seed=5)
    >>> a, c = ErrorRates(), ErrorRates()
    >>> _ = a.update(b.select(np.arange(400) < 150)); _ = c.update(b.select(np.arange(400) >= 150))
    >>> a.merge(c)
    >>> [(s.signal, s.value, s.n) for s in a.emit()] == [(s.signal, s.value, s.n) for s in ErrorRates().update(b)]
    True
    """

    signals = ("errors.rate", "errors.timeout_rate")

    def __init__(
        self, *, confidence: float = 0.95, min_n: int = 10, top_error_types: int = 5
    ) -> None:
        self.confidence = float(confidence)
        self.min_n = int(min_n)
        self.top_error_types = int(top_error_types)
        self._n = 0
        self._errors = 0
        self._timeouts = 0
        self._types: dict[str, int] = {}
        self._start = math.inf
        self._end = -math.inf

    def update(self, batch: Batch) -> list[Signal]:
        status = batch.strings("status")
        is_err = status == "error"
        self._n = int(np.count_nonzero(status != ""))
        self._errors = int(np.count_nonzero(is_err))
        self._timeouts = int(np.count_nonzero(status == "timeout"))
        self._types = {}
        if self._errors:
            kinds, counts = np.unique(batch.strings("error_type")[is_err], return_counts=True)
            self._types = {str(k) or "unknown": int(c) for k, c in zip(kinds, counts, strict=True)}
        self._start, self._end = batch.start, batch.end
        return self.emit()

    def merge(self, other: ErrorRates) -> None:
        """Fold in the counts of ``other``'s window."""
        self._n += other._n
        self._errors += other._errors
        self._timeouts += other._timeouts
        for k, c in other._types.items():
            self._types[k] = self._types.get(k, 0) + c
        self._start = min(self._start, other._start)
        self._end = max(self._end, other._end)

    def emit(self, *, start: float | None = None, end: float | None = None) -> list[Signal]:
        """Signals of the counts currently held."""
        if self._n < self.min_n:
            return []
        window = Batch(
            {},
            start=self._start if start is None else start,
            end=self._end if end is None else end,
        )
        lo, hi = wilson_interval(
            np.array([self._errors, self._timeouts]), np.array([self._n, self._n]), self.confidence
        )
        top = sorted(self._types.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_error_types]
        common = {"confidence": self.confidence, "min_n": self.min_n}
        return [
            window.signal(
                "errors.rate",
                self._errors / self._n,
                n=self._n,
                detail={
                    **common,
                    "count": self._errors,
                    "ci_low": float(lo[0]),
                    "ci_high": float(hi[0]),
                    "error_types": dict(top),
                },
            ),
            window.signal(
                "errors.timeout_rate",
                self._timeouts / self._n,
                n=self._n,
                detail={
                    **common,
                    "count": self._timeouts,
                    "ci_low": float(lo[1]),
                    "ci_high": float(hi[1]),
                },
            ),
        ]
