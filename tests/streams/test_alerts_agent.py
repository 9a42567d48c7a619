"""The alert agent on a list of signals: stored rows, topic messages, retrain
requests, pages and restarts, through :mod:`llmpulse.streams.testing` (no broker)."""

from __future__ import annotations

import logging
from pathlib import Path

from llmpulse.config import load_settings
from llmpulse.detectors.base import Signal
from llmpulse.streams.alerts_agent import AlertAgent
from llmpulse.streams.app import new_faust_app
from llmpulse.streams.rules import Rules
from llmpulse.streams.testing import TestingSink, TestingTopic, drive_alert_agent

T0 = 1_700_000_000.0
RULES = """
notify:
  ops: {type: log}
rules:
  - {name: p99, signal: latency.p99_ms, op: ">", threshold: 4000, for: 2, resolve_for: 2,
     cooldown: 0, actions: [notify, retrain], severity: critical}
"""


def _window(i: int, value: float) -> Signal:
    return Signal("latency.p99_ms", value, n=600, ts=T0 + 60 * i, window_s=60.0, app="support",
                  model="router", model_version="1")


SCRIPT = [_window(i, v) for i, v in enumerate([900, 5000, 5200, 5100, 800, 700, 600], 1)]


def _agent(tmp_path: Path, *, notify: bool = True) -> tuple[AlertAgent, TestingSink, TestingTopic, TestingTopic]:
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w", web_port=None)
    sink, alerts, retrain = TestingSink(), TestingTopic(), TestingTopic()
    agent = AlertAgent(app, Rules.from_yaml(RULES), sink, state_dir=tmp_path, notify=notify,
                       alerts_topic=alerts, retrain_topic=retrain)
    return agent, sink, alerts, retrain


async def test_signals_become_stored_published_and_paged_alerts(tmp_path: Path, caplog) -> None:
    agent, sink, alerts, retrain = _agent(tmp_path)
    with caplog.at_level(logging.WARNING, logger="llmpulse.streams.notify.channels"):
        rows = await drive_alert_agent(agent, SCRIPT, batch=2)
    assert [(r["state"], r["updated_at"] - T0) for r in rows] == [
        ("firing", 180.0), ("resolved", 360.0)]
    assert alerts.values() == rows  # the same rows on llmpulse.alerts
    assert {k for k, _ in alerts.sent} == {rows[0]["alert_id"].encode()}
    [request] = retrain.values()
    assert (request["model"], request["rule"]) == ("router", "p99")
    pages = [r.getMessage() for r in caplog.records if r.name == "llmpulse.streams.notify.channels"]
    assert len(pages) == 2 and "FIRING" in pages[0] and "RESOLVED" in pages[1]
    assert agent.stats()["pages_owed"] == 0
    await agent.close()


async def test_a_restarted_agent_ignores_the_signals_it_already_saw(tmp_path: Path) -> None:
    agent, sink, _, _ = _agent(tmp_path, notify=False)
    first = await drive_alert_agent(agent, SCRIPT[:4])
    assert [r["state"] for r in first] == ["firing"]
    await agent.close()
    again, sink2, alerts2, retrain2 = _agent(tmp_path, notify=False)
    # the signal engine replays from its snapshot: the same windows come again
    rows = await drive_alert_agent(again, SCRIPT)
    assert [(r["state"], r["alert_id"]) for r in rows] == [("resolved", first[0]["alert_id"])]
    assert retrain2.values() == []  # the retrain was asked for before the restart
    await again.close()
