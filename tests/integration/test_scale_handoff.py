"""Scaling out and back in while traffic flows changes no signal.

``llmpulse up`` workers share one Kafka (as in the distributed setup), each
test once on one embedded broker and once on the local three-broker cluster
(the ``kafka`` fixture): worker A runs alone, B joins (A's ``llmpulse.grouped``
partitions are split between them), then C; then C and B stop cleanly in turn
and their partitions go back to the others, all while seeded traffic flows. The partitions that move carry their engine
state (open windows, detector state, watermark) through the
``llmpulse.engine-state`` changelog, so the windows A and B write together are
the windows of an undisturbed single worker fed the same traffic: same
windows, same values and counts, no late event, every event taken in once.

Each worker has a store of its own here (chDB opens a directory in one
process), where a deployment shares one ClickHouse: the traffic has no
feedback, whose routing looks its inference up in the store, so that both
runs see the same events; the rows of a window written by both workers are
taken as ClickHouse would, the last computed.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from llmpulse.bench.fault_stores import saved_counts
from llmpulse.broker import EmbeddedBroker, create_topics
from llmpulse.events import TOPIC_GROUPED, TOPIC_INFERENCE, TOPICS
from llmpulse.harness import wait_for
from llmpulse.monitor import Monitor
from llmpulse.simulate import Incident, SupportAppSimulator
from tests.integration.conftest import KafkaFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEED = 5.0  # event seconds per wall second
DURATION = 120.0
PARTITIONS = 4
PAUSE_S = 35.0
"""How long B is paused: past its session timeout (3 s) and past the time a silent
source takes to count as idle in the engine (30 s), so B wakes with every source
silent and a stale view of what is left to read."""
WARM_UP = 3
"""Chunks sent first, then waited on until the workers took them in (:func:`_warm_up`)."""


def _config(root: Path, stop: str, session_timeout_s: float = 3.0,
            partitions: int = PARTITIONS) -> None:
    """``session_timeout_s``: 3 s where a worker is paused past it; longer where
    workers join a busy group (``llmpulse up`` waits four sessions and 10 s for its
    first partitions)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "llmpulse.yaml").write_text(
        f"session_timeout_s: {session_timeout_s:g}\n"
        f"ingest:\n  partitions: {partitions}\n"
        "signals:\n  latency_window_s: 10\n  window_s: 30\n  poll_s: 0.5\n  snapshot_s: 5\n"
        f"  engine_processes: 1\n  stop: {stop}\n")


def _traffic() -> list[list[Any]]:
    sim = SupportAppSimulator(seed=23, rate=25.0, app="scaling", feedback_share=0.0,
                              incidents=[Incident.parse("latency_spike:40:80:factor=4")],
                              start_ts=time.time() - DURATION - 5)
    return list(sim.batches(DURATION, 1.0))


class Sender:
    """Sends the chunks at SPEED times real time, a slice at a time."""

    def __init__(self, bootstrap: str, chunks: list[list[Any]],
                 shim: Mapping[str, Any] | None = None) -> None:
        self.mon = Monitor(app="scaling", bootstrap=bootstrap, **dict(shim or {}))
        self.chunks = chunks
        self.sent = 0

    def send(self, until: int) -> None:
        t0, first = time.monotonic(), self.sent
        for c in range(first, until):
            wait = (c - first) / SPEED - (time.monotonic() - t0)
            if wait > 0:
                time.sleep(wait)
            for _topic, ev in self.chunks[c]:
                self.mon.inference(**ev)
        assert self.mon.flush(60)
        self.sent = until

    def close(self) -> None:
        self.mon.close()


def _signals(data_dir: Path) -> dict[tuple[str, ...], tuple[str, float, int]]:
    """Signal windows in a stopped worker's store: key -> (computed_at, value, n)."""
    from llmpulse.store import Store

    store = Store.open(f"chdb://{data_dir / 'store'}", ddl=False)
    try:
        rows = store.query(
            "SELECT model, model_version, signal, dimension, window_s, toString(ts) AS t, "
            "toString(computed_at) AS at, value, n FROM signals FINAL WHERE app = 'scaling'")
    finally:
        store.close()
    return {(r["model"], r["model_version"], r["signal"], r["dimension"], str(r["window_s"]),
             r["t"]): (r["at"], round(float(r["value"]), 6), int(r["n"])) for r in rows}


def _merged(*stores: dict[tuple[str, ...], tuple[str, float, int]]
            ) -> dict[tuple[str, ...], tuple[float, int]]:
    """The windows of several stores as one ClickHouse table would keep them: the last computed."""
    out: dict[tuple[str, ...], tuple[str, float, int]] = {}
    for rows in stores:
        for k, v in rows.items():
            if k not in out or v[0] > out[k][0]:
                out[k] = v
    return {k: (v[1], v[2]) for k, v in out.items()}


def _stats(sp: Any) -> dict[str, Any]:
    return dict(sp.get("/api/stats"))


def _grouped(sp: Any) -> set[str]:
    """The worker's grouped partitions; none while it cannot say (its stats answer
    500 while the consumer it asks is rejoining the group)."""
    try:
        stats = _stats(sp)
    except urllib.error.HTTPError as exc:
        if exc.code != 500:
            raise
        return set()
    return {a for a in stats.get("assignment", []) if a.startswith(TOPIC_GROUPED + ":")}


def _shared(*workers: Any, partitions: int = PARTITIONS) -> bool:
    """The grouped partitions are shared out among ``workers``, each holding some,
    none held twice."""
    held = [_grouped(w) for w in workers]
    every = set().union(*held)
    return all(held) and sum(map(len, held)) == len(every) == partitions


def _taken(sp: Any, events: int) -> dict[str, Any]:
    """The engine's counters once it has taken in ``events`` events."""
    def ready() -> dict[str, Any] | None:
        eng = _stats(sp)["signals"]["engine"]
        return eng if int(eng.get("events_in", 0)) >= events else None
    return dict(wait_for(ready, 180, f"the engine to take in {events} events"))


def _warm_up(sender: Sender, *workers: Any) -> None:
    """Send the first chunks and wait until the workers' engines took them in.

    A source (an ``llmpulse.inference`` partition forwarded to a grouped one) holds
    the watermark from its first event on; one whose first events reach the engine
    after another's have moved event time past the 10 s windows' lateness (5 s of
    event time: 1 s of wall time at SPEED) finds the first window closed. On the
    Tansu cluster, where every fetch is object-store work, the first fetches of the
    partitions are that far apart. That is the start of a stream, not the fault
    under test: it starts here before the windows can close."""
    sender.send(WARM_UP)
    n = sum(1 for ch in sender.chunks[:WARM_UP] for t, _ in ch if t == TOPIC_INFERENCE)

    def taken() -> bool:
        return sum(int(_stats(w)["signals"]["engine"].get("events_in", 0))
                   for w in workers) >= n
    wait_for(taken, 180, f"the workers to take in the first {n} events")


def _copies_taken(saved: Mapping[str, tuple[int, dict[float, int]]]) -> tuple[int, int]:
    """Events the workers took in, and of them the copies (the window length that
    dropped most, summed over the workers)."""
    by_length: dict[float, int] = {}
    for _, copies in saved.values():
        for length, n in copies.items():
            by_length[length] = by_length.get(length, 0) + n
    return sum(events for events, _ in saved.values()), max(by_length.values(), default=0)


def _reference(stack_factory: Any, tmp_path: Path, chunks: list[list[Any]], n: int
               ) -> tuple[dict[tuple[str, ...], tuple[float, int]], dict[str, Any]]:
    """One undisturbed worker on one embedded broker, fed the same traffic: what
    every disturbed run, on either kind of Kafka, must write."""
    root = tmp_path / "undisturbed"
    with EmbeddedBroker() as b:
        create_topics(b.bootstrap, dict.fromkeys(TOPICS, PARTITIONS))
        _config(root, "flush")
        sp = stack_factory(root / "data", LLMPULSE_KAFKA=b.bootstrap).start()
        sender = Sender(b.bootstrap, chunks)
        try:
            sender.send(len(chunks))
        finally:
            sender.close()
        eng = _taken(sp, n)
        assert sp.stop() == 0
    return _merged(_signals(root / "data")), eng


def _compare(ref: dict[tuple[str, ...], tuple[float, int]],
             got: dict[tuple[str, ...], tuple[float, int]]) -> None:
    assert len(ref) > 100, len(ref)
    assert got.keys() == ref.keys(), sorted(set(ref) ^ set(got))[:10]
    diff = {k: (ref[k], got[k]) for k in ref if ref[k] != got[k]}
    assert not diff, (len(diff), list(diff.items())[:5])


# (chunks sent before the step, workers running after it): 1 -> 2 -> 3 -> 2 -> 1
SCALE_STEPS = ((30, ("a", "b")), (55, ("a", "b", "c")), (80, ("a", "b")), (100, ("a",)))
# on the cluster, 1 -> 2 -> 1. Around a third worker's join there, 1 run in 5 lost
# windows to late events: a moved inference partition's sources were silent past the
# engine's idle time (now held, :mod:`llmpulse.streams.rebalance_hold`). With the hold,
# 1 -> 2 -> 3 -> 2 -> 1 kept every window in 2 of 2 runs, but in one a worker stalled
# past the rebalance timeout, and events it took in were taken in again by the worker
# that got its partition from its older state: counted twice (docs/cluster.md)
CLUSTER_SCALE_STEPS = ((30, ("a", "b")), (80, ("a",)))
SCALE_PARTITIONS = 6
"""Partitions per topic in the scale test: three workers hold two each. (With 4 a
third worker got none while Faust's assignor kept a standby replica: its capacity
was ``ceil(partitions / workers)``; tests/streams/test_partition_assignment.py.)"""


def test_scaling_out_and_in_mid_window_changes_no_signal(stack_factory: Any, tmp_path: Path,
                                                         kafka: KafkaFactory) -> None:
    chunks = _traffic()
    n = sum(1 for ch in chunks for t, _ in ch if t == TOPIC_INFERENCE)
    ref, ref_eng = _reference(stack_factory, tmp_path, chunks, n)

    steps = CLUSTER_SCALE_STEPS if kafka.kind == "cluster" else SCALE_STEPS
    others = sorted({w for _, after in steps for w in after} - {"a"})
    with kafka.start(SCALE_PARTITIONS) as k:
        # the worker that stays: its last stop writes all; workers that leave hand their
        # windows over
        _config(tmp_path / "a", "flush", 10, SCALE_PARTITIONS)
        for name in others:
            _config(tmp_path / name, "save", 10, SCALE_PARTITIONS)
        workers = {"a": k.runs(stack_factory(tmp_path / "a" / "data", LLMPULSE_KAFKA=k.bootstrap))
                   .start(kafka.stack_timeout())}
        taken_over: dict[str, int] = {}
        sender = Sender(k.bootstrap, chunks, k.shim)
        try:
            _warm_up(sender, workers["a"])
            for until, after in steps:
                sender.send(until)  # the partitions are shared by the workers of the last step
                for name in sorted(set(workers) - set(after)):  # leaves: SIGTERM, state saved
                    sp = workers.pop(name)
                    taken_over[name] = _stats(sp)["signals"].get("partitions_taken_over", 0)
                    assert sp.stop(timeout=120) == 0
                for name in sorted(set(after) - set(workers)):  # joins
                    workers[name] = k.runs(stack_factory(tmp_path / name / "data",
                                                         LLMPULSE_KAFKA=k.bootstrap)).start(
                                                             kafka.stack_timeout())
                running = [workers[w] for w in sorted(workers)]
                wait_for(partial(_shared, *running, partitions=SCALE_PARTITIONS), 180,
                         f"workers {sorted(workers)} to share the partitions")
            sender.send(len(chunks))  # A alone again
        finally:
            sender.close()
        a = workers["a"]
        saved = {name: saved_counts(tmp_path / name / "data") for name in others}
        left = {name: events for name, (events, _) in saved.items()}
        # events_in counts the copies it dropped too, so A may still be taking in the
        # tail of the traffic here: its stop's drain must cover it (docs/cluster.md)
        eng = _taken(a, n - sum(left.values()))
        a_stats = _stats(a)["signals"]
        assert a.stop(timeout=120) == 0

    got = _merged(*(_signals(tmp_path / name / "data") for name in ("a", *others)))
    print("scale:", {"taken_over": taken_over, "left_events": left, "a": {
        k: eng.get(k) for k in ("events_in", "late_dropped", "repeats_dropped",
                                "duplicates_dropped")}, "saved": saved, "windows": len(got)})
    _compare(ref, got)
    assert ref_eng["late_dropped"] == 0 and eng["late_dropped"] == 0, eng["late_dropped_by_group"]
    # every event taken in: the workers' counts add up, less the copies their windows
    # dropped. Ingest read again after a rebalance (from its last committed offset), and
    # against the cluster the shim's retries, are at-least-once (docs/cluster.md): a
    # copy may come, and is dropped, not counted twice
    # (A's counts as its last stop saved them, once every window closed)
    saved["a"] = saved_counts(tmp_path / "a" / "data")
    events, copies = _copies_taken(saved)
    assert events - copies == n == ref_eng["events_in"], (saved, n)
    # the partitions moved with their state both ways: to B as it joined, back to A as
    # the others left (the three groups sit on three of the six partitions: C's share
    # may hold none of them, then it has no state to take over)
    assert taken_over["b"] >= 1, taken_over
    assert a_stats.get("partitions_taken_over", 0) >= 1, a_stats

def test_a_worker_paused_past_its_session_timeout_changes_no_signal(stack_factory: Any,
                                                                    tmp_path: Path,
                                                                    kafka: KafkaFactory) -> None:
    """B is paused (SIGSTOP) longer than its session timeout: its partitions move to A
    with their last saved state (``snapshot_s``) and are replayed from the offsets it
    covers; when B resumes (SIGCONT) the group rebalances again and partitions move
    back to B with A's state. Events read twice (by B before the pause, again by A)
    are dropped as repeats, none counted as late."""
    chunks = _traffic()
    n = sum(1 for ch in chunks for t, _ in ch if t == TOPIC_INFERENCE)
    ref, _ = _reference(stack_factory, tmp_path, chunks, n)

    with kafka.start() as k:
        _config(tmp_path / "a", "flush")
        # B stops first and hands its open windows to A, which is stopped as soon as it
        # holds every partition: A's flush must include the state it is still taking over
        _config(tmp_path / "b", "save")
        a = k.runs(stack_factory(tmp_path / "a" / "data", LLMPULSE_KAFKA=k.bootstrap)).start(
            kafka.stack_timeout())
        wb = k.runs(stack_factory(tmp_path / "b" / "data", LLMPULSE_KAFKA=k.bootstrap)).start(
            kafka.stack_timeout())
        wait_for(lambda: _shared(a, wb), 180, "A and B to share the partitions")
        sender = Sender(k.bootstrap, chunks, k.shim)
        try:
            _warm_up(sender, a, wb)
            sender.send(40)
            assert wb.pid is not None
            os.kill(wb.pid, signal.SIGSTOP)
            paused = time.monotonic()
            try:
                wait_for(lambda: len(_grouped(a)) == PARTITIONS, 180, "A to get B's partitions")
                sender.send(80)  # while B is paused
                time.sleep(max(0.0, PAUSE_S - (time.monotonic() - paused)))
            finally:
                os.kill(wb.pid, signal.SIGCONT)
            wait_for(lambda: _shared(a, wb), 180, "B to get partitions again")
            sender.send(len(chunks))
        finally:
            sender.close()

        def drained() -> bool:
            lags = [_stats(sp)["lag"] for sp in (a, wb)]
            return all(not any(lag.values()) for lag in lags)
        wait_for(drained, 240, "both workers to read everything")
        b_stats = _stats(wb)["signals"]
        # the last worker to stop holds every partition: its flush writes what is open
        assert wb.stop(timeout=120) == 0
        wait_for(lambda: len(_grouped(a)) == PARTITIONS, 180, "A to get every partition back")
        a_stats = _stats(a)["signals"]
        assert a.stop(timeout=120) == 0

    got = _merged(_signals(tmp_path / "a" / "data"), _signals(tmp_path / "b" / "data"))
    print("pause:", {w: {k: st[k] for k in st if k != "engine"} | {
        "engine": {k: st["engine"].get(k) for k in ("events_in", "late_dropped",
                                                    "late_dropped_by_group", "repeats_dropped",
                                                    "duplicates_dropped")}}
        for w, st in (("a", a_stats), ("b", b_stats))})
    # every window is the undisturbed run's, with the same events: what B wrote for
    # partitions it no longer owned, before it learned of it, is what A wrote
    _compare(ref, got)
    # around the pause events are read twice (by B before it learns it lost its
    # partitions, and by A from B's last saved state on): a copy whose window had
    # closed with the event in it is a repeat, not a late event
    for name, st in (("a", a_stats), ("b", b_stats)):
        assert st["engine"]["late_dropped"] == 0, (name, st["engine"]["late_dropped_by_group"])
    # B's event loop saw its own pause and held its windows as after a rebalance, so
    # as a stale writer it wrote no window it had only part of
    assert b_stats["pauses_seen"] >= 1, b_stats
