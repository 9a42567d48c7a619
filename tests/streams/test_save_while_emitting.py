"""A crash right after an engine snapshot taken while a poll's signals were on their way
to the alert agent.

The window poll and the snapshot timer are two tasks on one event loop, and the engine
thread runs a save between two polls. A save that ran while a poll's signals were still
being emitted (a slow store write before the alert agent) held those windows closed; a
kill before the alert agent saved its state after them left a restart that never saw
their verdicts: its replay starts from the snapshot, which has them closed. The alert
that fired there was stored, and unknown to the restarted worker.

Worker A reads the first part of a group's events, saves, and polls once more while the
store holds the poll's signals back from the alert agent; the snapshot timer fires
meanwhile; then A dies (SIGKILL: nothing more of it runs, nothing is saved). A worker
restarted on A's directory replays from A's state and reads on. The alert transitions
of both must be the reference's, one worker that read every event. The real agents
(signal and alert), in process.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from llmpulse.config import load_settings
from llmpulse.detectors.base import Signal
from llmpulse.detectors.testing import synthetic_events
from llmpulse.store import Store
from llmpulse.streams import signals as signals_module
from llmpulse.streams.alerts_agent import AlertAgent
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.rules import Rules
from llmpulse.streams.signals import SignalAgents
from llmpulse.streams.testing import (
    TestingSink,
    TestingTopic,
    drive_signal_agents,
    grouped_messages,
)

# fires at the third breaching window: the one the poll under the crash closes
RULES = """
rules:
  - {name: slow, signal: latency.p50_ms, op: ">", threshold: 1500, for: 3, resolve_for: 3,
     cooldown: 0, severity: warning}
"""
START = 1_700_000_000.0


def _events() -> list[dict[str, Any]]:
    """200 s of one group's events at 10/s, five times slower from 60 s to 130 s."""
    events = synthetic_events(2000, seed=11, rate=10.0, start=START, with_feedback=False)
    for ev in events:
        if 60.0 <= ev["ts"] / 1000 - START < 130.0:
            ev["latency_ms"] *= 5.0
    return events


class _Worker:
    """A worker's signal and alert agents on ``root``, wired as the worker wires them;
    a second one on the same ``root`` is the worker restarted."""

    def __init__(self, root: Path, store: Store, rules: Rules, run: str) -> None:
        settings = load_settings(env={"LLMPULSE_DATA_DIR": str(root)}, path=None)
        settings = replace(settings, signals=replace(settings.signals, process=False))
        app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=root / run,
                            web_port=None)
        self.sink = TestingSink()
        self.signals = SignalAgents(app, settings, store, self.sink, signals_topic=TestingTopic())
        self.alerts = AlertAgent(app, rules, self.sink, state_dir=root / "w", notify=False,
                                 alerts_topic=TestingTopic(), retrain_topic=TestingTopic())
        self.signals.consumers.append(self.alerts)

    def rows(self) -> list[tuple[str, float, float]]:
        """(state, started_at, updated_at) of the alert rows this worker stored."""
        return [(r["state"], r["started_at"] - START, r["updated_at"] - START)
                for r in self.sink.rows["alerts"]]


def _window_end(m: Any) -> float:
    return max(int(line.split(b'"ts":')[1].split(b",")[0])
               for line in m.value.split(b"\n")) / 1000 - START


async def test_a_snapshot_taken_while_a_poll_is_emitted_loses_no_alert_at_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signals_module, "EMITTING_WAIT_S", 1.0)
    rules = Rules.from_yaml(RULES)
    messages = grouped_messages(_events(), chunk=50)
    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        ref = _Worker(tmp_path / "ref", store, rules, "run")
        await drive_signal_agents(ref.signals, messages, batch=5)
        await ref.signals.close()
        expected = ref.rows()
        assert [state for state, _, _ in expected] == ["firing", "resolved"]
        fired_at = expected[0][2]

        # A reads up to the window before the one that fires, and saves
        a = _Worker(tmp_path / "a", store, rules, "run")
        split = next(i for i, m in enumerate(messages) if _window_end(m) >= fired_at + 6)
        await drive_signal_agents(a.signals, messages[:split - 5], batch=5, flush=False)
        await a.signals.save()
        assert a.rows() == [], "nothing fired yet"
        # the last poll: the store holds its signals back from the alert agent
        gate, held = asyncio.Event(), []

        async def slow_store(signals: list[Signal]) -> None:
            held.extend(signals)
            await gate.wait()

        a.signals.consumers.insert(0, slow_store)
        await a.signals.take(messages[split - 5:split])
        tick = asyncio.ensure_future(a.signals.tick())
        while not held and not tick.done():
            await asyncio.sleep(0.01)
        assert any(s.signal == "latency.p50_ms" and s.ts - START == fired_at for s in held), \
            "the poll under way closed the window that fires"
        await a.signals.save()  # the snapshot timer, while the signals are held
        assert a.signals.counters["saves_put_off_while_emitting"] == 1
        # SIGKILL: the poll never reaches the alert agent, and nothing more is saved
        tick.cancel()
        await a.signals.close()
        assert a.rows() == []

        restarted = _Worker(tmp_path / "a", store, rules, "run2")
        # from where A's state ends, as the consumer starts from its committed offset
        await drive_signal_agents(restarted.signals, messages, batch=5)
        await restarted.signals.close()
        assert restarted.signals.counters["replay_skipped"] == split - 5
        assert a.rows() + restarted.rows() == expected
    finally:
        store.close()
