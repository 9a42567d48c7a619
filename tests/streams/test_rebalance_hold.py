"""A source silent across a rebalance is not idle until ``idle_s`` after the assignment.

An ``llmpulse.inference`` partition that moves to a joining worker is forwarded again
only once that worker has started, read the partition from its committed offset and
forwarded. Until then its source is silent in the engine of the worker that kept the
grouped partition, and nothing there shows a backlog; when that silence reached
``idle_s``, the watermark went on with the other sources and the moved partition's
first forwards were late for windows of groups that had not moved.
"""

from __future__ import annotations

from pathlib import Path

from llmpulse.store import Store
from llmpulse.streams.rebalance_hold import RebalanceHold
from tests.streams.test_idle_backlog import START_MS, _batch, _event, _forwarding_agents


async def test_a_partition_moved_in_a_rebalance_is_waited_for(tmp_path: Path) -> None:
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    try:
        agents, engine, grouped, closed = _forwarding_agents(tmp_path, store, now)
        agents.rebalance = RebalanceHold(30.0, clock=lambda: now[0])

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
        assert agents.stats()["rebalance_holds"]  # what a benchmark waits on before it measures
        # the new owner forwards partition 1 from its committed offset: 5-9 s, then on
        await forward(5, 5, partition=1, offset=1)
        await forward(10, 10, partition=1, offset=2)
        await agents.tick()
        now[0] += 31.0  # every source silent past idle_s, no rebalance since: the end
        await agents.tick()
        stats = engine.stats()
        held = agents.stats()["polls_held_by_rebalance"]
        holds_after = agents.stats()["rebalance_holds"]
        await agents.close()
    finally:
        store.close()
    assert held >= 1 and not holds_after
    assert stats["late_dropped"] == 0, stats["late_dropped_by_group"]
    assert [(s.ts, s.n) for s in closed] == [((START_MS + 10_000) / 1000, 10),
                                             ((START_MS + 20_000) / 1000, 10),
                                             ((START_MS + 30_000) / 1000, 7)]
