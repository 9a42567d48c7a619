"""Agent-trace signals from the span rows: assemble traces, window them, run :mod:`llmpulse.detectors.agent`.

The OTLP receiver publishes one row per span on ``llmpulse.spans`` (keyed by
trace id); the agent that stores them hands each stored batch to
:class:`TraceWindows`, the pure core here (no Faust, clock injected), which:

* gathers the spans of each trace, one per ``span_id`` (the stream is
  at-least-once, so a replayed span counts once);
* calls a trace *done* ``settle_s`` after its last span arrived once its
  root span (no parent) is in, or ``idle_s`` after its last span when the
  root never comes (an exporter that dropped it, a trace cut by sampling);
* puts a done trace in the event-time window of its last span's end, per
  app; a window closes ``settle_s`` after its end in wall time. A trace done
  after its window closed counts in the next window still open, so a closed
  window's signals are never rewritten;
* runs :class:`~llmpulse.detectors.agent.AgentSteps` on each closed window and
  labels the signals with the app (``model`` and ``model_version`` stay
  empty: a trace calls several models).

Open traces live in memory only: a worker restart loses the signals of the
traces in flight (their rows are stored regardless). At most
``max_open_traces`` are held; past that, the longest-quiet trace is
treated as done.

>>> clock = [1000.0]
>>> tw = TraceWindows(AgentTraceSettings(window_s=10.0, settle_s=2.0), now=lambda: clock[0])
>>> tw.add([{"trace_id": "t1", "span_id": "b", "parent_span_id": "a", "app": "bot",
...          "step": "tool", "tool_name": "search", "duration_ms": 40.0, "ts": 1000.0,
...          "end_ts": 1000.04, "status": "ok"},
...         {"trace_id": "t1", "span_id": "a", "parent_span_id": "", "app": "bot",
...          "step": "agent", "agent_name": "helper", "duration_ms": 90.0, "ts": 999.99,
...          "end_ts": 1000.08, "status": "ok"}])
>>> tw.poll()
[]
>>> clock[0] = 1012.5
>>> sorted({(s.signal, s.dimension, s.app, s.ts) for s in tw.poll()})[:2]
[('agent.loop_rate', '', 'bot', 1010.0), ('agent.loop_rate', 'agent=helper', 'bot', 1010.0)]
>>> tw.poll(), tw.stats()["traces_done"]
([], 1)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmpulse.detectors.agent import AgentSteps, span_batch
from llmpulse.detectors.base import Signal

__all__ = ["AgentTraceSettings", "TraceWindows", "attach_agent_signals", "span_of_row"]

log = logging.getLogger(__name__)

COST_ATTRIBUTES = ("gen_ai.usage.cost", "gen_ai.usage.cost_usd")
"""Span attributes read as the span's cost in USD (OpenLIT records the first)."""


@dataclass(frozen=True, slots=True)
class AgentTraceSettings:
    """How traces are assembled and windowed for the ``agent.*`` signals."""

    window_s: float = 10.0
    """Window length (event time, aligned on the epoch)."""
    settle_s: float = 2.0
    """Quiet time after a trace's root span before the trace is done; also how long
    after its end a window waits for its traces."""
    idle_s: float = 60.0
    """Quiet time after which a trace whose root never came is done anyway."""
    max_open_traces: int = 50_000
    """Open traces held in memory; the longest-quiet one is closed past this."""
    max_spans_per_trace: int = 10_000
    """Spans kept per trace; more are counted and left out of the signals."""
    loop_calls: int = 5
    """Calls of one tool in one trace that count as a loop (``agent.loop_rate``)."""

    def __post_init__(self) -> None:
        for name in ("window_s", "settle_s", "idle_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"agent_traces.{name}: must be a positive number, got {v!r}")
        if self.max_open_traces < 1 or self.max_spans_per_trace < 1:
            raise ValueError("agent_traces.max_open_traces / max_spans_per_trace: must be >= 1")
        if self.loop_calls < 2:
            raise ValueError(f"agent_traces.loop_calls: must be at least 2, got {self.loop_calls}")


def span_of_row(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fields of a ``spans`` row the detector reads, with ``cost_usd`` from the
    span's attributes; None for a row without trace and span ids.

    >>> span_of_row({"trace_id": "t", "span_id": "s", "app": "a", "step": "llm",
    ...              "attributes": {"gen_ai.usage.cost": "0.0021"}})["cost_usd"]
    0.0021
    >>> span_of_row({"trace_id": "t", "span_id": "s", "attributes": {"gen_ai.usage.cost": "-1"}})
    {'trace_id': 't', 'span_id': 's', 'parent_span_id': '', 'app': '', 'step': '', 'tool_name': '', 'agent_name': '', 'status': '', 'error_type': '', 'ts': nan, 'end_ts': nan, 'duration_ms': nan, 'input_tokens': nan, 'output_tokens': nan, 'cost_usd': nan}
    """
    trace, span = row.get("trace_id"), row.get("span_id")
    if type(trace) is not str or type(span) is not str or not trace or not span:
        return None
    out: dict[str, Any] = {"trace_id": trace, "span_id": span}
    for name in ("parent_span_id", "app", "step", "tool_name", "agent_name", "status",
                 "error_type"):
        v = row.get(name)
        out[name] = v if type(v) is str else ""
    for name in ("ts", "end_ts", "duration_ms", "input_tokens", "output_tokens"):
        out[name] = _finite(row.get(name))
    cost = math.nan
    attrs = row.get("attributes")
    if isinstance(attrs, Mapping):
        for key in COST_ATTRIBUTES:
            c = _finite(attrs.get(key))
            if c >= 0:
                cost = c
                break
    out["cost_usd"] = cost
    return out


def _finite(v: Any) -> float:
    if isinstance(v, bool):
        return math.nan
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return math.nan
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return math.nan


ClosedWindow = tuple[str, float, list[Mapping[str, Any]]]
"""(app, window start, span rows) of a window that closed."""


@dataclass
class _Trace:
    app: str
    spans: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    """Rows by span id, as received."""
    last_seen: float = 0.0
    rooted: bool = False


class TraceWindows:
    """Traces assembled from span rows, windowed, turned into ``agent.*`` signals."""

    def __init__(self, settings: AgentTraceSettings = AgentTraceSettings(), *,
                 now: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.now = now
        self.detector = AgentSteps(loop_calls=settings.loop_calls)
        self._open: OrderedDict[str, _Trace] = OrderedDict()  # by last_seen, oldest first
        # (app, window start) -> spans of the done traces in it
        self._windows: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
        self._closed_until: dict[str, float] = {}  # per app: end of its last closed window
        self.counters: dict[str, int] = {"spans": 0, "duplicate_spans": 0, "dropped_spans": 0,
                                         "bad_rows": 0, "traces_done": 0, "traces_evicted": 0,
                                         "windows": 0, "signals": 0}

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Take in span rows (as the receiver publishes them)."""
        now = self.now()
        cap = self.settings.max_spans_per_trace
        counters = self.counters
        opened = self._open
        for row in rows:  # rows are kept as they are; span_of_row reads them at close
            tid, sid = row.get("trace_id"), row.get("span_id")
            if type(tid) is not str or type(sid) is not str or not tid or not sid:
                counters["bad_rows"] += 1
                continue
            tr = opened.pop(tid, None)
            if tr is None:
                app = row.get("app")
                tr = _Trace(app=app if type(app) is str else "")
            opened[tid] = tr  # moved to the end: most recently seen
            tr.last_seen = now
            if sid in tr.spans:
                counters["duplicate_spans"] += 1
            elif len(tr.spans) >= cap:
                counters["dropped_spans"] += 1
            else:
                tr.spans[sid] = row
                counters["spans"] += 1
            if not row.get("parent_span_id"):
                tr.rooted = True
        while len(self._open) > self.settings.max_open_traces:
            self.counters["traces_evicted"] += 1
            self._finish(self._open.popitem(last=False)[1])

    def add_lines(self, lines: Iterable[bytes]) -> None:
        """:meth:`add` for ``spans`` rows as JSON lines; lines that are no JSON object
        count as bad rows."""
        rows: list[dict[str, Any]] = []
        for line in lines:
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                row = None
            if type(row) is dict:
                rows.append(row)
            else:
                self.counters["bad_rows"] += 1
        self.add(rows)

    def poll(self) -> list[Signal]:
        """Signals of the windows that closed by now."""
        return self.signals(self.closed())

    def closed(self) -> list[ClosedWindow]:
        """Move the traces done by now into their windows; take the windows closed by
        now (cheap: the detector runs in :meth:`signals`, which may run in a thread)."""
        now = self.now()
        st = self.settings
        done = [tid for tid, tr in self._open.items()
                if now - tr.last_seen >= (st.settle_s if tr.rooted else st.idle_s)]
        for tid in done:
            self._finish(self._open.pop(tid))
        return [self._close(key) for key in
                sorted(k for k in self._windows if now >= k[1] + st.window_s + st.settle_s)]

    def flush(self) -> list[Signal]:
        """Every open trace done and every window closed now (clean shutdown)."""
        while self._open:
            self._finish(self._open.popitem(last=False)[1])
        return self.signals([self._close(key) for key in sorted(self._windows)])

    def signals(self, windows: list[ClosedWindow]) -> list[Signal]:
        """The ``agent.*`` signals of closed windows, labelled with their app."""
        out: list[Signal] = []
        for app, start, rows in windows:
            spans = [s for s in map(span_of_row, rows) if s is not None]
            spans.sort(key=lambda r: (r["trace_id"], r["span_id"]))
            got = self.detector.update(
                span_batch(spans, start=start, end=start + self.settings.window_s))
            out += [s.labelled(app=app, model="", model_version="") for s in got]
        self.counters["signals"] += len(out)
        return out

    def stats(self) -> dict[str, int]:
        return {**self.counters, "open_traces": len(self._open), "open_windows": len(self._windows)}

    def _finish(self, tr: _Trace) -> None:
        end = -math.inf
        for row in tr.spans.values():
            e = row.get("end_ts")
            if isinstance(e, (float, int)) and not isinstance(e, bool) and end < e < math.inf:
                end = float(e)
        if end == -math.inf:
            end = self.now()
        w = self.settings.window_s
        start = max(math.floor(end / w) * w, self._closed_until.get(tr.app, -math.inf))
        self._windows.setdefault((tr.app, start), []).extend(tr.spans.values())
        self.counters["traces_done"] += 1

    def _close(self, key: tuple[str, float]) -> ClosedWindow:
        app, start = key
        rows = self._windows.pop(key)
        end = start + self.settings.window_s
        self._closed_until[app] = max(self._closed_until.get(app, -math.inf), end)
        self.counters["windows"] += 1
        return app, start, rows


Emit = Callable[[list[Signal]], Awaitable[None]]


def attach_agent_signals(app: Any, emit: Emit, *, settings: AgentTraceSettings,
                         poll_s: float = 1.0) -> TraceWindows:
    """A timer on a Faust app that sends the closed windows' signals to ``emit`` (the
    signal agents' sink, topic and alert rules). Feed the windows with
    :meth:`TraceWindows.add_lines` (the OTLP receiver's span-row agent does, once the
    rows are stored); returns them, also for their :meth:`~TraceWindows.stats`."""
    windows = TraceWindows(settings)

    @app.timer(poll_s)
    async def agent_trace_windows() -> None:
        closed = windows.closed()
        if closed:  # the detector off the event loop, which serves the receiver
            signals = await asyncio.to_thread(windows.signals, closed)
            if signals:
                await emit(signals)

    return windows
