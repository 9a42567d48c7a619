"""Broker storage benchmark: produce -> consume throughput of the embedded broker
with its log in memory and on disk (``broker.storage``), in one process run.

For each storage, a fresh broker (and, on disk, its object server) in a
temporary data directory; simulated inference events are produced with
``acks=all`` (what the shim uses) as fast as the producer goes, then read back
from the earliest offset by one consumer. Two message shapes:

* envelopes: 500 events per message, newline-delimited, as the shim packs
  them under load (its caps are 1,000 events or 512 KiB);
* single: one event per message, as a foreign producer sends them.

The runs alternate memory/disk/disk-fsync (``broker.fsync: true``) ``repeat``
times (the machine is shared; the median is reported) and the table gives the
ratio of each disk storage to memory.

    llmpulse bench broker [--quick] [--json FILE]
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from llmpulse.bench._stack import event_pool

__all__ = ["format_table", "run"]

TOPIC = "bench.broker"
STORAGES = ("memory", "disk", "disk-fsync")


def _produce(bootstrap: str, values: list[bytes]) -> float:
    """Seconds to produce ``values`` and have every one acknowledged."""
    from confluent_kafka import Producer

    acked = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            raise RuntimeError(f"delivery failed: {err}")
        acked[0] += 1

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5, "message.max.bytes": 2_000_000})
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        while True:
            try:
                p.produce(TOPIC, v, key=str(i).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(300)
    took = time.perf_counter() - t0
    if left or acked[0] != len(values):
        raise RuntimeError(f"{len(values) - acked[0]} messages not acknowledged")
    return took


def _consume(bootstrap: str, n: int) -> float:
    """Seconds to read ``n`` messages from the earliest offset."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.max.bytes": 52_428_800})
    try:
        meta = c.list_topics(TOPIC, timeout=10)
        from confluent_kafka import TopicPartition

        c.assign([TopicPartition(TOPIC, p, -2) for p in meta.topics[TOPIC].partitions])
        got = 0
        t0 = time.perf_counter()
        deadline = t0 + 600
        while got < n and time.perf_counter() < deadline:
            for msg in c.consume(1000, timeout=1.0):
                if msg.error() is None:
                    got += 1
        took = time.perf_counter() - t0
    finally:
        c.close()
    if got < n:
        raise RuntimeError(f"read {got} of {n} messages")
    return took


def _one(storage: str, values: list[bytes], events: int) -> dict[str, float]:
    from llmpulse.broker import create_topics
    from llmpulse.broker_record import adopt_or_start, stop_recorded_broker
    from llmpulse.broker_storage import BrokerSettings

    root = Path(tempfile.mkdtemp(prefix="llmpulse-bench-broker-"))
    try:
        settings = BrokerSettings(storage=storage.split("-")[0], fsync=storage == "disk-fsync")
        broker, _ = adopt_or_start(root, storage=settings)
        try:
            create_topics(broker.bootstrap, {TOPIC: 4})
            produce_s = _produce(broker.bootstrap, values)
            consume_s = _consume(broker.bootstrap, len(values))
        finally:
            stop_recorded_broker(root)
        return {"produce_eps": events / produce_s, "consume_eps": events / consume_s,
                "end_to_end_eps": events / (produce_s + consume_s)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(quick: bool = False, repeat: int | None = None) -> dict[str, Any]:
    import orjson

    repeat = repeat or (1 if quick else 3)
    n_env, n_single = (20_000, 5_000) if quick else (200_000, 40_000)
    pool = [orjson.dumps(ev) for ev in event_pool(2_000)]
    shapes = {
        "envelopes": ([b"\n".join(pool[(k + j) % len(pool)] for j in range(500))
                       for k in range(0, n_env, 500)], n_env),
        "single": ([pool[k % len(pool)] for k in range(n_single)], n_single),
    }
    results: dict[str, Any] = {"repeat": repeat, "event_bytes_mean":
                               statistics.fmean(len(v) for v in pool), "shapes": {}}
    for shape, (values, events) in shapes.items():
        runs: dict[str, list[dict[str, float]]] = {s: [] for s in STORAGES}
        for _ in range(repeat):
            for storage in STORAGES:
                runs[storage].append(_one(storage, values, events))
        med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for s, rs in runs.items()}
        results["shapes"][shape] = {
            "events": events, "messages": len(values), "runs": runs, "median": med,
            "ratio_disk_memory": {k: med["disk"][k] / med["memory"][k] for k in med["disk"]},
            "ratio_disk_fsync_memory": {k: med["disk-fsync"][k] / med["memory"][k]
                                        for k in med["disk"]},
        }
    return results


def format_table(result: dict[str, Any]) -> str:
    lines = [f"broker storage, produce (acks=all) then consume, median of {result['repeat']} "
             f"(events of {result['event_bytes_mean']:.0f} B on average)",
             f"{'shape':<10} {'storage':<12} {'produce ev/s':>13} {'consume ev/s':>13} "
             f"{'end-to-end ev/s':>16}"]
    for shape, r in result["shapes"].items():
        for storage in STORAGES:
            m = r["median"][storage]
            lines.append(f"{shape:<10} {storage:<12} {m['produce_eps']:>13,.0f} "
                         f"{m['consume_eps']:>13,.0f} {m['end_to_end_eps']:>16,.0f}")
        for label, key in (("disk/mem", "ratio_disk_memory"),
                           ("disk-fsync/mem", "ratio_disk_fsync_memory")):
            q = r[key]
            lines.append(f"{shape:<10} {label:<12} {q['produce_eps']:>13.2f} "
                         f"{q['consume_eps']:>13.2f} {q['end_to_end_eps']:>16.2f}")
    return "\n".join(lines)
