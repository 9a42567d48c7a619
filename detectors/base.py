"""The one detector protocol shared by every family.

A detector consumes a window of events, already turned into columns
(:class:`Batch`), and returns the :class:`Signal` values it computed.
Detectors are pure computation: nothing here knows about Kafka, Faust or
ClickHouse. The streaming layer builds a :class:`Batch` once per window and
per (app, model, model_version) group, calls ``update`` on each detector and
labels the signals it gets back.

Extra abilities are small separate base classes, not flags:

* :class:`Mergeable` detectors combine partial state from several workers
  (a window spanning partitions);
* :class:`ChangeDetector` is the river-style online protocol
  (``update(x)`` then read ``drift_detected``) used for "it just got slower".

>>> batch = Batch.from_events(
...     [{"ts": 1000.0, "latency_ms": 120.0, "status": "ok"},
...      {"ts": 1001.0, "latency_ms": 80.0, "status": "error"}],
...     start=1000.0, end=1010.0)
>>> len(batch), batch.window_s
(2, 10.0)
>>> batch.numeric("latency_ms").tolist()
[120.0, 80.0]
>>> batch.signal("errors.rate", 0.5, n=2)
Signal(signal='errors.rate', value=0.5, n=2, dimension='', ts=1010.0, window_s=10.0, app='', model='', model_version='', detail={})
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

__all__ = [
    "Batch",
    "ChangeDetector",
    "Deferrable",
    "Detector",
    "Mergeable",
    "Signal",
    "parse_ts",
]

NUMERIC_FIELDS: tuple[str, ...] = (
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
"""Numeric fields of ``inference/v1`` that become float64 columns."""

CATEGORICAL_FIELDS: tuple[str, ...] = (
    "app",
    "model",
    "model_version",
    "status",
    "error_type",
    "request_id",
    "event_id",
    "prompt_version",
    "experiment",
    "variant",
)
"""String fields of ``inference/v1`` that become object columns."""

TEXT_FIELDS: tuple[str, ...] = ("prompt", "response")


def parse_ts(value: Any) -> float:
    """Event time as epoch seconds, from RFC 3339 text or epoch milliseconds.

    >>> parse_ts(1_700_000_000_000)
    1700000000.0
    >>> parse_ts("2023-11-14T22:13:20Z")
    1700000000.0
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1000.0
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        return datetime.fromisoformat(text).timestamp()
    raise ValueError(f"ts: expected RFC 3339 text or epoch milliseconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class Signal:
    """One computed value for one window, named ``<family>.<measure>``.

    ``ts`` is the window end (epoch seconds) and ``window_s`` its length;
    ``app``/``model``/``model_version`` are filled by the streaming layer,
    which knows the group a batch belongs to. ``detail`` holds what explains
    the value (reference size, p-value, worst examples, report path ...).
    """

    signal: str
    value: float
    n: int
    dimension: str = ""
    ts: float = 0.0
    window_s: float = 0.0
    app: str = ""
    model: str = ""
    model_version: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    def labelled(self, *, app: str, model: str, model_version: str) -> Signal:
        """The same signal with its group labels set.

        >>> Signal("latency.p50_ms", 1.0, 3).labelled(app="a", model="m", model_version="1")
        ... # doctest: +NORMALIZE_WHITESPACE
        Signal(signal='latency.p50_ms', value=1.0, n=3, dimension='', ts=0.0, window_s=0.0,
               app='a', model='m', model_version='1', detail={})
        """
        # the constructor, not dataclasses.replace: a third of the cost, for every
        # signal of every window
        return Signal(self.signal, self.value, self.n, self.dimension, self.ts, self.window_s,
                      app, model, model_version, self.detail)

    def to_row(self) -> dict[str, Any]:
        """The signal as a row of the ``signals`` table (detail stays a mapping)."""
        return {
            "ts": self.ts,
            "window_s": self.window_s,
            "app": self.app,
            "model": self.model,
            "model_version": self.model_version,
            "signal": self.signal,
            "dimension": self.dimension,
            "value": self.value,
            "n": self.n,
            "detail": dict(self.detail),
        }


class Batch:
    """A window of events as columns, built once so detectors stay vectorised.

    Numeric fields are float64 arrays with NaN where an event lacks the field;
    string fields are object arrays with ``""`` where missing. Nested fields
    are flattened: ``segment.<attr>``, ``feature.<name>``,
    ``prediction.label``/``prediction.score`` and, when feedback has been
    joined onto the inference, ``feedback.score``/``feedback.label``/
    ``feedback.hallucination`` (1.0, 0.0 or NaN), ``feedback.source`` and
    the list ``feedback.reference``. Texts (``prompt``,
    ``response``), ``context`` (list of passages) and ``token_logprobs`` stay
    Python lists, read only by the detectors that need them.

    A batch made by :meth:`from_events` builds each column the first time a
    detector reads it (most families read a few of them), from the events it
    keeps until then; the columns are the same as if all were built at once.
    """

    __slots__ = ("_columns", "_lists", "_events", "_lazy", "_nested", "_found", "start", "end", "size")

    def __init__(
        self,
        columns: Mapping[str, np.ndarray],
        lists: Mapping[str, list[Any]] | None = None,
        *,
        start: float,
        end: float,
    ) -> None:
        sizes = {len(v) for v in columns.values()} | {len(v) for v in (lists or {}).values()}
        if len(sizes) > 1:
            raise ValueError(f"columns differ in length: {sorted(sizes)}")
        self._columns: dict[str, np.ndarray] = dict(columns)
        self._lists: dict[str, list[Any]] = dict(lists or {})
        self._events: Sequence[Mapping[str, Any]] = ()
        # column or list name -> (event field, nested key or None, kind "f"/"s"/"l")
        self._lazy: dict[str, tuple[str, str | None, str]] = {}
        # nested field -> its mapping per event (``_EMPTY`` where missing)
        self._nested: dict[str, list[Mapping[str, Any]]] = {}
        self._found = True  # whether segment/feature/feedback columns are in _lazy
        self.start = float(start)
        self.end = float(end)
        self.size = sizes.pop() if sizes else 0

    # -- construction -------------------------------------------------------

    @classmethod
    def from_events(
        cls,
        events: Sequence[Mapping[str, Any]],
        *,
        start: float | None = None,
        end: float | None = None,
    ) -> Batch:
        """Columns from event dicts (``inference/v1``, optionally with a
        joined ``feedback`` mapping). ``start``/``end`` default to the span
        of event times."""
        n = len(events)
        ts_raw = [e.get("ts") for e in events]
        try:  # validated events carry epoch milliseconds
            ts = np.array(ts_raw, dtype=np.float64) / 1000.0
        except (TypeError, ValueError):
            ts = np.fromiter(
                (parse_ts(v) if v is not None else math.nan for v in ts_raw), float, n
            )
        if start is None or end is None:
            finite = ts[np.isfinite(ts)]
            lo = float(finite.min()) if finite.size else 0.0
            hi = float(finite.max()) if finite.size else 0.0
            start = lo if start is None else start
            end = hi if end is None else end
        batch = cls({"ts": ts}, start=start, end=end)
        batch.size = n
        batch._events = events
        batch._lazy = dict(_FIXED_LAZY)
        batch._found = False
        return batch

    def _discover(self) -> None:
        """Find the nested columns (segment, feature and feedback keys) of a lazy batch."""
        if self._found:
            return
        self._found = True
        lazy = self._lazy
        for key in sorted({k for sg in self._nested_of("segment") for k in sg}):
            lazy[f"segment.{key}"] = ("segment", key, "s")
        for key in sorted({k for f in self._nested_of("features") for k in f}):
            lazy[f"feature.{key}"] = ("features", key, "f")
        if any("feedback" in e for e in self._events):
            lazy.update(_FEEDBACK_LAZY)
        self._release()

    def _nested_of(self, field_: str) -> list[Mapping[str, Any]]:
        nested = self._nested.get(field_)
        if nested is None:
            nested = self._nested[field_] = [e.get(field_) or _EMPTY for e in self._events]
        return nested

    def _release(self) -> None:
        if not self._lazy and self._found:  # every column is built: let the events go
            self._events = ()
            self._nested = {}

    def _build(self, name: str) -> bool:
        """Build lazy column or list ``name``; False if the batch has no such column."""
        spec = self._lazy.get(name)
        if spec is None:
            if self._found:
                return False
            self._discover()
            spec = self._lazy.get(name)
            if spec is None:
                return False
        field_, key, kind = spec
        if key is None:
            values = [e.get(field_) for e in self._events]
        else:
            values = [d.get(key) for d in self._nested_of(field_)]
        del self._lazy[name]
        if kind == "l":
            self._lists[name] = values
        else:
            self._columns[name] = _floats(values) if kind == "f" else _strings(values)
        self._release()
        return True

    def _build_all(self) -> None:
        self._discover()
        for name in list(self._lazy):
            self._build(name)

    # -- access -------------------------------------------------------------

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"Batch(n={self.size}, start={self.start}, end={self.end}, columns={self.columns})"

    @property
    def window_s(self) -> float:
        return self.end - self.start

    @property
    def columns(self) -> list[str]:
        self._discover()
        lazy = [k for k, v in self._lazy.items() if v[2] != "l"]
        return sorted([*self._columns, *lazy])

    def has(self, name: str) -> bool:
        if name in self._columns or name in self._lists or name in self._lazy:
            return True
        self._discover()
        return name in self._lazy

    def _column(self, name: str) -> np.ndarray | None:
        col = self._columns.get(name)
        if col is None and (self._lazy or not self._found) and self._build(name):
            col = self._columns.get(name)
        return col

    def numeric(self, name: str) -> np.ndarray:
        """A float64 column (NaN where missing); all-NaN if no event has it."""
        col = self._column(name)
        if col is None:
            return np.full(self.size, np.nan)
        if col.dtype != np.float64:
            raise TypeError(f"column {name!r} is not numeric")
        return col

    def strings(self, name: str) -> np.ndarray:
        """An object column of str (``""`` where missing)."""
        col = self._column(name)
        if col is None:
            return np.full(self.size, "", dtype=object)
        return col

    def texts(self, name: str) -> list[Any]:
        """A per-event list column: ``prompt``, ``response``, ``context``, ``token_logprobs``."""
        got = self._lists.get(name)
        if got is None and (name in self._lazy or not self._found) and self._build(name):
            got = self._lists.get(name)
        return got if got is not None else [None] * self.size

    def prefixed(self, prefix: str) -> list[str]:
        """Names after ``prefix.`` of the columns that start with it, e.g. segment attributes."""
        p = prefix + "."
        return sorted(c[len(p):] for c in self.columns if c.startswith(p))

    def select(self, mask: np.ndarray) -> Batch:
        """The events where ``mask`` is true, same window."""
        self._build_all()
        idx = np.flatnonzero(mask)
        cols = {k: v[idx] for k, v in self._columns.items()}
        lists = {k: [v[i] for i in idx] for k, v in self._lists.items()}
        return Batch(cols, lists, start=self.start, end=self.end)

    def signal(
        self,
        name: str,
        value: float,
        *,
        n: int,
        dimension: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> Signal:
        """A signal stamped with this window's end and length."""
        return Signal(
            signal=name,
            value=float(value),
            n=int(n),
            dimension=dimension,
            ts=self.end,
            window_s=self.window_s,
            detail=dict(detail or {}),
        )


_EMPTY: Mapping[str, Any] = {}

_FIXED_LAZY: dict[str, tuple[str, str | None, str]] = {
    **{name: (name, None, "f") for name in NUMERIC_FIELDS},
    **{name: (name, None, "s") for name in CATEGORICAL_FIELDS},
    "prediction.label": ("prediction", "label", "s"),
    "prediction.score": ("prediction", "score", "f"),
    **{name: (name, None, "l") for name in (*TEXT_FIELDS, "context", "token_logprobs")},
}
"""Columns (and lists) every batch made from events has, built when first read."""

_STR = frozenset((str,))

_FEEDBACK_LAZY: dict[str, tuple[str, str | None, str]] = {
    "feedback.score": ("feedback", "score", "f"),
    "feedback.label": ("feedback", "label", "s"),
    "feedback.hallucination": ("feedback", "hallucination", "f"),
    "feedback.source": ("feedback", "source", "s"),
    **{f"feedback.judge_{k}": ("feedback", f"judge_{k}", "f")
       for k in ("groundedness", "relevance", "correctness", "groundedness_free", "score",
                 "hallucination")},
    "feedback.reference": ("feedback", "reference", "l"),
}


def _floats(values: list[Any]) -> np.ndarray:
    """Float64 column; None (and text) become NaN. Vectorised when nothing is missing."""
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array(
            [math.nan if v is None or isinstance(v, str) else float(v) for v in values],
            dtype=np.float64,
        )


def _strings(values: list[Any]) -> np.ndarray:
    """Object column of str; None becomes ``""``."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    if set(map(type, values)) - _STR:
        arr[:] = ["" if v is None else str(v) for v in values]
    return arr


class Detector(abc.ABC):
    """Consumes a window of events and returns the signals it computed.

    Constructor arguments are the whole configuration, stored under their own
    names. State that outlives a window (a reference distribution, an online
    change detector) must survive :meth:`snapshot` / :meth:`restore`, because
    workers restart. The default snapshot deep-copies the instance's
    attributes; detectors holding objects that cannot be copied override it.
    """

    #: signal names this detector can emit, for documentation and rules.
    signals: tuple[str, ...] = ()

    @abc.abstractmethod
    def update(self, batch: Batch) -> list[Signal]:
        """Signals for one window."""

    def snapshot(self) -> dict[str, Any]:
        """State to persist between worker restarts."""
        return copy.deepcopy(
            {k: v for k, v in vars(self).items() if not k.startswith("__")}
        )

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load state written by :meth:`snapshot`."""
        vars(self).update(copy.deepcopy(dict(state)))

    def forget_requests(self, request_ids: AbstractSet[str]) -> int:
        """Drop what the state that outlives a window holds of ``request_ids`` (an
        erasure); how many items went. Detectors that keep only counts, sums or
        sketches hold nothing of a request and keep the default."""
        return 0


class Mergeable(abc.ABC):
    """A detector whose per-partition state combines into one window's state.

    ``update`` on part of a window's events, ``merge`` of the other parts'
    detectors, then ``emit`` gives the signals ``update`` on the whole window
    would have given (exactly for counts and sums, within a sketch's
    accuracy for percentiles)."""

    @abc.abstractmethod
    def merge(self, other: Any) -> None:
        """Fold ``other``'s state into this one."""

    @abc.abstractmethod
    def emit(self, *, start: float | None = None, end: float | None = None) -> list[Signal]:
        """The signals of the merged state, for the window ``[start, end)``."""


class Deferrable(abc.ABC):
    """A detector whose costly part can run after the window has closed.

    :meth:`prepare` is cheap and runs where the window closes: it reads the
    batch and returns a small, picklable job (a bounded sample), or ``None``
    when the window gives nothing to compute. :meth:`complete` does the
    costly work on a job, elsewhere (another thread), and returns the
    signals ``update`` would have; jobs of one instance are completed in the
    order they were prepared. ``update(batch)`` is ``complete(prepare(batch))``.
    """

    @abc.abstractmethod
    def prepare(self, batch: Batch) -> Any:
        """The job of one window (cheap; no state that :meth:`complete` writes)."""

    @abc.abstractmethod
    def complete(self, job: Any) -> list[Signal]:
        """The signals of a prepared job (costly)."""

    def forget(self, job: Any, request_ids: AbstractSet[str]) -> tuple[Any, int]:
        """``job`` without what it holds of ``request_ids`` (an erasure: a waiting job is
        kept in snapshots), and how many items went. Jobs that hold nothing of a
        request (counts, sketches) are returned as they are."""
        return job, 0


class ChangeDetector(abc.ABC):
    """River-style online change detection over a scalar stream.

    ``update(x)`` consumes one value; ``drift_detected`` is true right after
    the value at which a change was found.
    """

    drift_detected: bool = False

    @abc.abstractmethod
    def update(self, x: float) -> None:
        """Consume one value."""

    def update_many(self, xs: Iterable[float]) -> list[int]:
        """Consume values in order; the positions at which a change was detected."""
        hits: list[int] = []
        for i, x in enumerate(xs):
            self.update(float(x))
            if self.drift_detected:
                hits.append(i)
        return hits
