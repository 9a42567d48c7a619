"""The embedded broker on disk (broker.storage: disk): a kill -9 of ``llmpulse up``,
of the Tansu broker and of its object server loses no acknowledged event, and
retention keeps the disk bounded without removing anything a group has not consumed.

All with the real Tansu broker and the real object server.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from llmpulse.broker import create_topics, pid_alive
from llmpulse.broker_record import adopt_or_start, read_record, stop_recorded_broker
from llmpulse.broker_storage import STORE_DIR, BrokerSettings, read_store_record
from tests.integration.partition_read import read_partition
from tests.integration.test_embedded_durability import producer_result, start_producer, wait_for

pytestmark = pytest.mark.integration


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


@pytest.mark.slow
def test_kill9_of_up_broker_and_object_server_loses_no_acknowledged_event(
        stack_factory: Any) -> None:
    sp = stack_factory(LLMPULSE_BROKER_STORAGE="disk").start(timeout=180)
    broker_rec, store_rec = read_record(sp.data_dir), read_store_record(sp.data_dir)
    assert broker_rec is not None and store_rec is not None
    run = uuid.uuid4().hex[:8]
    n = 30_000
    producer = start_producer(sp.endpoints["kafka"], run, n, per_message=50, timeout_ms=240_000)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sp.get("/api/stats")["stored"].get("llmpulse.inference", 0) >= 2_000:
            break
        time.sleep(0.05)
    # a power cut, as far as processes go: every process of the stack dies at once
    sp.kill()
    kill9(broker_rec.pid)
    kill9(store_rec.pid)
    time.sleep(2.0)  # the producer keeps retrying against nothing
    sp.start(timeout=180)
    after = read_record(sp.data_dir)
    assert after is not None and after.pid != broker_rec.pid and after.port == broker_rec.port
    result = producer_result(producer, timeout=400)
    got = wait_for(sp, run, result["ranges"], result["acked"])
    print(f"kill -9 of up, broker and object server: produced {n}, acknowledged "
          f"{result['acked']}, stored {got}")
    assert got["acked_stored"] == result["acked"], (got, result["acked"])
    assert got["n"] == got["u"]  # no duplicate visible
    assert result["acked"] == n  # the producer's retries reached the restarted broker
    assert sp.stop(timeout=600) == 0
    # a clean stop ends the broker and the object server: the log is on disk
    assert read_record(sp.data_dir) is None and read_store_record(sp.data_dir) is None
    assert not pid_alive(after.pid)


def _produce(bootstrap: str, topic: str, n: int, chunk: int = 100) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 0})
    for k in range(0, n, chunk):
        for i in range(k, min(n, k + chunk)):
            p.produce(topic, f"{i:08d}".encode() * 8, partition=0)
        assert p.flush(30) == 0  # one batch, one object, per chunk


def _record_bytes(data: Path, topic: str) -> tuple[int, int]:
    """Batch objects of ``topic`` and their bytes (the pruner may remove some meanwhile)."""
    sizes = []
    for p in (data / STORE_DIR).rglob("*.batch,o"):
        if f"/topics/{topic}/" in str(p):
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:
                pass
    return len(sizes), sum(sizes)


def _bases(data: Path, topic: str) -> list[int]:
    return sorted(int(p.name.split(".")[0]) for p in (data / STORE_DIR).rglob("*.batch,o")
                  if f"/topics/{topic}/" in str(p))


def _wait_pruned(data: Path, topic: str, below: int, timeout: float = 90.0) -> None:
    """Until no more than ``below`` batch objects of ``topic`` are left."""
    deadline = time.monotonic() + timeout
    while _record_bytes(data, topic)[0] > below:
        assert time.monotonic() < deadline, _record_bytes(data, topic)
        time.sleep(0.5)


@pytest.mark.slow
def test_retention_keeps_disk_bounded_and_removes_nothing_unconsumed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    settings = BrokerSettings(storage="disk", retain_margin=0, prune_interval_s=1.0, retain_min_s=0.0)
    topic = "retention-test"
    try:
        broker, _ = adopt_or_start(data, storage=settings)
        bs = broker.bootstrap
        create_topics(bs, {topic: 1})
        _produce(bs, topic, 2_000)  # batches of at most 100
        # the groups that count are those that committed (with retain_min_s: 0)
        assert read_partition(bs, topic, start=0, group="slow", commit=1_000).offsets[-1] == 1_999
        assert read_partition(bs, topic, start=0, group="fast", commit=-1).offsets == list(range(2_000))
        # every batch before the one holding offset 1,000 goes, that one stays
        keep_from = max(b for b in _bases(data, topic) if b <= 1_000)
        deadline = time.monotonic() + 90
        while _bases(data, topic)[0] != keep_from:
            assert time.monotonic() < deadline, _bases(data, topic)[:5]
            time.sleep(0.5)
        time.sleep(3.0)  # more passes remove nothing more
        assert _bases(data, topic)[0] == keep_from
        kept = len(_bases(data, topic))
        # nothing the slow group has not consumed is gone: it reads all of [1000, 2000)
        assert read_partition(bs, topic, start=None, group="slow").offsets == list(range(1_000, 2_000))
        # a new reader from the earliest offset starts at the first batch kept,
        # at most one batch before the slow group's commit
        earliest = read_partition(bs, topic, start=-2, group="new").offsets
        assert earliest == list(range(keep_from, 2_000))
        print(f"batches kept after the slow group's commit at 1,000: {kept}, earliest "
              f"offset kept: {keep_from}")

        # the broker, restarted over a pruned log, goes on where it was
        stop_recorded_broker(data)
        assert read_store_record(data) is None
        broker, adopted = adopt_or_start(data, storage=settings)
        assert not adopted
        bs = broker.bootstrap
        _produce(bs, topic, 500)
        assert read_partition(bs, topic, start=None, group="fast", commit=-1).offsets == list(range(2_000, 2_500))
        # the slow group's commit still holds the log from where it was
        assert read_partition(bs, topic, start=-2, group="new").offsets == list(range(keep_from, 2_500))
        assert read_partition(bs, topic, start=None, group="slow", commit=-1).offsets == list(range(1_000, 2_500))
        _wait_pruned(data, topic, below=1)

        # steady traffic that every group reads: the stored batches stay bounded
        sizes = []
        for round_ in range(4):
            _produce(bs, topic, 1_000)
            first = 2_500 + 1_000 * round_
            for group in ("fast", "slow"):
                got = read_partition(bs, topic, start=None, group=group, commit=-1).offsets
                assert got == list(range(first, first + 1_000)), group
            _wait_pruned(data, topic, below=1)
            sizes.append(_record_bytes(data, topic)[1])
        print(f"record bytes kept after each round of 1,000 records: {sizes}")
        assert max(sizes) <= 2 * min(sizes)
        last = read_partition(bs, topic, start=-2, group="new").offsets
        assert last[-1] == 6_499 and len(last) <= 100  # only the newest batch
    finally:
        stop_recorded_broker(data)
    assert read_record(data) is None and read_store_record(data) is None


_IDEMPOTENT_PRODUCER = r'''
import json, sys
from confluent_kafka import Producer
bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
              "linger.ms": 5, "message.timeout.ms": 240000})
acked, failed = [], []
def on_delivery(err, msg):
    (acked if err is None else failed).append(int(msg.key()))
for i in range(n):
    while True:
        try:
            p.produce(topic, b"x" * 200, key=str(i).encode(), on_delivery=on_delivery)
            break
        except BufferError:
            p.poll(0.05)
    p.poll(0)
p.flush(300)
print(json.dumps({"acked": acked, "failed": failed}))
'''


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["broker", "objstore", "both"])
def test_kills_mid_produce_lose_no_acknowledged_record(tmp_path: Path, victim: str) -> None:
    """Kill -9 of the broker, of its object server, or of both, three times while an
    idempotent producer writes: every record it was told was taken can be read, and
    every other one was reported failed. A kill
    between the broker's sequence write and its batch write used to make the resend
    look like a duplicate (acknowledged, never stored): the log is repaired on restart."""
    import json
    import random
    import subprocess
    import sys

    from tests.conftest import ROOT

    data = tmp_path / "data"
    data.mkdir()
    settings = BrokerSettings(storage="disk")
    topic, n = "kills", 40_000
    rng = random.Random(victim)
    try:
        broker, _ = adopt_or_start(data, storage=settings)
        create_topics(broker.bootstrap, {topic: 1})
        producer = subprocess.Popen(
            [sys.executable, "-c", _IDEMPOTENT_PRODUCER, broker.bootstrap, topic, str(n)],
            stdout=subprocess.PIPE, cwd=str(ROOT))
        for _ in range(3):
            time.sleep(rng.uniform(0.3, 1.5))
            broker_rec, store_rec = read_record(data), read_store_record(data)
            assert broker_rec is not None and store_rec is not None
            for pid in ([broker_rec.pid] if victim in ("broker", "both") else []) + \
                       ([store_rec.pid] if victim in ("objstore", "both") else []):
                kill9(pid)
            again, adopted = adopt_or_start(data, storage=settings)
            assert not adopted and again.bootstrap == broker.bootstrap  # the same port
        out, _ = producer.communicate(timeout=400)
        outcome = json.loads(out.decode().strip().splitlines()[-1])
        acked, failed = set(outcome["acked"]), set(outcome["failed"])
        read = [int(key) for key, _ in read_partition(broker.bootstrap, topic, start=0).records.values()
                if key is not None]
        lost = sorted(acked - set(read))
        print(f"kill -9 of the {victim} x3: acknowledged {len(acked)} of {n}, read {len(read)}, "
              f"lost {len(lost)}")
        assert not lost, (len(lost), lost[:5])
        # every record has an outcome the producer was told: none is dropped silently
        assert acked | failed == set(range(n)) and not acked & failed
        if victim != "objstore":
            assert len(acked) == n  # every resend reached the restarted broker
        # A kill of the object server alone leaves the broker answering produce requests
        # with errors until the next start; the client may then bump its producer epoch
        # and be fenced after the restart (PRODUCER_FENCED, fatal): its records fail, with
        # an error, and none that was acknowledged is lost.
    finally:
        stop_recorded_broker(data)
