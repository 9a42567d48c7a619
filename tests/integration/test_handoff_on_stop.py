"""The last stop of a rolling restart: a worker stopped right after a rebalance gave it
another worker's partitions writes their handed-over windows.

A worker takes over an assigned partition's state (from the changelog,
:mod:`llmpulse.streams.handoff`) lazily, before the partition's first message or at the
next window poll. The last worker of a rolling restart is often stopped (``signals.stop:
flush``) as soon as it holds every partition, before either: its flush must still
include the windows the previous owner handed over, or no worker ever writes them (seen
in ``python -m llmpulse.bench.fault --fault rolling``: the last windows of the groups
that moved last, missing). The agents run as the worker runs them, on the real Kafka of
the ``kafka`` fixture for the changelog.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llmpulse.config import load_settings
from llmpulse.detectors.testing import synthetic_events
from llmpulse.store import Store
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.handoff import EngineStateLog
from llmpulse.streams.signals import SignalAgents
from llmpulse.streams.testing import TestingSink, TestingTopic, grouped_messages
from tests.integration.conftest import KafkaFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4


def _agents(root: Path, store: Store, bootstrap: str, topic: str, stop: str) -> SignalAgents:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(root)}, path=None)
    settings = replace(settings, signals=replace(settings.signals, process=False, stop=stop))
    app = new_faust_app("t", settings, bootstrap=bootstrap, datadir=root / "w", web_port=None)
    log = EngineStateLog(bootstrap, partitions=PARTITIONS, topic=topic)
    agents = SignalAgents(app, settings, store, TestingSink(), signals_topic=TestingTopic(),
                          state_log=log)
    return agents


def _windows(signals: list[Any]) -> set[tuple[str, float, int]]:
    return {(s.model, s.ts, s.n) for s in signals if s.signal == "errors.rate"}


async def test_a_stop_right_after_a_rebalance_flushes_the_windows_handed_over(
    kafka: KafkaFactory, tmp_path: Path,
) -> None:
    # 20 s of two groups' events: the windows from 10 s on are open when the first
    # worker hands them over
    events = [{**ev, "model": f"m{i % 2}"}
              for i, ev in enumerate(synthetic_events(400, seed=4, rate=20))]
    messages = grouped_messages(events, partitions=PARTITIONS, sources=2, chunk=40)
    alone: list[Any] = []
    first: list[Any] = []
    last: list[Any] = []
    with kafka.start(PARTITIONS) as target:
        topic = f"llmpulse.engine-state.{uuid.uuid4().hex[:8]}"
        # the reference: one worker takes everything in and flushes
        # signals go to the agents' consumers; the store (one chDB per process) is shared
        store = Store.open(f"chdb://{tmp_path}/store")
        ref = _agents(tmp_path / "ref", store, target.bootstrap, topic + "-ref", "flush")
        a = _agents(tmp_path / "a", store, target.bootstrap, topic, "save")
        b = _agents(tmp_path / "b", store, target.bootstrap, topic, "flush")
        try:
            ref.consumers.append(_collect(alone))
            await ref.take(messages)
            await ref.stop()
            a.consumers.append(_collect(first))
            await a.partitions_assigned(set(range(PARTITIONS)))
            await a.take(messages)
            await a.tick()
            # a rolling restart: the first worker stops (its partitions are revoked and
            # their states written), the last one is given them and stopped at once
            await a.partitions_revoked(set(range(PARTITIONS)))
            await a.stop()
            # read at once: on the cluster, through whichever broker b's reader picks
            # (tests/integration/test_changelog_on_cluster.py)
            b.consumers.append(_collect(last))
            await b.partitions_assigned(set(range(PARTITIONS)))
            await b.stop()
        finally:
            store.close()
    want = _windows(alone)
    assert {m for m, _, _ in want} == {"m0", "m1"} and len(want) >= 4
    got = _windows(first) | _windows(last)
    assert _windows(last), "the stopped worker flushed none of the windows handed to it"
    assert got == want
    assert not _windows(first) & _windows(last)  # each window written once


def _collect(into: list[Any]) -> Any:
    async def collect(signals: list[Any]) -> None:
        into.extend(signals)
    return collect
