"""``quality.accuracy``: share of labelled predictions that match the label.

Rows count where the inference carries ``prediction.label`` and joined
feedback carries ``feedback.label`` (ground truth, e.g. an agent's
re-routing of a ticket); the value is the share where they are equal, as
``sklearn.metrics.accuracy_score`` on those rows. ``detail`` has the count
correct, the Wilson interval (95 %) and the most frequent confusions
(``"predicted->true"``).

Guard: labels trickle in, so a window may hold only a few; the value is
still emitted (a rule can require ``n``), with ``detail["small_sample"]``
true below ``min_n`` (default 20), because 4 out of 5 is not yet 80 %.
No signal when no row is labelled. Counts merge exactly across partitions.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> s = LabelAccuracy().update(synthetic_batch(1000, seed=1))[0]
>>> s.signal, s.value, s.n, round(s.detail["ci_low"], 3), s.detail["small_sample"]
('quality.accuracy', 0.926, 500, 0.9, False)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Signal
from llmpulse.detectors.bias.stats import wilson_interval
from llmpulse.detectors.quality._window import CountingDetector

__all__ = ["LabelAccuracy"]


class LabelAccuracy(CountingDetector):
    """``quality.accuracy`` = mean(prediction.label == feedback.label) over labelled rows.

    >>> import numpy as np
    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> b = synthetic_batch(600, seed=2)
    >>> a, c = LabelAccuracy(), LabelAccuracy()
    >>> _ = a.update(b.select(np.arange(600) < 200)); _ = c.update(b.select(np.arange(600) >= 200))
    >>> a.merge(c)
    >>> a.emit()[0].value == LabelAccuracy().update(b)[0].value
    True
    """

    signals = ("quality.accuracy",)
    _counts = ("n", "correct")
    _config = ("min_n", "confidence", "top_confusions")

    def __init__(self, *, min_n: int = 20, confidence: float = 0.95, top_confusions: int = 5) -> None:
        self.min_n = int(min_n)
        self.confidence = float(confidence)
        self.top_confusions = int(top_confusions)
        self._confusions: Counter[str] = Counter()
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._confusions = Counter()

    def _count(self, batch: Batch) -> None:
        pred = batch.strings("prediction.label")
        true = batch.strings("feedback.label")
        labelled = (pred != "") & (true != "")
        hit = labelled & (pred == true)
        self._n = float(np.count_nonzero(labelled))
        self._correct = float(np.count_nonzero(hit))
        miss = labelled & ~hit
        if miss.any():
            pairs, counts = np.unique(pred[miss] + "->" + true[miss], return_counts=True)
            self._confusions = Counter(
                {str(p): int(c) for p, c in zip(pairs, counts, strict=True)}
            )

    def merge(self, other: Any) -> None:
        super().merge(other)
        self._confusions.update(other._confusions)

    def _signals(self, window: Batch) -> list[Signal]:
        n = int(self._n)
        if n == 0:
            return []
        lo, hi = wilson_interval(np.array([self._correct]), np.array([self._n]), self.confidence)
        top = sorted(self._confusions.items(), key=lambda kv: (-kv[1], kv[0]))
        detail = {
            "correct": int(self._correct),
            "ci_low": float(lo[0]),
            "ci_high": float(hi[0]),
            "confidence": self.confidence,
            "min_n": self.min_n,
            "small_sample": n < self.min_n,
            "confusions": dict(top[: self.top_confusions]),
        }
        return [window.signal("quality.accuracy", self._correct / n, n=n, detail=detail)]

    def snapshot(self) -> dict[str, Any]:
        state = super().snapshot()
        state["confusions"] = dict(self._confusions)
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self._confusions = Counter({str(k): int(v) for k, v in state["confusions"].items()})
