"""``python -m llmpulse.retrain_worker`` and ``python -m llmpulse.retrain.serving`` as real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from llmpulse.retrain.registry import ModelRegistry
from llmpulse.retrain.trainer import Artifact
from llmpulse.retrain.worker import RemoteServer, missing_keys

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    env.update(HF_HUB_OFFLINE="1", LLMPULSE_DATA_DIR=str(tmp_path / "data"), **extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd without llmpulse.yaml: the settings come from env alone
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _terminate(proc: subprocess.Popen[str], timeout: float) -> str:
    """SIGTERM, then the process's stderr once it has ended (killed if it does not)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_missing_keys_names_each_required_key() -> None:
    assert missing_keys({}) == ["LLMPULSE_KAFKA", "LLMPULSE_CLICKHOUSE"]
    assert missing_keys({"LLMPULSE_KAFKA": " ", "LLMPULSE_CLICKHOUSE": "http://ch:8123"}) == [
        "LLMPULSE_KAFKA"]
    assert missing_keys({"LLMPULSE_KAFKA": "k:9092", "LLMPULSE_CLICKHOUSE": "http://c:8123"}) == []


@pytest.mark.parametrize(("given", "missing"), [
    ({}, "LLMPULSE_KAFKA"),
    ({"LLMPULSE_KAFKA": "localhost:9092"}, "LLMPULSE_CLICKHOUSE"),
])
def test_worker_without_required_settings_exits_2_naming_the_key(
    tmp_path: Path, given: dict[str, str], missing: str
) -> None:
    proc = _run(["llmpulse.retrain_worker"], _env(tmp_path, **given), tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0], proc.stderr


def test_worker_rejects_a_bad_port(tmp_path: Path) -> None:
    env = _env(tmp_path, LLMPULSE_KAFKA="localhost:9092", LLMPULSE_CLICKHOUSE="http://c:8123",
               LLMPULSE_RETRAIN_PORT="http")
    proc = _run(["llmpulse.retrain_worker"], env, tmp_path)
    assert proc.returncode == 2
    assert "LLMPULSE_RETRAIN_PORT" in proc.stderr.strip().splitlines()[-1]


def test_serving_on_an_empty_registry_exits_2(tmp_path: Path) -> None:
    proc = _run(["llmpulse.retrain.serving", "--port", "0", "--data-dir", str(tmp_path / "empty")],
                _env(tmp_path), tmp_path)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "no promoted version of intent-router" in line and "--bootstrap" in line


def _get(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_health(proc: subprocess.Popen[str], url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    # polls the child until it answers: a readiness wait, not a timing assertion
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            return _get(url + "/health")[1]
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("server did not answer /health")


@pytest.fixture
def promoted_registry(tmp_path: Path, artifact: Artifact, bad_artifact: Artifact) -> Path:
    data_dir = tmp_path / "data"
    reg = ModelRegistry(data_dir)
    reg.register("intent-router", artifact.path, metrics=dict(artifact.metrics))
    reg.deploy("intent-router", "1")
    # a later, rejected candidate must not be what the server picks up
    reg.register("intent-router", bad_artifact.path)
    reg.reject("intent-router", "2", reasons=[{"gate": "accuracy", "reason": "worse"}])
    return data_dir


def test_serving_serves_the_promoted_version_and_stops_on_sigterm(
    tmp_path: Path, promoted_registry: Path, loaded: Any, loaded_bad: Any
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmpulse.retrain.serving", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(promoted_registry)],
        env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = _wait_health(proc, url)
        assert (health["status"], health["model"], health["version"]) == ("ok", "intent-router", "1")
        assert health["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
        texts = ["I was charged twice for my order", "where is my parcel, it has not arrived"]
        status, body = _get(url + "/predict", {"texts": texts, "request_id": "r-1"})
        assert status == 200, body
        assert body["model_version"] == "1" and body["request_id"] == "r-1"
        probs, _ = loaded.predict_proba(texts)
        assert body["labels"] == [loaded.labels[i] for i in probs.argmax(axis=1)]
        assert body["scores"] == pytest.approx(probs.max(axis=1).tolist(), abs=1e-4)
        # the canary endpoint the retrain worker drives: version 2 gets its share of the
        # request ids, then leaves (a share of 1 is refused: the current version would get none)
        import asyncio

        from llmpulse.retrain.serving import canary_bucket

        to_canary = next(f"r-{i}" for i in range(100) if canary_bucket(f"r-{i}") < 0.5)
        to_current = next(f"r-{i}" for i in range(100) if canary_bucket(f"r-{i}") >= 0.5)
        remote = RemoteServer(url)
        with pytest.raises(RuntimeError, match="HTTP 400"):
            asyncio.run(remote.set_canary(loaded_bad.path, "2", 1.0))
        asyncio.run(remote.set_canary(loaded_bad.path, "2", 0.5))
        assert _get(url + "/predict", {"texts": texts, "request_id": to_canary})[1]["model_version"] == "2"
        assert _get(url + "/predict", {"texts": texts, "request_id": to_current})[1]["model_version"] == "1"
        asyncio.run(remote.set_canary(None, share=0.0))
        assert _get(url + "/predict", {"texts": texts, "request_id": to_canary})[1]["model_version"] == "1"
        with pytest.raises(RuntimeError, match="HTTP 409"):
            asyncio.run(remote.promote_canary())
        status, body = _get(url + "/predict", {"texts": []})
        assert status == 400 and "texts" in body["error"]
    finally:
        err = _terminate(proc, 30)
    assert proc.returncode == 0, err
    assert f"intent-router version 1 on {health['provider']}" in err
    assert "Traceback" not in err and "RuntimeWarning" not in err


@pytest.mark.slow
def test_worker_handles_a_request_from_the_broker_and_stops_on_sigterm(tmp_path: Path) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    from llmpulse.broker import EmbeddedBroker
    from llmpulse.events import TOPIC_DEPLOYMENTS, TOPIC_RETRAIN

    port = _free_port()
    with EmbeddedBroker() as broker:
        env = _env(tmp_path, LLMPULSE_KAFKA=broker.bootstrap,
                   LLMPULSE_CLICKHOUSE=f"chdb://{tmp_path / 'store'}",
                   LLMPULSE_RETRAIN_PORT=str(port))
        proc = subprocess.Popen([sys.executable, "-m", "llmpulse.retrain_worker"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "retrain worker up" in line:
                    break
            else:
                raise AssertionError(f"worker exited {proc.wait()} before it was up")
            request = {"request_id": "req-api-1", "model": "gpt-4o-mini", "model_version": "2024",
                       "app": "support", "alert_id": "alert-9", "rule": "accuracy-low",
                       "signal": "quality.accuracy", "window": {"start": 0.0, "end": 1.0}, "ts": 1.0}
            producer = Producer({"bootstrap.servers": broker.bootstrap})
            producer.produce(TOPIC_RETRAIN, json.dumps(request).encode())
            assert producer.flush(10) == 0
            consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "test-deploy",
                                 "auto.offset.reset": "earliest"})
            # assigned, not subscribed: no group join to wait for
            parts = consumer.list_topics(TOPIC_DEPLOYMENTS, timeout=10).topics[TOPIC_DEPLOYMENTS]
            consumer.assign([TopicPartition(TOPIC_DEPLOYMENTS, p, OFFSET_BEGINNING)
                             for p in parts.partitions])
            try:
                msg = None
                deadline = time.monotonic() + 60
                while msg is None and time.monotonic() < deadline:
                    m = consumer.poll(0.5)
                    msg = m if m is not None and not m.error() else None
            finally:
                consumer.close()
            assert msg is not None, "no deployment row was published"
            row = json.loads(msg.value())
            assert (row["model"], row["stage"], row["trigger"]) == ("gpt-4o-mini", "skipped", "alert-9")
            assert json.loads(row["metrics"])["request_id"] == "req-api-1"
            stats = _get(f"http://127.0.0.1:{port}/serve/stats")[1]
            assert stats["retrain"]["outcomes"]["skipped"] == 1 and stats["serving"] == "off"
        finally:
            err = _terminate(proc, 40)
        assert proc.returncode == 0, err[-2000:]
