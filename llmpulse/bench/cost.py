"""Cost as the work grows: CPU of the whole embedded stack per event.

Starts ``llmpulse up`` (embedded broker, store, worker, engine processes) and,
for each case, sends ``--events`` simulated inference events at a fixed rate
the stack keeps up with, waits until the signal engine has taken every one in,
then until the engine holds no open window (the case's last windows closed
once its sources went idle, so their detectors and signals count to this
case and not to the next), and reads the CPU time (user + system) of the
``up`` process and all its descendants from ``/proc`` before and after, in
total and per process (``worker``: the ``up`` process with ingest, the store
and the signal agents; ``engine``: the signal engine children; ``broker``).
Every case includes the idle stack's own CPU (timers, broker) for its
duration, that wait included; it is measured first and printed. The engine's
own time per detector is in the JSON. The sender runs in this process and is
not counted. Cases:

* **groups**: the events spread over 10, 100 and 1,000 (app, model,
  model_version) groups, sent through the shim (envelopes);
* **single**: the 10-group traffic as one event per Kafka message keyed by
  ``request_id`` (a foreign producer), next to the shim's envelopes.

Goals: per-event CPU within 1.5x from 10 to 1,000 groups; single-event
messages within 2x of envelopes.

    python -m llmpulse.bench.cost [--events 60000] [--rate 3000] [--json cost.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from llmpulse.bench._stack import bench_stack, event_pool, finish, paced_send, stack_stats

__all__ = ["format_table", "grouped_pool", "run", "tree_cpu_by_role", "tree_cpu_s"]

GROUPS = (10, 100, 1000)


def _role(pid: int, root: int) -> str:
    """What a process of the stack is, from its command line: ``worker`` (the
    ``up`` process: ingest, store, signal agents), ``engine`` (a signal engine
    child), ``broker`` or ``other``."""
    if pid == root:
        return "worker"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "other"
    if b"spawn_main" in cmd:
        return "engine"
    if b"broker" in cmd:
        return "broker"
    return "other"


def tree_cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of ``pid`` and its live descendants (with
    their waited-for dead children), from ``/proc``, per :func:`_role`.

    >>> tree_cpu_by_role(os.getpid())["worker"] > 0
    True
    """
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
        ppid = int(fields[1])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        stats[int(entry)] = (ppid, (utime + stime + cutime + cstime) / tick)
    children: dict[int, list[int]] = {}
    for p, (pp, _) in stats.items():
        children.setdefault(pp, []).append(p)
    out: dict[str, float] = {"worker": 0.0, "engine": 0.0, "broker": 0.0, "other": 0.0}
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            out[_role(p, pid)] += stats[p][1]
        todo += children.get(p, [])
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``, its live descendants and its
    waited-for dead children, from ``/proc``.

    >>> tree_cpu_s(os.getpid()) > 0
    True
    """
    return sum(tree_cpu_by_role(pid).values())


def grouped_pool(pool: list[dict[str, Any]], groups: int) -> list[dict[str, Any]]:
    """``pool`` with its events spread round-robin over ``groups`` model versions.

    >>> [e["model_version"] for e in grouped_pool([{"model": "m"}] * 3, 2)]
    ['g0', 'g1', 'g0']
    """
    return [{**ev, "model_version": f"g{i % groups}"} for i, ev in enumerate(pool)]


def _engine_in(http: str) -> int:
    return int(stack_stats(http).get("signals", {}).get("engine", {}).get("events_in", 0))


def _detector_s(http: str) -> dict[str, float]:
    engine = stack_stats(http).get("signals", {}).get("engine", {})
    return {k: float(v) for k, v in (engine.get("detector_seconds") or {}).items()}


def _open_windows(http: str) -> int:
    engine = stack_stats(http).get("signals", {}).get("engine", {})
    return int(engine.get("open_windows", 0))


def _wait_closed(http: str, timeout: float = 180.0) -> float:
    """Until the engine holds no open window: the case's last windows closed (their
    sources went idle), so their detectors and signals count to this case, not the next."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _open_windows(http) == 0:
            return time.monotonic()
        time.sleep(0.5)
    raise TimeoutError(f"the signal engine still holds {_open_windows(http)} open windows")


def _wait_taken(http: str, want: int, timeout: float = 600.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _engine_in(http) >= want:
            return time.monotonic()
        time.sleep(0.25)
    raise TimeoutError(f"the signal engine took {_engine_in(http)} of {want} events")


def _case(up: Any, name: str, pool: list[dict[str, Any]], events: int, rate: float,
          single: bool) -> dict[str, Any]:
    import orjson
    from confluent_kafka import Producer

    from llmpulse.events import TOPIC_INFERENCE
    from llmpulse.monitor import Monitor

    ep = up.endpoints
    app = f"bench-cost-{name}-{uuid.uuid4().hex[:6]}"
    pid = int(up.pid)
    producer: Any = None
    mon: Any = None
    if single:
        producer = Producer({"bootstrap.servers": ep["kafka"], "linger.ms": 5,
                             "compression.type": "lz4", "acks": "all"})

        def send(**ev: Any) -> None:
            rid = uuid.uuid4().hex
            value = orjson.dumps({**ev, "event_id": uuid.uuid4().hex, "request_id": rid,
                                  "ts": int(time.time() * 1000), "app": app})
            while True:
                try:
                    producer.produce(TOPIC_INFERENCE, value=value, key=rid.encode())
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
    else:
        mon = Monitor(app=app, bootstrap=ep["kafka"], buffer_events=400_000)
        send = mon.inference
    base = _engine_in(ep["http"])
    det0 = _detector_s(ep["http"])
    cpu0 = tree_cpu_by_role(pid)
    t0 = time.monotonic()
    sent, _ = paced_send(send, pool, rate, events / rate)
    if producer is not None:
        producer.flush(120)
    if mon is not None:
        mon.flush(120)
        mon.close()
    done = _wait_taken(ep["http"], base + sent)
    settled = _wait_closed(ep["http"])
    cpu1 = tree_cpu_by_role(pid)
    det = {k: v - det0.get(k, 0.0) for k, v in _detector_s(ep["http"]).items()}
    split = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    cpu = sum(split.values())
    return {"case": name, "messages": "single events" if single else "shim envelopes",
            "groups": len({e["model_version"] for e in pool}), "events": sent,
            "seconds": done - t0, "settle_s": settled - done, "cpu_s": cpu, "cpu_us_per_event": cpu / sent * 1e6,
            "us_per_event_by_process": {k: round(v / sent * 1e6, 1) for k, v in split.items()},
            # wall time in the engines' detectors (both shards, on a busy machine)
            "detector_us_per_event": {k: round(v / sent * 1e6, 1)
                                      for k, v in sorted(det.items(), key=lambda kv: -kv[1])
                                      if v > 0}}


def run(events: int = 60_000, rate: float = 3000.0, groups: tuple[int, ...] = GROUPS,
        single: bool = True, *, quick: bool = False, idle_s: float = 10.0) -> dict[str, Any]:
    """The cases on one fresh stack (``quick``: 10,000 events a case), after
    ``idle_s`` seconds measuring the stack's CPU with no traffic."""
    if quick:
        events = min(events, 10_000)
    root = Path(tempfile.mkdtemp(prefix="llmpulse-bench-cost-"))
    pool = event_pool(20_000)
    cases: list[dict[str, Any]] = []
    idle = 0.0
    try:
        config = "signals:\n  latency_window_s: 5\n  window_s: 10\n  embedding: false\n"
        with bench_stack(root, config) as up:
            # the stack's own CPU with no traffic (timers, broker, HTTP polls), per second:
            # every case includes it for its duration, the wait for its windows included
            assert up.pid is not None
            pid = int(up.pid)
            time.sleep(5.0)
            idle0, t_idle = tree_cpu_s(pid), time.monotonic()
            time.sleep(idle_s)
            idle = (tree_cpu_s(pid) - idle0) / (time.monotonic() - t_idle)
            for g in groups:
                cases.append(_case(up, f"g{g}", grouped_pool(pool, g), events, rate, False))
                if single and g == groups[0]:
                    # next to its envelope case, before the larger cases leave their
                    # groups' state in the engine (saved with every snapshot)
                    cases.append(_case(up, f"single-g{g}", grouped_pool(pool, g),
                                       events, rate, True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    by = {c["case"]: c["cpu_us_per_event"] for c in cases}
    first, last = f"g{groups[0]}", f"g{groups[-1]}"
    ratios = {"groups_last_vs_first": by[last] / by[first]}
    if single:
        ratios["single_vs_envelopes"] = by[f"single-g{groups[0]}"] / by[first]
    return {"benchmark": "cost", "machine": {"cpus": os.cpu_count()}, "rate": rate,
            "idle_cpu_s_per_s": idle, "cases": cases, "ratios": ratios,
            "goals": {"groups_last_vs_first": 1.5, "single_vs_envelopes": 2.0}}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"cost: CPU of the whole embedded stack per event ({result['machine']['cpus']} cpus, "
             f"{result['rate']:.0f} events/s offered, embedding off; idle stack "
             f"{result.get('idle_cpu_s_per_s', 0.0):.2f} cpu s/s)",
             f"  {'case':<14}{'messages':<16}{'groups':>7}{'events':>8}{'cpu s':>8}{'us/event':>10}"
             f"   us/event by process (worker engine broker)"]
    for c in result["cases"]:
        by = c.get("us_per_event_by_process", {})
        lines.append(f"  {c['case']:<14}{c['messages']:<16}{c['groups']:>7}{c['events']:>8}"
                     f"{c['cpu_s']:>8.1f}{c['cpu_us_per_event']:>10.0f}   "
                     + " ".join(f"{by.get(k, 0.0):>6.0f}" for k in ("worker", "engine", "broker")))
    for k, v in result["ratios"].items():
        lines.append(f"  {k}: {v:.2f}x (goal <= {result['goals'][k]:g}x)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--rate", type=float, default=3000.0)
    ap.add_argument("--groups", type=int, nargs="*", default=list(GROUPS))
    ap.add_argument("--no-single", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    return finish(run(a.events, a.rate, tuple(a.groups), not a.no_single), format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
