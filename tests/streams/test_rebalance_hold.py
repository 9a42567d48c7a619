"""A source silent across a rebalance is not idle until ``idle_s`` after the assignment.

An ``llmpulse.inference`` partition that moves to a joining worker is forwarded again
only once that worker has started, read the partition from its committed offset and
forwarded. Until then its source is silent in the engine of the worker that kept the
grouped partition, and nothing there shows a backlog; when that silence reached
``idle_s``, the watermark went on with the other sources and the moved partition's
first forwards were late for windows of groups that had not moved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llmpulse.store import Store
from llmpulse.streams.gaps import Gap
from llmpulse.streams.rebalance_hold import RebalanceHold
from llmpulse.streams.signals import REBALANCE_HOLD_MAX_S
from tests.streams.test_idle_backlog import START_MS, _batch, _event, _forwarding_agents


def _forwarder(agents: Any, grouped: Any) -> Callable[..., Awaitable[None]]:
    """Forward events ``first .. first + n - 1`` (event time: 1 s apart) as read from
    ``partition`` at ``offset``, acknowledged and taken in."""

    async def forward(first: int, n: int, partition: int, offset: int) -> None:
        events = [_event(i, START_MS + 1_000 * i) for i in range(first, first + n)]
        await agents.forward_inference(_batch(events, partition, offset), set())
        await agents.take(grouped.acknowledge())

    return forward


async def test_a_partition_moved_in_a_rebalance_is_waited_for(tmp_path: Path) -> None:
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    try:
        agents, engine, grouped, closed = _forwarding_agents(tmp_path, store, now)
        agents.rebalance = RebalanceHold(30.0, clock=lambda: now[0])

        forward = _forwarder(agents, grouped)
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


@pytest.mark.parametrize("where", ["before the beat", "after the beat", "inside a poll"])
async def test_a_worker_that_did_not_run_past_its_session_timeout_waits_before_closing(
        tmp_path: Path, where: str) -> None:
    # A worker stopped (SIGSTOP, a frozen host) for 40 s, past its 6 s session timeout and
    # the engine's 30 s idle time: when it runs again every source has been silent for
    # 40 s and it knows no high water mark newer than its last fetch. Its first window
    # poll must not take that silence for idleness and close the window with the part
    # it had: the rest was written meanwhile, and its group may have given its
    # partitions to another worker (whose rows the partial ones would replace). After
    # the pause the window timer may run before the heartbeat timer or after it, or the
    # pause may fall inside a poll.
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    try:
        agents, engine, grouped, closed = _forwarding_agents(tmp_path, store, now)
        agents.rebalance = RebalanceHold(30.0, clock=lambda: now[0], pause_s=6.0)

        forward = _forwarder(agents, grouped)
        async def second() -> None:  # one second of a running worker: both timers
            now[0] += 1.0
            agents._beat()
            await agents.tick()

        await forward(0, 2, partition=0, offset=0)
        await forward(2, 2, partition=1, offset=0)
        await second()
        await second()
        if where == "before the beat":
            now[0] += 40.0  # stopped
            await agents.tick()
            agents._beat()
        elif where == "after the beat":
            now[0] += 40.0
            agents._beat()
            await agents.tick()
        else:
            # stopped after the tick began, before its engine poll
            holding = agents._holding

            def stopped_here(backlog: bool) -> bool:
                now[0] += 40.0
                return holding(backlog)

            agents._holding = stopped_here  # type: ignore[method-assign]
            await agents.tick()
            agents._holding = holding  # type: ignore[method-assign]
            agents._beat()
        after_pause = list(closed)
        # running again: the events written meanwhile are fetched, 4-12 s
        await forward(4, 4, partition=0, offset=1)
        await forward(8, 5, partition=1, offset=1)
        for _ in range(32):  # the stream really stopped: the end
            await second()
        stats = engine.stats()
        paused = agents.stats().get("pauses_seen", 0)
        await agents.close()
    finally:
        store.close()
    assert after_pause == []  # before the change: the window [0, 10 s) closed with 4 events
    assert paused == 1
    assert stats["late_dropped"] == 0, stats["late_dropped_by_group"]
    assert [(s.ts, s.n) for s in closed] == [((START_MS + 10_000) / 1000, 10),
                                             ((START_MS + 20_000) / 1000, 3)]


class _GroupLog:
    """The group's progress on ``llmpulse.inference`` as the test moves it: end offsets
    and committed offsets per partition (read from a real broker by
    :class:`~llmpulse.streams.catch_up.GroupProgress`, tested in
    ``tests/integration/test_catch_up.py``)."""

    topic = "llmpulse.inference"

    def __init__(self) -> None:
        self.end: dict[int, int] = {}
        self.commit: dict[int, int | None] = {}
        self.reads = 0

    def ends(self) -> dict[int, int]:
        self.reads += 1
        return dict(self.end)

    def committed(self) -> dict[int, int | None]:
        return dict(self.commit)

    def close(self) -> None:
        pass


class _MarkerProbe:
    """A gap probe whose log holds a record in every gap but ``empty_gaps``."""

    def __init__(self) -> None:
        self.empty_gaps: set[Gap] = set()
        self.asked: list[Gap] = []

    async def empty(self, gap: Gap) -> bool:
        self.asked.append(gap)
        return gap in self.empty_gaps


def _following(tmp_path: Path, store: Store, now: list[float],
               group: _GroupLog | None) -> tuple[Any, Any, Any, list[Any]]:
    """:func:`_forwarding_agents` whose rebalance hold follows ``group``'s progress
    (``None``: not read), at the test's clock."""
    agents, engine, grouped, closed = _forwarding_agents(tmp_path, store, now)
    agents.rebalance = RebalanceHold(30.0, clock=lambda: now[0], max_s=REBALANCE_HOLD_MAX_S)
    agents.progress = group  # type: ignore[assignment]
    return agents, engine, grouped, closed


@pytest.mark.parametrize("moved", ["nothing", "nothing, a backlog here", "nothing, a marker",
                                   "one message",
                                   "one message, a slow owner", "progress not read"])
async def test_the_hold_ends_once_the_group_forwarded_what_the_moved_partitions_held(
        tmp_path: Path, moved: str) -> None:
    # Inference partition 1 moves to a joining worker; the grouped partition stays here.
    # The rebalance takes 35 s, so partition 1's source has been silent past idle_s
    # when it ends. If partition 1 held nothing unforwarded ("nothing"), the group's
    # committed offsets are at the ends read after the assignment: the windows need not
    # wait idle_s more, the silent source is idle. If it held a message ("one
    # message"), the windows wait until the new owner has forwarded it and the group
    # committed past it: ending the hold earlier would close [0, 10 s) with 5 of its
    # 10 events. They wait past idle_s when the new owner takes longer than that to
    # forward ("a slow owner", alive within its session: ending the hold at idle_s made
    # those 5 events late). Without the group's progress, the hold lasts idle_s. A
    # worker with a backlog of its own (it reads behind its partitions' ends) reads the
    # group's progress too: the hold also keeps the sources of other workers'
    # inference partitions awaited, backlog or not.
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    group = _GroupLog()
    try:
        agents, engine, grouped, closed = _following(tmp_path, store, now,
                                                     None if moved == "progress not read" else group)
        if moved == "nothing, a backlog here":
            agents.backlog = lambda: True
        probe = _MarkerProbe()
        agents.gap_probe = probe  # type: ignore[assignment]

        forward = _forwarder(agents, grouped)
        await forward(0, 3, partition=0, offset=0)
        await forward(3, 2, partition=1, offset=0)
        group.end, group.commit = {0: 1, 1: 1}, {0: 1, 1: 1}
        await agents.tick()
        await agents.partitions_revoked(set())
        if moved.startswith("one message"):
            group.end[1] = 2  # events 5-9 s, produced while the group rebalanced
        if moved == "nothing, a marker":
            # a transaction's commit marker past the last event: the committed offset
            # stays one short of the end, and nothing is left to forward
            group.end[1] = 2
            probe.empty_gaps.add(Gap("llmpulse.inference", 1, 1, 2))
        now[0] += 35.0
        await agents.partitions_assigned(set())
        await forward(20, 7, partition=0, offset=1)  # this worker kept partition 0
        group.end[0] = group.commit[0] = 2
        now[0] += 1.0
        await agents.tick()
        first = [(s.ts, s.n) for s in closed]
        if moved == "one message, a slow owner":
            now[0] += 31.0
            await agents.tick()
            assert closed == [] and agents.stats()["rebalance_holds"]
        if moved.startswith("one message"):
            # the new owner forwards partition 1 from its committed offset, then on
            await forward(5, 5, partition=1, offset=1)
            await forward(10, 10, partition=1, offset=2)
            await forward(27, 3, partition=1, offset=3)
            group.end[1] = group.commit[1] = 4
        now[0] += 2.0
        await agents.tick()
        second = [(s.ts, s.n) for s in closed]
        stats = agents.stats()
        now[0] += 31.0  # every source silent past idle_s: the end
        await agents.tick()
        engine_stats = engine.stats()
        await agents.close()
    finally:
        store.close()
    assert engine_stats["late_dropped"] == 0, engine_stats["late_dropped_by_group"]
    w1, w2, w3 = ((START_MS + 10_000 * k) / 1000 for k in (1, 2, 3))
    if moved == "nothing, a backlog here":  # no window closes on silence, but the hold ends
        assert first == second == []
        assert stats["rebalance_holds_ended_early"] == 1 and not stats["rebalance_holds"]
    elif moved in ("nothing", "nothing, a marker"):  # 1 s after the assignment, not idle_s
        assert first == second == [(w1, 5)]
        assert stats["rebalance_holds_ended_early"] == 1 and not stats["rebalance_holds"]
        assert [(s.ts, s.n) for s in closed] == [(w1, 5), (w3, 7)]
    elif moved.startswith("one message"):
        assert first == []  # partition 1's message not forwarded yet: held
        assert second == [(w1, 10), (w2, 10)]
        assert not stats["rebalance_holds"]
        slow = moved.endswith("a slow owner")
        assert (stats["rebalance_holds_ended_early"], stats["rebalance_holds_ended_late"]) == (
            (0, 1) if slow else (1, 0))
        assert group.reads == 1  # the ends of one assignment are read once
        # the log showed the record: asked once for the gap, which stayed a backlog
        assert probe.asked == [Gap("llmpulse.inference", 1, 1, 2)]
        assert [(s.ts, s.n) for s in closed] == [(w1, 10), (w2, 10), (w3, 10)]
    else:
        assert first == second == []  # idle_s after the assignment
        assert stats["rebalance_holds"] and stats["rebalance_holds_ended_early"] == 0
        assert [(s.ts, s.n) for s in closed] == [(w1, 5), (w3, 7)]


class _Consumer:
    """What the worker asks of its Faust consumer about ``llmpulse.grouped``: the
    assignment, end offsets (ListOffsets), the last fetch's high watermarks and the
    group's committed offsets, as the test sets them."""

    def __init__(self, ends: dict[int, int], committed: dict[int, int]) -> None:
        from faust.types import TP

        from llmpulse.events import TOPIC_GROUPED

        self.tps = {p: TP(TOPIC_GROUPED, p) for p in ends}
        self.ends = ends
        self._committed_offset = {self.tps[p]: off for p, off in committed.items()}

    def assignment(self) -> set[Any]:
        return set(self.tps.values())

    async def highwaters(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    def highwater(self, tp: Any) -> None:
        return None  # nothing fetched yet


async def test_the_hold_waits_for_a_grouped_partition_taken_over_without_a_state(
        tmp_path: Path) -> None:
    # The group has forwarded every inference partition (its commits are at their ends),
    # but this worker was just given grouped partition 3, with no state handed over and
    # nothing read of it: its position is the group's committed offset, 40, and 12
    # messages lie past it (other workers' forwards of before the rebalance). The window
    # polls' backlog check knows no position there, so the hold is what keeps the
    # sources other workers forward to it awaited: it ends once the engine has taken
    # those in (a rolling restart closed a window with 119 of its 215 events without it).
    store = Store.open(f"chdb://{tmp_path}/store")
    now = [1_000.0]
    group = _GroupLog()
    try:
        agents, _engine, _grouped, _closed = _following(tmp_path, store, now, group)
        consumer = _Consumer(ends={3: 52}, committed={3: 40})
        agents.app = type("App", (), {"consumer": consumer})()  # type: ignore[assignment]
        group.end, group.commit = {0: 7, 1: 9}, {0: 7, 1: 9}
        agents.rebalance.revoked()
        agents.rebalance.assigned()
        now[0] += 1.0
        before = await agents._caught_up()
        agents._positions[3] = 50  # taken in up to 50: two messages still to read
        short = await agents._caught_up()
        agents._positions[3] = 52
        after = await agents._caught_up()
        stats = agents.stats()
        agents.app = type("App", (), {"consumer": None})()  # type: ignore[assignment]
        await agents.close()
    finally:
        store.close()
    assert (before, short, after) == (False, False, True)
    assert stats["rebalance_holds_ended_early"] == 1 and not stats["rebalance_holds"]
