"""The embedded default keeps every acknowledged event: kill -9 of ``llmpulse up``
after a burst, and a clean stop under a large backlog.

Producers run in their own process with ``acks=all`` and idempotence, and
record which events the broker acknowledged (delivery callbacks). The check
is exact: every acknowledged event is in ``inference_events`` and no event
is visible twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from llmpulse.broker import BrokerError, pid_alive
from llmpulse.broker_record import (
    BrokerRecord,
    adopt_or_start,
    finish,
    read_record,
    stop_recorded_broker,
    unstored,
)
from llmpulse.events import TOPIC_INFERENCE, TOPICS
from tests.conftest import ROOT, StackProcess

pytestmark = pytest.mark.integration

_PRODUCER = """
import json, sys, time
import orjson
from confluent_kafka import Producer
from tests.integration.test_stack import inference_event

bootstrap, run, n, per_message, timeout_ms = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
now_ms = int(time.time() * 1000)
p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
              "linger.ms": 5, "message.timeout.ms": timeout_ms})
acked = []
def on_delivery(err, msg):
    if err is None:
        acked.append(int(msg.key()))
for k in range(0, n, per_message):
    value = b"\\n".join(orjson.dumps(inference_event(i, run, now_ms))
                        for i in range(k, min(n, k + per_message)))
    while True:
        try:
            p.produce("llmpulse.inference", value, key=str(k).encode(), on_delivery=on_delivery)
            break
        except BufferError:
            p.poll(0.1)
    p.poll(0)
p.flush(timeout_ms / 1000 + 30)
acked.sort()
ranges = []
for k in acked:
    end = min(n, k + per_message)
    if ranges and ranges[-1][1] == k:
        ranges[-1][1] = end
    else:
        ranges.append([k, end])
print(json.dumps({"acked": sum(b - a for a, b in ranges), "ranges": ranges}))
"""


def start_producer(bootstrap: str, run: str, n: int, per_message: int,
                   timeout_ms: int = 60_000) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, bootstrap, run, str(n), str(per_message),
         str(timeout_ms)], stdout=subprocess.PIPE, env=env, cwd=str(ROOT))


def producer_result(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, proc.returncode
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def stored(sp: StackProcess, run: str, ranges: list[list[int]]) -> dict[str, int]:
    """Rows of the run as queries see them, and how many acknowledged events are among them."""
    prefix = f"{run}-e"
    acked = " OR ".join(f"(idx >= {a} AND idx < {b})" for a, b in ranges) or "0"
    rows = sp.sql(
        f"SELECT count() AS n, uniqExact(event_id) AS u, countIf({acked}) AS acked_stored "
        f"FROM (SELECT event_id, toUInt64(substring(event_id, {len(prefix) + 1})) AS idx "
        f"FROM inference_events FINAL WHERE startsWith(event_id, '{prefix}'))")
    return {k: int(v) for k, v in rows[0].items()}


def wait_for(sp: StackProcess, run: str, ranges: list[list[int]], acked: int,
             timeout: float = 300.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    got = stored(sp, run, ranges)
    while got["acked_stored"] < acked and time.monotonic() < deadline:
        time.sleep(1.0)
        got = stored(sp, run, ranges)
    return got


@pytest.mark.slow
def test_kill9_of_up_after_a_burst_loses_no_acknowledged_event(stack_factory: Any) -> None:
    sp = stack_factory().start(timeout=120)
    run = uuid.uuid4().hex[:8]
    n = 40_000
    producer = start_producer(sp.endpoints["kafka"], run, n, per_message=50)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sp.get("/api/stats")["stored"].get(TOPIC_INFERENCE, 0) >= 2_000:
            break
        time.sleep(0.05)
    sp.kill()  # kill -9 of `llmpulse up` in the middle of the burst
    result = producer_result(producer, timeout=300)
    sp.start(timeout=180)
    got = wait_for(sp, run, result["ranges"], result["acked"])
    print(f"kill -9: produced {n}, acknowledged {result['acked']}, stored {got}")
    assert got["acked_stored"] == result["acked"], (got, result["acked"])
    assert got["n"] == got["u"]
    # the restarted stack kept the broker, so the producer lost nothing either
    assert result["acked"] == n
    assert sp.stop(timeout=600) == 0


@pytest.mark.slow
def test_stop_under_a_large_backlog_loses_no_acknowledged_event(stack_factory: Any) -> None:
    sp = stack_factory().start(timeout=120)
    run = uuid.uuid4().hex[:8]
    n = 80_000
    # one event per message (as a foreign producer sends them): the costly path
    producer = start_producer(sp.endpoints["kafka"], run, n, per_message=1)
    result = producer_result(producer, timeout=300)
    backlog = n - sp.get("/api/stats")["stored"].get(TOPIC_INFERENCE, 0)
    assert sp.stop(timeout=900) == 0  # SIGTERM with the backlog in the broker
    log = sp.log()
    # stopped cleanly: everything stored, so the broker was stopped too (no orphan)
    assert read_record(sp.data_dir) is None, log
    sp.start(timeout=180)
    got = wait_for(sp, run, result["ranges"], result["acked"], timeout=30)
    print(f"stop under backlog ({backlog} not stored at SIGTERM): acknowledged "
          f"{result['acked']}, stored {got}")
    assert got["acked_stored"] == result["acked"] == n, (got, result["acked"])
    assert got["n"] == got["u"]
    assert sp.stop(timeout=600) == 0


@pytest.mark.slow
def test_second_signal_stops_at_once_and_the_next_start_stores_the_rest(
        stack_factory: Any) -> None:
    # a broker in memory is left running with what it holds (one on disk is just stopped)
    sp = stack_factory(LLMPULSE_BROKER_STORAGE="memory").start(timeout=120)
    run = uuid.uuid4().hex[:8]
    n = 40_000
    result = producer_result(start_producer(sp.endpoints["kafka"], run, n, per_message=1),
                             timeout=300)
    assert sp.proc is not None
    os.kill(sp.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while "draining:" not in sp.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(sp.proc.pid, signal.SIGTERM)  # the operator does not want to wait
    assert sp.proc.wait(300) == 0
    rec = read_record(sp.data_dir)
    assert rec is not None and pid_alive(rec.pid), sp.log()
    assert "is left running" in sp.log()
    sp.start(timeout=180)
    assert read_record(sp.data_dir) == rec  # the same broker, re-adopted
    got = wait_for(sp, run, result["ranges"], result["acked"])
    assert got["acked_stored"] == result["acked"] == n, (got, result["acked"])
    assert got["n"] == got["u"]
    assert sp.stop(timeout=600) == 0
    assert read_record(sp.data_dir) is None and not pid_alive(rec.pid)


def test_recorded_broker_is_adopted_only_when_it_is_ours(tmp_path: Path) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from llmpulse.broker import create_topics

    data = tmp_path / "data"
    data.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        broker, adopted = adopt_or_start(data)
        assert not adopted and broker.running()
        rec = read_record(data)
        assert rec is not None and (rec.pid, rec.port) == (broker.pid, broker.port)

        again, adopted = adopt_or_start(data)
        assert adopted and (again.pid, again.port) == (broker.pid, broker.port)

        # a record naming some other process (a reused pid) on a busy port is not adopted,
        # and that process is left alone
        (other / "broker.json").write_text(BrokerRecord(
            pid=sleeper.pid, port=broker.port, binary=rec.binary).to_json())
        fresh, adopted = adopt_or_start(other)
        assert not adopted and fresh.pid != sleeper.pid and fresh.port != broker.port
        assert sleeper.poll() is None
        fresh_pid = fresh.pid
        assert fresh_pid is not None and stop_recorded_broker(other) == fresh_pid
        assert not pid_alive(fresh_pid)

        # messages the group has not committed keep the broker running; one batch of 500
        # (the broker's ListOffsets reports its end as 1, a fetch tells the truth)
        create_topics(broker.bootstrap, {t: 1 for t in TOPICS})
        p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 200})
        for _ in range(500):
            p.produce(TOPIC_INFERENCE, b"{}")
        assert p.flush(10) == 0
        pid = broker.pid
        assert pid is not None
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "llmpulse"})
        c.commit(offsets=[TopicPartition(TOPIC_INFERENCE, 0, 1)], asynchronous=False)
        assert unstored(broker.bootstrap, "llmpulse", [TOPIC_INFERENCE]) == {TOPIC_INFERENCE: 499}
        assert not finish(broker, data, group="llmpulse", topics=[TOPIC_INFERENCE])
        assert pid_alive(pid) and read_record(data) == rec

        # once the group has committed past them, the broker stops and its record goes
        c.commit(offsets=[TopicPartition(TOPIC_INFERENCE, 0, 500)], asynchronous=False)
        c.close()
        adopted_again, adopted = adopt_or_start(data)
        assert adopted
        assert finish(adopted_again, data, group="llmpulse", topics=[TOPIC_INFERENCE])
        assert not pid_alive(pid) and read_record(data) is None
    finally:
        stop_recorded_broker(data)
        stop_recorded_broker(other)
        sleeper.kill()
        sleeper.wait(10)


def test_a_broker_record_is_checked_before_use(tmp_path: Path) -> None:
    (tmp_path / "broker.json").write_text('{"pid": 1, "port": 9092, "binary": "/bin/sh"}')
    assert read_record(tmp_path) is None  # pid 1 is never ours: ignored, with a warning
    with pytest.raises(BrokerError, match="port must be an integer"):
        BrokerRecord.from_json('{"pid": 4242, "port": 70000, "binary": "/bin/sh"}')
