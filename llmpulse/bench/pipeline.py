"""Pipeline benchmark: throughput with every detector on, alert latency to a
webhook per incident type, and false pages on a healthy run.

Starts ``llmpulse up`` (embedded broker and store) in a subprocess with short
windows (``llmpulse.yaml`` in its working directory) and a rules file that is
the shipped defaults plus a ``webhook`` channel pointing at a receiver in this
process (``LLMPULSE_RULES``). Then, each under its own app name:

* **throughput**: inference events from the simulated support app, sent
  through :class:`llmpulse.Monitor` at a target rate (the shim stamps ``ts``
  = now, so event time is wall time). Sustained rate = events the signal
  engine took in per second from the first send until the backlog is gone;
  signal freshness = ``computed_at - ts`` (window end to the row being in the
  store) over the windows that closed while traffic flowed (the first
  computation of each window; windows still open when traffic stops close
  only after the watermark's idle time and are left out).
* **alert latency** (on a second stack with the default detector set, so the
  load's backlog cannot delay it): the simulator in real time (event time = wall time)
  with one incident of each kind (:func:`llmpulse.demo.default_incidents`),
  per seed; for each incident, the first alert that detects it
  (:mod:`llmpulse.scoring`, on the alert rows the webhook received) and the
  wall time from the incident start to the webhook receiving that alert.
* **false pages**: an incident-free app of the same length, run at the same
  time as the first seed: every page the webhook receives for it is false.

    python -m llmpulse.bench.pipeline --json pipeline.json [--quick] [--rate 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib import resources
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
from llmpulse.bench.webhook import WebhookReceiver

__all__ = ["format_table", "run"]

LATENCY_WINDOW_S = 5.0
WINDOW_S = 10.0
INCIDENT_RUN_S = 120.0


def _rules_file(path: Path, webhook_url: str) -> Path:
    import yaml

    text = resources.files("llmpulse.rules").joinpath("default.yaml").read_text(encoding="utf-8")
    rules = yaml.safe_load(text)
    rules["notify"] = {"bench": {"type": "webhook", "url": webhook_url, "timeout_s": 5}}
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@contextlib.contextmanager
def _stack(root: Path, rules: Path, *, embedding: bool) -> Iterator[dict[str, Any]]:
    config = (
        "signals:\n"
        f"  latency_window_s: {LATENCY_WINDOW_S}\n"
        f"  window_s: {WINDOW_S}\n"
        f"  embedding: {'true' if embedding else 'false'}\n"
    )
    with bench_stack(root, config, {"LLMPULSE_RULES": str(rules)}) as up:
        yield up.endpoints


def _engine_in(http: str) -> tuple[int, int]:
    s = stack_stats(http)
    return int(s.get("signals", {}).get("engine", {}).get("events_in", 0)), sum(s["lag"].values())


# -- throughput ----------------------------------------------------------------


def _throughput(ep: dict[str, Any], rate: float, seconds: float, pool: list[dict[str, Any]]) -> dict[str, Any]:
    from llmpulse.monitor import Monitor

    http = ep["http"]
    app = f"bench-load-{int(time.time())}"
    mon = Monitor(app=app, bootstrap=ep["kafka"], buffer_events=400_000)
    send = mon.inference
    for ev in pool[:200]:  # the producer's first connection is start-up, not throughput
        send(**ev)
    mon.flush(30)
    base_in, _ = _engine_in(http)
    t_start = time.time()
    t0 = time.perf_counter()
    samples: list[tuple[float, int, int]] = []
    sent, send_s = paced_send(send, pool, rate, seconds,
                              tick=lambda at: samples.append((at, *_engine_in(http))))
    t_end = time.time()
    mon.flush(120)
    shim = mon.stats()
    mon.close()
    # the backlog: until the signal engine has taken in everything sent
    want = base_in + sent
    deadline = time.monotonic() + 300
    got, lag = _engine_in(http)
    while time.monotonic() < deadline and (got < want or lag):
        time.sleep(0.5)
        got, lag = _engine_in(http)
    drained_s = time.perf_counter() - t0
    lag_end_sending = samples[-1][2] if samples else 0
    # windows that closed while traffic flowed: end + lateness (half a window) before the
    # last event; wait until the last of them per window length is in the store
    t_end_ms = int(t_end * 1000)
    last_end = {w: int((t_end - w / 2) // w * w * 1000) for w in (LATENCY_WINDOW_S, WINDOW_S)}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        rows = post_sql(http, "SELECT window_s, toUnixTimestamp64Milli(max(ts)) AS last FROM signals "
                           f"WHERE app = '{app}' GROUP BY window_s")
        have = {float(r["window_s"]): int(r["last"]) for r in rows}
        if all(have.get(w, 0) >= end for w, end in last_end.items()):
            break
        time.sleep(1.0)
    computed_s = time.perf_counter() - t0
    # embedding drift is completed off the window close: its freshness is its own
    fresh = post_sql(http, (
        "SELECT window_s, emb, count() AS windows, quantile(0.5)(f) AS p50, "
        "quantile(0.99)(f) AS p99, max(f) AS mx FROM (SELECT window_s, signal, model, "
        "model_version, dimension, ts, startsWith(signal, 'drift.embedding') AS emb, "
        "dateDiff('millisecond', ts, min(computed_at)) AS f FROM signals "
        f"WHERE app = '{app}' AND toUnixTimestamp64Milli(ts) + window_s * 500 <= {t_end_ms} "
        f"AND toUnixTimestamp64Milli(ts) - window_s * 1000 >= {int(t_start * 1000)} "
        "GROUP BY window_s, signal, model, model_version, dimension, ts) GROUP BY window_s, emb "
        "ORDER BY window_s, emb"
    ))
    stats = stack_stats(http)
    eng = stats.get("signals", {}).get("engine", {})
    return {
        "app": app,
        "target_rate": rate,
        "seconds": seconds,
        "sent": sent,
        "send_rate": sent / send_s,
        "engine_events": got - base_in,
        "sustained_per_s": (got - base_in) / drained_s,
        "drain_s_after_send": drained_s - send_s,
        "signals_done_s_after_send": computed_s - send_s,
        "lag_at_end_of_send": lag_end_sending,
        "shim_dropped": shim.get("dropped", 0),
        "freshness": {
            f"{float(r['window_s']):g}s" + (" embedding" if int(r["emb"]) else ""): {
                "windows": int(r["windows"]), "p50_ms": float(r["p50"]),
                "p99_ms": float(r["p99"]), "max_ms": float(r["mx"]),
                "goal_p99_ms": (float(r["window_s"]) + 3.0) * 1000,
            }
            for r in fresh
        },
        "deferred": eng.get("deferred", {}),
        "detector_seconds": eng.get("detector_seconds", {}),
        "late_dropped": eng.get("late_dropped", 0),
    }


# -- alert latency and false pages --------------------------------------------------


def _drive_sim(ep: dict[str, Any], app: str, seed: int, incidents: list[str],
               seconds: float, out: dict[str, Any]) -> None:
    from llmpulse.monitor import Monitor
    from llmpulse.simulate import Incident, SupportAppSimulator
    from llmpulse.simulate import run as run_sim

    sim = SupportAppSimulator(seed=seed, rate=300.0, start_ts=time.time(), app=app,
                              incidents=[Incident.parse(s) for s in incidents])
    mon = Monitor(app=app, bootstrap=ep["kafka"])
    try:
        res = run_sim(mon, sim, seconds)
        mon.flush(60)
    finally:
        mon.close()
    out.update(res, truth=sim.ground_truth(), start_ts=sim.start_ts)


def _incidents(ep: dict[str, Any], hook: WebhookReceiver, seeds: list[int],
               seconds: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from llmpulse.demo import default_incidents
    from llmpulse.scoring import ALERTS_SQL, score_alerts

    runs: list[dict[str, Any]] = []
    healthy: dict[str, Any] = {}
    stamp = int(time.time())
    for k, seed in enumerate(seeds):
        app = f"bench-incidents-{seed}-{stamp}"
        res: dict[str, Any] = {}
        threads = [threading.Thread(target=_drive_sim,
                                    args=(ep, app, seed, default_incidents(seconds), seconds, res))]
        h_app = f"bench-healthy-{stamp}"
        h_res: dict[str, Any] = {}
        if k == 0:
            threads.append(threading.Thread(target=_drive_sim,
                                            args=(ep, h_app, seed + 1000, [], seconds, h_res)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # the last windows close a lateness after the traffic; give pages time to land
        time.sleep(WINDOW_S / 2 + 4)
        pages = hook.pages(app)
        first: dict[str, tuple[float, dict[str, Any]]] = {}
        for at, body in pages:
            if body.get("kind") == "firing":
                first.setdefault(body["alert"]["alert_id"], (at, body["alert"]))
        score = score_alerts(res["truth"], [a for _, a in first.values()],
                             grace_s=2 * WINDOW_S, app=app)
        table = post_sql(ep["http"], ALERTS_SQL + f" WHERE app = '{app}'")
        per_incident = []
        for d in score.detections:
            row = d.as_dict()
            if d.alert is not None:
                row["webhook_s"] = round(first[str(d.alert["alert_id"])][0] - d.incident["start_ts"], 3)
            else:
                row["webhook_s"] = None
            row["window_s"] = LATENCY_WINDOW_S if d.incident["kind"] in (
                "latency_spike", "error_burst") else WINDOW_S
            per_incident.append(row)
        runs.append({
            "seed": seed, "app": app, "seconds": seconds, "sent": res.get("inference", 0)
            + res.get("feedback", 0), "pages": len(pages), "alerts_in_table": len(table),
            "false_alerts": len(score.false_alerts),
            "false_alert_rules": sorted({str(a.get("rule")) for a in score.false_alerts}),
            "incidents": per_incident,
        })
        if k == 0:
            h_pages = hook.pages(h_app)
            h_table = post_sql(ep["http"], ALERTS_SQL + f" WHERE app = '{h_app}'")
            healthy = {
                "app": h_app, "seconds": seconds,
                "sent": h_res.get("inference", 0) + h_res.get("feedback", 0),
                "false_pages": sum(1 for _, b in h_pages if b.get("kind") == "firing"),
                "alerts_in_table": len(h_table),
                "rules": sorted({str(b["alert"].get("rule")) for _, b in h_pages}),
            }
    return runs, healthy


def _latency_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in runs:
        for inc in r["incidents"]:
            s = out.setdefault(inc["kind"], {"runs": 0, "detected": 0, "webhook_s": [],
                                             "event_delay_s": [], "rules": []})
            s["runs"] += 1
            if inc["detected"]:
                s["detected"] += 1
                s["webhook_s"].append(inc["webhook_s"])
                s["event_delay_s"].append(inc["delay_s"])
                s["rules"].append(inc["rule"])
            w = inc["window_s"]
            s["window_s"] = w
            s["goal_s"] = 2 * w + 5 if inc["kind"] in ("latency_spike", "error_burst") else 3 * w
    for s in out.values():
        vals = sorted(s["webhook_s"])
        s["webhook_median_s"] = vals[len(vals) // 2] if vals else None
        s["webhook_max_s"] = vals[-1] if vals else None
        s["meets_goal"] = bool(vals) and s["detected"] == s["runs"] and vals[-1] <= s["goal_s"]
    return out


def run(quick: bool = False, rate: float = 20_000.0, seconds: float | None = None,
        seeds: list[int] | None = None, embedding: bool = True,
        incidents: bool = True, fault: bool | None = None,
        ceiling_events: int = 200_000) -> dict[str, Any]:
    """``fault`` (default: not with ``quick``) adds :mod:`llmpulse.bench.fault`;
    ``ceiling_events`` (0: none) events go through :mod:`llmpulse.bench.ceiling`
    on the load stack's broker right after the throughput run."""
    seconds = seconds or (20.0 if quick else 40.0)
    seeds = seeds or ([1] if quick else [1, 2, 3])
    root = Path(tempfile.mkdtemp(prefix="llmpulse-bench-pipeline-"))
    with WebhookReceiver() as hook:
        rules = _rules_file(root / "rules.yaml", hook.url)
        try:
            # one stack per part: the load's backlog must not delay the incidents' alerts
            runs: list[dict[str, Any]] = []
            healthy: dict[str, Any] = {}
            worker: dict[str, Any] = {}
            if incidents:
                with _stack(root / "incidents", rules, embedding=False) as ep:
                    runs, healthy = _incidents(ep, hook, seeds, INCIDENT_RUN_S)
                    worker = stack_stats(ep["http"])
            ceiling: dict[str, Any] | None = None
            with _stack(root / "load", rules, embedding=embedding) as ep:
                pool = event_pool(20_000)
                load = _throughput(ep, rate, seconds, pool)
                if ceiling_events:
                    from llmpulse.bench import ceiling as ceiling_bench

                    ceiling = ceiling_bench.measure(ep["kafka"], pool, events=ceiling_events)
                    ceiling["pipeline_fraction"] = load["sustained_per_s"] / ceiling["ceiling_per_s"]
            fault_result: dict[str, Any] | None = None
            if fault is None:
                fault = not quick
            if fault:
                from llmpulse.bench import fault as fault_bench

                fault_result = fault_bench.run(root / "fault")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "pipeline",
        "machine": {"cpus": os.cpu_count()},
        "windows": {"latency_window_s": LATENCY_WINDOW_S, "window_s": WINDOW_S,
                    "lateness": "half a window"},
        "embedding": embedding,
        "embedding_in": "throughput run only (the incident runs use the default detector set)",
        "goal": {"events_per_s": 20_000, "freshness_p99": "window + 3 s",
                 "alert_latency": "latency: 2 windows + 5 s; drift, bias, hallucination: 3 windows",
                 "false_pages": 0},
        "throughput": load,
        "ceiling": ceiling,
        "alert_latency": _latency_summary(runs),
        "incident_runs": runs,
        "healthy": healthy,
        "false_pages": healthy.get("false_pages"),
        "notify": worker.get("notify", {}),
        "fault": fault_result,
    }


def format_table(result: dict[str, Any]) -> str:
    w = result["windows"]
    t = result["throughput"]
    lines = [
        f"pipeline: shim -> broker -> ingest -> signals -> rules -> webhook (embedded stack, "
        f"{result['machine']['cpus']} cpus; windows {w['latency_window_s']:g} s latency, "
        f"{w['window_s']:g} s others; embedding drift {'on' if result['embedding'] else 'off'} in the throughput run)",
        f"throughput: target {t['target_rate']:.0f}/s for {t['seconds']:g} s, sent "
        f"{t['send_rate']:.0f}/s, signal engine sustained {t['sustained_per_s']:.0f} events/s "
        f"(backlog drained {t['drain_s_after_send']:.1f} s after sending, last signals "
        f"{t['signals_done_s_after_send']:.1f} s after; lag at end {t['lag_at_end_of_send']})",
        f"  {'window':<14}{'windows':>8}{'fresh p50 s':>12}{'fresh p99 s':>12}{'max s':>8}{'goal p99 s':>11}",
    ]
    for name, f in t["freshness"].items():
        lines.append(f"  {name:<14}{f['windows']:>8}{f['p50_ms'] / 1000:>12.2f}{f['p99_ms'] / 1000:>12.2f}"
                     f"{f['max_ms'] / 1000:>8.2f}{f['goal_p99_ms'] / 1000:>11.1f}")
    lines.append(f"  late events dropped: {t['late_dropped']}")
    if result.get("ceiling"):
        from llmpulse.bench.ceiling import format_table as ceiling_table

        lines.append(ceiling_table(result["ceiling"], t["sustained_per_s"]))
    if not result["incident_runs"]:
        return "\n".join(lines)
    lines.append(f"alert latency, incident start -> webhook ({len(result['incident_runs'])} seeded run(s)):")
    lines.append(f"  {'incident':<22}{'detected':>9}{'median s':>10}{'max s':>8}{'goal s':>8}  first rule")
    for kind, s in result["alert_latency"].items():
        med = f"{s['webhook_median_s']:.1f}" if s["webhook_median_s"] is not None else "-"
        mx = f"{s['webhook_max_s']:.1f}" if s["webhook_max_s"] is not None else "-"
        rules = ", ".join(sorted(set(s["rules"]))) or "-"
        lines.append(f"  {kind:<22}{s['detected']:>4}/{s['runs']:<4}{med:>10}{mx:>8}"
                     f"{s['goal_s']:>8.0f}  {rules}")
    fa = sum(r["false_alerts"] for r in result["incident_runs"])
    lines.append(f"alerts no incident explains in incident runs: {fa}")
    h = result["healthy"]
    lines.append(f"false pages on a healthy {h.get('seconds', 0):g} s run: {result['false_pages']}"
                 + (f" ({', '.join(h['rules'])})" if h.get("rules") else ""))
    if result.get("fault"):
        from llmpulse.bench.fault import format_table as fault_table

        lines.append(fault_table(result["fault"]))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rate", type=float, default=20_000.0)
    ap.add_argument("--seconds", type=float, default=None, help="throughput run length")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--no-embedding", action="store_true")
    ap.add_argument("--ceiling-events", type=int, default=200_000,
                    help="events through the bare broker and store after the throughput run "
                         "(llmpulse.bench.ceiling; 0: skip)")
    ap.add_argument("--throughput-only", action="store_true",
                    help="skip the incident runs and the fault run")
    ap.add_argument("--fault", action=argparse.BooleanOptionalAction, default=None,
                    help="kill -9 comparison (llmpulse.bench.fault; default: on unless --quick)")
    a = ap.parse_args()
    result = run(quick=a.quick, rate=a.rate, seconds=a.seconds, seeds=a.seeds,
                 embedding=not a.no_embedding, incidents=not a.throughput_only,
                 fault=False if a.throughput_only else a.fault,
                 ceiling_events=a.ceiling_events)
    return finish(result, format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
