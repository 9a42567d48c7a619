"""Ingest benchmark: events/s from the shim to rows in the store, and lag.

Starts ``llmpulse up`` (embedded broker and store) in a subprocess, then sends
simulated support-app traffic through :class:`llmpulse.Monitor` from this
process, paced at a target rate, and reads back from the store:

* sustained rate: rows stored per second of wall time over the run;
* lag: for every stored event, ``ingested_at - ts`` (the shim stamps ``ts``
  when the app calls it, the store stamps ``ingested_at`` when the row lands),
  p50/p99 over the run.

Two runs in one process: at the target rate (is it sustained, with what lag?)
and as fast as the sender goes (where does it top out?). Both processes share
this machine's cores, as they would on a laptop.

    python -m llmpulse.bench.ingest --json ingest.json [--rate 50000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llmpulse.bench._stack import (
    bench_stack,
    event_pool,
    finish,
    paced_send,
    post_sql,
    stack_stats,
)

__all__ = ["format_table", "run"]


def _drive(bootstrap: str, pool: list[dict[str, Any]], rate: float | None, seconds: float,
           run_id: str) -> dict[str, Any]:
    from llmpulse.monitor import Monitor

    mon = Monitor(app=run_id, bootstrap=bootstrap, buffer_events=200_000)
    send = mon.inference
    # warm up: the producer's first connection and id take about a second,
    # which is start-up, not lag; measured events start after it
    for ev in pool[:200]:
        send(**ev)
    mon.flush(30)
    warm = mon.stats()["sent"]
    t_start_ms = int(time.time() * 1000) + 1
    time.sleep(0.002)
    sent, send_s = paced_send(send, pool, rate, seconds)
    mon.flush(60)
    stats = mon.stats()
    mon.close()
    return {"sent": sent, "send_s": send_s, "shim": stats, "warm": warm, "t_start_ms": t_start_ms}


def _measure(http: str, run_id: str, sent: int, t_start_ms: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stored = 0
    where = f"app = '{run_id}' AND toUnixTimestamp64Milli(ts) >= {t_start_ms}"
    while time.monotonic() < deadline:
        stored = post_sql(http, f"SELECT count() AS n FROM inference_events WHERE {where}")[0]["n"]
        if stored >= sent:
            break
        time.sleep(0.5)
    rows = post_sql(http, (
        "SELECT count() AS n, "
        "quantile(0.5)(dateDiff('millisecond', ts, ingested_at)) AS p50, "
        "quantile(0.99)(dateDiff('millisecond', ts, ingested_at)) AS p99, "
        "max(dateDiff('millisecond', ts, ingested_at)) AS mx, "
        "toUnixTimestamp64Milli(min(ts)) AS first_ts, "
        "toUnixTimestamp64Milli(max(ingested_at)) AS last_in "
        f"FROM inference_events FINAL WHERE {where}"
    ))[0]
    span_s = max(1e-3, (rows["last_in"] - rows["first_ts"]) / 1000.0)
    return {
        "stored": int(rows["n"]),
        "lost": sent - int(rows["n"]),
        "stored_per_s": rows["n"] / span_s,
        "lag_p50_ms": float(rows["p50"]),
        "lag_p99_ms": float(rows["p99"]),
        "lag_max_ms": float(rows["mx"]),
        "span_s": span_s,
    }


def run(quick: bool = False, rate: float = 50_000.0, seconds: float | None = None,
        signals: bool = True) -> dict[str, Any]:
    seconds = seconds or (5.0 if quick else 20.0)
    tmp = Path(tempfile.mkdtemp(prefix="llmpulse-bench-ingest-"))
    config = "signals:\n  enabled: %s\n" % ("true" if signals else "false")
    try:
        with bench_stack(tmp, config) as up:
            ep = up.endpoints
            pool = event_pool(5_000 if quick else 20_000)
            runs: dict[str, Any] = {}
            for name, target in (("target", rate), ("half", rate / 2), ("max", None)):
                run_id = f"bench-{name}-{int(time.time())}"
                d = _drive(ep["kafka"], pool, target, seconds, run_id)
                m = _measure(ep["http"], run_id, d["sent"], d["t_start_ms"])
                runs[name] = {
                    "target_rate": target,
                    "seconds": seconds,
                    "sent": d["sent"],
                    "send_rate": d["sent"] / d["send_s"],
                    **m,
                    "shim_dropped": d["shim"].get("dropped", 0),
                }
            worker = stack_stats(ep["http"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "benchmark": "ingest",
        "machine": {"cpus": os.cpu_count()},
        "goal": {"events_per_s": 50_000, "lag_p99_ms": 2000},
        "signals": signals,
        "runs": runs,
        "worker_batches": worker.get("batches"),
        "worker_last_store_s": worker.get("last_store_s"),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "ingest: shim -> broker -> worker -> store (embedded stack, this machine; signal agents "
        + ("on)" if result.get("signals", True) else "off)"),
        f"{'run':<8}{'target/s':>10}{'sent/s':>10}{'stored/s':>10}{'stored':>10}{'lost':>6}"
        f"{'lag p50 ms':>12}{'lag p99 ms':>12}{'lag max ms':>12}",
    ]
    for name, r in result["runs"].items():
        tgt = f"{r['target_rate']:.0f}" if r["target_rate"] else "max"
        lines.append(
            f"{name:<8}{tgt:>10}{r['send_rate']:>10.0f}{r['stored_per_s']:>10.0f}{r['stored']:>10}"
            f"{r['lost']:>6}{r['lag_p50_ms']:>12.0f}{r['lag_p99_ms']:>12.0f}{r['lag_max_ms']:>12.0f}"
        )
    g = result["goal"]
    lines.append(f"goal: >= {g['events_per_s']} events/s sustained, lag p99 <= {g['lag_p99_ms']} ms")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rate", type=float, default=50_000.0)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--no-signals", action="store_true", help="ingest only, signal agents off")
    a = ap.parse_args()
    result = run(quick=a.quick, rate=a.rate, seconds=a.seconds, signals=not a.no_signals)
    return finish(result, format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
