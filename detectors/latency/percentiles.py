"""Per-window latency and time-to-first-token percentiles.

Signals ``latency.p50_ms``, ``latency.p95_ms``, ``latency.p99_ms`` from
``latency_ms`` and ``latency.ttft_p50_ms``, ``latency.ttft_p95_ms``,
``latency.ttft_p99_ms`` from ``ttft_ms`` (names follow the ``quantiles``
argument: ``0.999`` gives ``latency.p99.9_ms``).

Two ways to compute them, same signals:

* exact (default): ``numpy.quantile`` (linear interpolation) on the window's
  values. Memory is the window itself, which the streaming layer holds anyway.
* ``sketch=True``: a :class:`~llmpulse.detectors.sketch.DDSketch` per field, within
  ``relative_accuracy`` (default 0.5 %) of the exact value, a few kB whatever
  the traffic. Choose it when partial windows from several partitions or
  workers are combined with :meth:`LatencyPercentiles.merge`.

All statuses count by default: a user waiting for a timeout waited, and a
timeout storm must move p99. Pass ``statuses=("ok",)`` to watch successful
requests only.

Guard: a tail quantile of a small window is just its maximum. A quantile
``q`` is emitted only when the window has at least ``min_tail`` events
expected above it (``n * (1 - q) >= min_tail``; with the default 1, p99 needs
100 events, p95 20, p50 2); the signals that are emitted list the suppressed
ones in ``detail["suppressed"]``.

>>> from llmpulse.detectors.testing import synthetic_batch
>>> sigs = LatencyPercentiles().update(synthetic_batch(500, seed=1))
>>> [(s.signal, round(s.value, 1), s.n) for s in sigs]  # doctest: +NORMALIZE_WHITESPACE
[('latency.p50_ms', 586.4, 500), ('latency.p95_ms', 1397.8, 500), ('latency.p99_ms', 1798.9, 500),
 ('latency.ttft_p50_ms', 117.3, 500), ('latency.ttft_p95_ms', 279.6, 500), ('latency.ttft_p99_ms', 359.8, 500)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Mergeable, Signal
from llmpulse.detectors.sketch import DDSketch

__all__ = ["LatencyPercentiles", "quantile_name"]

_FIELDS: tuple[tuple[str, str], ...] = (
    ("latency_ms", "latency.p{}_ms"),
    ("ttft_ms", "latency.ttft_p{}_ms"),
)


def quantile_name(q: float) -> str:
    """The percentile label of a quantile: ``0.99 -> "99"``, ``0.999 -> "99.9"``.

    >>> quantile_name(0.5), quantile_name(0.999)
    ('50', '99.9')
    """
    return f"{round(q * 100, 6):g}"


class LatencyPercentiles(Detector, Mergeable):
    """Percentiles of ``latency_ms`` and ``ttft_ms`` per window, exact or sketched.

    After :meth:`update`, the detector holds that window's values (or
    sketches); :meth:`merge` folds in another detector's window and
    :meth:`emit` gives the signals of the combined window.

    >>> from llmpulse.detectors.testing import synthetic_batch
    >>> whole = synthetic_batch(2000, seed=3)
    >>> a, b = LatencyPercentiles(sketch=True), LatencyPercentiles(sketch=True)
    >>> _ = a.update(whole.select(np.arange(2000) % 2 == 0))
    >>> _ = b.update(whole.select(np.arange(2000) % 2 == 1))
    >>> a.merge(b)
    >>> merged = {s.signal: s.value for s in a.emit(start=whole.start, end=whole.end)}
    >>> exact = {s.signal: s.value for s in LatencyPercentiles().update(whole)}
    >>> max(abs(merged[k] / exact[k] - 1) for k in exact) <= 0.005
    True
    """

    signals = (
        "latency.p50_ms",
        "latency.p95_ms",
        "latency.p99_ms",
        "latency.ttft_p50_ms",
        "latency.ttft_p95_ms",
        "latency.ttft_p99_ms",
    )

    def __init__(
        self,
        quantiles: Sequence[float] = (0.5, 0.95, 0.99),
        *,
        sketch: bool = False,
        relative_accuracy: float = 0.005,
        ttft: bool = True,
        statuses: Sequence[str] | None = None,
        min_tail: float = 1.0,
    ) -> None:
        qs = tuple(float(q) for q in quantiles)
        if not qs or any(not 0.0 <= q <= 1.0 for q in qs):
            raise ValueError(f"quantiles: need values in [0, 1], got {quantiles!r}")
        self.quantiles = qs
        self.sketch = bool(sketch)
        self.relative_accuracy = float(relative_accuracy)
        self.ttft = bool(ttft)
        self.statuses = None if statuses is None else tuple(statuses)
        self.min_tail = float(min_tail)
        self._state: dict[str, Any] = {}
        # Bounds of the held window; a fresh detector holds the empty window.
        self._start = math.inf
        self._end = -math.inf

    # -- window state -------------------------------------------------------

    def _fields(self) -> tuple[tuple[str, str], ...]:
        return _FIELDS if self.ttft else _FIELDS[:1]

    def update(self, batch: Batch) -> list[Signal]:
        mask: np.ndarray | None = None
        if self.statuses is not None:
            mask = np.isin(batch.strings("status"), self.statuses)
        self._state = {}
        for field, _ in self._fields():
            x = batch.numeric(field)
            if mask is not None:
                x = x[mask]
            x = x[~np.isnan(x)]
            if self.sketch:
                s = DDSketch(self.relative_accuracy)
                s.add(x)
                self._state[field] = s
            else:
                self._state[field] = x
        self._start, self._end = batch.start, batch.end
        return self.emit(start=batch.start, end=batch.end)

    def merge(self, other: LatencyPercentiles) -> None:
        """Fold in the window held by ``other`` (same configuration)."""
        if (other.sketch, other.quantiles, other.ttft) != (self.sketch, self.quantiles, self.ttft):
            raise ValueError("merge: detectors differ in sketch/quantiles/ttft settings")
        for field, _ in self._fields():
            mine, theirs = self._state.get(field), other._state.get(field)
            if theirs is None:
                continue
            if mine is None:
                self._state[field] = (
                    DDSketch.from_dict(theirs.to_dict()) if self.sketch else np.array(theirs)
                )
            elif self.sketch:
                mine.merge(theirs)
            else:
                self._state[field] = np.concatenate([mine, theirs])
        self._start = min(self._start, other._start)
        self._end = max(self._end, other._end)

    def emit(self, *, start: float | None = None, end: float | None = None) -> list[Signal]:
        """Signals of the window currently held (after update and merges).

        ``start``/``end`` default to the span of the windows folded in.
        """
        window = Batch(
            {},
            start=self._start if start is None else start,
            end=self._end if end is None else end,
        )
        out: list[Signal] = []
        for field, pattern in self._fields():
            data = self._state.get(field)
            if data is None:
                continue
            n = data.count if isinstance(data, DDSketch) else int(data.size)
            if n == 0:
                continue
            keep = [q for q in self.quantiles if n >= self._min_n(q)]
            if not keep:
                continue
            if isinstance(data, DDSketch):
                values = data.quantiles(keep)
                mean, vmax = data.sum / n, data.max
            else:
                values = np.quantile(data, keep)
                mean, vmax = float(data.mean()), float(data.max())
            suppressed = [pattern.format(quantile_name(q)) for q in self.quantiles if q not in keep]
            detail: dict[str, Any] = {
                "field": field,
                "method": "ddsketch" if self.sketch else "exact",
                "mean_ms": float(mean),
                "max_ms": float(vmax),
            }
            if self.sketch:
                detail["relative_accuracy"] = self.relative_accuracy
            if suppressed:
                detail["suppressed"] = suppressed
                detail["min_tail"] = self.min_tail
            for q, v in zip(keep, values, strict=True):
                out.append(
                    window.signal(
                        pattern.format(quantile_name(q)),
                        float(v),
                        n=n,
                        detail={**detail, "quantile": q},
                    )
                )
        return out

    def _min_n(self, q: float) -> int:
        if q >= 1.0:
            return 1
        return max(1, math.ceil(self.min_tail / (1.0 - q) - 1e-9))

    # -- persistence --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        state = {
            k: (v.to_dict() if isinstance(v, DDSketch) else [float(x) for x in v])
            for k, v in self._state.items()
        }
        return {
            "quantiles": list(self.quantiles),
            "sketch": self.sketch,
            "relative_accuracy": self.relative_accuracy,
            "ttft": self.ttft,
            "statuses": None if self.statuses is None else list(self.statuses),
            "min_tail": self.min_tail,
            "state": state,
            "start": None if math.isinf(self._start) else self._start,
            "end": None if math.isinf(self._end) else self._end,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.quantiles = tuple(state["quantiles"])
        self.sketch = bool(state["sketch"])
        self.relative_accuracy = float(state["relative_accuracy"])
        self.ttft = bool(state["ttft"])
        self.statuses = None if state["statuses"] is None else tuple(state["statuses"])
        self.min_tail = float(state["min_tail"])
        self._state = {
            k: (DDSketch.from_dict(v) if self.sketch else np.asarray(v, dtype=np.float64))
            for k, v in state["state"].items()
        }
        self._start = math.inf if state["start"] is None else float(state["start"])
        self._end = -math.inf if state["end"] is None else float(state["end"])
