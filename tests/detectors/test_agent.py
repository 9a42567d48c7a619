"""Expected results of :class:`llmpulse.detectors.agent.AgentSteps` on seeded traces, checked
against numpy computed the plain way (one trace at a time)."""

from __future__ import annotations

import numpy as np
import pytest

from llmpulse.detectors.agent import WORK_STEPS, AgentSteps, span_batch
from llmpulse.detectors.testing import synthetic_batch


def _traces(n: int, *, seed: int, loop_every: int = 0) -> list[dict]:
    """``n`` seeded traces: an agent span, 1-3 LLM calls, 0-4 calls of ``search`` (nine in
    every ``loop_every``-th trace), 0-1 retrieval; tools fail with probability 0.1."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for t in range(n):
        tid = f"{t:032x}"
        agent = "planner" if t % 3 else "writer"
        rows.append({"trace_id": tid, "span_id": f"{t}a", "step": "agent", "agent_name": agent,
                     "duration_ms": float(rng.gamma(4, 300)), "ts": 100.0 + t, "status": "ok"})
        for i in range(int(rng.integers(1, 4))):
            rows.append({"trace_id": tid, "span_id": f"{t}l{i}", "step": "llm",
                         "duration_ms": float(rng.gamma(3, 200)), "ts": 100.1 + t + i,
                         "input_tokens": int(rng.integers(10, 500)),
                         "output_tokens": int(rng.integers(1, 200)), "status": "ok",
                         **({"cost_usd": 0.0005 * (i + 1)} if t % 2 else {})})
        calls = 9 if loop_every and t % loop_every == 0 else int(rng.integers(0, 5))
        for i in range(calls):
            failed = rng.random() < 0.1
            rows.append({"trace_id": tid, "span_id": f"{t}t{i}", "step": "tool",
                         "tool_name": "search", "duration_ms": float(rng.gamma(2, 50)),
                         "ts": 100.2 + t + i, "status": "error" if failed else "ok",
                         "error_type": "HTTPError" if failed else ""})
        if rng.random() < 0.5:
            rows.append({"trace_id": tid, "span_id": f"{t}r", "step": "retrieval",
                         "duration_ms": float(rng.gamma(2, 20)), "ts": 100.3 + t,
                         "status": "ok"})
    return rows


def _values(rows: list[dict], **kw: int) -> dict[tuple[str, str], float]:
    out = AgentSteps(**kw).update(span_batch(rows, start=0.0, end=1000.0))
    return {(s.signal, s.dimension): s.value for s in out}


def test_agent_steps_against_a_plain_computation() -> None:
    rows = _traces(300, seed=7, loop_every=10)
    got = _values(rows)
    by_trace: dict[str, list[dict]] = {}
    for r in rows:
        by_trace.setdefault(r["trace_id"], []).append(r)
    steps = [sum(r["step"] in WORK_STEPS for r in rs) for rs in by_trace.values()]
    tokens = [sum(r.get("input_tokens", 0) + r.get("output_tokens", 0) for r in rs)
              for rs in by_trace.values()]
    search = [r for r in rows if r.get("tool_name") == "search"]
    loops = [tid for tid, rs in by_trace.items()
             if sum(r.get("tool_name") == "search" for r in rs) >= 5]
    priced = [sum(r["cost_usd"] for r in rs if "cost_usd" in r) for rs in by_trace.values()
              if any("cost_usd" in r for r in rs)]
    assert got[("agent.steps_per_trace", "")] == pytest.approx(np.mean(steps))
    assert got[("agent.tokens_per_trace", "")] == pytest.approx(np.mean(tokens))
    assert got[("agent.tool_error_rate", "tool=search")] == pytest.approx(
        np.mean([r["status"] == "error" for r in search]))
    assert got[("agent.loop_rate", "")] == pytest.approx(len(loops) / 300)
    assert len(loops) >= 30  # every tenth trace loops; a few more call search five times
    assert got[("agent.tool_calls_max", "tool=search")] == 9.0
    assert got[("agent.cost_per_trace_usd", "")] == pytest.approx(np.mean(priced))
    for q in (50, 95, 99):
        assert got[(f"agent.step_p{q}_ms", "tool=search")] == pytest.approx(
            np.percentile([r["duration_ms"] for r in search], q))
        assert got[(f"agent.step_p{q}_ms", "step=llm")] == pytest.approx(
            np.percentile([r["duration_ms"] for r in rows if r["step"] == "llm"], q))
    writer = [s for tid, s in zip(by_trace, steps, strict=True) if int(tid, 16) % 3 == 0]
    assert got[("agent.steps_per_trace", "agent=writer")] == pytest.approx(np.mean(writer))


def test_no_loop_without_repeated_calls_and_a_higher_threshold_sees_fewer() -> None:
    rows = _traces(200, seed=3, loop_every=0)
    assert _values(rows, loop_calls=9)[("agent.loop_rate", "")] == 0.0
    rows = _traces(200, seed=3, loop_every=4)
    assert _values(rows, loop_calls=9)[("agent.loop_rate", "")] == pytest.approx(50 / 200)
    assert _values(rows, loop_calls=2)[("agent.loop_rate", "")] > 50 / 200


def test_loop_detail_names_the_worst_traces_first() -> None:
    rows = [{"trace_id": "b", "span_id": str(i), "step": "tool", "tool_name": "fetch",
             "duration_ms": 1.0} for i in range(7)]
    rows += [{"trace_id": "a", "span_id": str(i), "step": "tool", "tool_name": "search",
              "duration_ms": 1.0} for i in range(5)]
    out = AgentSteps().update(span_batch(rows, start=0.0, end=10.0))
    loop = next(s for s in out if s.signal == "agent.loop_rate" and s.dimension == "")
    assert loop.value == 1.0 and loop.n == 2
    assert loop.detail["loops"] == [{"trace_id": "b", "tool": "fetch", "calls": 7},
                                    {"trace_id": "a", "tool": "search", "calls": 5}]


def test_min_n_and_windows_without_traces() -> None:
    rows = _traces(3, seed=1)
    assert all(s.n >= 4 for s in AgentSteps(min_n=4).update(span_batch(rows, start=0, end=1)))
    assert AgentSteps().update(synthetic_batch(100, seed=1)) == []  # inference events
    assert AgentSteps().update(span_batch([], start=0, end=1)) == []
    with pytest.raises(ValueError, match="loop_calls"):
        AgentSteps(loop_calls=1)
