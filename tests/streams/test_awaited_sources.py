"""A partition the engine has not heard from yet must not let the others close its windows.

The watermark is the minimum over the sources *seen*. When a stream starts, or a
replay floods event time, the partitions fetched first pushed it ahead, and the
first events of a partition fetched a poll later were dropped as late. The reader
now names the partitions it awaits (nothing read yet, end offset unknown or past
zero; sources it forwarded to and the engine has not taken in), and the watermark
holds until they deliver or have been awaited ``idle_s`` without a backlog.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from llmpulse.config import load_settings
from llmpulse.detectors.latency import ErrorRates
from llmpulse.store import Store
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.engine import SignalEngine
from llmpulse.streams.engine_process import LocalEngine
from llmpulse.streams.forward import grouped_partition
from llmpulse.streams.ingest import Message, split_batch
from llmpulse.streams.signals import SOURCE_HEADER, SignalAgents, awaited, group_key
from llmpulse.streams.testing import TestingMessage, TestingSink, TestingTopic
from llmpulse.streams.windows import AwaitedSources, WindowSpec

START_MS = 1_700_000_000_000
GROUP_KEY = group_key("a", "m", "1")


def _event(i: int, ts_ms: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "request_id": f"r{i}", "ts": ts_ms, "app": "a", "model": "m",
            "model_version": "1", "latency_ms": 10.0, "status": "ok",
            "input_tokens": 1, "output_tokens": 1}


def _later_partition() -> list[dict[str, Any]]:
    """A partition's first delivery: five events of the first window, and one at 16 s
    (which lets that window close once the watermark may move)."""
    out = [_event(100 + i, START_MS + 500 + 1_000 * i) for i in range(5)]
    out.append(_event(200, START_MS + 16_000))
    return out


def _assert_first_window_whole(stats: dict[str, Any], closed: list[Any]) -> None:
    assert stats["late_dropped"] == 0 and stats["events_in"] == 26
    # the window [0, 10 s) has the first partition's ten events and the later one's five
    assert [(s.ts, s.n) for s in closed][:1] == [((START_MS + 10_000) / 1000, 15)]


def _grouped(partition: int, source: int, offset: int, events: list[dict[str, Any]]
             ) -> TestingMessage:
    return TestingMessage("llmpulse.grouped", partition, offset, GROUP_KEY,
                          b"\n".join(orjson.dumps(e) for e in events),
                          ((SOURCE_HEADER, str(source).encode()),))


def _engine(now: list[float]) -> SignalEngine:
    return SignalEngine({"latency": lambda: [ErrorRates(min_n=1)]},
                        {"latency": WindowSpec(10.0, 5.0)}, clock=lambda: now[0], idle_s=30.0)


def _agents(tmp_path: Path, now: list[float]) -> tuple[SignalAgents, LocalEngine, list[Any]]:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False))
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                        web_port=None)
    store = Store.open(f"chdb://{tmp_path}/store")
    # the consumer's lag is given by the test: no broker here
    agents = SignalAgents(app, settings, store, TestingSink(), signals_topic=TestingTopic(),
                          backlog=lambda: False)
    engine = LocalEngine(engine_kwargs={}, detectors="default")
    engine.engine = _engine(now)
    agents.engine = engine
    closed: list[Any] = []

    async def collect(signals: list[Any]) -> None:
        closed.extend(s for s in signals if s.signal == "errors.rate")

    agents.consumers.append(collect)
    return agents, engine, closed


async def test_a_partition_fetched_a_poll_later_is_not_late(tmp_path: Path) -> None:
    now = [1_000.0]
    agents, engine, closed = _agents(tmp_path, now)
    try:
        # both grouped partitions are assigned and hold events; nothing read from either
        agents.backlog_view = {"llmpulse.grouped:0": [None, 1], "llmpulse.grouped:1": [None, 1]}
        # partition 0 is fetched first: 20 s of event time
        a = [_event(i, START_MS + 1_000 * i) for i in range(20)]
        await agents.take([_grouped(0, 0, 0, a)])
        await agents.tick()
        assert closed == [] and agents.counters["polls_held"] == 1
        # partition 1's first fetch, a poll later
        b = _later_partition()
        agents.backlog_view = {"llmpulse.grouped:0": [1, 1], "llmpulse.grouped:1": [None, 1]}
        await agents.take([_grouped(1, 0, 0, b)])
        agents.backlog_view = {"llmpulse.grouped:0": [1, 1], "llmpulse.grouped:1": [1, 1]}
        await agents.tick()
        stats = engine.stats()
        await agents.close()
    finally:
        agents.store.close()
    _assert_first_window_whole(stats, closed)


async def test_a_source_forwarded_to_holds_until_taken_in(tmp_path: Path) -> None:
    now = [1_000.0]
    agents, engine, closed = _agents(tmp_path, now)
    grouped = TestingTopic()
    agents.grouped = grouped  # type: ignore[assignment]  # the sender only
    try:
        # inference partition 0 reached the engine through the group's grouped partition ...
        part = grouped_partition(GROUP_KEY, agents.settings.ingest.partitions)
        await agents.take([_grouped(part, 0, 0, [_event(i, START_MS + 1_000 * i)
                                                 for i in range(20)])])
        # ... and inference partition 1 is read only now: forwarded, not taken in yet
        late = _later_partition()
        envelope = Message(b"\n".join(orjson.dumps(e) for e in late), "llmpulse.inference", 1, 0)
        batch = split_batch([envelope], kind="inference", keep_events=True,
                            now_ms=START_MS + 60_000)
        await agents.forward_inference(batch, set())
        assert [m.partition for m in grouped.messages] == [part]
        await agents.tick()
        assert closed == []  # (part, 1) is awaited although its grouped partition delivered
        moved = [replace(m, offset=1) for m in grouped.messages]
        await agents.take(moved)
        await agents.tick()
        stats = engine.stats()
        await agents.close()
    finally:
        agents.store.close()
    _assert_first_window_whole(stats, closed)


def test_the_engine_holds_its_watermark_while_told_to() -> None:
    now = [0.0]
    for hold, late in ((False, 5), (True, 0)):
        engine = _engine(now)
        engine.add_inference([_event(i, START_MS + 1_000 * i) for i in range(20)], source=(0, 0))
        engine.advance(hold=hold)
        engine.add_inference([_event(100 + i, START_MS + 500 + 1_000 * i) for i in range(5)],
                             source=(1, 0))
        engine.advance()
        assert engine.stats()["late_dropped"] == late


def test_an_awaited_partition_that_never_delivers_releases_after_idle_s() -> None:
    aw = AwaitedSources(idle_s=30.0)
    empty = (3, None)
    assert aw.waiting([empty], set(), now=0.0) == [empty]
    assert aw.waiting([empty], set(), now=29.9) == [empty]
    # a backlog elsewhere: silence is not idleness, it keeps holding
    assert aw.waiting([empty], set(), now=45.0, backlog=True) == [empty]
    assert aw.waiting([empty], set(), now=45.0) == []
    # released, it does not hold again while the reader keeps naming it
    assert aw.waiting([empty], set(), now=46.0, backlog=True) == []
    # named afresh (the reader dropped it: read, or reassigned), it holds afresh
    assert aw.waiting([], set(), now=47.0) == []
    assert aw.waiting([empty], set(), now=48.0) == [empty]


def test_a_delivery_from_a_matching_source_ends_the_wait() -> None:
    aw = AwaitedSources(idle_s=30.0)
    names = [(0, None), (None, 2), (1, 1)]
    assert aw.waiting(names, {(0, 1)}, now=0.0) == [(1, 1), (None, 2)]
    assert aw.waiting(names, {(0, 1), (1, 2)}, now=1.0) == [(1, 1)]
    assert aw.waiting(names, {(0, 1), (1, 2), (1, 1)}, now=2.0) == []


def test_which_partitions_are_awaited() -> None:
    view: dict[str, list[int | None]] = {
        "llmpulse.grouped:0": [None, 7],     # holds events, nothing read: awaited
        "llmpulse.grouped:1": [None, None],  # not fetched yet: not known, awaited
        "llmpulse.grouped:2": [None, 0],     # empty: never awaited
        "llmpulse.grouped:3": [4, 9],        # read from (its sources hold the watermark)
        "llmpulse.inference:0": [None, 3],   # ingest has not read it yet: awaited
        "llmpulse.inference:1": [2, 2],      # read to its end
        "llmpulse.feedback:0": [None, 5],    # no watermark source
    }
    assert awaited(view) == [(0, None), (1, None), (None, 0)]


def test_a_partition_with_nothing_past_its_committed_offset_is_not_awaited() -> None:
    view: dict[str, list[int | None]] = {"llmpulse.grouped:0": [None, 7],
                                         "llmpulse.grouped:1": [None, 7],
                                         "llmpulse.inference:0": [None, 3]}
    # a restart: the group had read partition 0 to its end and nothing new came
    committed = {"llmpulse.grouped:0": 7, "llmpulse.grouped:1": 5, "llmpulse.inference:0": 3}
    assert awaited(view, committed) == [(1, None)]


async def test_after_a_restart_a_read_partition_does_not_hold_the_watermark(
        tmp_path: Path) -> None:
    """After a restart without engine state, a grouped partition the group had read to
    its end is not awaited: under traffic elsewhere (always a backlog) it would hold
    every window for as long as the traffic lasts."""
    from faust.types import TP

    results = {}
    for committed_there in (False, True):
        now = [1_000.0]
        agents, engine, closed = _agents(tmp_path / str(committed_there), now)
        if committed_there:
            agents.app.consumer._committed_offset[TP("llmpulse.grouped", 1)] = 9  # type: ignore[attr-defined]
        try:
            agents.backlog_view = {"llmpulse.grouped:0": [None, 1],
                                   "llmpulse.grouped:1": [None, 9]}
            a = [_event(i, START_MS + 1_000 * i) for i in range(20)]
            await agents.take([_grouped(0, 0, 0, a)])
            agents.backlog_view = {"llmpulse.grouped:0": [1, 1], "llmpulse.grouped:1": [None, 9]}
            for _ in range(3):
                await agents.tick()
            results[committed_there] = (len(closed), agents.counters["polls_held"])
            await agents.close()
        finally:
            agents.store.close()
    held_closed, held_polls = results[False]
    assert held_closed == 0 and held_polls >= 3  # nothing committed there: it may hold events
    free_closed, free_polls = results[True]
    assert free_closed >= 1 and free_polls == 0
