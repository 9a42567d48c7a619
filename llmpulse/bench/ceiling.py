"""The machine's ceiling for the pipeline: the same events through the bare parts.

Two measurements, next to which the pipeline's sustained rate is read:

* **broker**: the shim's envelopes (the same events, ids and times stamped as
  the shim stamps them, newline-delimited, up to 1,000 events or 512 KiB a
  message, the shim's producer settings: idempotent, ``acks=all``, lz4)
  produced as fast as librdkafka takes them to a fresh topic with as many
  partitions as ``llmpulse.inference``, and consumed by one consumer in
  another thread, nothing decoded. The consumer is assigned the partitions
  (no group join, whose wait on the session timeout is no broker work) and
  polls before the clock starts. Rate = events consumed / (last consumed -
  first produced).
* **store**: the same events' JSON lines (the store's own encoding, as the
  sink passes them through) inserted into a fresh chDB store's
  ``inference_ingest`` in batches of ``batch`` lines, one after another.
  Rate = rows / seconds.

The pipeline does both and more (validation, forwarding by group, the signal
engine) on the same cores, so its sustained rate over the smaller of the two
is the fraction of what this machine can move that the pipeline keeps.

    python -m llmpulse.bench.ceiling [--seconds 10] [--json ceiling.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["broker_ceiling", "envelopes", "event_lines", "format_table", "measure", "run",
           "store_ceiling"]

ENVELOPE_MAX_EVENTS = 1000
ENVELOPE_MAX_BYTES = 512 << 10


def event_lines(pool: list[dict[str, Any]], n: int, *, app: str = "bench-ceiling",
                start_ms: int | None = None) -> list[bytes]:
    """``n`` events from ``pool`` (cycled) as the shim encodes them.

    >>> lines = event_lines([{"model": "m", "model_version": "1", "latency_ms": 1.0}], 2,
    ...                     start_ms=5)
    >>> import orjson
    >>> [sorted(orjson.loads(x)) for x in lines][0]
    ['app', 'event_id', 'latency_ms', 'model', 'model_version', 'request_id', 'ts']
    >>> orjson.loads(lines[1])["ts"]
    5
    """
    import orjson

    now = int(time.time() * 1000) if start_ms is None else start_ms
    out = []
    for i in range(n):
        rid = uuid.uuid4().hex
        out.append(orjson.dumps({**pool[i % len(pool)], "event_id": uuid.uuid4().hex,
                                 "request_id": rid, "ts": now, "app": app}))
    return out


def envelopes(lines: list[bytes], *, max_events: int = ENVELOPE_MAX_EVENTS,
              max_bytes: int = ENVELOPE_MAX_BYTES) -> list[tuple[bytes, int]]:
    """Lines packed as the shim packs them: (message value, events in it).

    >>> envelopes([b"a", b"bb", b"c"], max_events=2)
    [(b'a\\nbb', 2), (b'c', 1)]
    >>> envelopes([b"aaaa", b"bbbb"], max_bytes=6)
    [(b'aaaa', 1), (b'bbbb', 1)]
    """
    out: list[tuple[bytes, int]] = []
    cur: list[bytes] = []
    size = 0
    for ln in lines:
        if cur and (len(cur) >= max_events or size + len(ln) + 1 > max_bytes):
            out.append((b"\n".join(cur), len(cur)))
            cur, size = [], 0
        cur.append(ln)
        size += len(ln) + 1
    if cur:
        out.append((b"\n".join(cur), len(cur)))
    return out


def broker_ceiling(bootstrap: str, lines: list[bytes], *, partitions: int = 4,
                   timeout_s: float = 120.0) -> dict[str, Any]:
    """Produce ``lines`` as envelopes to a fresh topic and consume them back."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    from llmpulse.broker import create_topics

    topic = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: partitions})
    msgs = envelopes(lines)
    total = sum(n for _, n in msgs)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         # librdkafka's 1 MB per partition per fetch is two envelopes:
                         # the consumer, not the broker, would set the pace
                         "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20,
                         "fetch.wait.max.ms": 50})
    # partitions assigned, not subscribed: a group join waits on the broker's session
    # timeout (about 23 s on the embedded broker), which the clock would count as
    # broker time (what this figure was before)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got = [0]
    last = [0.0]
    ready = threading.Event()

    def consume() -> None:
        deadline = time.monotonic() + timeout_s
        while got[0] < total and time.monotonic() < deadline:
            batch = consumer.consume(1000, 0.2)
            ready.set()
            for m in batch:
                value = m.value()
                if m.error() is None and value:
                    got[0] += value.count(b"\n") + 1
                    last[0] = time.perf_counter()

    reader = threading.Thread(target=consume, name="ceiling-consumer", daemon=True)
    reader.start()
    ready.wait(30)  # the consumer has joined and polls before the clock starts
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "compression.type": "lz4", "linger.ms": 5,
                         "queue.buffering.max.kbytes": 1 << 20,
                         "message.max.bytes": 2_000_000})
    t0 = time.perf_counter()
    for i, (value, _n) in enumerate(msgs):
        while True:
            try:
                producer.produce(topic, value=value, key=str(i % 64).encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(timeout_s)
    produced_s = time.perf_counter() - t0
    reader.join(timeout_s)
    consumer.close()
    elapsed = max(last[0] - t0, 1e-9)
    return {"topic": topic, "events": total, "messages": len(msgs), "consumed": got[0],
            "produce_per_s": total / produced_s, "events_per_s": got[0] / elapsed,
            "bytes_per_event": sum(len(v) for v, _ in msgs) / max(1, total)}


def store_ceiling(lines: list[bytes], *, batch: int = 5000) -> dict[str, Any]:
    """Insert ``lines`` into a fresh chDB store's ``inference_ingest``, ``batch`` at a time."""
    from llmpulse.store import RAW_INGEST, Store

    root = Path(tempfile.mkdtemp(prefix="llmpulse-bench-ceiling-"))
    try:
        store = Store.open(f"chdb:///{root}/store")
        try:
            table = RAW_INGEST["inference_events"]
            t0 = time.perf_counter()
            rows = 0
            for i in range(0, len(lines), batch):
                rows += store.insert_json(table, b"\n".join(lines[i:i + batch]),
                                          count=len(lines[i:i + batch]))
            seconds = time.perf_counter() - t0
            stored = int(store.scalar("SELECT count() FROM inference_events"))
        finally:
            store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "stored": stored, "batch": batch, "seconds": seconds,
            "rows_per_s": rows / seconds}


def measure(bootstrap: str, pool: list[dict[str, Any]], *, events: int = 200_000,
            partitions: int = 4) -> dict[str, Any]:
    """Both ceilings on ``events`` events made from ``pool``; the smaller is the ceiling."""
    lines = event_lines(pool, events)
    broker = broker_ceiling(bootstrap, lines, partitions=partitions)
    store = store_ceiling(lines)
    return {"events": events, "broker": broker, "store": store,
            "ceiling_per_s": min(broker["events_per_s"], store["rows_per_s"])}


def format_table(result: dict[str, Any], sustained: float | None = None) -> str:
    b, s = result["broker"], result["store"]
    lines = [
        f"ceiling ({result['events']} events, {b['bytes_per_event']:.0f} bytes each): broker "
        f"produce -> consume {b['events_per_s']:.0f} events/s ({b['messages']} envelopes; "
        f"produce alone {b['produce_per_s']:.0f}/s), "
        f"bare chDB insert {s['rows_per_s']:.0f} rows/s (batches of {s['batch']})",
    ]
    if sustained is not None:
        lines.append(f"pipeline sustained {sustained:.0f} events/s = "
                     f"{sustained / result['ceiling_per_s']:.1%} of the ceiling "
                     f"({result['ceiling_per_s']:.0f}/s)")
    return "\n".join(lines)


def run(quick: bool = False, events: int | None = None) -> dict[str, Any]:
    """Both ceilings on the broker of a fresh ``llmpulse up`` (``llmpulse bench ceiling``)."""
    from llmpulse.bench._stack import bench_stack, event_pool

    events = events or (20_000 if quick else 200_000)
    root = Path(tempfile.mkdtemp(prefix="llmpulse-bench-ceiling-stack-"))
    try:
        with bench_stack(root, "") as up:
            result = measure(up.endpoints["kafka"], event_pool(20_000), events=events)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"benchmark": "ceiling", "machine": {"cpus": os.cpu_count()}, **result}


def main() -> int:
    from llmpulse.bench._stack import finish

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    return finish(run(events=a.events), format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
