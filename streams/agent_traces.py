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
  labels the signals with the app. ``model`` and ``model_version`` stay
  empty on purpose: the signals measure a request's steps, and one request
  calls several models (a planner, an answerer, an embedder); a label taken
  from the window's model calls would change with the mix of requests in the
  window and split one measure into several alert series.

Open traces live in memory only: a worker restart loses the signals of the
traces in flight (their rows are stored regardless). Memory is bounded: a
span is held as the few fields the detector reads (not its row's
attributes), at most ``max_open_traces`` traces and ``max_open_spans``
spans are open, and past either cap the longest-quiet trace is treated as
done now (``traces_evicted`` in :meth:`TraceWindows.stats`); done traces
wait for their window's close, at most ``max_window_spans`` spans in all,
past which the oldest window closes early (``windows_forced``).

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
    max_open_spans: int = 500_000
    """Spans of open traces held in memory (about 1 KB each); the longest-quiet
    traces are closed past this."""
    max_spans_per_trace: int = 10_000
    """Spans kept per trace; more are counted and left out of the signals."""
    max_window_spans: int = 1_000_000
    """Spans of done traces waiting for their window to close; the oldest window
    closes early past this."""
    loop_calls: int = 5
    """Calls of one tool in one trace that count as a loop (``agent.loop_rate``)."""

    def __post_init__(self) -> None:
        for name in ("window_s", "settle_s", "idle_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"agent_traces.{name}: must be a positive number, got {v!r}")
        for name in ("max_open_traces", "max_open_spans", "max_spans_per_trace",
                     "max_window_spans"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise ValueError(f"agent_traces.{name}: must be an integer >= 1, got {v!r}")
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
    t = type(v)
    if t is float:  # the usual case, first: this runs for five fields of every span
        return v if math.isfinite(v) else math.nan
    if t is int:
        return float(v)
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


ClosedWindow = tuple[str, float, list[dict[str, Any]]]
"""(app, window start, spans as :func:`span_of_row` reads them) of a window that closed."""


@dataclass
class _Trace:
    app: str
    spans: dict[str, dict[str, Any]] = field(default_factory=dict)
    """By span id: the fields of its row the detector reads (:func:`span_of_row`)."""
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
        self._windows: dict[tuple[str, float], list[dict[str, Any]]] = {}
        self._closed_until: dict[str, float] = {}  # per app: end of its last closed window
        self._open_spans = 0  # spans held by the open traces
        self._window_spans = 0  # spans held by the windows not yet closed
        self._forced: list[ClosedWindow] = []  # closed early, for the next closed()
        self.counters: dict[str, int] = {"spans": 0, "duplicate_spans": 0, "dropped_spans": 0,
                                         "bad_rows": 0, "traces_done": 0, "traces_evicted": 0,
                                         "windows": 0, "windows_forced": 0, "signals": 0}

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Take in span rows (as the receiver publishes them)."""
        now = self.now()
        cap = self.settings.max_spans_per_trace
        counters = self.counters
        opened = self._open
        for row in rows:
            span = span_of_row(row)
            if span is None:
                counters["bad_rows"] += 1
                continue
            tid, sid = span["trace_id"], span["span_id"]
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
                tr.spans[sid] = span
                counters["spans"] += 1
                self._open_spans += 1
            if not span["parent_span_id"]:
                tr.rooted = True
        st = self.settings
        while len(opened) > st.max_open_traces or self._open_spans > st.max_open_spans:
            counters["traces_evicted"] += 1
            self._finish(opened.popitem(last=False)[1])

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
        forced, self._forced = self._forced, []
        return forced + [self._close(key) for key in sorted(
            k for k in self._windows if now >= k[1] + st.window_s + st.settle_s)]

    def flush(self) -> list[Signal]:
        """Every open trace done and every window closed now (clean shutdown)."""
        while self._open:
            self._finish(self._open.popitem(last=False)[1])
        forced, self._forced = self._forced, []
        return self.signals(forced + [self._close(key) for key in sorted(self._windows)])

    def signals(self, windows: list[ClosedWindow]) -> list[Signal]:
        """The ``agent.*`` signals of closed windows, labelled with their app."""
        out: list[Signal] = []
        for app, start, spans in windows:
            spans.sort(key=lambda r: (r["trace_id"], r["span_id"]))
            got = self.detector.update(
                span_batch(spans, start=start, end=start + self.settings.window_s))
            out += [s.labelled(app=app, model="", model_version="") for s in got]
        self.counters["signals"] += len(out)
        return out

    def stats(self) -> dict[str, int]:
        return {**self.counters, "open_traces": len(self._open), "open_spans": self._open_spans,
                "open_windows": len(self._windows), "window_spans": self._window_spans}

    def _finish(self, tr: _Trace) -> None:
        self._open_spans -= len(tr.spans)
        end = -math.inf
        for span in tr.spans.values():
            e = span["end_ts"]  # a float, nan when the row had none
            if end < e < math.inf:
                end = e
        if end == -math.inf:
            end = self.now()
        w = self.settings.window_s
        start = max(math.floor(end / w) * w, self._closed_until.get(tr.app, -math.inf))
        self._windows.setdefault((tr.app, start), []).extend(tr.spans.values())
        self._window_spans += len(tr.spans)
        self.counters["traces_done"] += 1
        while self._window_spans > self.settings.max_window_spans and self._windows:
            # the oldest window closes early; its signals come with the next closed()
            self.counters["windows_forced"] += 1
            self._forced.append(self._close(min(self._windows, key=lambda k: k[1])))

    def _close(self, key: tuple[str, float]) -> ClosedWindow:
        app, start = key
        rows = self._windows.pop(key)
        self._window_spans -= len(rows)
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
