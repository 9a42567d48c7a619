"""The client shim against the real embedded broker: exact round trips, and an outage."""

from __future__ import annotations

import random
import socket
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

import llmpulse.broker as broker_mod
from llmpulse.broker import EmbeddedBroker
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE, split_envelope
from llmpulse.monitor import Monitor, delivery_action

pytestmark = pytest.mark.integration

PARTITIONS = 4
TOPICS = {TOPIC_INFERENCE: PARTITIONS, TOPIC_FEEDBACK: PARTITIONS}
OK = {"latency_ms": 12.5, "status": "ok", "input_tokens": 3, "output_tokens": 4}


def _port() -> int:
    # Below the ephemeral range: while the broker is down, the producer's
    # reconnects could otherwise pick the listening port as their own source
    # port (a TCP self-connect) and keep it busy.
    rng = random.Random()
    for _ in range(100):
        p = rng.randrange(20000, 30000)
        if broker_mod.port_is_free(p):
            return p
    raise RuntimeError("no free port in 20000..30000")


def _reusable(port: int, host: str = "127.0.0.1") -> bool:
    # The broker's closed connections leave TIME_WAIT sockets on its port for
    # a minute; Tansu binds with SO_REUSEADDR, so the probe must too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _broker() -> Iterator[EmbeddedBroker]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(broker_mod, "port_is_free", _reusable)
        b = EmbeddedBroker(port=_port())
        b.start()
        b.create_topics(TOPICS)
        yield b
        b.stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    yield from _broker()


@pytest.fixture
def outage_broker() -> Iterator[EmbeddedBroker]:
    """A broker of its own: the test stops and restarts it."""
    yield from _broker()


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[tuple[int, dict]]:
    """(partition, event) for every event on ``topic``, read with manual assignment."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "shim-test", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[tuple[int, dict]] = []
    deadline = time.monotonic() + timeout
    idle = 0
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                idle += 1
                if len(out) >= expected and idle >= 2:
                    break
                continue
            idle = 0
            assert m.error() is None, m.error()
            out.extend((m.partition(), orjson.loads(line)) for line in split_envelope(m.value()))
    finally:
        c.close()
    return out


def test_round_trip_exact_counts_fields_and_partitions(broker, tmp_path):
    mon = Monitor(app="support", bootstrap=broker.bootstrap, model="m", model_version="3", buckets=16)
    rids = []
    for i in range(3000):
        rids.append(
            mon.inference(
                latency_ms=float(i), status="error" if i % 10 == 0 else "ok", input_tokens=i, output_tokens=2 * i,
                prompt=f"p{i}", context=[f"c{i}"], segment={"region": "eu" if i % 2 else "us"},
                prediction={"label": "spam", "score": 0.5},
            )
        )
    for i, r in enumerate(rids[:500]):
        mon.feedback(request_id=r, score=(i % 3) - 1.0, comment=f"f{i}")
    assert mon.flush(30)
    s = mon.stats()
    assert (s["sent"], s["delivered"], s["queued"], s["journaled"], s["dropped"]) == (3500, 3500, 0, 0, 0)
    mon.close()

    inf = consume(broker.bootstrap, TOPIC_INFERENCE, 3000)
    fb = consume(broker.bootstrap, TOPIC_FEEDBACK, 500)
    assert len(inf) == 3000 and len(fb) == 500
    by_rid = {e["request_id"]: (p, e) for p, e in inf}
    assert len({e["event_id"] for _, e in inf}) == 3000
    for i, r in enumerate(rids):
        p, e = by_rid[r]
        assert (e["latency_ms"], e["input_tokens"], e["output_tokens"], e["prompt"], e["context"]) == (
            float(i), i, 2 * i, f"p{i}", [f"c{i}"]
        )
        assert (e["app"], e["model"], e["model_version"]) == ("support", "m", "3")
        assert e["status"] == ("error" if i % 10 == 0 else "ok")
    for p, e in fb:
        ip, _ = by_rid[e["request_id"]]
        assert p == ip  # an inference and its feedback share the partition number
        i = rids.index(e["request_id"])
        assert (e["score"], e["comment"]) == ((i % 3) - 1.0, f"f{i}")
    # Keys are the CRC-32 bucket: the same bucket always maps to one partition.
    part_of_bucket: dict[int, set[int]] = {}
    for p, e in inf:
        part_of_bucket.setdefault(zlib.crc32(e["request_id"].encode()) % 16, set()).add(p)
    assert all(len(ps) == 1 for ps in part_of_bucket.values())


def test_a_fenced_producer_is_recreated_and_keeps_its_events(broker):
    # a broker that lost its producer state answers every produce of the old producer
    # id with PRODUCER_FENCED, on each message's delivery report and never as a fatal
    # error: the shim retried at once, for good, and delivered nothing again
    assert delivery_action(KafkaError.PRODUCER_FENCED) == "recreate"
    assert delivery_action(KafkaError.INVALID_PRODUCER_EPOCH) == "recreate"
    mon = Monitor(app="fenced", bootstrap=broker.bootstrap, model="m", model_version="1")
    ids = [mon.inference(**OK) for _ in range(100)]
    assert mon.flush(30)
    old = mon._producer
    mon._fatal = True  # what such a delivery report sets now
    ids += [mon.inference(**OK) for _ in range(100)]
    assert mon.flush(30)
    assert mon._producer is not old
    s = mon.stats()
    mon.close()
    assert (s["delivered"], s["dropped"], s["queued"]) == (200, 0, 0)
    seen = [e["request_id"] for _, e in consume(broker.bootstrap, TOPIC_INFERENCE, 200)
            if e["app"] == "fenced"]
    assert sorted(seen) == sorted(ids)


def test_journal_left_by_an_earlier_process_is_replayed(broker, tmp_path):
    dead = Monitor(app="a", bootstrap="127.0.0.1:9", model="m", model_version="1", journal_dir=tmp_path)
    ids = [dead.inference(**OK) for _ in range(250)]
    dead.close(timeout=0)
    assert dead.stats()["journaled"] == 250

    mon = Monitor(app="a", bootstrap=broker.bootstrap, journal_dir=tmp_path)
    assert mon.stats()["recovered"] == 250
    assert mon.flush(30)
    s = mon.stats()
    assert (s["delivered"], s["journaled"], s["queued"]) == (250, 0, 0)
    mon.close()
    got = Counter(e["request_id"] for _, e in consume(broker.bootstrap, TOPIC_INFERENCE, 3250))
    assert all(got[i] == 1 for i in ids)
    assert list(tmp_path.glob("*.seg")) == []  # replayed and delivered: deleted


@pytest.mark.slow
def test_broker_outage_loses_nothing(outage_broker, tmp_path):
    """The broker is down while the app keeps emitting, until messages have timed out
    and the journal holds over a thousand events (a small memory buffer forces it);
    after the restart every event arrives."""
    broker = outage_broker
    mon = Monitor(
        app="support", bootstrap=broker.bootstrap, model="m", model_version="1",
        buffer_events=500, journal_dir=tmp_path, delivery_timeout_s=3.0, log_interval_s=5.0,
    )
    emitted: list[str] = []

    def emit(n: int) -> None:
        for _ in range(n):
            eid = f"{len(emitted):08d}"
            mon.inference(event_id=eid, **OK)
            emitted.append(eid)

    emit(200)
    assert mon.flush(15)
    # Tansu keeps topics in memory: a restart forgets what it had, so only
    # events emitted from here on are checked.
    first = len(emitted)
    broker.stop()
    deadline = time.monotonic() + 120
    max_journaled = 0
    s = mon.stats()
    # the outage lasts until librdkafka has given messages back and the journal holds many
    while s["failed"] == 0 or max_journaled <= 1000:
        assert time.monotonic() < deadline, f"no timed-out messages journaled: {s}"
        emit(25)
        s = mon.stats()
        assert s["sent"] + s["recovered"] == s["delivered"] + s["dropped"] + s["queued"] + s["journaled"]
        max_journaled = max(max_journaled, s["journaled"])
        time.sleep(0.02)  # pacing the simulated app, not waiting for a result
    emit(500)
    broker.start()
    broker.create_topics(TOPICS)
    emit(500)
    assert mon.flush(20), mon.stats()
    s = mon.stats()
    mon.close()
    assert max_journaled > 1000  # the journal was exercised
    assert s["failed"] > 0  # librdkafka gave timed-out messages back
    assert (s["sent"], s["delivered"], s["dropped"], s["queued"], s["journaled"]) == (
        len(emitted), len(emitted), 0, 0, 0
    )
    want = set(emitted[first:])
    got = Counter(e["event_id"] for _, e in consume(broker.bootstrap, TOPIC_INFERENCE, len(want)))
    missing = want - set(got)
    assert not missing, f"{len(missing)} events lost"
    duplicates = sum(n - 1 for n in got.values())
    print(f"outage: {len(want)} events after the stop, {duplicates} duplicates, max journaled {max_journaled}")
    assert duplicates <= s["failed"]
