"""The notifier as its own service: alerts from the topic to a real webhook."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from confluent_kafka import Consumer, Producer, TopicPartition

from llmpulse.broker import create_topics
from llmpulse.detectors.base import Signal
from llmpulse.events import TOPIC_ALERTS
from llmpulse.streams.alerting import AlertManager
from llmpulse.streams.notify.__main__ import event_from_row, serve
from llmpulse.streams.rules import Rules

pytestmark = pytest.mark.integration

RULES = """
notify:
  hook:
    type: webhook
    url: {url}
rules:
  - name: p99
    signal: latency.p99_ms
    op: ">"
    threshold: 4000
    severity: critical
"""


def _rows(rules: Rules) -> list[dict]:
    am = AlertManager(rules)
    rows = []
    for i, v in enumerate([5000.0, 6000.0, 100.0]):
        sig = Signal("latency.p99_ms", v, 500, ts=1_795_000_000.0 + 10 * i, window_s=10.0,
                     app="a", model="m", model_version="1")
        rows += [ev.row for ev in am.process(sig)]
    return rows


def test_event_from_row_rebuilds_the_transition() -> None:
    rules = Rules.from_yaml(RULES.format(url="http://127.0.0.1:9/x"))
    rows = _rows(rules)
    assert [r["state"] for r in rows] == ["firing", "resolved"]
    ev = event_from_row(rows[0], rules)
    assert ev is not None and ev.kind == "firing" and ev.rule.name == "p99"
    assert event_from_row({**rows[0], "rule": "gone"}, rules) is None


async def test_alerts_on_the_topic_reach_the_webhook_once_each(broker) -> None:
    got: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rules = Rules.from_yaml(RULES.format(url=f"http://127.0.0.1:{server.port}/hook"))
    create_topics(broker.bootstrap, {TOPIC_ALERTS: 1})
    p = Producer({"bootstrap.servers": broker.bootstrap})
    rows = _rows(rules)
    for r in rows + rows[:1]:  # the firing row twice: a replay must not page twice
        p.produce(TOPIC_ALERTS, orjson.dumps(r), key=r["alert_id"].encode())
    p.flush(10)
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(broker.bootstrap, rules, stop))
    # every message on the topic handled (its offset committed), the replayed one included
    probe = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "llmpulse-notify"})
    part = TopicPartition(TOPIC_ALERTS, 0)
    end = probe.get_watermark_offsets(part, timeout=10)[1]
    handled = -1
    for _ in range(300):
        handled = probe.committed([part], timeout=10)[0].offset
        if handled >= end:
            break
        await asyncio.sleep(0.1)
    probe.close()
    stop.set()
    assert handled >= end, f"the notifier handled {handled} of {end} alert messages"
    await asyncio.wait_for(task, 20)
    await server.close()
    assert [g["kind"] for g in got] == ["firing", "resolved"], json.dumps(got)[:500]
    assert got[0]["alert"]["alert_id"] == rows[0]["alert_id"]
