"""A deploy or rollback by hand reaches the ``deployments`` table like an automatic one.

``llmpulse deploy`` and ``rollback`` run in their own process: with the stack
up their rows travel on ``llmpulse.deployments`` (header ``llmpulse-origin:
cli``) and the stack stores them; with it stopped the command writes the
store itself. Hostile records on the topic are dropped without stopping the
agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from confluent_kafka import Producer

from llmpulse.events import TOPIC_DEPLOYMENTS
from llmpulse.retrain.registry import ModelRegistry
from llmpulse.store import Store
from tests.conftest import StackProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "router-manual"


def command(sp: StackProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmpulse.cli", *args], env=sp.env,
                          cwd=str(sp.data_dir.parent), capture_output=True, text=True, timeout=180)


def rows(sp: StackProcess) -> list[dict[str, Any]]:
    return sp.sql("SELECT version, previous_version, stage, trigger FROM deployments FINAL "
                  f"WHERE model = '{MODEL}' ORDER BY ts, stage")


def wait_rows(sp: StackProcess, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    got = rows(sp)
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.5)
        got = rows(sp)
    return got


def test_manual_deploy_and_rollback_are_stored_with_the_stack_up_and_down(stack_factory,
                                                                           tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"not really a model; the registry only keeps the file")
    registry = ModelRegistry(data)
    for _ in range(2):
        registry.register(MODEL, artifact)
    sp = stack_factory(data).start()

    for args in (("deploy", MODEL, "1"), ("deploy", MODEL, "2"), ("rollback", MODEL)):
        out = command(sp, *args)
        assert out.returncode == 0 and "warning" not in out.stderr, out.stderr + out.stdout
    got = wait_rows(sp, 3)
    assert [(r["version"], r["previous_version"], r["stage"]) for r in got] == [
        ("1", "", "promoted"), ("2", "1", "promoted"), ("1", "2", "rolled_back")], got
    assert {r["trigger"] for r in got} == {"manual"}

    # hostile records on the topic: dropped one by one, the agent goes on
    good = dict(deployment_id="d-foreign", model=MODEL, version="9", previous_version="1",
                trigger="manual", stage="promoted", metrics="{}", ts=time.time())
    hostile: list[tuple[bytes, list[tuple[str, bytes]]]] = [
        (b"not json", [("llmpulse-origin", b"cli")]),
        (json.dumps({**good, "version": 9}).encode(), [("llmpulse-origin", b"cli")]),
        (json.dumps({**good, "ts": "yesterday"}).encode(), [("llmpulse-origin", b"cli")]),
        (json.dumps({**good, "extra": "x"}).encode(), [("llmpulse-origin", b"cli")]),
        (json.dumps({**good, "metrics": "[1, 2]"}).encode(), [("llmpulse-origin", b"cli")]),
        (json.dumps(good).encode(), []),  # not from a command: the stack's own, already stored
        (json.dumps({**good, "deployment_id": "d-last", "version": "10"}).encode(),
         [("llmpulse-origin", b"cli")]),
    ]
    producer = Producer({"bootstrap.servers": sp.kafka, "acks": "all"})
    for value, headers in hostile:
        producer.produce(TOPIC_DEPLOYMENTS, value, key=MODEL.encode(), headers=headers)
    assert producer.flush(30) == 0
    got = wait_rows(sp, 4)
    assert [r["version"] for r in got] == ["1", "2", "1", "10"], got
    assert sp.running

    # the stack stopped: the command writes the store itself
    assert sp.stop() == 0
    out = command(sp, "deploy", MODEL, "2")
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr + out.stdout
    store = Store.open(f"chdb://{data / 'store'}")
    try:
        stored = store.query("SELECT version, previous_version, stage FROM deployments FINAL "
                             f"WHERE model = '{MODEL}' ORDER BY ts")
    finally:
        store.close()
    assert stored[-1] == {"version": "2", "previous_version": "1", "stage": "promoted"}, stored
    assert len(stored) == 5
