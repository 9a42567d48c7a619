"""Erasure in the embedded broker's log on disk: the real Tansu broker, the real
object server, real confluent-kafka clients."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from llmpulse.broker import EmbeddedBroker, create_topics
from llmpulse.broker_erase import EventEraser, erase_from_broker
from llmpulse.broker_record import adopt_or_start, stop_recorded_broker
from llmpulse.broker_storage import STORE_DIR, BrokerSettings
from llmpulse.events import TOPIC_INFERENCE
from tests.integration.partition_read import read_partition

pytestmark = pytest.mark.integration


@pytest.fixture
def disk_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, Path]]:
    data = tmp_path / "data"
    data.mkdir()
    broker, _ = adopt_or_start(data, storage=BrokerSettings(storage="disk"))
    try:
        yield broker, data
    finally:
        stop_recorded_broker(data)


def _event(rid: str, i: int) -> bytes:
    return orjson.dumps({"event_id": uuid.uuid4().hex, "request_id": rid, "app": "a",
                         "prompt": f"prompt {i} of {rid}", "ts": 1_700_000_000_000 + i})


def _produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]],
             codec: str, chunk: int = 7) -> list[int]:
    """Produce to partition 0 in batches of ``chunk``; the offset of each record."""
    p = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                  "linger.ms": 1000, "acks": "all", "enable.idempotence": True})
    offsets: list[int] = [-1] * len(values)

    def done(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            assert err is None, err
            offsets[i] = msg.offset()
        return cb

    for k in range(0, len(values), chunk):
        for i in range(k, min(len(values), k + chunk)):
            key, value = values[i]
            p.produce(topic, value, key=key, partition=0, on_delivery=done(i),
                      headers=[("source", b"test")])
        assert p.flush(30) == 0
    assert -1 not in offsets
    return offsets


def _commit(bootstrap: str, topic: str, group: str, offset: int) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
    finally:
        c.close()


def _files_with(root: Path, needles: list[bytes]) -> list[str]:
    """Files under ``root`` holding a needle, in their bytes or, for a record batch,
    in its decompressed records (read with aiokafka's reader, not ours)."""
    from aiokafka.record.default_records import DefaultRecordBatch

    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                data = (Path(dirpath) / name).read_bytes()
            except OSError:
                continue
            if name.endswith(".batch,o"):
                batch = DefaultRecordBatch(data)
                data += b"".join((r.key or b"") + (r.value or b"")
                                 + b"".join(v or b"" for _, v in r.headers) for r in batch)
            hits += [f"{name}: {n!r}" for n in needles if n in data]
    return hits


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_erasure_rewrites_stored_batches_and_keeps_every_other_offset(
        disk_broker: tuple[EmbeddedBroker, Path], codec: str) -> None:
    broker, data = disk_broker
    topic = TOPIC_INFERENCE
    create_topics(broker.bootstrap, {topic: 1})
    tag = uuid.uuid4().hex[:8]
    erased = [f"gone-{tag}-{i}" for i in range(6)]
    kept = [f"kept-{tag}-{i}" for i in range(40)]
    values: list[tuple[bytes | None, bytes]] = []
    for i, rid in enumerate(kept):
        lines = [_event(rid, i)]
        if i % 8 == 3:  # an envelope that also holds an erased event
            lines.append(_event(erased[i // 8], i))
        values.append((str(i % 4).encode(), b"\n".join(lines)))
    # a record holding only an erased event, keyed by its request id
    values.insert(20, (erased[5].encode(), _event(erased[5], 99)))
    offsets = _produce(broker.bootstrap, topic, values, codec)
    before = read_partition(broker.bootstrap, topic, start=0).records
    assert [before[o][1] for o in offsets] == [v for _, v in values]
    _commit(broker.bootstrap, topic, "g1", offsets[30])
    store = data / STORE_DIR
    needles = [e.encode() for e in erased]
    assert _files_with(store, needles)  # the check below can fail

    # the broker keeps serving while the batches are rewritten
    stop = threading.Event()
    live: list[int] = []

    def acked(err: Any, msg: Any) -> None:
        live.append(msg.offset() if err is None else -10**9)  # a failure fails the test

    def traffic() -> None:
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                      "compression.type": codec})
        n = 0
        while not stop.is_set():
            p.produce(topic, _event(f"live-{tag}-{n}", n), partition=0, on_delivery=acked)
            n += 1
            p.poll(0)
            time.sleep(0.01)
        assert p.flush(30) == 0
        live.append(-n)  # how many were produced

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        report = erase_from_broker(data, EventEraser(ids=frozenset(erased)))
    finally:
        stop.set()
        t.join(60)
    assert report.failures == []
    touched = {offsets[i] for i, (_, v) in enumerate(values) if any(e.encode() in v for e in erased)}
    assert report.records == {topic: len(touched)} and len(touched) == 6
    # (a) no byte of an erased id is left under the store
    assert _files_with(store, needles) == []
    after = read_partition(broker.bootstrap, topic, start=0).records
    # (b) every record at its offset; untouched ones byte for byte, erased events gone
    for i, (key, value) in enumerate(values):
        o = offsets[i]
        if o not in touched:
            assert after[o] == (key, value), o
        elif key == erased[5].encode():
            assert after[o] == (None, b"")  # no event left, nor the key naming it
        else:
            assert after[o] == (key, value.split(b"\n")[0])
    # (e) what was produced during the rewrite is there too
    produced = -live.pop()
    assert produced > 0 and len(live) == produced
    assert set(live) <= set(after) and len(set(live)) == produced
    # (c) the group resumes at its committed offset
    resumed = read_partition(broker.bootstrap, topic, group="g1").records
    assert min(resumed) == offsets[30] and resumed[offsets[30]] == values[30]
    # the broker still takes and serves new records after the rewrite
    [o_new] = _produce(broker.bootstrap, topic, [(b"k", b'{"request_id":"after"}')], codec)
    assert read_partition(broker.bootstrap, topic, start=o_new).records[o_new] == (b"k", b'{"request_id":"after"}')
    # erasing again changes nothing
    assert erase_from_broker(data, EventEraser(ids=frozenset(erased))).records == {}


def test_erasure_with_the_broker_stopped_rewrites_the_files(
        disk_broker: tuple[EmbeddedBroker, Path]) -> None:
    broker, data = disk_broker
    topic = TOPIC_INFERENCE
    create_topics(broker.bootstrap, {topic: 1})
    values: list[tuple[bytes | None, bytes]] = [
        (None, _event(f"r{i}-{uuid.uuid4().hex}", i)) for i in range(10)]
    offsets = _produce(broker.bootstrap, topic, values, "lz4", chunk=4)
    gone = orjson.loads(values[5][1])["request_id"]
    stop_recorded_broker(data)  # the broker and its object server
    report = erase_from_broker(data, EventEraser(ids=frozenset({gone})))
    assert report.records == {topic: 1} and report.failures == []
    assert _files_with(data / STORE_DIR, [gone.encode()]) == []
    broker2, _ = adopt_or_start(data, storage=BrokerSettings(storage="disk"))
    after = read_partition(broker2.bootstrap, topic, start=0).records
    assert after[offsets[5]] == (None, b"")
    assert all(after[offsets[i]] == values[i] for i in range(10) if i != 5)


def test_a_batch_that_does_not_parse_is_reported(disk_broker: tuple[EmbeddedBroker, Path]) -> None:
    broker, data = disk_broker
    create_topics(broker.bootstrap, {TOPIC_INFERENCE: 1})
    _produce(broker.bootstrap, TOPIC_INFERENCE, [(None, _event("x", 1))], "none")
    [path] = list((data / STORE_DIR).rglob("*.batch,o"))
    stop_recorded_broker(data)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a flipped byte: the CRC no longer matches
    path.write_bytes(bytes(raw))
    report = erase_from_broker(data, EventEraser(ids=frozenset({"x"})))
    assert report.records == {}
    assert len(report.failures) == 1 and "CRC mismatch" in report.failures[0]
    assert path.read_bytes() == bytes(raw)  # left as it was
