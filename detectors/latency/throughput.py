"""Output-token throughput per window: ``tokens.output_per_s``.

The value is the *aggregate* rate of the successful (``status == "ok"``)
events: total output tokens divided by total latency in seconds. Not the
median of per-request rates, because

* per-request rates explode on tiny latencies (a cached 5 ms answer of 50
  tokens is 10,000 tokens/s) and the aggregate weights each request by the
  time it took, which is what capacity planning needs;
* sums merge exactly across partitions, a median does not.

When ``ttft_ms`` is present, ``detail["decode_per_s"]`` is the same ratio
over decode time (latency minus time to first token) of the events that
have it, which isolates generation speed from queueing and prefill.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> s = TokenThroughput().update(synthetic_batch(1000, seed=4))[0]
>>> s.signal, round(s.value, 1), s.n, round(s.detail["decode_per_s"], 1)
('tokens.output_per_s', 295.3, 974, 369.2)
"""

from __future__ import annotations

import math

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Mergeable, Signal

__all__ = ["TokenThroughput"]


class TokenThroughput(Detector, Mergeable):
    """``tokens.output_per_s``: sum of output tokens / sum of latency seconds (ok events).

    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> b = synthetic_batch(300, seed=8)
    >>> a, c = TokenThroughput(), TokenThroughput()
    >>> _ = a.update(b.select(np.arange(300) < 100)); _ = c.update(b.select(np.arange(300) >= 100))
    >>> a.merge(c)
    >>> round(a.emit()[0].value, 9) == round(TokenThroughput().update(b)[0].value, 9)
    True
    """

    signals = ("tokens.output_per_s",)

    def __init__(self, *, min_n: int = 1) -> None:
        self.min_n = int(min_n)
        self._n = 0
        self._tokens = 0.0
        self._seconds = 0.0
        self._n_decode = 0
        self._decode_tokens = 0.0
        self._decode_seconds = 0.0
        self._start = math.inf
        self._end = -math.inf

    def update(self, batch: Batch) -> list[Signal]:
        lat = batch.numeric("latency_ms")
        tok = batch.numeric("output_tokens")
        ok = (batch.strings("status") == "ok") & (lat > 0) & ~np.isnan(tok)
        self._n = int(np.count_nonzero(ok))
        self._tokens = float(tok[ok].sum())
        self._seconds = float(lat[ok].sum()) / 1000.0
        decode = lat - batch.numeric("ttft_ms")
        dk = ok & (decode > 0)
        self._n_decode = int(np.count_nonzero(dk))
        self._decode_tokens = float(tok[dk].sum())
        self._decode_seconds = float(decode[dk].sum()) / 1000.0
        self._start, self._end = batch.start, batch.end
        return self.emit()

    def merge(self, other: TokenThroughput) -> None:
        """Fold in the sums of ``other``'s window."""
        self._n += other._n
        self._tokens += other._tokens
        self._seconds += other._seconds
        self._n_decode += other._n_decode
        self._decode_tokens += other._decode_tokens
        self._decode_seconds += other._decode_seconds
        self._start = min(self._start, other._start)
        self._end = max(self._end, other._end)

    def emit(self, *, start: float | None = None, end: float | None = None) -> list[Signal]:
        """Signal of the sums currently held."""
        if self._n < self.min_n or self._seconds <= 0:
            return []
        window = Batch(
            {},
            start=self._start if start is None else start,
            end=self._end if end is None else end,
        )
        detail: dict[str, float | int | None] = {
            "output_tokens": self._tokens,
            "latency_s": self._seconds,
            "decode_per_s": (
                self._decode_tokens / self._decode_seconds if self._decode_seconds > 0 else None
            ),
            "n_decode": self._n_decode,
        }
        return [
            window.signal(
                "tokens.output_per_s", self._tokens / self._seconds, n=self._n, detail=detail
            )
        ]
