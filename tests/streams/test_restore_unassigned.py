"""A restarted worker's restored windows wait for its partitions.

A worker stopped with ``signals.stop: save`` starts again with its saved engine state
(open windows, the watermark of its sources) before the consumer group assigns it any
partition. Joining the group can take longer than the engine's ``idle_s`` (a rebalance
over a loaded cluster: the other workers must revoke, hand their states over and join
again). The restored sources then looked idle, the watermark moved on by wall time and
the restored windows closed early, with the events they had: partial windows, written
after the partition's new owner had written them whole, and the events still to come
for them late. No partition known, no source is idle: the windows wait.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmpulse.broker import EmbeddedBroker
from llmpulse.config import load_settings
from llmpulse.detectors.latency import ErrorRates
from llmpulse.detectors.testing import synthetic_events
from llmpulse.store import Store
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.engine import SignalEngine
from llmpulse.streams.engine_process import LocalEngine
from llmpulse.streams.handoff import EngineStateLog
from llmpulse.streams.signals import IDLE_S, SignalAgents
from llmpulse.streams.testing import TestingSink, TestingTopic, grouped_messages
from llmpulse.streams.windows import WindowSpec

PARTITIONS = 4


def _agents(root: Path, store: Store, bootstrap: str, topic: str, stop: str,
            now: list[float], out: list[Any]) -> SignalAgents:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(root)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False, stop=stop))
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=root / "w",
                        web_port=None)
    agents = SignalAgents(app, settings, store, TestingSink(), signals_topic=TestingTopic(),
                          state_log=EngineStateLog(bootstrap, partitions=PARTITIONS, topic=topic))
    engine = LocalEngine(engine_kwargs={}, detectors="default")
    engine.engine = SignalEngine({"latency": lambda: [ErrorRates(min_n=1)]},
                                 {"latency": WindowSpec(10.0, 5.0)},
                                 clock=lambda: now[0], idle_s=IDLE_S)
    agents.engine = engine
    agents._restore()  # the saved state, into the engine of this test's clock

    async def collect(signals: list[Any]) -> None:
        out.extend((s.model, s.ts, s.n) for s in signals if s.signal == "errors.rate")

    agents.consumers.append(collect)
    return agents


async def test_restored_windows_wait_for_the_assignment(broker: EmbeddedBroker,
                                                        tmp_path: Path) -> None:
    events = [{**ev, "model": f"m{i % 2}"}
              for i, ev in enumerate(synthetic_events(400, seed=6, rate=20))]
    messages = grouped_messages(events, partitions=PARTITIONS, sources=2, chunk=20)
    half = len(messages) // 2
    topic = f"llmpulse.engine-state.{uuid.uuid4().hex[:8]}"
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    alone: list[Any] = []
    before: list[Any] = []
    restored: list[Any] = []
    try:
        ref = _agents(tmp_path / "ref", store, broker.bootstrap, topic + "-ref", "flush", now,
                      alone)
        await ref.take(messages)
        await ref.stop()
        # a worker takes the first half in and stops cleanly, saving its open windows
        a = _agents(tmp_path / "a", store, broker.bootstrap, topic, "save", now, before)
        await a.partitions_assigned(set(range(PARTITIONS)))
        await a.take(messages[:half])
        await a.tick()
        await a.partitions_revoked(set(range(PARTITIONS)))
        await a.stop()
        # it starts again; the group takes longer than idle_s to give it its partitions
        b = _agents(tmp_path / "a", store, broker.bootstrap, topic, "flush", now, restored)
        now[0] += IDLE_S + 5.0
        await b.tick()
        assert restored == [], "restored windows closed before any partition was assigned"
        assert b.stats()["polls_unassigned"] >= 1
        await b.partitions_assigned(set(range(PARTITIONS)))
        await b.take(messages[half:])
        await b.tick()
        # the states were read through the one broker that wrote them: no stale end
        assert b.stats()["changelog_stale_ends"] == 0
        await b.stop()
    finally:
        store.close()
    assert len(alone) >= 4 and {m for m, _, _ in alone} == {"m0", "m1"}
    assert sorted(before + restored) == sorted(alone)  # every window once, whole
    stats = b.engine.stats()
    assert stats["late_dropped"] == 0
