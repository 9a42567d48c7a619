"""A worker's own sources must not close windows another worker still forwards to.

A worker that joins (a rolling restart) and is given a grouped partition with no state
handed over knows only the sources it has taken events from: the inference partitions
it reads and forwards itself. The other worker, in the same rebalance, reads its
inference partitions again from the committed offsets, so its share of the grouped
partition's events comes seconds later. Before, the joiner's own sources moved the
watermark past them and closed the windows with about half their events; the rest were
then dropped as late (the rolling-restart fault on the three-broker cluster, 2 runs
in 5). During a rebalance the worker now names the sources of its grouped partitions
from the inference partitions it does not read, and the watermark holds until they
deliver, or until the rebalance hold ends (``idle_s`` after the assignment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from llmpulse.store import Store
from llmpulse.streams.forward import GROUPS_HEADER, grouped_partition, pack_groups
from llmpulse.streams.rebalance_hold import RebalanceHold
from llmpulse.streams.signals import SOURCE_HEADER, SignalAgents, group_key
from llmpulse.streams.testing import TestingMessage
from tests.streams.test_idle_backlog import (
    START_MS,
    _batch,
    _event,
    _forwarding_agents,
    _HeldTopic,
)

KEY = group_key("a", "m", "1")


async def _joined(agents: SignalAgents, now: list[float], inference: set[int]) -> int:
    """``agents`` as a worker just given the group's grouped partition (nothing handed
    over) and the inference partitions ``inference``; the grouped partition."""
    agents.rebalance = RebalanceHold(30.0, clock=lambda: now[0])
    part = grouped_partition(KEY, agents.settings.ingest.partitions)
    agents._forget_positions({("llmpulse.grouped", part),
                              *(("llmpulse.inference", i) for i in inference)})
    await agents.partitions_revoked(set())
    await agents.partitions_assigned({part})
    return part


async def _forward_own(agents: SignalAgents, grouped: _HeldTopic, events: list[dict[str, Any]],
                       offset: int) -> None:
    """Events read from inference partition 1, this worker's, forwarded and taken in."""
    await agents.forward_inference(_batch(events, partition=1, offset=offset), set())
    await agents.take(grouped.acknowledge())


def _from_other(grouped: _HeldTopic, part: int, events: list[dict[str, Any]]) -> TestingMessage:
    """The other worker's forward of ``events`` read from inference partition 0, at the
    grouped partition's next offset."""
    value, listed = pack_groups({KEY: [orjson.dumps(e) for e in events]})[0]
    offset = grouped.offsets.get(part, 0)
    grouped.offsets[part] = offset + 1
    return TestingMessage("llmpulse.grouped", part, offset, None, value,
                          ((SOURCE_HEADER, b"0"), (GROUPS_HEADER, listed)))


def _own() -> list[dict[str, Any]]:
    return [_event(i, START_MS + 1_000 * i) for i in range(25)]  # 0-24 s


def _others() -> list[dict[str, Any]]:
    return [_event(100 + i, START_MS + 500 + 1_000 * i) for i in range(20)]  # 0.5-19.5 s


async def test_a_joiner_waits_for_the_share_another_worker_forwards(tmp_path: Path) -> None:
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    try:
        agents, engine, grouped, closed = _forwarding_agents(tmp_path, store, now)
        # it reads every inference partition but 0 (the other worker's)
        others = {0}
        part = await _joined(agents, now, set(range(agents.settings.ingest.partitions)) - others)
        await _forward_own(agents, grouped, _own(), offset=0)
        now[0] += 2.0
        await agents.tick()
        assert closed == []  # inference partition 0's share is still to come
        assert agents._sources_of_others(None) == [(part, 0)]
        # the other worker, through its own rebalance, forwards its share of [0, 20 s)
        await agents.take([_from_other(grouped, part, _others())])
        now[0] += 2.0
        await agents.tick()
        stats = engine.stats()
        held = agents.stats()["polls_held"]
        await agents.close()
    finally:
        store.close()
    assert held >= 1
    assert stats["late_dropped"] == 0, stats["late_dropped_by_group"]
    # the first window has both workers' events: ten of this one's, ten of the other's
    assert [(s.ts, s.n) for s in closed][:1] == [((START_MS + 10_000) / 1000, 20)]


async def test_a_share_that_never_comes_holds_only_while_the_rebalance_does(
        tmp_path: Path) -> None:
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    try:
        agents, engine, grouped, closed = _forwarding_agents(tmp_path, store, now)
        await _joined(agents, now, inference={1})
        await _forward_own(agents, grouped, _own(), offset=0)
        now[0] += 29.0
        await agents.tick()
        assert closed == []
        now[0] += 1.5  # 30 s after the assignment: the hold is over, nothing is named
        assert agents._sources_of_others(None) == []
        await _forward_own(agents, grouped, [_event(25, START_MS + 25_000)], offset=1)
        await agents.tick()
        await agents.close()
    finally:
        store.close()
    assert [(s.ts, s.n) for s in closed][:2] == [((START_MS + 10_000) / 1000, 10),
                                                 ((START_MS + 20_000) / 1000, 10)]


async def test_a_worker_reading_every_inference_partition_names_none(tmp_path: Path) -> None:
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    try:
        agents, engine, grouped, closed = _forwarding_agents(tmp_path, store, now)
        await _joined(agents, now, inference=set(range(agents.settings.ingest.partitions)))
        await _forward_own(agents, grouped, _own(), offset=0)
        named = agents._sources_of_others(None)
        now[0] += 2.0
        await agents.tick()
        await agents.close()
    finally:
        store.close()
    assert named == []
    # its own sources are every source there is: the first window closes at once
    assert [(s.ts, s.n) for s in closed][:1] == [((START_MS + 10_000) / 1000, 10)]
