"""``quality.feedback_score``: mean user score (−1..1) of the window's answers.

Over the rows whose joined feedback carries ``feedback.score``. ``detail``
has the standard deviation, a Student-t interval of the mean (95 %, as
``scipy.stats.t.interval`` with the sample's standard error) and the share of
negative scores, which often moves before the mean does.

Guard as for accuracy: emitted from one score on, ``detail["small_sample"]``
below ``min_n`` (default 20); the interval needs two scores. State is count,
sum, sum of squares and negatives, so partial windows merge exactly.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> s = FeedbackScore().update(synthetic_batch(1000, seed=1))[0]
>>> s.signal, round(s.value, 4), s.n, round(s.detail["negative_share"], 3)
('quality.feedback_score', 0.3991, 500, 0.17)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from llmpulse.detectors.base import Batch, Signal
from llmpulse.detectors.quality._window import CountingDetector

__all__ = ["FeedbackScore"]


class FeedbackScore(CountingDetector):
    """``quality.feedback_score`` = mean of ``feedback.score`` over scored rows.

    >>> import numpy as np
    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> b = synthetic_batch(600, seed=2)
    >>> a, c = FeedbackScore(), FeedbackScore()
    >>> _ = a.update(b.select(np.arange(600) < 250)); _ = c.update(b.select(np.arange(600) >= 250))
    >>> a.merge(c)
    >>> round(a.emit()[0].value, 12) == round(FeedbackScore().update(b)[0].value, 12)
    True
    """

    signals = ("quality.feedback_score",)
    _counts = ("n", "sum", "sumsq", "negative")
    _config = ("min_n", "confidence")

    def __init__(self, *, min_n: int = 20, confidence: float = 0.95) -> None:
        self.min_n = int(min_n)
        self.confidence = float(confidence)
        self._reset()

    def _count(self, batch: Batch) -> None:
        x = batch.numeric("feedback.score")
        x = x[~np.isnan(x)]
        self._n = float(x.size)
        self._sum = float(x.sum())
        self._sumsq = float(np.dot(x, x))
        self._negative = float(np.count_nonzero(x < 0))

    def _signals(self, window: Batch) -> list[Signal]:
        n = int(self._n)
        if n == 0:
            return []
        mean = self._sum / n
        detail: dict[str, float | int | bool | None] = {
            "negative_share": self._negative / n,
            "confidence": self.confidence,
            "min_n": self.min_n,
            "small_sample": n < self.min_n,
            "std": None,
            "ci_low": None,
            "ci_high": None,
        }
        if n >= 2:
            var = max(0.0, (self._sumsq - n * mean * mean) / (n - 1))
            sd = math.sqrt(var)
            half = float(stats.t.ppf(0.5 + self.confidence / 2.0, n - 1)) * sd / math.sqrt(n)
            detail.update(std=sd, ci_low=mean - half, ci_high=mean + half)
        return [window.signal("quality.feedback_score", mean, n=n, detail=detail)]
