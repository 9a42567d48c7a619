"""Offsets that hold no record (a transactional producer's markers) are closed by
reading the log, never by timing: :mod:`llmpulse.streams.gaps`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from llmpulse.streams.gaps import Gap, GapCloser, GapProbe


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Probe:
    """Answers from a table of gaps; records what it was asked."""

    def __init__(self, answers: dict[Gap, bool | None]) -> None:
        self.answers = answers
        self.asked: list[Gap] = []

    async def empty(self, gap: Gap) -> bool | None:
        self.asked.append(gap)
        return self.answers.get(gap, False)


def _closer(positions: dict[tuple[str, int], int], ends: dict[tuple[str, int], int],
            probe: Any, starts: dict[tuple[str, int], int] | None = None,
            ) -> tuple[GapCloser, _Clock]:
    clock = _Clock()
    return GapCloser(positions, lambda: ends, probe, settle_s=1.0, clock=clock,
                     starts=None if starts is None else (lambda: starts)), clock


async def test_a_settled_gap_the_log_shows_empty_is_read() -> None:
    positions = {("in", 0): 41, ("in", 1): 7}
    ends = {("in", 0): 42, ("in", 1): 7}
    probe = _Probe({Gap("in", 0, 41, 42): True})
    closer, clock = _closer(positions, ends, probe)
    assert await closer.check() == []  # first seen: not settled yet
    clock.t = 0.5
    assert await closer.check() == [] and probe.asked == []
    clock.t = 1.2
    assert await closer.check() == [Gap("in", 0, 41, 42)]
    assert positions == {("in", 0): 42, ("in", 1): 7}
    assert closer.as_dict() == {"gaps_closed": 1, "gap_offsets_skipped": 1, "gap_probes": 1}


async def test_a_gap_with_a_record_stays_a_backlog_and_is_asked_once() -> None:
    # the ingest agent stuck on a batch (a store outage): the log shows the record
    positions = {("in", 0): 10}
    ends = {("in", 0): 12}
    probe = _Probe({})
    closer, clock = _closer(positions, ends, probe)
    for t in (0.0, 1.5, 3.0, 60.0):
        clock.t = t
        assert await closer.check() == []
    assert positions == {("in", 0): 10} and probe.asked == [Gap("in", 0, 10, 12)]
    ends[("in", 0)] = 13  # a new gap: asked again once settled
    clock.t = 61.0
    await closer.check()
    clock.t = 62.5
    await closer.check()
    assert probe.asked[-1] == Gap("in", 0, 10, 13) and len(probe.asked) == 2


async def test_moving_positions_and_ends_are_never_probed() -> None:
    positions = {("in", 0): 0}
    ends = {("in", 0): 5}
    probe = _Probe({})
    closer, clock = _closer(positions, ends, probe)
    for i in range(20):  # traffic: something moves every half second
        clock.t = i * 0.5
        if i % 2:
            positions[("in", 0)] += 3
        else:
            ends[("in", 0)] += 3
        await closer.check()
    assert probe.asked == []


async def test_an_unanswered_probe_is_retried_later_and_moves_nothing() -> None:
    positions = {("in", 0): 3}
    ends = {("in", 0): 4}
    probe = _Probe({Gap("in", 0, 3, 4): None})
    closer, clock = _closer(positions, ends, probe)
    await closer.check()
    clock.t = 2.0
    await closer.check()
    clock.t = 5.0
    await closer.check()
    assert len(probe.asked) == 1 and positions[("in", 0)] == 3
    clock.t = 13.0
    probe.answers[Gap("in", 0, 3, 4)] = True
    await closer.check()
    assert len(probe.asked) == 2 and positions[("in", 0)] == 4


async def test_a_partition_restarted_after_a_marker_starts_at_its_committed_offset() -> None:
    positions: dict[tuple[str, int], int] = {}
    ends = {("in", 2): 9}
    probe = _Probe({Gap("in", 2, 8, 9): True})
    closer, clock = _closer(positions, ends, probe, starts={("in", 2): 8})
    await closer.check()
    clock.t = 1.5
    await closer.check()
    assert positions == {("in", 2): 9}


@pytest.mark.integration
async def test_the_probe_reads_markers_as_empty_and_records_as_unread(broker: Any) -> None:
    bs = broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bs})  # kept: a dropped client cancels the call
    admin.create_topics([NewTopic("txn", 1, 1)])["txn"].result(30)
    producer = Producer({"bootstrap.servers": bs, "transactional.id": "test-gaps"})
    await asyncio.to_thread(producer.init_transactions, 30)
    producer.begin_transaction()
    for v in (b"a", b"b"):
        producer.produce("txn", v)
    await asyncio.to_thread(producer.commit_transaction, 30)
    plain = Producer({"bootstrap.servers": bs})
    plain.produce("txn", b"c")
    plain.flush(30)
    probe = GapProbe(bs)
    try:
        # offsets: a 0, b 1, the commit marker 2, c 3
        assert await probe.empty(Gap("txn", 0, 2, 3)) is True
        assert await probe.empty(Gap("txn", 0, 1, 3)) is False
        assert await probe.empty(Gap("txn", 0, 2, 4)) is False
        assert await probe.empty(Gap("txn", 0, 0, 2)) is False
        assert await probe.empty(Gap("txn", 0, 4, 4)) is True
    finally:
        await probe.close()
