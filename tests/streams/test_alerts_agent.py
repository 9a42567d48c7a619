"""The alert agent on a list of signals: stored rows, topic messages, retrain
requests, pages and restarts, through :mod:`llmpulse.streams.testing` (no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from llmpulse.broker import free_port
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


class _HeldHook(BaseHTTPRequestHandler):
    """A webhook receiver that answers only once ``release`` is set."""

    received: list[dict] = []
    release = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _HeldHook.received.append(body)
        _HeldHook.release.wait(30)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _HoldingSink(TestingSink):
    """A store whose writes wait while ``hold`` is set (a slow insert); ``waiting`` is
    set once a write waits."""

    def __init__(self) -> None:
        super().__init__()
        self.hold, self.waiting, self.gate = False, asyncio.Event(), asyncio.Event()

    async def write(self, table: str, lines: list[bytes]) -> list[tuple[int, str]]:
        if self.hold:
            self.waiting.set()
            await self.gate.wait()
        return await super().write(table, lines)


async def test_a_page_delivered_while_a_batch_awaits_the_store_leaves_no_page_behind(
        tmp_path: Path) -> None:
    """Group X's page is being delivered when group Y's alert fires; Y's batch waits on a
    slow store write when X's delivery ends, and the worker is killed then (the state
    file as it is at that moment is what a restart finds). Before, the end of X's
    delivery wrote the state with Y's alert open and its page nowhere: the restart
    ignored Y's windows as seen and Y never paged. Now nothing is written while a batch
    is under way, and the restart pages Y."""
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _HeldHook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _HeldHook.received.clear()
    _HeldHook.release.clear()
    rules = Rules.from_yaml(f"""
notify:
  hook: {{type: webhook, url: "http://127.0.0.1:{port}/alerts"}}
rules:
  - {{name: p99, signal: latency.p99_ms, op: ">", threshold: 4000, for: 2, resolve_for: 2,
     cooldown: 0, actions: [notify], severity: critical}}
""")

    def agent(state: Path, sink: TestingSink) -> AlertAgent:
        settings = load_settings(env={"LLMPULSE_DATA_DIR": str(state)}, path=None)
        app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=state / "w",
                            web_port=None)
        return AlertAgent(app, rules, sink, state_dir=state, notify=True,
                          alerts_topic=TestingTopic(), retrain_topic=TestingTopic())

    def windows(model: str, start: int) -> list[Signal]:
        return [Signal("latency.p99_ms", 5000.0 + i, n=600, ts=T0 + 60 * (start + i),
                       window_s=60.0, app="support", model=model, model_version="1")
                for i in range(2)]

    try:
        sink = _HoldingSink()
        a = agent(tmp_path / "a", sink)
        await a(windows("x", 1))  # X fires: its page goes out and is held
        deadline = time.monotonic() + 30
        while not _HeldHook.received and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [p["alert"]["model"] for p in _HeldHook.received] == ["x"]
        sink.hold = True
        y = asyncio.ensure_future(a(windows("y", 3)))  # Y fires; its rows wait on the store
        await asyncio.wait_for(sink.waiting.wait(), 30)
        _HeldHook.release.set()  # X's delivery ends while Y's batch is under way
        await a.settle()
        assert a.stats()["pages_owed"] == 1  # Y's, in memory
        # SIGKILL here: the restart finds the state file as it is now
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        shutil.copy(tmp_path / "a" / "alerts.json", crashed / "alerts.json")
        y.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await y
        await a.close()

        _HeldHook.received.clear()
        b = agent(crashed, TestingSink())
        owed = [(ev.row["model"], ev.kind) for ev in b._outbox.values()]
        # the signal engine replays the windows after its snapshot, Y's among them
        await drive_alert_agent(b, windows("y", 3))
        await b._send_outbox()  # what the app's start task does
        await b.settle()
        paged = [(p["alert"]["model"], p["kind"]) for p in _HeldHook.received]
        assert ("y", "firing") in paged, (owed, paged)
        assert paged.count(("y", "firing")) == 1, paged
        await b.close()
    finally:
        _HeldHook.release.set()
        server.shutdown()


class _FailingTopic(TestingTopic):
    """A topic whose sends raise while ``failing`` says so for the message (a function
    of the decoded value)."""

    def __init__(self, failing) -> None:
        super().__init__()
        self.failing = failing
        self.refused = 0

    async def send(self, *, key: bytes | None = None, value: bytes = b"",
                   headers: object = None, partition: int | None = None) -> None:
        if self.failing(json.loads(value)):
            self.refused += 1
            raise RuntimeError("broker said no")
        await super().send(key=key, value=value, headers=headers, partition=partition)


async def _until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_send_that_fails_is_retried_in_order_and_the_retrain_request_goes_out(
        tmp_path: Path, monkeypatch) -> None:
    """The alerts topic refuses its first three sends: the firing stays owed, the
    resolve of a later batch waits behind it, and the retries send both in order,
    with the retrain request once. Before, the failed send skipped the batch's other
    messages and its retrain request for good."""
    from llmpulse.streams import alerts_agent

    monkeypatch.setattr(alerts_agent, "RETRY_S", 0.05)
    agent, sink, _, retrain = _agent(tmp_path, notify=False)
    left = [3]

    def refuse(_: object) -> bool:
        left[0] -= 1
        return left[0] >= 0

    alerts = agent.alerts_topic = _FailingTopic(refuse)
    await agent(SCRIPT[:4])  # fires; its message is refused
    assert agent.stats()["transitions_owed"] == 1
    assert [r["state"] for r in sink.rows["alerts"]] == ["firing"]  # stored before the send
    await agent(SCRIPT[4:])  # resolves: waits behind the firing
    await _until(lambda: agent.stats()["transitions_owed"] == 0)
    assert [v["state"] for v in alerts.values()] == ["firing", "resolved"]
    assert [r["model"] for r in retrain.values()] == ["router"]
    assert alerts.refused == 3 and agent.stats()["alerts"]["owed_send_failures"] == 3
    await agent.close()


async def test_a_stop_during_a_store_outage_leaves_the_transitions_owed_to_the_restart(
        tmp_path: Path) -> None:
    """The store is down when an alert fires and the worker stops (the batch's write
    is cancelled): the restarted agent stores the row and sends the message and the
    retrain request. Before, the saved state had the alert fired and nothing owed."""
    agent, _, alerts, retrain = _agent(tmp_path, notify=False)

    def down(table: str, data: bytes, count: int) -> int:
        raise ConnectionError("store unreachable")

    agent.sink = TestingSink()
    agent.sink.insert = down
    batch = asyncio.ensure_future(agent(SCRIPT[:4]))
    await _until(lambda: agent.sink.errors > 0)
    batch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await batch
    assert alerts.values() == [] and retrain.values() == []
    again, sink2, alerts2, retrain2 = _agent(tmp_path, notify=False)
    assert again.stats()["transitions_owed"] == 1
    await again._send_owed()
    assert [r["state"] for r in sink2.rows["alerts"]] == ["firing"]
    assert [v["state"] for v in alerts2.values()] == ["firing"]
    assert [r["model"] for r in retrain2.values()] == ["router"]
    # the replayed windows are seen, and nothing is owed or sent twice
    assert await drive_alert_agent(again, SCRIPT[:4]) == []
    assert again.stats()["transitions_owed"] == 0 and len(alerts2.values()) == 1
    await again.close()


async def test_a_message_that_always_fails_is_given_up_and_holds_nothing_back(
        tmp_path: Path, monkeypatch) -> None:
    from llmpulse.streams import alerts_agent

    monkeypatch.setattr(alerts_agent, "RETRY_S", 0.01)
    agent, sink, _, _ = _agent(tmp_path, notify=False)
    alerts = agent.alerts_topic = _FailingTopic(lambda row: row["state"] == "firing")
    await agent(SCRIPT)
    await _until(lambda: agent.stats()["transitions_owed"] == 0)
    assert [v["state"] for v in alerts.values()] == ["resolved"]
    assert alerts.refused == alerts_agent.MAX_ATTEMPTS
    assert agent.stats()["alerts"]["owed_given_up"] == 1
    assert [r["state"] for r in sink.rows["alerts"]] == ["firing", "resolved"]
    await agent.close()
