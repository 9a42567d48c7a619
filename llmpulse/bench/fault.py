"""Fault benchmark: ``kill -9`` the worker while incidents run, restart it, compare.

The same seeded traffic with incidents runs twice against a broker that
outlives the worker (as an external Kafka would): once undisturbed (the
reference) and once with the worker killed with SIGKILL shortly after the
first page and restarted at once, while traffic and incidents go on. The
two runs are then compared:

* **signal windows**: every (group, signal, dimension, window) of the
  reference exists in the crashed run with the same value and sample size
  (``windows_missing``, ``windows_extra``, ``windows_differing``);
* **alerts**: the same alerts. Alerts on signals computed from feedback
  (:data:`FEEDBACK_SIGNALS`) are compared by (rule, signal, dimension,
  state): their first computation depends on how much feedback had arrived
  when the window closed, which differs between any two runs, so their
  start may move by a window; every other alert is compared by its id
  (which includes its start) (``alerts_lost``, ``alerts_extra``);
* **PagerDuty**: events received by a local Events API v2 endpoint. No
  alert may be triggered twice (``duplicate_triggers``: same ``dedup_key``
  and alert id), and the crashed run's events match the reference's
  (``pages_lost``, ``pages_extra``).

Traffic is the simulator replayed ``speed`` times faster than real time,
with event time in the past, so both runs see the same events at the same
event times.

``--fault broker`` kills a broker instead: both runs use a local cluster of
three Tansu brokers over one S3 bucket (:mod:`llmpulse.cluster`), and the
crashed run SIGKILLs the broker with the most connections after the first page
and restarts it on its port ``BROKER_DOWN_S`` later. The shim then runs with
idempotence off (docs/cluster.md), and the figures add the inference events
lost (sent, not in the store) and visible twice.

    python -m llmpulse.bench.fault --json fault.json
    python -m llmpulse.bench.fault --fault broker
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from llmpulse.bench._stack import bench_stack, finish, post_sql, stack_stats, wait_for
from llmpulse.bench.webhook import WebhookReceiver

__all__ = ["FEEDBACK_SIGNALS", "compare", "run"]

FEEDBACK_SIGNALS: tuple[str, ...] = (
    "quality.accuracy",
    "quality.feedback_score",
    "hallucination.flagged_rate",
    "bias.accuracy_gap",
    "bias.equalized_odds_difference",
    "bias.feedback_score_gap",
    "bias.hallucination_rate_gap",
)
"""Signals of the feedback join (the engine's ``quality`` family)."""

INCIDENTS = ["latency_spike:20:90:factor=5", "hallucination_burst:40:120"]

FAULTS = ("worker", "broker")
BROKER_DOWN_S = 5.0
"""How long a killed broker stays down before it is started again."""

# against a Tansu cluster: no idempotence (docs/cluster.md); few, large envelopes
_CLUSTER_SHIM = {"producer_config": {"enable.idempotence": False}, "buckets": 8}

_CONFIG = ("signals:\n  latency_window_s: 10\n  window_s: 20\n  poll_s: 0.5\n"
           "  snapshot_s: 2\n")  # snapshots every 2 s: the kill lands between two of them


def _drive(bootstrap: str, app: str, seed: int, duration: float, start: float, speed: float,
           out: dict[str, Any], shim: dict[str, Any] | None = None) -> None:
    from llmpulse.monitor import Monitor
    from llmpulse.simulate import Incident, SupportAppSimulator
    from llmpulse.simulate import run as run_sim

    sim = SupportAppSimulator(seed=seed, rate=40.0, start_ts=start, app=app,
                              incidents=[Incident.parse(i) for i in INCIDENTS])
    t0 = time.monotonic()
    with Monitor(app=app, bootstrap=bootstrap, **(shim or {})) as mon:
        out.update(run_sim(mon, sim, duration, realtime=True,
                           clock=lambda: t0 + (time.monotonic() - t0) * speed))
        mon.flush(60)


def _read(data_dir: Path) -> dict[str, Any]:
    from llmpulse.store import Store

    store = Store.open(f"chdb://{data_dir / 'store'}", ddl=False)
    try:
        signals = store.query(
            "SELECT app, model, model_version, signal, dimension, toString(ts) AS t, value, n "
            "FROM signals FINAL WHERE app != 'llmpulse'")
        alerts = store.query(
            "SELECT alert_id, rule, state, signal, dimension, toString(started_at) AS s, "
            "concat(app, '/', model, '/', model_version) AS g "
            "FROM alerts FINAL WHERE app != 'llmpulse'")
    finally:
        store.close()
    return {
        "signals": {(r["app"], r["model"], r["model_version"], r["signal"], r["dimension"], r["t"]):
                    (round(float(r["value"]), 6), int(r["n"])) for r in signals},
        "alerts": [tuple(str(v) for v in r.values()) for r in alerts],
    }


def _one_run(root: Path, rules: Path, hook: Any, *, crash: bool, seed: int, duration: float,
             start: float, speed: float, fault: str = "worker") -> dict[str, Any]:
    from llmpulse.broker import EmbeddedBroker, create_topics
    from llmpulse.cluster import LocalCluster, S3TestServer
    from llmpulse.events import TOPICS

    with contextlib.ExitStack() as kafka:
        cluster: LocalCluster | None = None
        if fault == "broker":
            s3 = kafka.enter_context(S3TestServer(log_path=root / "s3.log"))
            cluster = kafka.enter_context(LocalCluster(s3.storage, log_dir=root / "cluster"))
            bootstrap = cluster.bootstrap
        else:
            bootstrap = kafka.enter_context(EmbeddedBroker()).bootstrap
        create_topics(bootstrap, {t: 4 for t in TOPICS})
        # a worker against a broker that outlives it, as an external Kafka would
        worker = bench_stack(root, _CONFIG, {"LLMPULSE_KAFKA": bootstrap,
                                             "LLMPULSE_RULES": str(rules)})
        first = len(hook.received)
        out: dict[str, Any] = {}
        restart_s = None
        mid_traffic: bool | None = None
        try:
            worker.start()
            traffic = threading.Thread(target=_drive, args=(
                bootstrap, "support-assistant", seed, duration, start, speed, out,
                _CLUSTER_SHIM if cluster is not None else None))
            traffic.start()
            if crash:
                wait_for(lambda: any(p.get("event_action") == "trigger"
                                  for _, p in hook.received[first:]), 120, "a first page")
                time.sleep(2.5)  # the kill lands after the first page, mid-incident
                if cluster is not None:
                    victim = cluster.busiest()
                    cluster.kill(victim)
                    mid_traffic = traffic.is_alive()
                    time.sleep(BROKER_DOWN_S)
                    cluster.restart(victim)
                    restart_s = BROKER_DOWN_S
                else:
                    worker.kill()
                    # a machine slower than the replay pages after the traffic ended: the
                    # crash is still compared, and the figures say so
                    mid_traffic = traffic.is_alive()
                    worker.start()
                    restart_s = worker.ready_s
            traffic.join()
            total = int(out["inference"])
            try:
                wait_for(lambda: post_sql(worker.http, "SELECT count() AS n FROM inference_events "
                                          "FINAL")[0]["n"] >= total, 120, "every event stored")
            except TimeoutError:
                pass  # counted below: events lost
            kept = post_sql(worker.http, "SELECT count() AS rows, uniqExact(event_id) AS ids "
                                         "FROM inference_events FINAL")[0]
            # the engine's counters reach /api/stats once a poll; the figures say
            # what it took in if that is less than everything (a loaded machine
            # replays slowly: a shorter wait counted a slow engine as a lossy one)
            try:
                stats = wait_for(lambda: _engine_took_all(worker.http, total), 180,
                                 "the signal engine's counters to count every event")
            except TimeoutError:
                stats = dict(stack_stats(worker.http)["signals"])
        finally:
            try:
                code = worker.stop()  # flushes the open windows
            except subprocess.TimeoutExpired:
                code = -9
            worker.close()
        if code != 0:
            raise RuntimeError(f"llmpulse up exited {code}; see {worker.log_path}")
    eng = stats["engine"]
    return {**_read(worker.data_dir), "pages": [p for _, p in hook.received[first:]],
            "events": total, "restart_s": restart_s, "killed_mid_traffic": mid_traffic,
            "events_stored": int(kept["ids"]), "event_rows": int(kept["rows"]),
            "late_groups": sorted(eng.get("late_dropped_by_group", {})),
            "engine_events": int(eng["events_in"]) - int(eng.get("duplicates_dropped", 0)),
            "late_dropped": int(eng["late_dropped"]),
            "duplicates_dropped": int(eng.get("duplicates_dropped", 0)),
            "replay": {k: int(stats.get(k, 0)) for k in ("replay_seeks", "replay_skipped",
                                                           "replay_gaps", "snapshots")}}


def _engine_took_all(http: str, total: int) -> dict[str, Any] | None:
    """The stack's signal stats once its engine counted ``total`` distinct inferences."""
    stats = dict(stack_stats(http)["signals"])
    eng = stats.get("engine", {})
    taken = int(eng.get("events_in", 0)) - int(eng.get("duplicates_dropped", 0))
    return stats if taken >= total else None


def _alert_view(alerts: list[tuple[str, ...]], void: set[str]) -> Counter[tuple[str, ...]]:
    # (alert_id, rule, state, signal, dimension, started_at, group)
    return Counter(a[:6] if a[3] not in FEEDBACK_SIGNALS else ("", a[1], a[2], a[3], a[4], "")
                   for a in alerts if a[6] not in void)


def _page_group(page: dict[str, Any], groups: dict[str, str]) -> str:
    """``app/model/version`` of a PagerDuty event (a resolve names its trigger's key)."""
    source = str(page.get("payload", {}).get("source", ""))
    if source:
        app_model, _, version = source.rpartition("@")
        groups[str(page.get("dedup_key"))] = f"{app_model}/{version}"
    return groups.get(str(page.get("dedup_key")), "")


def _page_view(pages: list[dict[str, Any]], void: set[str]) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    groups: dict[str, str] = {}
    for p in pages:
        if _page_group(p, groups) in void:
            continue
        details = p.get("payload", {}).get("custom_details", {})
        alert = details.get("alert_id", "") if details.get("signal") not in FEEDBACK_SIGNALS else ""
        out[(str(p.get("dedup_key")), str(p.get("event_action")), str(alert))] += 1
    return out


def compare(ref: dict[str, Any], crashed: dict[str, Any]) -> dict[str, Any]:
    """Figures of a crashed run against its reference (see the module docstring).

    Groups (app/model/version) where either run dropped late events are left
    out: whether an event is late depends on how the machine kept up with the
    replay, not on the crash (``late_groups``, ``windows_void_late``)."""
    void = set(ref.get("late_groups", [])) | set(crashed.get("late_groups", []))

    def kept(signals: dict[tuple[str, ...], Any]) -> dict[tuple[str, ...], Any]:
        return {k: v for k, v in signals.items() if "/".join(k[:3]) not in void}

    rs, cs = kept(ref["signals"]), kept(crashed["signals"])
    differing = sorted(k for k in set(rs) & set(cs) if rs[k] != cs[k])
    ra, ca = _alert_view(ref["alerts"], void), _alert_view(crashed["alerts"], void)
    rp, cp = _page_view(ref["pages"], void), _page_view(crashed["pages"], void)
    triggers = Counter((p["dedup_key"], p["payload"]["custom_details"]["alert_id"])
                       for p in crashed["pages"] if p.get("event_action") == "trigger")
    return {
        "windows": len(rs),
        "late_groups": sorted(void),
        "windows_void_late": len(ref["signals"]) - len(rs),
        "windows_missing": len(set(rs) - set(cs)),
        "windows_extra": len(set(cs) - set(rs)),
        "windows_differing": len(differing),
        "differing_examples": [[list(k), rs[k], cs[k]] for k in differing[:5]],
        "alerts": sum(ra.values()),
        "alerts_lost": sum((ra - ca).values()),
        "alerts_extra": sum((ca - ra).values()),
        "pagerduty_events": sum(cp.values()),
        "pagerduty_triggers": sum(triggers.values()),
        "duplicate_triggers": sum(n - 1 for n in triggers.values() if n > 1),
        "pages_lost": sum((rp - cp).values()),
        "pages_extra": sum((cp - rp).values()),
        "events": crashed["events"],
        "events_lost": crashed["events"] - crashed["events_stored"],
        "events_duplicated": crashed["event_rows"] - crashed["events_stored"],
        "engine_events_reference": ref["engine_events"],
        "engine_events_crashed": crashed["engine_events"],
        "late_dropped": ref["late_dropped"] + crashed["late_dropped"],
        "late_dropped_crashed": crashed["late_dropped"],
        "duplicates_dropped": crashed["duplicates_dropped"],
        "restart_s": crashed["restart_s"],
        "killed_mid_traffic": crashed.get("killed_mid_traffic"),
        "replay": crashed["replay"],
    }


def run(root: Path | None = None, *, seed: int = 7, duration: float = 150.0,
        speed: float = 6.0, quick: bool = False, fault: str = "worker") -> dict[str, Any]:
    """Both runs and their comparison (``root``: where the runs keep their files;
    ``fault``: what is killed, one of :data:`FAULTS`).
    ``quick`` changes nothing: the incidents need the whole run, about a minute each."""
    if fault not in FAULTS:
        raise ValueError(f"fault: {fault!r} is not one of {', '.join(FAULTS)}")
    root = root or Path(tempfile.mkdtemp(prefix="llmpulse-bench-fault-"))
    start = time.time() - duration - 5
    with WebhookReceiver() as hook:
        import yaml

        text = resources.files("llmpulse.rules").joinpath("default.yaml").read_text(encoding="utf-8")
        rules = yaml.safe_load(text)
        rules["notify"] = {"oncall": {"type": "pagerduty", "routing_key": "r" * 32,
                                      "url": hook.url}}
        rules_path = root / "rules.yaml"
        rules_path.parent.mkdir(parents=True, exist_ok=True)
        rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
        ref = _one_run(root / "reference", rules_path, hook, crash=False, seed=seed,
                       duration=duration, start=start, speed=speed, fault=fault)
        crashed = _one_run(root / "crash", rules_path, hook, crash=True, seed=seed,
                           duration=duration, start=start, speed=speed, fault=fault)
    return {"benchmark": "fault", "fault": fault, "seed": seed, "event_seconds": duration,
            "speed": speed,
            "incidents": INCIDENTS, **compare(ref, crashed)}


def format_table(r: dict[str, Any]) -> str:
    what = ("a broker of three (SIGKILL)" if r.get("fault") == "broker" else "the worker")
    return "\n".join([
        f"fault: kill -9 of {what} mid-incident, restarted ({r['events']} inference events, "
        f"{r['event_seconds']:g} s of event time at {r['speed']:g}x, seed {r['seed']}; "
        f"restart took {r['restart_s']:.1f} s; killed "
        f"{'while traffic flowed' if r.get('killed_mid_traffic') else 'after the traffic ended'})",
        f"  inference events: lost {r.get('events_lost', 0)}, "
        f"visible twice {r.get('events_duplicated', 0)}",
        f"  signal windows: {r['windows']} in the reference; missing {r['windows_missing']}, "
        f"extra {r['windows_extra']}, different value {r['windows_differing']}"
        + (f" (left out: {r['windows_void_late']} of groups with late events "
           f"{', '.join(r['late_groups'])})" if r.get("late_groups") else ""),
        f"  alerts: {r['alerts']}; lost {r['alerts_lost']}, extra {r['alerts_extra']}",
        f"  PagerDuty: {r['pagerduty_events']} events, {r['pagerduty_triggers']} triggers; "
        f"triggered twice {r['duplicate_triggers']}, lost {r['pages_lost']}, extra {r['pages_extra']}",
        f"  engine events: {r['engine_events_crashed']} (reference {r['engine_events_reference']}); "
        f"duplicates dropped {r['duplicates_dropped']}, late {r['late_dropped']}; replay {r['replay']}",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=150.0, help="event time of each run")
    ap.add_argument("--fault", choices=FAULTS, default="worker", help="what is killed")
    a = ap.parse_args()
    result = run(seed=a.seed, duration=a.seconds, fault=a.fault)
    return finish(result, format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
