"""A mergeable quantile sketch with relative-error guarantees (DDSketch).

The sketch of Masson, Rim and Lee (VLDB 2019): a positive value ``x`` falls in
bucket ``i = ceil(log_gamma(x))`` with ``gamma = (1 + a) / (1 - a)``, and the
bucket is represented by ``2 gamma^i / (gamma + 1)``, which lies within a
relative distance ``a`` (the *relative accuracy*) of every value in it.
Negative values use a mirrored store, values below ``min_value`` count as
zero. Buckets are a dense numpy array with an offset, so a whole column is
inserted with one ``log``, one ``ceil`` and one ``bincount``; two sketches
merge by adding their arrays, which is what lets a window that spans
partitions or workers be summarised exactly as if one worker had seen it all.

Quantiles use numpy's default (``linear``) definition: the ranks
``floor(q (n - 1))`` and the next one are each read from the sketch and
interpolated. Each bucket value is within ``a`` of the true order statistic
and interpolation between positive numbers keeps that bound, so the result is
within ``a`` relatively of ``numpy.quantile`` on the same data; the default
``a = 0.005`` keeps a 2x margin under the 1 % the latency signals promise.

``max_buckets`` (default 2048) bounds memory per store. When the span of a
store would exceed it, the lowest buckets are collapsed into one, so the
*low* quantiles lose accuracy first and the tail we page on keeps it; with
the default accuracy 2048 buckets cover a ratio of ``e^20`` between the
smallest and largest value before anything collapses.

>>> import numpy as np
>>> x = np.random.default_rng(0).lognormal(6.0, 1.0, 10_000)
>>> a, b = DDSketch(), DDSketch()
>>> a.add(x[:4000]); b.add(x[4000:])
>>> a.merge(b)
>>> a.count
10000
>>> est = a.quantiles([0.5, 0.99])
>>> exact = np.quantile(x, [0.5, 0.99])
>>> bool(np.all(np.abs(est / exact - 1) <= 0.005))
True
>>> DDSketch.from_dict(a.to_dict()).quantiles([0.5]) == a.quantiles([0.5])
array([ True])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["DDSketch"]


class _DenseStore:
    """Bucket counts ``counts[k]`` for bucket index ``offset + k``."""

    __slots__ = ("counts", "offset", "max_buckets")

    def __init__(self, max_buckets: int) -> None:
        self.counts = np.zeros(0, dtype=np.int64)
        self.offset = 0
        self.max_buckets = max_buckets

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add_indices(self, idx: np.ndarray) -> None:
        if idx.size == 0:
            return
        lo, hi = int(idx.min()), int(idx.max())
        self._extend(lo, hi)
        k = idx - self.offset
        # Indices below the kept range (after a collapse) pile up in bucket 0.
        np.maximum(k, 0, out=k)
        self.counts += np.bincount(k, minlength=self.counts.size)[: self.counts.size]

    def add_store(self, other: _DenseStore) -> None:
        nz = np.flatnonzero(other.counts)
        if nz.size == 0:
            return
        lo = other.offset + int(nz[0])
        hi = other.offset + int(nz[-1])
        self._extend(lo, hi)
        src_idx = np.arange(lo, hi + 1)
        k = np.maximum(src_idx - self.offset, 0)
        np.add.at(self.counts, k, other.counts[lo - other.offset : hi - other.offset + 1])

    def _extend(self, lo: int, hi: int) -> None:
        if self.counts.size == 0:
            new_lo, new_hi = lo, hi
        else:
            new_lo = min(lo, self.offset)
            new_hi = max(hi, self.offset + self.counts.size - 1)
        if new_hi - new_lo + 1 > self.max_buckets:
            new_lo = new_hi - self.max_buckets + 1
        if (
            self.counts.size
            and new_lo == self.offset
            and new_hi == self.offset + self.counts.size - 1
        ):
            return
        grown = np.zeros(new_hi - new_lo + 1, dtype=np.int64)
        if self.counts.size:
            old_idx = np.arange(self.offset, self.offset + self.counts.size)
            np.add.at(grown, np.maximum(old_idx - new_lo, 0), self.counts)
        self.counts = grown
        self.offset = new_lo

    def to_dict(self) -> dict[str, Any]:
        nz = np.flatnonzero(self.counts)
        if nz.size == 0:
            return {"offset": 0, "counts": []}
        return {
            "offset": self.offset + int(nz[0]),
            "counts": [int(c) for c in self.counts[nz[0] : nz[-1] + 1]],
        }

    def load(self, state: dict[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.int64)
        self.offset = int(state["offset"])


class DDSketch:
    """Mergeable quantile sketch, relative error ``relative_accuracy``.

    ``add`` takes a scalar or an array (NaN ignored); ``merge`` folds in a
    sketch built with the same parameters; ``quantiles`` follows
    ``numpy.quantile``'s linear definition within the relative accuracy.

    >>> s = DDSketch(relative_accuracy=0.01)
    >>> s.add([1.0, 2.0, 3.0, 4.0, 100.0])
    >>> s.count, s.min, s.max
    (5, 1.0, 100.0)
    >>> s.quantiles([0.0, 0.5, 1.0]).round(2).tolist()
    [1.0, 2.97, 100.0]
    """

    def __init__(
        self,
        relative_accuracy: float = 0.005,
        *,
        max_buckets: int = 2048,
        min_value: float = 1e-9,
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(f"relative_accuracy: must be in (0, 1), got {relative_accuracy}")
        if max_buckets < 2:
            raise ValueError(f"max_buckets: must be >= 2, got {max_buckets}")
        self.relative_accuracy = float(relative_accuracy)
        self.max_buckets = int(max_buckets)
        self.min_value = float(min_value)
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._pos = _DenseStore(self.max_buckets)
        self._neg = _DenseStore(self.max_buckets)
        self._zero = 0
        self._min = math.inf
        self._max = -math.inf
        self._sum = 0.0

    # -- insertion ----------------------------------------------------------

    def add(self, values: float | Sequence[float] | np.ndarray) -> None:
        """Insert one value or a whole column (NaN values are skipped)."""
        x = np.asarray(values, dtype=np.float64).ravel()
        x = x[~np.isnan(x)]
        if x.size == 0:
            return
        self._min = min(self._min, float(x.min()))
        self._max = max(self._max, float(x.max()))
        self._sum += float(x.sum())
        pos = x[x > self.min_value]
        neg = -x[x < -self.min_value]
        self._zero += int(x.size - pos.size - neg.size)
        self._pos.add_indices(self._index(pos))
        self._neg.add_indices(self._index(neg))

    def _index(self, x: np.ndarray) -> np.ndarray:
        return np.ceil(np.log(x) * self._inv_log_gamma).astype(np.int64)

    def _value(self, idx: np.ndarray) -> np.ndarray:
        return 2.0 * np.power(self._gamma, idx.astype(np.float64)) / (self._gamma + 1.0)

    def merge(self, other: DDSketch) -> None:
        """Fold ``other`` (same relative accuracy) into this sketch."""
        if not math.isclose(other.relative_accuracy, self.relative_accuracy):
            raise ValueError(
                "merge: sketches differ in relative_accuracy "
                f"({self.relative_accuracy} vs {other.relative_accuracy})"
            )
        self._pos.add_store(other._pos)
        self._neg.add_store(other._neg)
        self._zero += other._zero
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        self._sum += other._sum

    # -- reading ------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._zero + self._pos.total + self._neg.total

    @property
    def sum(self) -> float:
        return self._sum

    @property
    def min(self) -> float:
        return self._min

    @property
    def max(self) -> float:
        return self._max

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        """Estimates of ``numpy.quantile(data, qs)``; NaN when empty."""
        q = np.asarray(qs, dtype=np.float64)
        if np.any((q < 0) | (q > 1)):
            raise ValueError("quantiles: q must be in [0, 1]")
        n = self.count
        if n == 0:
            return np.full(q.shape, np.nan)
        pos_rank = q * (n - 1)
        lo_rank = np.floor(pos_rank).astype(np.int64)
        hi_rank = np.minimum(lo_rank + 1, n - 1)
        frac = pos_rank - lo_rank
        both = self._at_rank(np.concatenate([lo_rank, hi_rank]))
        lo_val, hi_val = both[: lo_rank.size], both[lo_rank.size:]
        out = lo_val + (hi_val - lo_val) * frac
        return np.clip(out, self._min, self._max)

    def _at_rank(self, rank: np.ndarray) -> np.ndarray:
        """Value of the order statistic of each 0-based ``rank``."""
        # Ascending order: negative store from its highest index down, zeros, positive
        # store. Only the buckets the ranks fall in are turned into values.
        nneg = self._neg.counts.size
        counts = np.concatenate([self._neg.counts[::-1], [self._zero], self._pos.counts])
        cum = np.cumsum(counts)
        where = np.searchsorted(cum, rank, side="right")
        if not nneg and not self._zero:  # all positive (latencies): every rank is in _pos
            return self._value(self._pos.offset + (where - 1))
        out = np.zeros(where.shape, dtype=np.float64)
        neg = where < nneg
        pos = where > nneg
        out[neg] = -self._value(self._neg.offset + (nneg - 1 - where[neg]))
        out[pos] = self._value(self._pos.offset + (where[pos] - nneg - 1))
        return out

    # -- persistence --------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "max_buckets": self.max_buckets,
            "min_value": self.min_value,
            "pos": self._pos.to_dict(),
            "neg": self._neg.to_dict(),
            "zero": self._zero,
            "min": self._min if self.count else None,
            "max": self._max if self.count else None,
            "sum": self._sum,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DDSketch:
        """A sketch from :meth:`to_dict` output."""
        s = cls(
            state["relative_accuracy"],
            max_buckets=state["max_buckets"],
            min_value=state["min_value"],
        )
        s._pos.load(state["pos"])
        s._neg.load(state["neg"])
        s._zero = int(state["zero"])
        s._min = math.inf if state["min"] is None else float(state["min"])
        s._max = -math.inf if state["max"] is None else float(state["max"])
        s._sum = float(state["sum"])
        return s

    def __repr__(self) -> str:
        return f"DDSketch(relative_accuracy={self.relative_accuracy}, count={self.count})"
