"""The embedded stack end to end: real Tansu broker, real chDB store, real worker."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from llmpulse.broker import EmbeddedBroker, create_topics
from llmpulse.events import TOPIC_DEADLETTER, TOPIC_FEEDBACK, TOPIC_INFERENCE, TOPICS

pytestmark = pytest.mark.integration


def inference_event(i: int, run: str, now_ms: int | None = None) -> dict[str, Any]:
    now_ms = now_ms or int(time.time() * 1000)
    return {
        "event_id": f"{run}-e{i}",
        "request_id": f"{run}-r{i}",
        "ts": now_ms - i,
        "app": "support",
        "model": "gpt-4o-mini",
        "model_version": "2024-07-18",
        "latency_ms": 100.0 + i % 997,
        "ttft_ms": 20.5,
        "status": ("ok", "error", "timeout")[i % 3],
        "error_type": "RateLimit" if i % 3 == 1 else None,
        "input_tokens": 10 + i % 50,
        "output_tokens": 5 + i % 40,
        "cost_usd": 0.0001 * (i % 7),
        "prompt": f"how do I get a refund for order {i}?",
        "response": "Refunds are issued within 14 days.",
        "context": ["Refunds are issued within 14 days of the return.", "Shipping is free."],
        "token_logprobs": [-0.1, -0.25, -1.5],
        "prediction": {"label": "refund", "score": 0.75},
        "segment": {"region": "eu", "language": "de", "tier": "pro"},
        "features": {"prompt_chars": 37.0, "n_passages": 2},
    }


def produce(bootstrap: str, topic: str, events: list[dict[str, Any]], per_message: int = 100) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4",
                  "enable.idempotence": True})
    for k in range(0, len(events), per_message):
        chunk = events[k:k + per_message]
        p.produce(topic, b"\n".join(orjson.dumps(e) for e in chunk), key=str(k).encode())
    assert p.flush(30) == 0


def test_envelopes_round_trip_exact_counts_and_values(stack) -> None:
    run = uuid.uuid4().hex[:8]
    events = [inference_event(i, run) for i in range(3000)]
    produce(stack.endpoints["kafka"], TOPIC_INFERENCE, events, per_message=100)
    # a foreign producer sending one event per message, no envelope
    singles = [inference_event(i, run + "s") for i in range(50)]
    produce(stack.endpoints["kafka"], TOPIC_INFERENCE, singles, per_message=1)
    fb = [{"event_id": f"{run}-f{i}", "request_id": f"{run}-r{i}", "ts": int(time.time() * 1000),
           "score": -0.5, "label": "billing", "hallucination": True, "comment": "wrong"}
          for i in range(200)]
    produce(stack.endpoints["kafka"], TOPIC_FEEDBACK, fb, per_message=50)

    stats = stack.wait_stored(TOPIC_INFERENCE, 3050)
    stack.wait_stored(TOPIC_FEEDBACK, 200)
    assert stats["dead_lettered"].get(TOPIC_INFERENCE, 0) == 0
    rows = stack.sql("SELECT count() AS n, uniqExact(event_id) AS u FROM inference_events FINAL")
    assert rows == [{"n": 3050, "u": 3050}]

    got = stack.sql(
        f"SELECT * FROM inference_events FINAL WHERE event_id = '{run}-e7'"
    )[0]
    want = events[7]
    for key in ("request_id", "app", "model", "model_version", "status", "input_tokens",
                "output_tokens", "prompt", "response", "context", "segment"):
        assert got[key] == want[key], key
    assert got["latency_ms"] == pytest.approx(want["latency_ms"])
    assert got["ttft_ms"] == pytest.approx(20.5)
    assert got["error_type"] == "RateLimit"
    assert got["prediction"] == {"label": "refund", "score": 0.75}
    assert got["features"] == {"prompt_chars": 37.0, "n_passages": 2.0}
    assert got["token_logprobs"] == pytest.approx([-0.1, -0.25, -1.5])
    # event time kept to the millisecond
    ts_ms = stack.sql(
        f"SELECT toUnixTimestamp64Milli(ts) AS t FROM inference_events FINAL WHERE event_id='{run}-e7'"
    )[0]["t"]
    assert ts_ms == want["ts"]

    f = stack.sql(f"SELECT * FROM feedback_events FINAL WHERE event_id = '{run}-f3'")[0]
    assert (f["request_id"], f["score"], f["label"], f["hallucination"], f["comment"]) == (
        f"{run}-r3", -0.5, "billing", 1, "wrong")
    assert stack.stop() == 0
    assert not (stack.data_dir / "endpoints.json").exists()




def _malformed(now_ms: int) -> list[tuple[bytes, str]]:
    good = inference_event(0, "m", now_ms)

    def variant(**changes: Any) -> bytes:
        ev = dict(good)
        for k, v in changes.items():
            if v is ...:
                ev.pop(k)
            else:
                ev[k] = v
        return orjson.dumps(ev)

    return [
        (b'{"event_id": "x", "latency_ms": 1', "bad JSON"),
        (b"[1, 2, 3]", "event: must be a JSON object"),
        (variant(model=...), "model: required field is missing"),
        (variant(latency_ms="fast"), "latency_ms: must be a number"),
        (variant(latency_ms=-12.5), "latency_ms: must be >= 0"),
        (variant(input_tokens=1.5), "input_tokens: must be an integer"),
        (variant(status="maybe"), "status: must be one of"),
        (variant(ts=now_ms - 3 * 365 * 86400 * 1000), "in the past"),
        (variant(ts=now_ms + 5 * 365 * 86400 * 1000), "in the future"),
        (variant(ts="last tuesday"), "ts: not RFC 3339"),
        (variant(response="x" * (300 * 1024)), "response: text longer than"),
        (variant(segment={"region": 5}), "segment.region: must be a string"),
        (variant(token_logprobs=[0.5]), "token_logprobs"),
        (b"\xff\xfe not utf8", "bad JSON"),
    ]


def test_malformed_events_go_to_deadletter_with_reason(stack) -> None:
    now_ms = int(time.time() * 1000)
    cases = _malformed(now_ms)
    p = Producer({"bootstrap.servers": stack.endpoints["kafka"]})
    run = uuid.uuid4().hex[:6]
    # bad and good events interleaved, and bad lines inside a good envelope
    for i, (payload, _) in enumerate(cases):
        p.produce(TOPIC_INFERENCE, payload, key=b"k")
        p.produce(TOPIC_INFERENCE, orjson.dumps(inference_event(i, run, now_ms)), key=b"k")
    p.produce(TOPIC_INFERENCE, orjson.dumps(inference_event(999, run, now_ms)) + b"\n{nope}\n", key=b"k")
    assert p.flush(30) == 0
    total = len(cases) * 2 + 2
    stats = stack.wait_stored(TOPIC_INFERENCE, total)
    assert stats["dead_lettered"][TOPIC_INFERENCE] == len(cases) + 1
    assert stats["stored"][TOPIC_INFERENCE] == len(cases) + 1

    c = Consumer({"bootstrap.servers": stack.endpoints["kafka"], "group.id": "t-" + run,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    parts = [TopicPartition(TOPIC_DEADLETTER, p, 0) for p in range(4)]
    c.assign(parts)
    dead: list[tuple[bytes, str]] = []
    deadline = time.monotonic() + 30
    while len(dead) < len(cases) + 1 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        headers = dict(m.headers() or [])
        dead.append((m.value(), headers["reason"].decode()))
        assert headers["source_topic"] == TOPIC_INFERENCE.encode()
    c.close()
    assert len(dead) == len(cases) + 1
    by_payload = {payload: reason for payload, reason in dead}
    for payload, expected in cases:
        assert payload.strip() in by_payload, expected
        assert expected in by_payload[payload.strip()], (expected, by_payload[payload.strip()])
    assert by_payload[b"{nope}"].startswith("bad JSON")
    # the store keeps them too, with the reason
    rows = stack.sql("SELECT count() AS n FROM deadletter_events FINAL")
    assert rows[0]["n"] == len(cases) + 1
    # and the pipeline still runs
    produce(stack.endpoints["kafka"], TOPIC_INFERENCE, [inference_event(5000, run, now_ms)], 1)
    stack.wait_stored(TOPIC_INFERENCE, total + 1)


def test_kill9_mid_stream_then_restart_stores_every_event_once(stack_factory, tmp_path) -> None:
    """The broker outlives the worker here (an external Kafka with the embedded store)."""
    with EmbeddedBroker() as b:
        create_topics(b.bootstrap, {t: 4 for t in TOPICS})
        sp = stack_factory(tmp_path / "crash", LLMPULSE_KAFKA=b.bootstrap).start()
        run = uuid.uuid4().hex[:8]
        n = 60_000
        now_ms = int(time.time() * 1000)
        events = [inference_event(i, run, now_ms) for i in range(n)]
        producer = subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, b.bootstrap],
            stdin=subprocess.PIPE,
        )
        assert producer.stdin is not None
        producer.stdin.write(b"\n".join(orjson.dumps(e) for e in events))
        producer.stdin.close()
        # let part of the stream land, then kill the worker without warning
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stored = sp.get("/api/stats")["stored"].get(TOPIC_INFERENCE, 0)
            if stored >= 5_000:
                break
            time.sleep(0.05)
        assert 0 < stored < n, stored
        sp.kill()
        assert producer.wait(120) == 0
        sp.start()
        deadline = time.monotonic() + 120
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = sp.sql("SELECT count() AS n, uniqExact(event_id) AS u FROM inference_events FINAL")
            if rows[0]["n"] >= n:
                break
            time.sleep(0.5)
        assert rows == [{"n": n, "u": n}]
        raw = sp.sql("SELECT count() AS n FROM inference_events")[0]["n"]
        assert raw >= n  # replayed rows may exist physically; queries never see them
        assert sp.stop() == 0


_PRODUCER = """
import sys
from confluent_kafka import Producer
lines = sys.stdin.buffer.read().split(b"\\n")
p = Producer({"bootstrap.servers": sys.argv[1], "linger.ms": 5, "enable.idempotence": True})
for k in range(0, len(lines), 50):
    while True:
        try:
            p.produce("llmpulse.inference", b"\\n".join(lines[k:k + 50]), key=str(k).encode())
            break
        except BufferError:
            p.poll(0.1)
    p.poll(0)
    if k % 2000 == 0:
        import time; time.sleep(0.02)
assert p.flush(60) == 0
"""


def _run_up(env: dict[str, str], cwd: Any, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmpulse.cli", "up"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_configuration_fails_at_start_naming_the_key(tmp_path) -> None:
    from tests.conftest import stack_env

    r = _run_up(stack_env(tmp_path / "d1", LLMPULSE_KAFKA="localhost"), tmp_path)
    assert r.returncode == 2
    assert "LLMPULSE_KAFKA" in r.stderr and "host:port" in r.stderr

    r = _run_up(stack_env(tmp_path / "d2", LLMPULSE_CLICKHOUSE="mysql://x"), tmp_path)
    assert r.returncode == 2 and "LLMPULSE_CLICKHOUSE" in r.stderr

    (tmp_path / "llmpulse.yaml").write_text("ingest:\n  batch_messages: many\n")
    r = _run_up(stack_env(tmp_path / "d3"), tmp_path)
    assert r.returncode == 2 and "ingest.batch_messages" in r.stderr
    (tmp_path / "llmpulse.yaml").write_text("ingset: {}\n")
    r = _run_up(stack_env(tmp_path / "d4"), tmp_path)
    assert r.returncode == 2 and "ingset" in r.stderr
    (tmp_path / "llmpulse.yaml").unlink()

    r = _run_up(stack_env(tmp_path / "d5", CALF_TANSU_BIN=str(tmp_path / "missing-tansu")), tmp_path)
    assert r.returncode == 2
    assert "Tansu" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_kept_topics_decide_the_partition_count(stack_factory, tmp_path) -> None:
    """The log on disk (or an external Kafka) outlives a change of ``ingest.partitions``;
    the forward and the OTLP receiver pick partitions themselves, so the stack works with
    the kept topics' count, and refuses, naming the key, topics that disagree."""
    from llmpulse.broker import topic_partitions
    from llmpulse.monitor import Monitor
    from tests.conftest import stack_env

    data = tmp_path / "data"
    sp = stack_factory(data).start()
    assert sp.stop() == 0
    (tmp_path / "llmpulse.yaml").write_text("ingest:\n  partitions: 8\n")
    sp.start()
    try:
        assert "ingest.partitions is 8, but the topics kept at" in sp.log()
        counts = topic_partitions(sp.kafka)
        assert {counts[t] for t in (TOPIC_INFERENCE, "llmpulse.grouped")} == {4}, counts
        with Monitor(app="kept-partitions", bootstrap=sp.kafka, model="m",
                     model_version="1") as mon:
            for i in range(40):
                mon.inference(latency_ms=float(i), status="ok", input_tokens=1, output_tokens=1)
            assert mon.flush(60)
        sp.wait_stored(TOPIC_INFERENCE, 40, timeout=120)
    finally:
        assert sp.stop() == 0
    (tmp_path / "llmpulse.yaml").unlink()

    with EmbeddedBroker() as b:  # an external Kafka whose topics disagree
        create_topics(b.bootstrap, {TOPIC_INFERENCE: 2, "llmpulse.grouped": 4})
        r = _run_up(stack_env(tmp_path / "d2", LLMPULSE_KAFKA=b.bootstrap), tmp_path,
                    timeout=120)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "ingest.partitions: the kept topics disagree" in last, r.stderr
    assert "llmpulse.inference has 2" in last and "Traceback" not in r.stderr


def test_locked_store_and_busy_port_fail_with_one_line(stack, tmp_path) -> None:
    from tests.conftest import stack_env

    # a second `up` on the same data dir: already running
    r = _run_up(stack_env(stack.data_dir), tmp_path)
    assert r.returncode == 2 and "already running" in r.stderr
    # the same store opened by another process after endpoints.json vanished
    (stack.data_dir / "endpoints.json").rename(stack.data_dir / "endpoints.bak")
    try:
        r = _run_up(stack_env(stack.data_dir), tmp_path)
        assert r.returncode == 2 and "locked" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        (stack.data_dir / "endpoints.bak").rename(stack.data_dir / "endpoints.json")
    # a busy HTTP port named in the config
    port = int(stack.endpoints["http"].rsplit(":", 1)[1])
    (tmp_path / "llmpulse.yaml").write_text(f"http:\n  port: {port}\n")
    r = _run_up(stack_env(tmp_path / "other"), tmp_path)
    assert r.returncode == 2 and "http.port" in r.stderr and "busy" in r.stderr


def test_monitor_to_store_exact_counts_and_values(stack) -> None:
    """The client shim end to end: Monitor -> broker -> worker -> store."""
    from llmpulse.monitor import Monitor

    run = uuid.uuid4().hex[:8]
    with Monitor(app=f"shim-{run}", bootstrap=stack.endpoints["kafka"], model="m",
                 model_version="7") as mon:
        rids = []
        for i in range(5000):
            rids.append(mon.inference(latency_ms=float(i), status="ok", input_tokens=i,
                                      output_tokens=1, prompt=f"p{i}",
                                      segment={"tier": "pro" if i % 2 else "free"}))
        for i in range(0, 5000, 5):
            mon.feedback(request_id=rids[i], score=1.0, label="billing")
        with mon.track(prompt="tracked") as call:
            call.set(response="done", input_tokens=3, output_tokens=2)
        try:
            with mon.track(prompt="fails"):
                raise TimeoutError("upstream")
        except TimeoutError:
            pass
        assert mon.flush(30)
        s = mon.stats()
    assert s["delivered"] == 5000 + 1000 + 2 and s["dropped"] == 0 and s["failed"] == 0
    stack.wait_stored(TOPIC_INFERENCE, 5002)
    stack.wait_stored(TOPIC_FEEDBACK, 1000)
    app = f"shim-{run}"
    rows = stack.sql(f"SELECT count() AS n, sum(input_tokens) AS t, countIf(segment['tier']='pro') AS pro "
                     f"FROM inference_events FINAL WHERE app = '{app}'")
    assert rows == [{"n": 5002, "t": sum(range(5000)) + 3, "pro": 2500}]
    tracked = stack.sql(f"SELECT status, error_type, response, latency_ms >= 0 AS timed "
                        f"FROM inference_events FINAL WHERE app = '{app}' AND prompt IN ('tracked', 'fails') "
                        "ORDER BY prompt DESC")
    assert tracked == [
        {"status": "ok", "error_type": "", "response": "done", "timed": 1},
        {"status": "timeout", "error_type": "TimeoutError", "response": "", "timed": 1},
    ]
    joined = stack.sql(
        "SELECT count() AS n FROM feedback_events AS f FINAL "
        f"INNER JOIN (SELECT request_id FROM inference_events FINAL WHERE app = '{app}') AS i "
        "ON f.request_id = i.request_id")
    assert joined == [{"n": 1000}]
