"""The engine in-process, in a child process and sharded over two: same signals.

A shared contract: one seeded stream (two groups, two source partitions,
feedback arriving after its inferences) through every engine the worker can
run, fed through :mod:`llmpulse.streams.testing` exactly as the signal agent feeds
them, must give the same signals.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmpulse.detectors.testing import synthetic_events
from llmpulse.streams.engine_process import EngineProcess, LocalEngine, ShardedEngine
from llmpulse.streams.testing import canonical, grouped_messages, run_engine, split_feedback

ENGINE_KWARGS: dict[str, Any] = {"windows": None}


def _stream() -> list[Any]:
    a = synthetic_events(2400, seed=11, rate=8, latency_scale=1.0)
    # the second group slows down half way: latency change and drift have something to find
    b = synthetic_events(2400, seed=12, rate=8)
    for i, e in enumerate(b):
        e.update(model="router-b", model_version="2", event_id=f"b{e['event_id']}",
                 request_id=f"b{e['request_id']}")
        if i > 1200:
            e["latency_ms"] *= 4.0
    infs, fbs = split_feedback(sorted(a + b, key=lambda e: e["ts"]))
    return grouped_messages(infs, feedback=fbs, partitions=2, sources=2, chunk=200)


@pytest.fixture(scope="module")
def messages() -> list[Any]:
    return _stream()


@pytest.fixture(scope="module")
def local(messages: list[Any]) -> list[Any]:
    return canonical(run_engine(LocalEngine(engine_kwargs=ENGINE_KWARGS, detectors="default"),
                                messages))


def test_the_stream_exercises_every_family(local: list[Any]) -> None:
    families = {row[4].split(".")[0] for row in local}
    assert {"latency", "errors", "tokens", "cost", "drift", "bias", "hallucination",
            "quality"} <= families, families
    assert {row[2] for row in local} == {"router", "router-b"}


@pytest.mark.parametrize("kind", ["process", "sharded"])
def test_every_engine_gives_the_same_signals(messages: list[Any], local: list[Any], kind: str) -> None:
    engine: Any = (EngineProcess(engine_kwargs=ENGINE_KWARGS, detectors="default") if kind == "process"
                   else ShardedEngine(2, engine_kwargs=ENGINE_KWARGS, detectors="default"))
    assert canonical(run_engine(engine, messages)) == local


def test_a_snapshot_taken_half_way_continues_the_same_in_another_engine(
    messages: list[Any], local: list[Any]
) -> None:
    from llmpulse.streams.signals import engine_chunks

    half = len(messages) // 2
    first = LocalEngine(engine_kwargs=ENGINE_KWARGS, detectors="default")
    first.start()
    first.add(engine_chunks(messages[:half], keyed=False))
    state = first.snapshot_bytes()
    first.stop()
    second = EngineProcess(engine_kwargs=ENGINE_KWARGS, detectors="default")
    second.start()
    try:
        second.restore_bytes(state)
        second.add(engine_chunks(messages[half:], keyed=False))
        assert canonical(second.flush()) == local
    finally:
        second.stop()


def test_an_engine_process_that_does_not_answer_is_killed_and_the_call_raises() -> None:
    import os
    import signal
    import time

    proc = EngineProcess(engine_kwargs=ENGINE_KWARGS, detectors="default")
    proc.start()
    try:
        assert proc.stats()["events_in"] == 0  # started (its imports take a while)
        proc.call_timeout_s = 2.0
        pid = proc._proc.pid
        os.kill(pid, signal.SIGSTOP)  # hung, as a deadlock or a detector that never returns
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="did not answer 'stats' within 2 s"):
            proc.stats()
        assert time.monotonic() - t0 < 10
        assert not proc._proc.is_alive()  # killed, not left stopped
        with pytest.raises(RuntimeError, match="not running"):
            proc.stats()
    finally:
        proc.stop()


def test_stopping_a_hung_engine_process_takes_the_stop_timeout_not_the_call_timeout() -> None:
    import os
    import signal
    import time

    proc = EngineProcess(engine_kwargs=ENGINE_KWARGS, detectors="default")
    proc.start()
    assert proc.stats()["events_in"] == 0
    child = proc._proc
    os.kill(child.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    proc.stop(timeout=2.0)
    assert time.monotonic() - t0 < 15  # the call timeout is 600 s
    assert not child.is_alive()
