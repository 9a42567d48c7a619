"""What the count-based quality detectors share: window bounds, merge, persistence."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any

from llmpulse.detectors.base import Batch, Detector, Mergeable, Signal

__all__ = ["CountingDetector"]


class CountingDetector(Detector, Mergeable):
    """A window detector whose state is the numeric fields named in ``_counts``.

    Subclasses fill the counts in :meth:`_count` and turn them into signals in
    :meth:`_signals`; merging adds the counts, persistence stores them with the
    configuration (``_config``) and the window bounds.
    """

    _counts: tuple[str, ...] = ()
    _config: tuple[str, ...] = ()

    def _reset(self) -> None:
        for name in self._counts:
            setattr(self, "_" + name, 0.0)
        self._start = math.inf
        self._end = -math.inf

    @abc.abstractmethod
    def _count(self, batch: Batch) -> None:
        """Set the counts from one window."""

    @abc.abstractmethod
    def _signals(self, window: Batch) -> list[Signal]:
        """Signals of the counts held, stamped with ``window``'s bounds."""

    def update(self, batch: Batch) -> list[Signal]:
        self._reset()
        self._count(batch)
        self._start, self._end = batch.start, batch.end
        return self.emit()

    def merge(self, other: Any) -> None:
        """Fold in the counts of ``other``'s window (same class)."""
        if type(other) is not type(self):
            raise TypeError(f"merge: expected {type(self).__name__}, got {type(other).__name__}")
        for name in self._counts:
            key = "_" + name
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self._start = min(self._start, other._start)
        self._end = max(self._end, other._end)

    def emit(self, *, start: float | None = None, end: float | None = None) -> list[Signal]:
        """Signals of the counts currently held (after update and merges)."""
        lo = self._start if start is None else start
        hi = self._end if end is None else end
        if math.isinf(lo) or math.isinf(hi):
            return []
        return self._signals(Batch({}, start=lo, end=hi))

    def snapshot(self) -> dict[str, Any]:
        return {
            "config": {name: getattr(self, name) for name in self._config},
            "counts": {name: float(getattr(self, "_" + name)) for name in self._counts},
            "start": None if math.isinf(self._start) else self._start,
            "end": None if math.isinf(self._end) else self._end,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.__init__(**state["config"])  # type: ignore[misc]
        for name, value in state["counts"].items():
            setattr(self, "_" + name, float(value))
        self._start = math.inf if state["start"] is None else float(state["start"])
        self._end = -math.inf if state["end"] is None else float(state["end"])
