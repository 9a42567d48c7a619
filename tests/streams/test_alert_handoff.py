"""A group's alert moves with its ``llmpulse.grouped`` partition.

When a partition moves to another worker (a rebalance, a pause past the session
timeout, a rolling restart, scaling), its engine state goes through the changelog
(:mod:`llmpulse.streams.handoff`); its groups' alert states must go with it, or the new
owner starts the group's alerts over (its ``for`` count restarts: the alert fires
windows late) and the old one keeps an alert open for a group it no longer has. Seen in
``python -m llmpulse.bench.fault --fault pause``: every window equal, one alert starting
a window later in the worker the group moved to.

Worker A takes the first part of a group's events, with a latency breach under way,
hands the partition over; worker B takes over and reads on. Their alerts together must
be those of one worker that read every event, at the same windows; A keeps nothing of
the group. The real agents (signal and alert), the real broker for the changelog.

The same holds for the state a worker saves beside its engine's for its own restart: the
last test kills a worker right after a snapshot taken while a poll's signals were on their
way to the alert agent.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llmpulse.broker import EmbeddedBroker
from llmpulse.config import load_settings
from llmpulse.detectors.base import Signal
from llmpulse.detectors.testing import synthetic_events
from llmpulse.store import Store
from llmpulse.streams import signals as signals_module
from llmpulse.streams.alerts_agent import AlertAgent
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.handoff import EngineStateLog
from llmpulse.streams.rules import Rules
from llmpulse.streams.signals import SignalAgents
from llmpulse.streams.testing import (
    TestingMessage,
    TestingSink,
    TestingTopic,
    drive_signal_agents,
    grouped_messages,
)

RULES = """
rules:
  - {name: slow, signal: latency.p50_ms, op: ">", threshold: 1500, for: 3, resolve_for: 3,
     cooldown: 0, severity: warning}
"""
START = 1_700_000_000.0
RATE = 10.0  # events a second: 100 a 10 s latency window


def _events() -> list[dict[str, Any]]:
    """200 s of one group's events, five times slower from 60 s to 130 s: the rule's
    windows breach from 70 s to 130 s (fires at the third), then recover."""
    events = synthetic_events(2000, seed=11, rate=RATE, start=START, with_feedback=False)
    for ev in events:
        if 60.0 <= ev["ts"] / 1000 - START < 130.0:
            ev["latency_ms"] *= 5.0
    return events


def _alert_agent(root: Path, rules: Rules, sink: TestingSink, *, app_dir: str = "w") -> AlertAgent:
    """A worker's alert agent, its state in ``root/w`` (where the worker keeps it)."""
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(root)}, path=None)
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=root / app_dir,
                        web_port=None)
    return AlertAgent(app, rules, sink, state_dir=root / "w", notify=False,
                      alerts_topic=TestingTopic(), retrain_topic=TestingTopic())


class _Worker:
    """One worker's signal agents and alert agent, wired as the worker wires them."""

    def __init__(self, root: Path, store: Store, log: EngineStateLog | None, rules: Rules) -> None:
        settings = load_settings(env={"LLMPULSE_DATA_DIR": str(root)}, path=None)
        settings = replace(settings, signals=replace(settings.signals, process=False))
        app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=root / "w",
                            web_port=None)
        self.sink = TestingSink()
        self.signals = SignalAgents(app, settings, store, self.sink,
                                    signals_topic=TestingTopic(), state_log=log)
        self.alerts = _alert_agent(root, rules, self.sink, app_dir="alerts")
        self.signals.consumers.append(self.alerts)
        self.signals.group_states = self.alerts

    def rows(self) -> list[tuple[str, float, float]]:
        """(state, started_at, updated_at) of the alert rows this worker stored."""
        return [(r["state"], r["started_at"] - START, r["updated_at"] - START)
                for r in self.sink.rows["alerts"]]


def _ts(msg: TestingMessage) -> float:
    return max(int(line.split(b'"ts":')[1].split(b",")[0]) for line in msg.value.split(b"\n")) / 1000


async def _poll_held(worker: _Worker, messages: list[Any],
                     ) -> tuple[asyncio.Event, list[Signal], asyncio.Future[None]]:
    """``worker`` takes ``messages`` and starts a window poll whose signals a slow store
    write holds back from the alert agent until the gate is set: (the gate, the signals
    held, the poll) once the poll's signals are held."""
    gate, held = asyncio.Event(), []

    async def slow_store(signals: list[Signal]) -> None:
        held.extend(signals)
        await gate.wait()

    worker.signals.consumers.insert(0, slow_store)
    await worker.signals.take(messages)
    tick = asyncio.ensure_future(worker.signals.tick())
    while not held and not tick.done():
        await asyncio.sleep(0.01)
    return gate, held, tick


async def _reference(broker: EmbeddedBroker, tmp_path: Path, store: Store, topic: str,
                     rules: Rules, messages: list[Any]) -> list[tuple[str, float, float]]:
    """The alert rows of one worker that reads every event (the reference)."""
    ref = _Worker(tmp_path / "ref", store, EngineStateLog(
        broker.bootstrap, partitions=1, topic=f"{topic}.ref"), rules)
    await ref.signals.partitions_assigned({m.partition for m in messages})
    await drive_signal_agents(ref.signals, messages, batch=5)
    await ref.signals.close()
    return ref.rows()


@pytest.mark.parametrize("moved_at", [95.0, 160.0], ids=["pending-in-a", "firing-in-a"])
async def test_the_alert_goes_on_in_the_worker_the_group_moved_to(
    broker: EmbeddedBroker, tmp_path: Path, moved_at: float,
) -> None:
    rules = Rules.from_yaml(RULES)
    messages = grouped_messages(_events(), chunk=50)
    (partition,) = {m.partition for m in messages}
    topic = f"llmpulse.engine-state.{uuid.uuid4().hex[:8]}"

    def log() -> EngineStateLog:
        return EngineStateLog(broker.bootstrap, partitions=1, topic=topic)

    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        expected = await _reference(broker, tmp_path, store, topic, rules, messages)
        assert [state for state, _, _ in expected] == ["firing", "resolved"]

        # A reads the events up to ``moved_at``, then the partition moves to B
        split = next(i for i, m in enumerate(messages) if _ts(m) - START >= moved_at)
        a, b = (_Worker(tmp_path / name, store, log(), rules) for name in ("a", "b"))
        await a.signals.partitions_assigned({partition})
        await drive_signal_agents(a.signals, messages[:split], batch=5, flush=False)
        held = a.alerts.alerts.stats()
        assert held["tracked_keys"] == 1, "A holds the group's alert state when it moves"
        assert held["open"] == (moved_at > 130.0)
        await a.signals.partitions_revoked({partition})
        await a.signals.partitions_assigned(set())
        assert a.alerts.alerts.stats()["tracked_keys"] == 0, "A keeps nothing of the group"
        assert a.alerts.alerts.open_alerts() == []
        assert a.alerts.counts["handoff_keys_dropped"] == 1
        restarted = _alert_agent(tmp_path / "a", rules, TestingSink(), app_dir="w2")
        assert restarted.alerts.stats()["tracked_keys"] == 0, "nor does its saved alert state"

        await b.signals.partitions_assigned({partition})
        await drive_signal_agents(b.signals, messages[split:], batch=5)
        assert b.signals.counters["partitions_taken_over"] == 1
        assert b.alerts.counts["handoff_keys_taken"] == 1
        # A's rows then B's: one alert, at the same windows as the single worker's
        assert a.rows() + b.rows() == expected
        if moved_at > 130.0:
            assert a.rows() == expected[:1] and b.rows() == expected[1:]  # B resolves A's
        else:
            assert a.rows() == []  # the breach streak A began fires in B
        await a.signals.close()
        await b.signals.close()
    finally:
        store.close()


async def test_a_hand_off_waits_for_the_alerts_of_a_window_poll_under_way(
    broker: EmbeddedBroker, tmp_path: Path,
) -> None:
    """The revocation comes while a window poll's signals are on their way to the alert
    agent (the engine closed the windows, the alerts have not seen them): the alert
    states handed over are taken once they have, or the new owner never sees those
    windows' verdicts (its engine state has them closed)."""
    rules = Rules.from_yaml(RULES)
    messages = grouped_messages(_events(), chunk=50)
    (partition,) = {m.partition for m in messages}
    topic = f"llmpulse.engine-state.{uuid.uuid4().hex[:8]}"
    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        expected = await _reference(broker, tmp_path, store, topic, rules, messages)

        a, b = (_Worker(tmp_path / name, store, EngineStateLog(
            broker.bootstrap, partitions=1, topic=topic), rules) for name in ("a", "b"))
        split = next(i for i, m in enumerate(messages) if _ts(m) - START >= 95.0)
        await a.signals.partitions_assigned({partition})
        await drive_signal_agents(a.signals, messages[:split - 5], batch=5, flush=False)
        # the last poll before the move: its signals held before the alert agent (a slow
        # store write), while the rebalance revokes the partition
        gate, held, tick = await _poll_held(a, messages[split - 5:split])
        assert any(s.signal == "latency.p50_ms" and s.value > 1500 for s in held), \
            "the poll under way closed a breaching window"
        asyncio.get_running_loop().call_later(0.5, gate.set)
        await a.signals.partitions_revoked({partition})
        await tick
        await a.signals.partitions_assigned(set())

        await b.signals.partitions_assigned({partition})
        await drive_signal_agents(b.signals, messages[split:], batch=5)
        assert a.rows() + b.rows() == expected
        await a.signals.close()
        await b.signals.close()
    finally:
        store.close()


async def test_a_snapshot_taken_while_a_poll_is_emitted_loses_no_alert_at_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A crash right after an engine snapshot taken while a poll's signals were on their
    way to the alert agent. The window poll and the snapshot timer are two tasks on one
    event loop, and the engine thread runs a save between two polls: a save that ran
    while a poll's signals were being emitted (a slow store write before the alert
    agent) held those windows closed, and a kill before the alert agent saved its state
    after them left a restart that never saw their verdicts (its replay starts from the
    snapshot). Worker A saves, polls once more while the store holds the signals back,
    the snapshot timer fires, A dies (nothing more of it runs or is saved); a worker
    restarted on A's directory replays and reads on. Their alert rows together are the
    reference's."""
    monkeypatch.setattr(signals_module, "EMITTING_WAIT_S", 1.0)
    rules = Rules.from_yaml(RULES)
    messages = grouped_messages(_events(), chunk=50)
    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        ref = _Worker(tmp_path / "ref", store, None, rules)
        await drive_signal_agents(ref.signals, messages, batch=5)
        await ref.signals.close()
        expected = ref.rows()
        assert [state for state, _, _ in expected] == ["firing", "resolved"]
        fired_at = expected[0][2]

        # A reads up to the window before the one that fires, and saves
        a = _Worker(tmp_path / "a", store, None, rules)
        split = next(i for i, m in enumerate(messages) if _ts(m) - START >= fired_at + 6)
        await drive_signal_agents(a.signals, messages[:split - 5], batch=5, flush=False)
        await a.signals.save()
        assert a.rows() == [], "nothing fired yet"
        # the last poll: the store holds its signals back from the alert agent
        _, held, tick = await _poll_held(a, messages[split - 5:split])
        assert any(s.signal == "latency.p50_ms" and s.ts - START == fired_at for s in held), \
            "the poll under way closed the window that fires"
        await a.signals.save()  # the snapshot timer, while the signals are held
        assert a.signals.counters["saves_put_off_while_emitting"] == 1
        assert any("engine state not saved" in r.getMessage() for r in caplog.records
                   if r.levelname == "WARNING")
        # SIGKILL: the poll never reaches the alert agent, and nothing more is saved
        tick.cancel()
        await a.signals.close()
        assert a.rows() == []

        restarted = _Worker(tmp_path / "a", store, None, rules)
        # from where A's state ends, as the consumer starts from its committed offset
        await drive_signal_agents(restarted.signals, messages, batch=5)
        await restarted.signals.close()
        assert restarted.signals.counters["replay_skipped"] == split - 5
        assert a.rows() + restarted.rows() == expected
    finally:
        store.close()
