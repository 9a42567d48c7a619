"""A source silent across a rebalance is not idle until ``idle_s`` after the assignment.

An ``llmpulse.inference`` partition that moves to a joining worker is forwarded again
only once that worker has started, read the partition from its committed offset and
forwarded. Until then its source is silent in the engine of the worker that kept the
grouped partition, and nothing there shows a backlog; when that silence reached
``idle_s``, the watermark went on with the other sources and the moved partition's
first forwards were late for windows of groups that had not moved.
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
from llmpulse.streams.ingest import Message, split_batch
from llmpulse.streams.rebalance_hold import RebalanceHold
from llmpulse.streams.signals import SignalAgents
from llmpulse.streams.testing import TestingSink, TestingTopic
from llmpulse.streams.windows import WindowSpec
from tests.streams.test_idle_backlog import START_MS, _event, _HeldTopic


def _batch(events: list[dict[str, Any]], partition: int, offset: int) -> Any:
    """``events`` read from ``llmpulse.inference`` partition ``partition``."""
    envelope = Message(b"\n".join(orjson.dumps(e) for e in events), "llmpulse.inference",
                       partition, offset)
    batch = split_batch([envelope], kind="inference", keep_events=True,
                        now_ms=START_MS + 120_000)
    assert batch.count == len(events) and not batch.dead
    return batch


async def test_a_partition_moved_in_a_rebalance_is_waited_for(tmp_path: Path) -> None:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False))
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    try:
        app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                            web_port=None)
        agents = SignalAgents(app, settings, store, TestingSink(), signals_topic=TestingTopic())
        engine = LocalEngine(engine_kwargs={}, detectors="default")
        engine.engine = SignalEngine({"latency": lambda: [ErrorRates(min_n=1)]},
                                     {"latency": WindowSpec(10.0, 5.0)},
                                     clock=lambda: now[0], idle_s=30.0)
        agents.engine = engine
        agents.rebalance = RebalanceHold(30.0, clock=lambda: now[0])
        grouped = _HeldTopic()
        agents.grouped = grouped  # type: ignore[assignment]  # the sender only
        closed: list[Any] = []

        async def collect(signals: list[Any]) -> None:
            closed.extend(s for s in signals if s.signal == "errors.rate")

        agents.consumers.append(collect)

        async def forward(first: int, n: int, partition: int, offset: int) -> None:
            events = [_event(i, START_MS + 1_000 * i) for i in range(first, first + n)]
            await agents.forward_inference(_batch(events, partition, offset), set())
            await agents.take(grouped.acknowledge())

        # one group, its events read from two inference partitions: 0-2 s and 3-4 s
        await forward(0, 3, partition=0, offset=0)
        await forward(3, 2, partition=1, offset=0)
        await agents.tick()
        # a third worker joins: inference partition 1 goes to it, the grouped partition
        # stays here; the rebalance and the new owner's start take 31 s, while
        # inference partition 0 (still here) goes on to 26 s of event time
        await agents.partitions_revoked(set())
        now[0] += 20.0
        await agents.partitions_assigned(set())
        now[0] += 11.0
        await forward(20, 7, partition=0, offset=1)
        await agents.tick()
        assert closed == []  # partition 1's source is silent, not idle: the windows wait
        # the new owner forwards partition 1 from its committed offset: 5-9 s, then on
        await forward(5, 5, partition=1, offset=1)
        await forward(10, 10, partition=1, offset=2)
        await agents.tick()
        now[0] += 31.0  # every source silent past idle_s, no rebalance since: the end
        await agents.tick()
        stats = engine.stats()
        held = agents.stats()["polls_held_by_rebalance"]
        await agents.close()
    finally:
        store.close()
    assert held >= 1
    assert stats["late_dropped"] == 0, stats["late_dropped_by_group"]
    assert [(s.ts, s.n) for s in closed] == [((START_MS + 10_000) / 1000, 10),
                                             ((START_MS + 20_000) / 1000, 10),
                                             ((START_MS + 30_000) / 1000, 7)]
