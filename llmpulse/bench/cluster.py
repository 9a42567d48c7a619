"""Cluster benchmark: 1, 2 and 3 workers on the three-broker cluster, and its faults.

Against a local cluster of three Tansu brokers over one S3 bucket
(:mod:`llmpulse.cluster`, ``moto_server`` on loopback), with ``llmpulse up``
workers in one consumer group (each with a store of its own: chDB opens a
directory in one process, where a deployment shares one ClickHouse):

* **scaling**: for 1, 2 and 3 workers, simulated inference events offered
  through the shim at ``rate`` for ``seconds`` (event time = wall time).
  Sustained rate = events the workers' signal engines took in, per second,
  from the first send until they had every one; freshness = first
  ``computed_at`` of a window minus its end, over the windows that closed
  while traffic flowed, sent once the workers' rebalance hold ended (windows
  wait after each rebalance until the group has forwarded what the moved
  partitions held, :mod:`llmpulse.streams.rebalance_hold`: a start-up cost,
  reported as ``settle_s``, not a steady state's); CPU (user +
  system) per event of the workers' process trees (``up`` and its engine
  process) and of everything (workers, the three brokers and the S3 server;
  the sender in this process is not counted), idle time included. On 2 cores throughput cannot grow with workers: the
  figure to watch is CPU per event, which should stay flat.
* **join** (not with ``--quick``): one worker takes :data:`JOIN_RATE` events/s for
  :data:`JOIN_SECONDS`; 10 s in, a second worker starts and the group rebalances.
  Freshness of the windows that began once it was starting (the ones a rebalance
  hold can delay), late events, and how the workers' holds ended
  (``holds_ended_early``: on the group's progress, before ``idle_s``).
* **faults** (:mod:`llmpulse.bench.fault`, each against an undisturbed run of
  the same seeded replay): ``broker`` (kill -9 of a broker, restarted),
  ``scale`` (1 -> 2 -> 3 workers and back to 1), ``rolling`` (a clean restart
  of each of two workers), ``pause`` (one of two workers SIGSTOPped past its
  session timeout, then SIGCONT): events lost and visible twice, signal windows
  missing, extra and different, alerts lost and extra, pages triggered twice.
  Goal: 0 in every cell.

    python -m llmpulse.bench.cluster [--quick] [--json cluster.json]
    llmpulse bench cluster --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmpulse.bench._stack import bench_stack, event_pool, finish, paced_send, post_sql, stack_stats
from llmpulse.bench.cost import tree_cpu_by_role, tree_cpu_s
from llmpulse.bench.fault import FAULTS, PARTITIONS, _shared
from llmpulse.harness import wait_for

__all__ = ["CLUSTER_FAULTS", "check_args", "fault_rows", "format_table", "run", "scaling_rows"]

CLUSTER_FAULTS: tuple[str, ...] = tuple(f for f in FAULTS if f != "worker")
"""The faults measured on the cluster (``worker`` runs on one embedded broker)."""

JOIN_RATE = 300.0
"""Events/s offered in the join case (well within what two workers take on 2 cores)."""
JOIN_SECONDS = 90.0
"""How long the join case's traffic lasts: past a 30 s hold after the rebalance."""
LATENCY_WINDOW_S = 5.0
WINDOW_S = 10.0
# a join over the S3-backed brokers on a loaded machine takes longer than the default
# session's start-up wait (4 sessions + 10 s)
_CONFIG = ("session_timeout_s: 20\n"
           f"signals:\n  latency_window_s: {LATENCY_WINDOW_S:g}\n  window_s: {WINDOW_S:g}\n"
           "  embedding: false\n  engine_processes: 1\n  poll_s: 0.5\n")
# against a Tansu cluster: no idempotence (docs/cluster.md); few, large envelopes
_SHIM: dict[str, Any] = {"producer_config": {"enable.idempotence": False}, "buckets": 8, "buffer_events": 400_000}
FAULT_CELLS = ("events_lost", "events_duplicated", "events_not_forwarded", "windows_missing", "windows_extra",
               "windows_differing", "alerts_lost", "alerts_extra", "duplicate_triggers",
               "pages_lost", "pages_extra")
"""The cells of the fault table, each with a goal of 0."""


def check_args(workers: Sequence[int], faults: Sequence[str], rate: float, seconds: float) -> None:
    """Refuse what the benchmark cannot measure, naming the option.

    >>> check_args([1, 2, 3], ["broker", "pause"], 2000, 30)
    >>> check_args([1, 7], [], 2000, 30)
    Traceback (most recent call last):
    ...
    ValueError: --workers: 7 is not between 1 and 6 (the topics have 6 partitions)
    >>> check_args([1], ["worker"], 2000, 30)
    Traceback (most recent call last):
    ...
    ValueError: --faults: 'worker' is not one of broker, scale, rolling, pause
    >>> check_args([1], [], 0, 30)
    Traceback (most recent call last):
    ...
    ValueError: --rate: 0 is not a positive number of events per second
    """
    for w in workers:
        if not 1 <= w <= PARTITIONS:
            raise ValueError(f"--workers: {w} is not between 1 and {PARTITIONS} "
                             f"(the topics have {PARTITIONS} partitions)")
    for f in faults:
        if f not in CLUSTER_FAULTS:
            raise ValueError(f"--faults: {f!r} is not one of {', '.join(CLUSTER_FAULTS)}")
    if not rate > 0:
        raise ValueError(f"--rate: {rate:g} is not a positive number of events per second")
    if not seconds > 0:
        raise ValueError(f"--seconds: {seconds:g} is not a positive number of seconds")


def _taken(workers: list[Any]) -> int:
    return sum(int(stack_stats(w.http).get("signals", {}).get("engine", {}).get("events_in", 0))
               for w in workers)


def _settled(workers: list[Any]) -> bool:
    """Whether no worker's windows wait on a rebalance (the hold after the group formed)."""
    return not any(stack_stats(w.http).get("signals", {}).get("rebalance_holds", True)
                   for w in workers)


def _freshness(workers: list[Any], app: str, t_start: float, t_end: float) -> dict[str, Any]:
    """Per window length: windows that closed while traffic flowed, and how long after
    their end each was first computed (the first of any worker's stores)."""
    first: dict[tuple[Any, ...], float] = {}
    sql = ("SELECT window_s, signal, model, model_version, dimension, "
           "toUnixTimestamp64Milli(ts) AS end_ms, "
           "toUnixTimestamp64Milli(min(computed_at)) AS at_ms FROM signals "
           f"WHERE app = '{app}' AND toUnixTimestamp64Milli(ts) + window_s * 500 <= "
           f"{int(t_end * 1000)} AND toUnixTimestamp64Milli(ts) - window_s * 1000 >= "
           f"{int(t_start * 1000)} GROUP BY window_s, signal, model, model_version, dimension, ts")
    for w in workers:
        for r in post_sql(w.http, sql):
            key = (float(r["window_s"]), r["signal"], r["model"], r["model_version"],
                   r["dimension"], int(r["end_ms"]))
            lag = float(r["at_ms"]) - float(r["end_ms"])
            first[key] = min(lag, first.get(key, lag))
    out: dict[str, Any] = {}
    for length in sorted({k[0] for k in first}):
        lags = sorted(v for k, v in first.items() if k[0] == length)
        out[f"{length:g}s"] = {"windows": len(lags), "p50_ms": lags[len(lags) // 2],
                               "p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
                               "max_ms": lags[-1]}
    return out


def _start_cluster(stack: contextlib.ExitStack, root: Path) -> tuple[Any, Any]:
    """A local S3 server and three brokers over it, with the topics, stopped by ``stack``."""
    from llmpulse.broker import create_topics
    from llmpulse.cluster import LocalCluster, S3TestServer
    from llmpulse.events import TOPICS

    s3 = stack.enter_context(S3TestServer(log_path=root / "s3.log"))
    cluster = stack.enter_context(LocalCluster(s3.storage, log_dir=root / "cluster"))
    create_topics(cluster.bootstrap, {t: PARTITIONS for t in TOPICS})
    return s3, cluster


def _warm_up(mon: Any, workers: list[Any], pool: list[dict[str, Any]]) -> float:
    """Send the pool's first 200 events (the producer's first connections are start-up,
    not throughput), wait until the engines took them and every rebalance hold ended;
    the seconds that last wait took."""
    for ev in pool[:200]:
        mon.inference(**ev)
    mon.flush(60)
    wait_for(lambda: _taken(workers) >= 200, 180, "the engines to take the first events")
    t_settle = time.monotonic()
    wait_for(lambda: _settled(workers), 180, "the rebalance hold to end")
    return time.monotonic() - t_settle


def _join_case(root: Path, pool: list[dict[str, Any]], rate: float, seconds: float,
               join_after_s: float = 10.0) -> dict[str, Any]:
    """One worker takes traffic at ``rate`` for ``seconds``; ``join_after_s`` into it a
    second worker starts and the group rebalances. Freshness of the windows that began
    once the second worker was starting (those the rebalance can hold), events taken
    in and late, and how the workers' rebalance holds ended."""
    import threading

    from llmpulse.monitor import Monitor

    with contextlib.ExitStack() as stack:
        _s3, cluster = _start_cluster(stack, root)
        env = {"LLMPULSE_KAFKA": cluster.bootstrap}
        workers = [stack.enter_context(bench_stack(root / "w0", _CONFIG, env))]
        wait_for(lambda: _shared(workers), 180, "one worker to hold every partition")
        app = "bench-cluster-join"
        mon = Monitor(app=app, bootstrap=cluster.bootstrap, **_SHIM)
        joined: list[float] = []  # when the second worker was started
        failed: list[BaseException] = []

        def join() -> None:  # while the traffic flows
            try:
                workers.append(stack.enter_context(bench_stack(root / "w1", _CONFIG, env)))
            except BaseException as exc:  # reported once the traffic ends
                failed.append(exc)

        joining = threading.Thread(target=join, name="bench-join")
        try:
            _warm_up(mon, workers, pool)
            base = _taken(workers)

            def tick(elapsed: float) -> None:
                if elapsed >= join_after_s and not joined:
                    joined.append(time.time())
                    joining.start()

            sent, _ = paced_send(mon.inference, pool, rate, seconds, tick=tick)
            t_end = time.time()
            if not mon.flush(300):
                raise RuntimeError("the shim could not deliver the events within 300 s")
        finally:
            mon.close()
            if joined:
                joining.join()
        if failed or len(workers) < 2:
            raise RuntimeError(f"the second worker did not start: {failed[:1]}")
        wait_for(lambda: _shared(workers), 180, "the partitions to be shared by 2 workers")
        try:
            wait_for(lambda: _taken(workers) >= base + sent, 600, "the engines to take in every event")
        except TimeoutError:
            pass  # the figures say how many it took
        time.sleep(WINDOW_S)
        fresh = _freshness(workers, app, joined[0], t_end)
        signals = [stack_stats(w.http).get("signals", {}) for w in workers]
        taken = _taken(workers) - base
    return {
        "offered_per_s": rate, "seconds": seconds, "join_after_s": join_after_s,
        "sent": sent, "engine_events": taken, "freshness": fresh,
        "late_dropped": sum(int(s.get("engine", {}).get("late_dropped", 0)) for s in signals),
        "holds_ended_early": sum(int(s.get("rebalance_holds_ended_early", 0)) for s in signals),
        "holds_ended_late": sum(int(s.get("rebalance_holds_ended_late", 0)) for s in signals),
        "polls_held_by_rebalance": sum(int(s.get("polls_held_by_rebalance", 0)) for s in signals),
    }


def _scaling_case(root: Path, n: int, pool: list[dict[str, Any]], rate: float,
                  seconds: float) -> dict[str, Any]:
    from llmpulse.monitor import Monitor

    with contextlib.ExitStack() as stack:
        s3, cluster = _start_cluster(stack, root)
        workers = [stack.enter_context(bench_stack(root / f"w{i}", _CONFIG,
                                                   {"LLMPULSE_KAFKA": cluster.bootstrap}))
                   for i in range(n)]
        wait_for(lambda: _shared(workers), 180, f"the partitions to be shared by {n} workers")
        app = f"bench-cluster-{n}w"
        mon = Monitor(app=app, bootstrap=cluster.bootstrap, **_SHIM)
        try:
            settle_s = _warm_up(mon, workers, pool)
            base = _taken(workers)
            pids = [w.pid for w in workers if w.pid is not None]
            others = [int(p) for p in [s3.pid, *(b.pid for b in cluster.brokers)] if p]
            cpu0 = [tree_cpu_by_role(p) for p in pids]
            other0 = sum(tree_cpu_s(p) for p in others)
            t_start = time.time()
            t0 = time.monotonic()
            sent, send_s = paced_send(mon.inference, pool, rate, seconds)
            t_end = time.time()
            if not mon.flush(300):
                raise RuntimeError("the shim could not deliver the events within 300 s")
            shim = mon.stats()
        finally:
            mon.close()
        want = base + sent
        try:
            wait_for(lambda: _taken(workers) >= want, 600, "the engines to take in every event")
        except TimeoutError:
            pass  # the figures say how many it took
        drained_s = time.monotonic() - t0
        taken = _taken(workers) - base
        cpu1 = [tree_cpu_by_role(p) for p in pids]
        other = sum(tree_cpu_s(p) for p in others) - other0
        worker_cpu = sum(c1[k] - c0.get(k, 0.0) for c0, c1 in zip(cpu0, cpu1, strict=True)
                         for k in c1)
        # windows still open when traffic stopped close an idle time later: not counted
        time.sleep(WINDOW_S)
        fresh = _freshness(workers, app, t_start, t_end)
        signals = [stack_stats(w.http).get("signals", {}) for w in workers]
        engines = [s.get("engine", {}) for s in signals]
        # rebalance holds ended once the group had forwarded the moved partitions
        early = sum(int(s.get("rebalance_holds_ended_early", 0)) for s in signals)
    return {
        "workers": n, "offered_per_s": rate, "seconds": seconds, "sent": sent,
        "send_per_s": sent / send_s, "engine_events": taken,
        "sustained_per_s": taken / drained_s, "drain_s_after_send": drained_s - send_s,
        "freshness": fresh, "settle_s": settle_s,
        "worker_cpu_s": worker_cpu, "all_cpu_s": worker_cpu + other,
        "worker_cpu_us_per_event": worker_cpu / max(taken, 1) * 1e6,
        "all_cpu_us_per_event": (worker_cpu + other) / max(taken, 1) * 1e6,
        "late_dropped": sum(int(e.get("late_dropped", 0)) for e in engines),
        "holds_ended_early": early,
        "shim_dropped": int(shim.get("dropped", 0)),
    }


def scaling_rows(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per worker count, with CPU per event relative to the fewest workers.

    >>> rows = scaling_rows([
    ...     {"workers": 1, "sustained_per_s": 1000.0, "worker_cpu_us_per_event": 400.0,
    ...      "all_cpu_us_per_event": 900.0, "late_dropped": 0, "freshness": {}},
    ...     {"workers": 2, "sustained_per_s": 1100.0, "worker_cpu_us_per_event": 460.0,
    ...      "all_cpu_us_per_event": 950.0, "late_dropped": 0, "freshness": {}}])
    >>> [(r["workers"], r["throughput_vs_1"], r["cpu_per_event_vs_1"]) for r in rows]
    [(1, 1.0, 1.0), (2, 1.1, 1.15)]
    """
    if not cases:
        return []
    base = min(cases, key=lambda c: c["workers"])
    return [{**c, "throughput_vs_1": round(c["sustained_per_s"] / base["sustained_per_s"], 2),
             "cpu_per_event_vs_1": round(c["worker_cpu_us_per_event"]
                                         / base["worker_cpu_us_per_event"], 2)}
            for c in sorted(cases, key=lambda c: c["workers"])]


def fault_rows(faults: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per fault: its cells (:data:`FAULT_CELLS`) and the non-zero ones.

    >>> r = fault_rows({"broker": {**dict.fromkeys(FAULT_CELLS, 0), "windows": 900,
    ...                            "windows_extra": 2, "late_dropped": 0}})
    >>> r[0]["fault"], r[0]["windows"], r[0]["not_zero"]
    ('broker', 900, ['windows_extra'])
    """
    out = []
    for name, f in faults.items():
        if "error" in f:
            out.append({"fault": name, "error": f["error"], "not_zero": ["error"]})
            continue
        cells = {k: int(f.get(k, 0)) for k in FAULT_CELLS}
        out.append({"fault": name, "windows": f.get("windows"), "events": f.get("events"),
                    "late_dropped": f.get("late_dropped"), **cells,
                    # how long the fault took, and for how much of it the traffic flowed
                    "fault_s": f.get("restart_s"), "traffic_s": f.get("traffic_during_fault_s"),
                    "not_zero": [k for k, v in cells.items() if v]})
    return out


def keep_fault_logs(root: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Remove the run's files under ``root`` but those of the faults with a non-zero
    cell or late events (their workers' and brokers' logs, to be read); where they are.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for d in ("scale-1", "fault-broker", "fault-rolling"):
    ...     (root / d).mkdir()
    >>> rows = fault_rows({"broker": dict.fromkeys(FAULT_CELLS, 0),
    ...                    "rolling": {**dict.fromkeys(FAULT_CELLS, 0), "late_dropped": 61}})
    >>> kept = keep_fault_logs(root, rows)
    >>> sorted(kept), sorted(p.name for p in root.iterdir())
    (['rolling'], ['fault-rolling'])
    >>> keep_fault_logs(root, rows[:1]), root.exists()
    ({}, False)
    """
    keep = {f"fault-{r['fault']}" for r in rows if r["not_zero"] or r.get("late_dropped")}
    for child in list(root.iterdir()) if root.exists() else []:
        if child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {name.removeprefix("fault-"): str(root / name) for name in sorted(keep)
            if (root / name).exists()}


def run(quick: bool = False, workers: Sequence[int] = (1, 2, 3), rate: float | None = None,
        seconds: float | None = None, faults: Sequence[str] | None = None,
        fault_seconds: float | None = None, seed: int = 7,
        join: bool | None = None) -> dict[str, Any]:
    """The scaling cases (2,000 events/s for 20 s each), the join case, then the faults
    over 120 s of event time (``quick``: 1,000 events/s for 10 s a case, no join case,
    and the broker fault over 90 s)."""
    join = not quick if join is None else join
    rate = (1000.0 if quick else 2000.0) if rate is None else rate
    seconds = (10.0 if quick else 20.0) if seconds is None else seconds
    faults = list(CLUSTER_FAULTS if faults is None and not quick else faults or ["broker"])
    fault_seconds = fault_seconds or (90.0 if quick else 120.0)
    check_args(workers, faults, rate, seconds)
    root = Path(tempfile.mkdtemp(prefix="llmpulse-bench-cluster-"))
    pool = event_pool(20_000)
    cases: list[dict[str, Any]] = []
    fault_results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    joined: dict[str, Any] | None = None
    try:
        for n in workers:
            try:
                cases.append(_scaling_case(root / f"scale-{n}", n, pool, rate, seconds))
            except Exception as exc:  # one case failing still reports the others
                errors[f"{n} workers"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        if join:
            try:
                joined = _join_case(root / "join", pool, JOIN_RATE, JOIN_SECONDS)
            except Exception as exc:
                errors["join"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        from llmpulse.bench import fault as fault_bench

        for f in faults:
            try:
                fault_results[f] = fault_bench.run(root / f"fault-{f}", seed=seed,
                                                   duration=fault_seconds, fault=f)
            except Exception as exc:  # one fault failing still reports the others
                fault_results[f] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    finally:
        table = fault_rows(fault_results)
        kept = keep_fault_logs(root, table)
    return {"benchmark": "cluster", "machine": {"cpus": os.cpu_count()}, "brokers": 3,
            "partitions": PARTITIONS,
            "windows": {"latency_window_s": LATENCY_WINDOW_S, "window_s": WINDOW_S},
            "scaling": scaling_rows(cases), "scaling_errors": errors, "join": joined,
            "faults": fault_results,
            "fault_table": table,
            "kept_logs": kept}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"cluster: 3 Tansu brokers over moto S3, {result['partitions']} partitions, "
             f"{result['machine']['cpus']} cpus; windows {result['windows']['latency_window_s']:g} s "
             f"latency, {result['windows']['window_s']:g} s others",
             f"  {'workers':>7}{'offered/s':>10}{'sustained/s':>12}{'x1':>6}{'fresh p50/p99 s':>24}"
             f"{'worker us/ev':>13}{'x1':>6}{'all us/ev':>10}{'late':>6}"]
    for r in result["scaling"]:
        fresh = " ".join(f"{k}:{v['p50_ms'] / 1000:.1f}/{v['p99_ms'] / 1000:.1f}"
                         for k, v in r["freshness"].items()) or "-"
        lines.append(f"  {r['workers']:>7}{r['offered_per_s']:>10.0f}{r['sustained_per_s']:>12.0f}"
                     f"{r['throughput_vs_1']:>6.2f}{fresh:>24}{r['worker_cpu_us_per_event']:>13.0f}"
                     f"{r['cpu_per_event_vs_1']:>6.2f}{r['all_cpu_us_per_event']:>10.0f}"
                     f"{r['late_dropped']:>6}")
    for name, err in result.get("scaling_errors", {}).items():
        lines.append(f"  {name}: failed: {err}")
    if result.get("join"):
        lines.append(_join_line(result["join"]))
    if result["fault_table"]:
        heads = ("lost", "twice", "not fwd", "w miss", "w extra", "w diff", "a lost", "a extra",
                 "paged 2x", "p lost", "p extra")
        lines.append(f"  {'fault':<9}{'events':>7}{'windows':>8}"
                     + "".join(f"{h:>9}" for h in heads) + f"{'late':>6}"
                     + f"{'fault s (traffic)':>19}")
        for r in result["fault_table"]:
            if "error" in r:
                lines.append(f"  {r['fault']:<9} failed: {r['error']}")
                continue
            lines.append(f"  {r['fault']:<9}{r['events']:>7}{r['windows']:>8}"
                         + "".join(f"{r[k]:>9}" for k in FAULT_CELLS) + f"{r['late_dropped']:>6}"
                         + f"{_fault_time(r):>19}")
    for name, path in result.get("kept_logs", {}).items():
        lines.append(f"  {name}: not 0, its logs are kept under {path}")
    return "\n".join(lines)


def _join_line(j: Mapping[str, Any]) -> str:
    """The join case in one line.

    >>> print(_join_line({"join_after_s": 10.0, "seconds": 90.0, "offered_per_s": 300.0,
    ...     "freshness": {"5s": {"p50_ms": 2100, "p99_ms": 4000, "max_ms": 4100}},
    ...     "engine_events": 27000, "sent": 27000, "late_dropped": 0,
    ...     "holds_ended_early": 2, "holds_ended_late": 0}))
      join: 1 -> 2 workers 10 s into 90 s at 300/s: fresh p50/p99/max s 5s:2.1/4.0/4.1; 27000 of 27000 taken in, 0 late; holds ended early 2, late 0
    """
    fresh = " ".join(f"{k}:{v['p50_ms'] / 1000:.1f}/{v['p99_ms'] / 1000:.1f}/"
                     f"{v['max_ms'] / 1000:.1f}" for k, v in j["freshness"].items()) or "-"
    return (f"  join: 1 -> 2 workers {j['join_after_s']:g} s into {j['seconds']:g} s "
            f"at {j['offered_per_s']:g}/s: fresh p50/p99/max s {fresh}; "
            f"{j['engine_events']} of {j['sent']} taken in, {j['late_dropped']} late; "
            f"holds ended early {j['holds_ended_early']}, late {j['holds_ended_late']}")


def _fault_time(row: Mapping[str, Any]) -> str:
    """How long a fault took, and in brackets for how much of it the traffic flowed.

    >>> _fault_time({"fault_s": 51.2, "traffic_s": 20.04}), _fault_time({})
    ('51.2 (20.0)', '-')
    """
    took, traffic = row.get("fault_s"), row.get("traffic_s")
    if took is None:
        return "-"
    return f"{took:.1f}" + ("" if traffic is None else f" ({traffic:.1f})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--rate", type=float, default=None, help="offered events/s per case")
    ap.add_argument("--seconds", type=float, default=None, help="sending time per case")
    ap.add_argument("--faults", nargs="*", default=None,
                    help=f"of {', '.join(CLUSTER_FAULTS)} (default: all; --quick: broker)")
    ap.add_argument("--fault-seconds", type=float, default=None, help="event time of a fault run")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--join", action=argparse.BooleanOptionalAction, default=None,
                    help="the join case (default: on, off with --quick)")
    a = ap.parse_args(argv)
    try:
        check_args(a.workers, a.faults or [], 1.0 if a.rate is None else a.rate,
                   1.0 if a.seconds is None else a.seconds)
    except ValueError as exc:
        ap.error(str(exc))
    result = run(quick=a.quick, workers=a.workers, rate=a.rate, seconds=a.seconds,
                 faults=a.faults, fault_seconds=a.fault_seconds, seed=a.seed, join=a.join)
    return finish(result, format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
