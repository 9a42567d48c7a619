"""TraceWindows: traces assembled from span rows and windowed on an injected clock."""

from __future__ import annotations

import pytest

from llmpulse.streams.agent_traces import AgentTraceSettings, TraceWindows


def _span(trace: str, span: str, parent: str, end: float, *, app: str = "bot",
          tool: str = "search") -> dict:
    return {"trace_id": trace, "span_id": span, "parent_span_id": parent, "app": app,
            "step": "tool" if parent else "agent", "tool_name": tool if parent else "",
            "agent_name": "" if parent else "helper", "duration_ms": 10.0, "ts": end - 0.01,
            "end_ts": end, "status": "ok", "attributes": {}}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _windows(clock: Clock, **kw: float) -> TraceWindows:
    return TraceWindows(AgentTraceSettings(window_s=10.0, settle_s=2.0, idle_s=30.0, **kw),
                        now=clock)


def _loops(signals: list) -> dict[tuple[str, float], float]:
    return {(s.app, s.ts): s.value for s in signals
            if s.signal == "agent.steps_per_trace" and s.dimension == ""}


def test_a_rooted_trace_closes_with_its_window_and_replayed_spans_count_once() -> None:
    clock = Clock(1001.0)
    tw = _windows(clock)
    rows = [_span("t1", f"s{i}", "r", 1001.0) for i in range(3)] + [_span("t1", "r", "", 1001.5)]
    tw.add(rows)
    tw.add(rows[:2])  # at-least-once: the same spans again
    assert tw.stats()["duplicate_spans"] == 2
    clock.t = 1011.9  # window [1000, 1010) waits settle_s after its end
    assert tw.poll() == []
    clock.t = 1012.0
    assert _loops(tw.poll()) == {("bot", 1010.0): 3.0}
    assert tw.stats()["open_traces"] == 0 and tw.stats()["open_windows"] == 0


def test_a_trace_without_its_root_waits_idle_s() -> None:
    clock = Clock(1001.0)
    tw = _windows(clock)
    tw.add([_span("t1", "a", "r", 1001.0)])
    clock.t = 1020.0
    assert tw.poll() == [] and tw.stats()["open_traces"] == 1
    tw.add([_span("t1", "b", "r", 1001.2)])  # a late span resets the quiet time
    clock.t = 1049.9
    assert tw.poll() == []
    clock.t = 1050.0  # its window's end is long past: it closes as soon as the trace is done
    assert _loops(tw.poll()) == {("bot", 1010.0): 2.0}


def test_a_trace_done_after_its_window_closed_goes_to_the_next_window() -> None:
    clock = Clock(1001.0)
    tw = _windows(clock)
    tw.add([_span("t1", "x", "", 1001.0)])
    tw.add([_span("t2", "y", "q", 1002.0)])  # its root never comes
    clock.t = 1013.0
    assert _loops(tw.poll()) == {("bot", 1010.0): 0.0}  # t1 only (an agent span, no work step)
    clock.t = 1033.0  # t2 is done now; [1000, 1010) is closed, so it lands in [1010, 1020)
    assert _loops(tw.poll()) == {("bot", 1020.0): 1.0}


def test_apps_get_their_own_windows() -> None:
    clock = Clock(1001.0)
    tw = _windows(clock)
    tw.add([_span("t1", "r", "", 1001.0, app="a"), _span("t2", "r", "", 1001.0, app="b"),
            _span("t2", "s", "r", 1001.0, app="b")])
    clock.t = 1012.0
    assert _loops(tw.poll()) == {("a", 1010.0): 0.0, ("b", 1010.0): 1.0}


def test_limits_and_bad_rows() -> None:
    clock = Clock(1001.0)
    tw = _windows(clock, max_open_traces=2, max_spans_per_trace=2)
    tw.add([_span("t1", "a", "r", 1001.0), _span("t1", "b", "r", 1001.0),
            _span("t1", "c", "r", 1001.0), {"trace_id": 5, "span_id": "x"}, {"app": "x"}])
    assert tw.stats()["dropped_spans"] == 1 and tw.stats()["bad_rows"] == 2
    tw.add([_span("t2", "a", "r", 1001.0), _span("t3", "a", "r", 1001.0)])
    assert tw.stats()["traces_evicted"] == 1 and tw.stats()["open_traces"] == 2
    assert _loops(tw.flush()) == {("bot", 1010.0): 4 / 3}
    with pytest.raises(ValueError, match="agent_traces.window_s"):
        AgentTraceSettings(window_s=0)
    with pytest.raises(ValueError, match="agent_traces.loop_calls"):
        AgentTraceSettings(loop_calls=1)


def test_default_rules_breach_on_a_looping_agent_and_a_failing_tool() -> None:
    from llmpulse.detectors.agent import AgentSteps
    from llmpulse.streams.rules import Rules, Verdict

    rules = Rules.default(env={})
    clock = Clock(1001.0)
    tw = _windows(clock)
    rows = []
    for t in range(40):  # 40 traces; every fourth calls search 6 times; lookup fails in 1 of 3
        tid = f"{t:032x}"
        rows.append(_span(tid, "root", "", 1001.0))
        for i in range(6 if t % 4 == 0 else 1):
            rows.append(_span(tid, f"s{i}", "root", 1001.0))
        rows.append({**_span(tid, "lk", "root", 1001.0, tool="lookup"),
                     "status": "error" if t % 3 == 0 else "ok"})
    tw.add(rows)
    clock.t = 1012.0
    signals = {(s.signal, s.dimension): s for s in tw.poll()}
    loops = signals[("agent.loop_rate", "")]
    assert loops.value == 0.25 and loops.n == 40
    assert [r.name for r in rules.matching(loops)] == ["agent-loops"]
    assert rules["agent-loops"].evaluate(loops) is Verdict.BREACH
    errs = signals[("agent.tool_error_rate", "tool=lookup")]
    assert rules["agent-tool-errors"].evaluate(errs) is Verdict.BREACH
    assert rules["agent-tool-errors"].evaluate(
        signals[("agent.tool_error_rate", "tool=search")]) is Verdict.HEALTHY
    assert not rules.matching(signals[("agent.loop_rate", "agent=helper")])
    assert set(AgentSteps.signals) >= {s for s, _ in signals}


def test_rows_as_json_lines() -> None:
    import orjson

    clock = Clock(1001.0)
    tw = _windows(clock)
    tw.add_lines([b"not json", b"[1, 2]", orjson.dumps(_span("t1", "r", "", 1001.0)),
                  orjson.dumps(_span("t1", "s", "r", 1001.0))])
    assert tw.stats()["bad_rows"] == 2 and tw.stats()["spans"] == 2
    clock.t = 1012.0
    assert _loops(tw.poll()) == {("bot", 1010.0): 1.0}


def test_open_spans_are_capped_and_evictions_counted() -> None:
    """Memory of the open traces is bounded by spans as well as traces: past
    ``max_open_spans`` the longest-quiet traces are treated as done (counted), and a
    span is held without its row's attributes."""
    import tracemalloc

    clock = Clock(1001.0)
    tw = _windows(clock, max_open_spans=50, max_window_spans=10_000_000)
    big = {f"attr.{i}": "x" * 1000 for i in range(64)}  # a full row: 64 values of 1 KB
    peak_open = 0
    tracemalloc.start()
    try:
        for t in range(400):
            # never a root: these traces would wait idle_s, so only the cap closes them
            tw.add([{**_span(f"t{t}", f"s{i}", "r", 1001.0), "attributes": big}
                    for i in range(5)])
            peak_open = max(peak_open, tw.stats()["open_spans"])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    st = tw.stats()
    assert peak_open <= 50 and st["open_spans"] == 50 and st["open_traces"] == 10
    assert st["traces_evicted"] == 390 and st["spans"] == 2000
    # 2,000 spans held (open or in their window) without their 64 KB of attributes each
    assert held < 4 * 1024 * 1024, held
    clock.t = 1013.0
    assert _loops(tw.poll()) == {("bot", 1010.0): 5.0}  # the evicted traces still count
    assert tw.stats()["traces_done"] == 390


def test_done_spans_waiting_for_their_window_are_capped() -> None:
    clock = Clock(1001.0)
    tw = _windows(clock, max_window_spans=6)
    tw.add([_span("t1", "r", "", 1001.0), _span("t1", "a", "r", 1001.0),
            _span("t1", "b", "r", 1001.0)])
    clock.t = 1004.0
    assert tw.poll() == [] and tw.stats()["window_spans"] == 3
    tw.add([_span("t2", "r", "", 1004.0), _span("t2", "a", "r", 1004.0),
            _span("t2", "b", "r", 1004.0), _span("t2", "c", "r", 1004.0)])
    clock.t = 1006.5  # t2 done: 7 spans would wait, so the window closes early
    signals = tw.poll()
    st = tw.stats()
    assert st["windows_forced"] == 1 and st["window_spans"] == 0
    assert _loops(signals) == {("bot", 1010.0): (2 + 3) / 2}  # steps below the root
    # a trace of the early-closed window counts in the next one
    tw.add([_span("t3", "r", "", 1007.0), _span("t3", "a", "r", 1007.0)])
    clock.t = 1022.5
    assert _loops(tw.poll()) == {("bot", 1020.0): 1.0}


def test_caps_are_checked_and_name_the_key() -> None:
    for key in ("max_open_traces", "max_open_spans", "max_spans_per_trace", "max_window_spans"):
        with pytest.raises(ValueError, match=f"agent_traces.{key}: must be an integer >= 1"):
            AgentTraceSettings(**{key: 0})
