"""Measure what a Tansu cluster keeps when a broker is killed mid-stream.

Starts a local S3 server and a cluster (llmpulse.cluster), then per run: a
confluent-kafka producer (``acks=all``, idempotence on or off) sends numbered
messages through the bootstrap list of every broker; a third of the way in, the
broker with the most client connections is killed with SIGKILL; it is restarted
(or not, ``--no-restart``) a sixth later. A fresh consumer then reads the topic
from the start and the figures are counted: acknowledged messages not in the
log, and messages in the log more than once.

    python scripts/cluster_broker_loss.py --runs 4 --brokers 3 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from llmpulse.cluster import ClusterSettings, LocalCluster, S3TestServer  # noqa: E402

PARTITIONS = 4


def one_run(cluster: LocalCluster, topic: str, n: int, idempotent: bool, restart: bool,
            rate: float) -> dict[str, Any]:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        fut.result(30)
    acked: set[int] = set()
    errors: collections.Counter[str] = collections.Counter()

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            acked.add(int(msg.value()))
        else:
            errors[str(err.name())] += 1

    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                  "enable.idempotence": idempotent, "linger.ms": 5,
                  "message.timeout.ms": 120_000})
    victim = -1
    t0 = time.monotonic()
    for i in range(n):
        while True:
            try:
                p.produce(topic, str(i).encode(), key=str(i % 97).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        ahead = i / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
        if i == n // 3:
            victim = cluster.busiest()
            cluster.kill(victim)
        if i == n // 2 and restart:
            cluster.restart(victim)
    unsent = p.flush(180)
    if restart:
        cluster.restart(victim)  # no-op if it runs
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": f"check-{topic}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, part, 0) for part in range(PARTITIONS)])
    seen: collections.Counter[int] = collections.Counter()
    idle = 0
    while idle < 10:
        msgs = c.consume(1000, timeout=1)
        if not msgs:
            idle += 1
            continue
        idle = 0
        for m in msgs:
            if m.error() is None:
                seen[int(m.value())] += 1
    c.close()
    if not restart:
        cluster.restart(victim)
    return {"idempotent": idempotent, "restarted": restart, "sent": n, "acked": len(acked),
            "unsent": unsent, "errors": dict(errors),
            "acked_lost": sum(1 for k in acked if k not in seen),
            "duplicates": sum(v - 1 for v in seen.values() if v > 1),
            "stored_unacked": len(set(seen) - acked)}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each producer mode")
    ap.add_argument("--brokers", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=2_000.0, help="messages per second")
    ap.add_argument("--no-restart", action="store_true", help="leave the killed broker down")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="llmpulse-cluster-loss-"))
    results = []
    with S3TestServer(log_path=root / "s3.log") as s3, LocalCluster(
            s3.storage, ClusterSettings(brokers=a.brokers, cluster_id="loss"), log_dir=root) as cl:
        for r in range(a.runs):
            for idempotent in (True, False):
                res = one_run(cl, f"loss-{r}-{int(idempotent)}", a.messages, idempotent,
                              not a.no_restart, a.rate)
                print(json.dumps(res), flush=True)
                results.append(res)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    for idempotent in (True, False):
        rs = [r for r in results if r["idempotent"] is idempotent]
        print(f"idempotence {'on ' if idempotent else 'off'}: {len(rs)} kills, acknowledged lost "
              f"{[r['acked_lost'] for r in rs]}, duplicates {[r['duplicates'] for r in rs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
