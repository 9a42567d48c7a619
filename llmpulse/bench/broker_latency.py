"""Broker latency benchmark: how long one event takes from produce to consume
through the embedded broker with its log in memory and on disk, at a steady,
demo-like rate, and what the object server is asked meanwhile.

For each storage, a fresh broker (on disk: with its object server, logging
every request) in a temporary data directory, a topic of 4 partitions, a
producer sending ``rate`` single events per second for ``seconds`` (``acks=all``,
``linger.ms=5``, as the shim) and a consumer in a group with
``fetch.wait.max.ms`` = the worker's fetch wait. Reported per storage:
percentiles of the produce acknowledgement time and of the produce -> consume
latency; on disk also the object server's requests per second by kind
(``GET``/``HEAD``/``PUT``/``DELETE`` of an object, ``LIST``) with their mean
and 95th percentile service time. Memory and disk alternate ``repeat`` times.

    python -m llmpulse.bench.broker_latency [--rate 300] [--seconds 20] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["format_table", "run"]

TOPIC = "bench.latency"
FETCH_WAIT_MS = 100  # streams.app.FETCH_MAX_WAIT_MS, the worker's fetch wait
_REQ = re.compile(r"served (\S+) (\S+) (\d+) ([0-9.]+) ms")


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _kind(method: str, path: str) -> str:
    """``LIST`` for a listing, else the method and the last key segment's shape."""
    if path.rstrip("/") == "/tansu":
        return "LIST"
    last = path.rsplit("/", 1)[-1]
    if last.endswith(".batch"):
        last = "<n>.batch"
    return f"{method} {last}"


def _on_ack(acks: list[float], sent_ns: int) -> Any:
    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            acks.append((time.time_ns() - sent_ns) / 1e6)
    return on_delivery


def _start_store(root: Path, log_path: Path, fsync: bool = True
                 ) -> tuple[subprocess.Popen[bytes], str]:
    from llmpulse.broker import free_port
    from llmpulse.broker_storage import _answers

    port = free_port()
    source = str(Path(__file__).resolve().parent.parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (source, os.environ.get("PYTHONPATH", "")) if p))
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "llmpulse.objstore", "--root", str(root),
                                 "--port", str(port), "--debug",
                                 *([] if fsync else ["--no-fsync"])],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _answers(endpoint, None, 0.5):
        time.sleep(0.1)
    return proc, endpoint


def _requests(log_path: Path, t0: float, t1: float, seconds: float) -> dict[str, Any]:
    """Requests per second, mean and p95 ms by kind, from the object server's log
    lines stamped within ``[t0, t1]`` (wall clock)."""
    by: dict[str, list[float]] = defaultdict(list)
    for line in log_path.read_text(errors="replace").splitlines():
        m = _REQ.search(line)
        if m is None:
            continue
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        if t0 - 1 <= stamp <= t1 + 1:
            by[_kind(m.group(1), m.group(2))].append(float(m.group(4)))
    return {k: {"per_s": len(v) / seconds, "mean_ms": statistics.fmean(v),
                "p95_ms": _pct(v, 0.95)} for k, v in sorted(by.items())}


def _one(storage: str, rate: int, seconds: float) -> dict[str, Any]:
    """One run; ``storage`` is ``memory``, ``disk`` or ``disk-nofsync``."""
    from confluent_kafka import Consumer, Producer

    from llmpulse.broker import EmbeddedBroker, create_topics
    from llmpulse.broker_storage import broker_env

    root = Path(tempfile.mkdtemp(prefix="llmpulse-bench-latency-"))
    store: subprocess.Popen[bytes] | None = None
    broker: EmbeddedBroker | None = None
    store_log = root / "objstore.log"
    try:
        env = None
        if storage.startswith("disk"):
            store, endpoint = _start_store(root / "store", store_log, storage == "disk")
            env = broker_env(endpoint, "bench")
        broker = EmbeddedBroker(storage="s3://tansu/" if store is not None else "memory://tansu/",
                                env=env, log_path=root / "broker.log", cluster="bench")
        broker.start()
        create_topics(broker.bootstrap, {TOPIC: 4})
        acks: list[float] = []
        lat: list[float] = []
        stop = threading.Event()
        ready = threading.Event()

        def consume() -> None:
            c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "bench",
                          "auto.offset.reset": "earliest", "fetch.wait.max.ms": FETCH_WAIT_MS,
                          "enable.auto.commit": True})
            c.subscribe([TOPIC], on_assign=lambda *_: ready.set())
            try:
                while not stop.is_set():
                    for msg in c.consume(500, timeout=0.2):
                        value = msg.value()
                        if msg.error() is None and value is not None:
                            sent = int(value[:20])
                            lat.append((time.time_ns() - sent) / 1e6)
            finally:
                c.close()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        ready.wait(60)
        time.sleep(1.0)
        p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                      "enable.idempotence": True, "linger.ms": 5})
        pad = b"x" * 400
        wall0 = time.time()
        t0 = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            due = t0 + i / rate
            now = time.perf_counter()
            if due > now:
                p.poll(due - now)
            sent_ns = time.time_ns()
            p.produce(TOPIC, b"%020d" % sent_ns + pad, key=str(i).encode(),
                      on_delivery=_on_ack(acks, sent_ns))
            p.poll(0)
        p.flush(60)
        wall1 = time.time()
        deadline = time.monotonic() + 30
        while len(lat) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        t.join(10)
        out: dict[str, Any] = {
            "sent": n, "acked": len(acks), "consumed": len(lat),
            "ack_ms": {q: _pct(acks, v) for q, v in (("p50", .5), ("p95", .95), ("p99", .99))},
            "e2e_ms": {q: _pct(lat, v) for q, v in (("p50", .5), ("p95", .95), ("p99", .99))},
        }
        if store is not None:
            out["requests"] = _requests(store_log, wall0, wall1, wall1 - wall0)
        return out
    finally:
        if broker is not None:
            broker.stop()
        if store is not None:
            store.terminate()
            try:
                store.wait(5)
            except subprocess.TimeoutExpired:
                store.kill()
        shutil.rmtree(root, ignore_errors=True)


def run(rate: int = 300, seconds: float = 20.0, repeat: int = 2,
        storages: tuple[str, ...] = ("memory", "disk")) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in storages}
    for _ in range(repeat):
        for storage in storages:
            runs[storage].append(_one(storage, rate, seconds))
    return {"rate": rate, "seconds": seconds, "repeat": repeat, "runs": runs}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"produce -> consume at {result['rate']} events/s for {result['seconds']:g} s, "
             f"fetch wait {FETCH_WAIT_MS} ms",
             f"{'storage':<12} {'run':>3} {'consumed':>11} {'ack p50':>8} {'ack p95':>8} "
             f"{'e2e p50':>8} {'e2e p95':>8} {'e2e p99':>8}  (ms)"]
    for storage, rs in result["runs"].items():
        for i, r in enumerate(rs):
            a, e = r["ack_ms"], r["e2e_ms"]
            lines.append(f"{storage:<12} {i:>3} {r['consumed']:>5}/{r['sent']:<5} "
                         f"{a['p50']:>8.1f} {a['p95']:>8.1f} {e['p50']:>8.1f} {e['p95']:>8.1f} "
                         f"{e['p99']:>8.1f}")
    for storage, rs in result["runs"].items():
        for i, r in enumerate(rs):
            if "requests" not in r:
                continue
            lines.append(f"object server requests, {storage} run {i}:")
            for kind, st in r["requests"].items():
                lines.append(f"  {kind:<40} {st['per_s']:>7.1f}/s  mean {st['mean_ms']:>6.2f} ms  "
                             f"p95 {st['p95_ms']:>6.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmpulse.bench.broker_latency")
    ap.add_argument("--rate", type=int, default=300, help="events per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--storages", default="memory,disk",
                    help="comma-separated: memory, disk, disk-nofsync (the object server "
                         "without fsync)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.repeat <= 0:
        print("--rate, --seconds and --repeat must be > 0", file=sys.stderr)
        return 2
    storages = tuple(args.storages.split(","))
    if not storages or any(s not in ("memory", "disk", "disk-nofsync") for s in storages):
        print("--storages: memory, disk or disk-nofsync, comma-separated", file=sys.stderr)
        return 2
    result = run(args.rate, args.seconds, args.repeat, storages)
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
