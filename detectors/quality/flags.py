"""``hallucination.flagged_rate``: share of answers a person flagged as hallucinated.

Over the rows whose joined feedback carries ``feedback.hallucination``
(true/false). The same measure as
:class:`~llmpulse.detectors.hallucination.HallucinationSignals` emits, as a count
that merges across partitions, for the feedback path, which recomputes a
window when late feedback arrives and reads no text. ``detail`` has the
count flagged, a Wilson interval and up to ``top_k`` flagged event ids.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> s = UserFlaggedRate().update(synthetic_batch(400, seed=2))[0]
>>> s.signal, round(s.value, 3), s.n, s.detail["flagged"]
('hallucination.flagged_rate', 0.06, 200, 12)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Signal
from llmpulse.detectors.bias.stats import wilson_interval
from llmpulse.detectors.quality._window import CountingDetector

__all__ = ["UserFlaggedRate"]


class UserFlaggedRate(CountingDetector):
    """``hallucination.flagged_rate`` from ``feedback.hallucination``, mergeable.

    >>> import numpy as np
    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> b = synthetic_batch(600, seed=5)
    >>> a, c = UserFlaggedRate(), UserFlaggedRate()
    >>> _ = a.update(b.select(np.arange(600) < 300)); _ = c.update(b.select(np.arange(600) >= 300))
    >>> a.merge(c)
    >>> [(s.value, s.n) for s in a.emit()] == [(s.value, s.n) for s in UserFlaggedRate().update(b)]
    True
    """

    signals = ("hallucination.flagged_rate",)
    _counts = ("n", "flagged")
    _config = ("min_n", "confidence", "top_k")

    def __init__(self, *, min_n: int = 20, confidence: float = 0.95, top_k: int = 5) -> None:
        self.min_n = int(min_n)
        self.confidence = float(confidence)
        self.top_k = int(top_k)
        self._examples: list[str] = []
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._examples = []

    def _count(self, batch: Batch) -> None:
        flags = batch.numeric("feedback.hallucination")
        known = ~np.isnan(flags)
        hit = np.flatnonzero(known & (flags > 0.5))
        self._n = float(np.count_nonzero(known))
        self._flagged = float(hit.size)
        ids = batch.strings("event_id")
        self._examples = [str(ids[i]) for i in hit[: self.top_k]]

    def merge(self, other: Any) -> None:
        super().merge(other)
        self._examples = sorted(set(self._examples) | set(other._examples))[: self.top_k]

    def _signals(self, window: Batch) -> list[Signal]:
        n = int(self._n)
        if n == 0:
            return []
        lo, hi = wilson_interval(np.array([self._flagged]), np.array([self._n]), self.confidence)
        detail = {
            "flagged": int(self._flagged),
            "ci_low": float(lo[0]),
            "ci_high": float(hi[0]),
            "min_n": self.min_n,
            "small_sample": n < self.min_n,
            "examples": list(self._examples),
        }
        return [window.signal("hallucination.flagged_rate", self._flagged / n, n=n, detail=detail)]

    def snapshot(self) -> dict[str, Any]:
        state = super().snapshot()
        state["examples"] = list(self._examples)
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self._examples = [str(e) for e in state["examples"]]
