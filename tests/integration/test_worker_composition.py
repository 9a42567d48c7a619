"""The composition root's worker against the real broker, store and a local Grafana API.

Deployment records on ``llmpulse.deployments`` become Grafana annotations
(POSTed to a local server that implements and checks the annotation
endpoints) and end the alert agent's pending retrain of their model; a
record that is not a deployment is skipped and the agents keep going.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from llmpulse.broker import EmbeddedBroker, create_topics, free_port
from llmpulse.config import Settings, load_settings
from llmpulse.events import TOPIC_DEPLOYMENTS, TOPICS
from llmpulse.migrations import migrate
from llmpulse.store import Store
from llmpulse.streams.app import IngestStats
from llmpulse.worker import Worker, build_worker
from tests.dashboards.test_publisher import TOKEN, FakeGrafana, grafana  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LLMPULSE_RETRAIN", "0")  # no retrain agent: only the records we send
    s = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "data")}, path=None)
    s.data_dir.mkdir(parents=True)
    # the signal engine in this process: the alert agent is what is under test, not the engine
    return replace(s, signals=replace(s.signals, process=False))


@pytest.fixture
def store(tmp_path: Path, settings: Settings) -> Iterator[Store]:
    s = Store.open(f"chdb://{tmp_path}/store")
    migrate(s, settings.retention)
    yield s
    s.close()


def _deployment(model: str, stage: str, version: str, ts: float) -> dict[str, Any]:
    return {"deployment_id": uuid.uuid4().hex, "model": model, "version": version,
            "previous_version": "1", "trigger": "alert-7", "stage": stage,
            "metrics": "{}", "ts": ts}


async def _until(check: Any, timeout: float, what: str) -> None:
    # a readiness wait on the running agents, not a timing assertion
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout:g} s: {what}")


async def test_deployment_records_become_annotations_and_end_the_pending_retrain(
    broker: EmbeddedBroker, grafana: tuple[FakeGrafana, str],  # noqa: F811
    settings: Settings, store: Store,
) -> None:
    fake, url = grafana
    create_topics(broker.bootstrap, {t: settings.ingest.partitions for t in TOPICS})
    model = f"router-{uuid.uuid4().hex[:8]}"
    worker: Worker = build_worker(
        settings, store, IngestStats(), bootstrap=broker.bootstrap, web_port=free_port(),
        app_id=f"t-annotations-{uuid.uuid4().hex[:8]}",
        env={"LLMPULSE_GRAFANA_URL": url, "LLMPULSE_GRAFANA_TOKEN": TOKEN})
    assert worker.annotations is not None and worker.pipeline.alerts is not None
    trigger = worker.pipeline.alerts.trigger
    trigger.restore({"version": 1, "pending": {model: {"alert_id": "alert-7", "ts": 0.0}}})
    ts = time.time() - 60
    rows = [_deployment(model, "canary", "2", ts), _deployment(model, "promoted", "2", ts + 30)]
    producer = Producer({"bootstrap.servers": broker.bootstrap})

    def send(values: list[bytes]) -> None:
        for v in values:
            producer.produce(TOPIC_DEPLOYMENTS, key=model.encode(), value=v)
        assert producer.flush(30) == 0

    def mine() -> list[dict[str, Any]]:
        return [a for a in fake.annotations if f"model:{model}" in a["tags"]]

    await worker.app.start()
    try:
        send([b"{not json", json.dumps(["promoted"]).encode(), json.dumps(rows[0]).encode()])
        await _until(lambda: len(mine()) == 1, 90, "the canary annotation")
        assert trigger.pending().get(model) is not None  # a canary does not end the retrain
        send([json.dumps(rows[1]).encode()])
        await _until(lambda: len(mine()) == 2 and model not in trigger.pending(), 60,
                     "the promoted annotation and the end of the pending retrain")
        assert fake.errors == []
        canary, promoted = sorted(mine(), key=lambda a: a["time"])
        assert canary["tags"][:4] == ["llmpulse", "deployment", "canary", f"model:{model}"]
        assert promoted["tags"][:4] == ["llmpulse", "deployment", "promoted", f"model:{model}"]
        assert promoted["time"] == round((ts + 30) * 1000)
        assert promoted["text"] == f"{model} promoted 2 (was 1), trigger alert-7"
        assert worker.annotations.counters["invalid"] == 2
        # a replayed record finds its annotation: nothing is posted twice
        send([json.dumps(rows[1]).encode()])
        await _until(lambda: worker.annotations is not None
                     and worker.annotations.counters["unchanged"] == 1, 60, "the replay")
        assert len(mine()) == 2
    finally:
        await worker.close()
        await asyncio.wait_for(worker.app.stop(), timeout=30)
