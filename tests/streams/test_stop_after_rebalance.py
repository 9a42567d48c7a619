"""A worker stopped right after a rebalance gave it a partition, before its next poll.

The handed-over state of a newly assigned ``llmpulse.grouped`` partition is read
at the next poll or batch, not in the rebalance callback. A clean stop that came
first closed the engine's windows without it: the windows the previous owner saved
for it were never written. Found by the fault benchmark's ``pause`` run, where the
last worker is stopped as soon as it holds every partition (26 of 650 windows, the
last ones of the group that moved). Real broker (the changelog), real engine.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llmpulse.broker import EmbeddedBroker
from llmpulse.config import load_settings
from llmpulse.detectors.base import Signal
from llmpulse.store import Store
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.handoff import EngineStateLog
from llmpulse.streams.signals import SignalAgents


def _agents(root: Path, store: Store, state_log: EngineStateLog, stop: str) -> SignalAgents:
    """A worker's signal agents (a data dir of its own; chDB opens one store a process)."""
    from llmpulse.streams.testing import TestingSink, TestingTopic

    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(root)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False, stop=stop))
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=root / "w",
                        web_port=None)
    return SignalAgents(app, settings, store, TestingSink(), signals_topic=TestingTopic(),
                        state_log=state_log)


def _key(s: Signal) -> tuple[Any, ...]:
    return (s.app, s.model, s.model_version, s.signal, s.dimension, s.ts, s.window_s,
            round(float(s.value), 9), s.n)


@pytest.mark.parametrize("stop", ["flush", "save"])
async def test_a_stop_before_the_first_poll_keeps_the_handed_over_windows(
    broker: EmbeddedBroker, tmp_path: Path, stop: str,
) -> None:
    from llmpulse.detectors.testing import synthetic_events
    from llmpulse.streams.testing import drive_signal_agents, grouped_messages

    topic = f"llmpulse.engine-state.{uuid.uuid4().hex[:8]}"
    messages = grouped_messages(synthetic_events(600, seed=5, rate=10))
    (partition,) = {m.partition for m in messages}
    # A held the partition and saved its state (open windows included) to the changelog
    store = Store.open(f"chdb://{tmp_path}/store")
    a = _agents(tmp_path / "a", store, EngineStateLog(broker.bootstrap, partitions=1, topic=topic),
                "save")
    b = _agents(tmp_path / "b", store, EngineStateLog(broker.bootstrap, partitions=1, topic=topic),
                stop)
    try:
        await a.partitions_assigned({partition})
        closed = await drive_signal_agents(a, messages, flush=False)
        assert closed, "the run closes some windows before the stop"
        await a.stop()  # save: the open windows go to the changelog
        assert a.counters["handoff_writes"] >= 1
        # what A's open windows are: the same messages through a third worker, flushed
        c = _agents(tmp_path / "c", store, EngineStateLog(broker.bootstrap, partitions=1,
                                                          topic=f"{topic}.c"), "flush")
        everything = await drive_signal_agents(c, messages, flush=True)
        await c.close()
        still_open = sorted(set(map(_key, everything)) - set(map(_key, closed)))
        assert still_open, "A stopped with windows open"

        # B is assigned the partition and stopped before any poll or batch
        got: list[Signal] = []

        async def collect(signals: list[Signal]) -> None:
            got.extend(signals)

        b.consumers.append(collect)
        await b.partitions_assigned({partition})
        await b.stop()
        if stop == "flush":  # B closes the windows A handed over, none lost
            assert sorted(set(map(_key, got))) == still_open
            assert b.counters["partitions_taken_over"] == 1
        else:  # B hands them on: the changelog's state is still A's, not an empty one
            assert got == []
            state = EngineStateLog(broker.bootstrap, partitions=1, topic=topic)
            try:
                saved = state.read({partition})[partition]
            finally:
                state.close()
            assert saved.covered == len(messages) and saved.keys
    finally:
        store.close()
