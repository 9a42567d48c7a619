"""A broker of the local three-broker cluster is killed (SIGKILL) while the shim
produces and ``llmpulse up`` consumes, then restarted on its port over the same
storage.

The shim runs in its own process with ``acks=all`` and every event it counts as
delivered must end up in ``inference_events``, none visible twice. Tansu acknowledges
a retried idempotent batch that a killed broker had sequenced but not written
(docs/cluster.md), so against a Tansu cluster the shim runs with idempotence off:
a retry may then write an event twice, and the store keeps one row per ``event_id``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from llmpulse.cluster import LocalCluster
from llmpulse.events import TOPIC_INFERENCE
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_SHIM = """
import json, sys, time
from llmpulse.monitor import Monitor
from tests.integration.test_stack import inference_event

bootstrap, run, n, rate, idempotent = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    float(sys.argv[4]), sys.argv[5] == "1"
now_ms = int(time.time() * 1000)
# few, large envelopes: every Kafka message costs the brokers several object-store requests
mon = Monitor(app="support", bootstrap=bootstrap, delivery_timeout_s=120, buckets=4,
              linger_ms=500, producer_config={"enable.idempotence": idempotent})
t0 = time.monotonic()
for i in range(n):
    mon.inference(**inference_event(i, run, now_ms))
    ahead = i / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
    if i % 250 == 0:
        print(json.dumps({"progress": i}), flush=True)
flushed = mon.flush(180)
mon.close(10)
print(json.dumps({"flushed": flushed, **mon.stats()}), flush=True)
"""


def _start_shim(bootstrap: str, run: str, n: int, rate: float, idempotent: bool) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", _SHIM, bootstrap, run, str(n), str(rate),
                             "1" if idempotent else "0"], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=str(ROOT))


def _wait_progress(proc: subprocess.Popen[str], at_least: int, timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the shim process ended early (code {proc.wait()})")
        if json.loads(line).get("progress", -1) >= at_least:
            return
    raise AssertionError(f"the shim did not reach {at_least} events within {timeout:g} s")


def _final(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, proc.returncode
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_cluster_serves_one_log_from_every_broker(cluster: LocalCluster) -> None:
    """A topic created through one broker is written through another and read through
    the third: the brokers share the log, each naming itself as the leader."""
    first, second, third = (b.address for b in cluster.brokers)
    admin = AdminClient({"bootstrap.servers": first})
    for fut in admin.create_topics([NewTopic("shared", 2, 1)]).values():
        fut.result(20)
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": second, "acks": "all"})
    for i in range(10):
        p.produce("shared", str(i).encode(), partition=i % 2)
    assert p.flush(30) == 0
    md = AdminClient({"bootstrap.servers": third}).list_topics(timeout=20)
    assert [(b.host, b.port) for b in md.brokers.values()] == [(cluster.brokers[2].host,
                                                                 cluster.brokers[2].port)]
    c = Consumer({"bootstrap.servers": third, "group.id": "g", "enable.auto.commit": False})
    c.assign([TopicPartition("shared", part, 0) for part in (0, 1)])
    got: list[int] = []
    deadline = time.monotonic() + 60
    while len(got) < 10 and time.monotonic() < deadline:
        for m in c.consume(10, timeout=1):
            assert m.error() is None, m.error()
            got.append(int(m.value()))
    c.close()
    assert sorted(got) == list(range(10))


def test_broker_killed_mid_stream_then_restarted_loses_no_acknowledged_event(
        cluster: LocalCluster, stack_factory: Any) -> None:
    sp = stack_factory(LLMPULSE_KAFKA=cluster.bootstrap).start(timeout=240)
    run = uuid.uuid4().hex[:8]
    n, rate = 6_000, 300.0  # 20 s of traffic
    shim = _start_shim(cluster.bootstrap, run, n, rate, idempotent=False)
    try:
        _wait_progress(shim, 2_000, timeout=120)
        victim = cluster.busiest()
        cluster.kill(victim)
        _wait_progress(shim, 4_000, timeout=120)  # traffic goes on while it is down
        cluster.restart(victim)
        result = _final(shim, timeout=400)
    finally:
        if shim.poll() is None:
            shim.kill()
            shim.wait()
    assert result["sent"] == n and result["dropped"] == 0 and result["flushed"], result
    assert result["delivered"] == n, result
    prefix = f"{run}-e"
    deadline = time.monotonic() + 300
    while True:
        row = sp.sql(f"SELECT count() AS rows, uniqExact(event_id) AS ids FROM inference_events "
                     f"FINAL WHERE startsWith(event_id, '{prefix}')")[0]
        if int(row["ids"]) >= n or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    print(f"broker {victim} killed mid-stream: {n} sent, {result['delivered']} acknowledged, "
          f"stored {row}; worker stats {sp.get('/api/stats').get('stored', {}).get(TOPIC_INFERENCE)}")
    assert int(row["ids"]) == n, row  # no acknowledged event lost
    assert int(row["rows"]) == int(row["ids"]), row  # none visible twice
    assert cluster.brokers[victim].starts == 2
    assert sp.stop(timeout=300) == 0
