"""Agent-trace signals: the steps of traced requests, per step kind, tool and agent.

Input is a window of ``spans`` rows (one per OpenTelemetry span, built by
:func:`span_batch`) of *finished* traces: every span of a trace is in the
same window, which the streaming layer guarantees by holding a trace until
it is done. A step is an LLM call (``llm``), a tool call (``tool``), a
retrieval (``retrieval``), an agent invocation (``agent``) or another span
(``other``, e.g. the HTTP server span around them).

Signals (``dimension`` names what the value is about):

* ``agent.step_p50_ms`` / ``agent.step_p95_ms`` / ``agent.step_p99_ms``:
  span duration percentiles per ``step=<kind>``, ``tool=<name>`` and
  ``agent=<name>``;
* ``agent.tool_error_rate``: share of tool calls whose span failed, over
  all tools (dimension ``""``) and per ``tool=<name>``;
* ``agent.steps_per_trace``: mean work steps (LLM calls, tool calls and
  retrievals) per trace, over all traces and per ``agent=<name>`` (the
  first agent a trace invokes);
* ``agent.loop_rate``: share of traces in which one tool was called at
  least ``loop_calls`` times, with the looping traces in ``detail``;
* ``agent.tool_calls_max``: most calls of one tool in one trace, per
  ``tool=<name>`` (the trace id in ``detail``; ``n`` = traces calling the tool);
* ``agent.tokens_per_trace``: mean input + output tokens per trace;
* ``agent.cost_per_trace_usd``: mean cost per trace, over the traces whose
  spans carry a cost (``cost_usd``; OpenLIT records ``gen_ai.usage.cost``).

>>> rows = [
...     {"trace_id": "t1", "span_id": "a", "step": "agent", "agent_name": "planner",
...      "duration_ms": 900.0, "ts": 10.0},
...     {"trace_id": "t1", "span_id": "b", "step": "llm", "duration_ms": 400.0,
...      "input_tokens": 30, "output_tokens": 5, "ts": 10.1},
...     {"trace_id": "t1", "span_id": "c", "step": "tool", "tool_name": "search",
...      "duration_ms": 100.0, "status": "error", "ts": 10.5},
...     {"trace_id": "t2", "span_id": "d", "step": "tool", "tool_name": "search",
...      "duration_ms": 300.0, "ts": 11.0},
... ]
>>> out = {(s.signal, s.dimension): s.value
...        for s in AgentSteps().update(span_batch(rows, start=0.0, end=60.0))}
>>> out[("agent.step_p50_ms", "tool=search")], out[("agent.tool_error_rate", "tool=search")]
(200.0, 0.5)
>>> out[("agent.steps_per_trace", "")], out[("agent.steps_per_trace", "agent=planner")]
(1.5, 2.0)
>>> out[("agent.tokens_per_trace", "")], out[("agent.loop_rate", "")]
(17.5, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llmpulse.detectors.base import Batch, Detector, Signal

__all__ = ["AgentSteps", "SPAN_NUMERIC", "SPAN_STRINGS", "WORK_STEPS", "span_batch"]

SPAN_STRINGS: tuple[str, ...] = ("trace_id", "span_id", "step", "tool_name", "agent_name",
                                 "status", "error_type")
"""String columns of a span batch (``""`` where a row lacks the field)."""
SPAN_NUMERIC: tuple[str, ...] = ("ts", "duration_ms", "input_tokens", "output_tokens",
                                 "cost_usd")
"""Numeric columns of a span batch (NaN where a row lacks the field); ``ts`` in epoch seconds."""
WORK_STEPS: tuple[str, ...] = ("llm", "tool", "retrieval")
"""The steps counted by ``agent.steps_per_trace`` (agent spans only contain them)."""

_PERCENTILES = ((50.0, "agent.step_p50_ms"), (95.0, "agent.step_p95_ms"),
                (99.0, "agent.step_p99_ms"))


def span_batch(rows: Sequence[Mapping[str, Any]], *, start: float, end: float) -> Batch:
    """A window of ``spans`` rows as columns (see :data:`SPAN_STRINGS`, :data:`SPAN_NUMERIC`).

    >>> b = span_batch([{"trace_id": "t", "duration_ms": 5, "step": "llm"}], start=0, end=10)
    >>> b.strings("step").tolist(), b.numeric("duration_ms").tolist(), b.numeric("cost_usd")
    (['llm'], [5.0], array([nan]))
    """
    cols: dict[str, np.ndarray] = {}
    for name in SPAN_STRINGS:
        arr = np.empty(len(rows), dtype=object)
        arr[:] = [_text(r.get(name)) for r in rows]
        cols[name] = arr
    for name in SPAN_NUMERIC:
        cols[name] = np.array([_number(r.get(name)) for r in rows], dtype=np.float64)
    return Batch(cols, start=start, end=end)


def _text(v: Any) -> str:
    return v if type(v) is str else ("" if v is None else str(v))


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


class AgentSteps(Detector):
    """Step latency, tool errors, steps, loops, tokens and cost of agent traces.

    ``loop_calls``: calls of one tool in one trace that count as a loop.
    ``min_n``: fewest spans (or traces, for the per-trace measures) behind a
    signal; a dimension with fewer emits nothing. ``top_traces``: how many
    looping traces ``detail`` lists.

    A window of inference events (no ``trace_id`` column) gives no signal.
    """

    signals = ("agent.step_p50_ms", "agent.step_p95_ms", "agent.step_p99_ms",
               "agent.tool_error_rate", "agent.steps_per_trace", "agent.loop_rate",
               "agent.tool_calls_max", "agent.tokens_per_trace", "agent.cost_per_trace_usd")

    def __init__(self, *, loop_calls: int = 5, min_n: int = 1, top_traces: int = 5) -> None:
        if loop_calls < 2:
            raise ValueError(f"loop_calls: must be at least 2, got {loop_calls}")
        self.loop_calls = int(loop_calls)
        self.min_n = max(1, int(min_n))
        self.top_traces = int(top_traces)

    def update(self, batch: Batch) -> list[Signal]:
        if not batch.has("trace_id") or len(batch) == 0:
            return []
        traces = batch.strings("trace_id")
        keep = traces != ""
        if not keep.any():
            return []
        if not keep.all():
            batch = batch.select(keep)
            traces = batch.strings("trace_id")
        out: list[Signal] = []
        out += self._latency(batch)
        out += self._tool_errors(batch)
        out += self._per_trace(batch, traces)
        return out

    # -- per span -------------------------------------------------------------------------

    def _latency(self, batch: Batch) -> list[Signal]:
        dur = batch.numeric("duration_ms")
        step = batch.strings("step")
        out: list[Signal] = []
        for dim, mask in self._dimensions(batch, step):
            values = dur[mask & np.isfinite(dur)]
            if values.size < self.min_n:
                continue
            qs = np.percentile(values, [p for p, _ in _PERCENTILES])
            for (_, name), q in zip(_PERCENTILES, qs, strict=True):
                out.append(batch.signal(name, float(q), n=int(values.size), dimension=dim,
                                        detail={"max_ms": float(values.max())}))
        return out

    @staticmethod
    def _dimensions(batch: Batch, step: np.ndarray) -> list[tuple[str, np.ndarray]]:
        dims: list[tuple[str, np.ndarray]] = []
        for kind in sorted(set(step.tolist()) - {""}):
            dims.append((f"step={kind}", step == kind))
        for field, prefix, kind in (("tool_name", "tool", "tool"), ("agent_name", "agent", "agent")):
            names = batch.strings(field)
            of_kind = step == kind
            for name in sorted(set(names[of_kind].tolist()) - {""}):
                dims.append((f"{prefix}={name}", of_kind & (names == name)))
        return dims

    def _tool_errors(self, batch: Batch) -> list[Signal]:
        is_tool = batch.strings("step") == "tool"
        if not is_tool.any():
            return []
        failed = np.isin(batch.strings("status"), ("error", "timeout"))
        names = batch.strings("tool_name")
        kinds = batch.strings("error_type")
        out: list[Signal] = []
        dims = [("", is_tool)] + [(f"tool={t}", is_tool & (names == t))
                                  for t in sorted(set(names[is_tool].tolist()) - {""})]
        for dim, mask in dims:
            n = int(np.count_nonzero(mask))
            if n < self.min_n:
                continue
            bad = mask & failed
            errors = int(np.count_nonzero(bad))
            types: dict[str, int] = {}
            for k in kinds[bad].tolist():
                types[k or "unknown"] = types.get(k or "unknown", 0) + 1
            out.append(batch.signal("agent.tool_error_rate", errors / n, n=n, dimension=dim,
                                    detail={"errors": errors, "error_types": types}))
        return out

    # -- per trace ------------------------------------------------------------------------

    def _per_trace(self, batch: Batch, traces: np.ndarray) -> list[Signal]:
        ids, inverse = np.unique(traces, return_inverse=True)
        n_traces = ids.size
        step = batch.strings("step")
        work = np.isin(step, WORK_STEPS)
        steps = np.bincount(inverse, weights=work.astype(np.float64), minlength=n_traces)
        tokens_col = (np.nan_to_num(batch.numeric("input_tokens"))
                      + np.nan_to_num(batch.numeric("output_tokens")))
        tokens = np.bincount(inverse, weights=np.where(step == "llm", tokens_col, 0.0),
                             minlength=n_traces)
        cost_col = batch.numeric("cost_usd")
        priced_span = np.isfinite(cost_col)
        cost = np.bincount(inverse, weights=np.where(priced_span, cost_col, 0.0),
                           minlength=n_traces)
        priced = np.bincount(inverse, weights=priced_span.astype(np.float64),
                             minlength=n_traces) > 0
        agent_of = self._agent_of(batch, inverse, n_traces)
        loops, max_calls = self._loops(batch, inverse, ids)
        looping = np.zeros(n_traces, dtype=bool)
        for i, _tool, _calls in loops:
            looping[i] = True

        out: list[Signal] = []
        groups = [("", np.ones(n_traces, dtype=bool))] + [
            (f"agent={a}", agent_of == a) for a in sorted(set(agent_of.tolist()) - {""})]
        for dim, mask in groups:
            n = int(np.count_nonzero(mask))
            if n < self.min_n:
                continue
            s = steps[mask]
            out.append(batch.signal("agent.steps_per_trace", float(s.mean()), n=n, dimension=dim,
                                    detail={"p50": float(np.percentile(s, 50)),
                                            "p95": float(np.percentile(s, 95)),
                                            "max": float(s.max())}))
            t = tokens[mask]
            out.append(batch.signal("agent.tokens_per_trace", float(t.mean()), n=n, dimension=dim,
                                    detail={"max": float(t.max()), "total": float(t.sum())}))
            hits = [(str(ids[i]), tool, calls) for i, tool, calls in loops if mask[i]]
            hits.sort(key=lambda h: (-h[2], h[0], h[1]))
            out.append(batch.signal(
                "agent.loop_rate", float(np.count_nonzero(looping & mask)) / n, n=n,
                dimension=dim,
                detail={"loop_calls": self.loop_calls,
                        "loops": [{"trace_id": t_, "tool": tool, "calls": c}
                                  for t_, tool, c in hits[: self.top_traces]]}))
            pm = mask & priced
            n_priced = int(np.count_nonzero(pm))
            if n_priced >= self.min_n:
                c = cost[pm]
                out.append(batch.signal("agent.cost_per_trace_usd", float(c.mean()), n=n_priced,
                                        dimension=dim,
                                        detail={"total_usd": float(c.sum()), "traces": n}))
        for tool, (calls, trace, n_traces) in sorted(max_calls.items()):
            if n_traces >= self.min_n:
                out.append(batch.signal("agent.tool_calls_max", float(calls), n=n_traces,
                                        dimension=f"tool={tool}", detail={"trace_id": trace}))
        return out

    @staticmethod
    def _agent_of(batch: Batch, inverse: np.ndarray, n_traces: int) -> np.ndarray:
        """Per trace, the name of its earliest agent span ("" when it has none)."""
        agent_of = np.full(n_traces, "", dtype=object)
        is_agent = (batch.strings("step") == "agent") & (batch.strings("agent_name") != "")
        if not is_agent.any():
            return agent_of
        idx = np.flatnonzero(is_agent)
        ts = np.nan_to_num(batch.numeric("ts")[idx], nan=np.inf)
        idx = idx[np.argsort(ts, kind="stable")]
        traces, first = np.unique(inverse[idx], return_index=True)  # earliest per trace
        agent_of[traces] = batch.strings("agent_name")[idx[first]]
        return agent_of

    def _loops(self, batch: Batch, inverse: np.ndarray, ids: np.ndarray,
               ) -> tuple[list[tuple[int, str, int]], dict[str, tuple[int, str, int]]]:
        """Looping (trace index, tool, calls) and, per tool, its most calls in one trace
        (calls, that trace, traces calling the tool)."""
        names = batch.strings("tool_name")
        is_tool = (batch.strings("step") == "tool") & (names != "")
        if not is_tool.any():
            return [], {}
        tools, tool_idx = np.unique(names[is_tool], return_inverse=True)
        pair = inverse[is_tool].astype(np.int64) * tools.size + tool_idx
        pairs, counts = np.unique(pair, return_counts=True)
        loops: list[tuple[int, str, int]] = []
        best: dict[str, tuple[int, str, int]] = {}
        for p, c in zip(pairs.tolist(), counts.tolist(), strict=True):
            trace_i, tool = divmod(p, tools.size)
            name = str(tools[tool])
            if c >= self.loop_calls:
                loops.append((trace_i, name, c))
            cur = best.get(name)
            tid = str(ids[trace_i])
            if cur is None:
                best[name] = (c, tid, 1)
            elif c > cur[0] or (c == cur[0] and tid < cur[1]):
                best[name] = (c, tid, cur[2] + 1)
            else:
                best[name] = (cur[0], cur[1], cur[2] + 1)
        return loops, best
