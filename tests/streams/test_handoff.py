"""The partition state changelog on the real broker, and an engine's share moving between engines."""

from __future__ import annotations

import uuid

import pytest

from llmpulse.broker import EmbeddedBroker
from llmpulse.streams.engine import SignalEngine, default_detectors
from llmpulse.streams.handoff import MAX_FRAGMENT, EngineStateLog, PartitionState
from llmpulse.streams.windows import WindowSpec


@pytest.fixture
def state_log(broker: EmbeddedBroker) -> EngineStateLog:
    return EngineStateLog(broker.bootstrap, partitions=4,
                          topic=f"llmpulse.engine-state.{uuid.uuid4().hex[:8]}")


def test_the_state_covering_most_wins_whoever_wrote_last(state_log: EngineStateLog) -> None:
    keys = frozenset({b"app/m/1"})
    big = bytes(range(256)) * (3 * MAX_FRAGMENT // 256 + 7)  # four fragments
    state_log.write([PartitionState(1, 100, big, keys), PartitionState(2, 7, b"two", keys)])
    state_log.write([PartitionState(1, 140, b"newer", keys)])
    # a worker paused past its session timeout wakes up and writes what it had
    state_log.write([PartitionState(1, 120, b"stale", keys)])
    got = state_log.read({1, 2, 3})
    assert sorted(got) == [1, 2]
    assert (got[1].covered, got[1].engine, got[1].keys) == (140, b"newer", keys)
    assert got[2].engine == b"two"
    state_log.write([PartitionState(2, 9, big, frozenset())])
    assert state_log.read({2})[2].engine == big  # fragments put back together


def test_an_empty_changelog_hands_over_nothing(state_log: EngineStateLog) -> None:
    assert state_log.read({0, 1, 2, 3}) == {}


def _engine() -> SignalEngine:
    return SignalEngine({"latency": default_detectors()["latency"]},
                        {"latency": WindowSpec(10, 5)}, clock=lambda: 0.0)


def _ev(i: int, model: str, ts_ms: int) -> dict[str, object]:
    return {"event_id": f"{model}{i}", "request_id": f"r{model}{i}", "ts": ts_ms, "app": "a",
            "model": model, "model_version": "1", "latency_ms": 10.0 + i, "status": "ok",
            "input_tokens": 1, "output_tokens": 2}


def test_a_moved_group_keeps_its_windows_and_closed_windows_stay_closed() -> None:
    one, a, b = _engine(), _engine(), _engine()
    first = [_ev(i, "x", 1_000 * i) for i in range(1, 20)]
    later = [_ev(i, "x", 1_000 * i) for i in range(20, 40)]
    for eng in (one, a):
        eng.add_inference(first, source=(0, 0))
    early = a.advance(0.0)  # closes [0, 10) s on a: watermark 19 s, lateness 5 s
    assert {s.ts for s in early} == {10.0}
    moved = a.snapshot_groups({b"a/x/1"}, partition=0)
    assert moved["watermark"] == [((0, 0), 19_000)]
    assert a.drop_groups({b"a/x/1"}, partition=0) == 1
    assert a.stats()["open_windows"] == 0 and a._watermark.sources_of(0) == []
    b.merge(moved)
    # a copy of an event of the closed window is a repeat on b as it would be on a;
    # an event that window did not hold is late
    assert b.add_inference([_ev(3, "x", 3_000)], source=(0, 0)) == 0
    assert b.stats()["repeats_dropped"] == 1 and b.stats()["late_dropped"] == 0
    assert b.add_inference([_ev(99, "x", 3_000)], source=(0, 0)) == 1
    for eng in (one, b):
        eng.add_inference(later, source=(0, 0))
    ref = sorted((s.ts, s.signal, s.dimension, s.value, s.n) for s in one.flush())
    split = sorted((s.ts, s.signal, s.dimension, s.value, s.n)
                   for s in early + a.flush() + b.flush())
    assert split == ref and len({r[0] for r in ref}) == 4


def test_a_group_taken_over_from_an_older_state_waits_for_its_partition() -> None:
    """A worker whose watermark is further on takes over a partition from a state
    written earlier (a worker paused past its session timeout): the partition's
    windows close by its own sources, so the replay of its events is not late."""
    one, a, b = _engine(), _engine(), _engine()
    xs = [_ev(i, "x", 1_000 * i) for i in range(1, 40)]
    ys = [_ev(i, "y", 1_000 * i) for i in range(1, 40)]
    one.add_inference(xs, source=(0, 0))
    one.add_inference(ys, source=(1, 0))
    a.add_inference(xs[:12], source=(0, 0))  # a saved x's partition at 12 s, then paused
    moved = a.snapshot_groups({b"a/x/1"}, partition=0)
    b.add_inference(ys, source=(1, 0))  # b is at 39 s on its own partition
    early = b.advance(0.0)
    b.merge(moved)
    assert b.add_inference(xs[12:], source=(0, 0)) == 0  # the replay: nothing late
    ref = sorted((s.ts, s.model, s.signal, s.dimension, s.value, s.n) for s in one.flush())
    got = sorted((s.ts, s.model, s.signal, s.dimension, s.value, s.n)
                 for s in early + b.advance(0.0) + b.flush())
    assert got == ref and b.stats()["late_dropped"] == 0


def test_older_states_are_marked_superseded_for_retention(state_log: EngineStateLog) -> None:
    """Each write commits its first record's offset for the retention group, so a
    broker that deletes consumed records keeps the newest state and drops older ones."""
    from confluent_kafka import Consumer, TopicPartition

    from llmpulse.streams.handoff import RETENTION_GROUP

    keys = frozenset({b"app/m/1"})
    big = bytes(range(256)) * (MAX_FRAGMENT // 256 + 7)  # two fragments
    state_log.write([PartitionState(1, 10, big, keys), PartitionState(3, 5, b"three", keys)])
    state_log.write([PartitionState(1, 20, big, keys)])
    reader = Consumer({"bootstrap.servers": state_log.bootstrap, "group.id": RETENTION_GROUP,
                       "enable.auto.commit": False})
    try:
        got = {tp.partition: tp.offset for tp in reader.committed(
            [TopicPartition(state_log.topic, p) for p in (1, 3)], timeout=30)}
    finally:
        reader.close()
    # partition 1: two fragments of the first state, then the second state from offset 2
    assert got == {1: 2, 3: 0}
    assert state_log.read({1})[1].covered == 20
    state_log.close()
