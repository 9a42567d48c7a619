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
event times. Each second of event time is delivered before the next is sent
(:func:`_drive` says why): the replay is in event-time order along every
partition, so no event is late, however slowly the machine keeps up, and every
window of both runs is compared.

``--fault broker`` kills a broker instead: both runs use a local cluster of
three Tansu brokers over one S3 bucket (:mod:`llmpulse.cluster`), and the
crashed run SIGKILLs the broker with the most connections after the first page
and restarts it on its port ``BROKER_DOWN_S`` later. The shim then runs with
idempotence off (docs/cluster.md), and the figures add the inference events
lost (sent, not in the store) and visible twice.

``--fault scale|rolling|pause`` change the workers on that cluster after the
first page: ``scale`` starts a second and a third worker, then stops them
(back to one); ``rolling`` stops each of two workers cleanly
(``signals.stop: save``) and starts it again, one at a time; ``pause``
SIGSTOPs one of two workers past its session timeout (10 s) until the other
holds every partition, then SIGCONTs it. The reference is one undisturbed
worker. Each worker has a store of its own (chDB opens a directory in one
process); their windows and alerts are read as one table would keep them
(:func:`merge_stores`). Feedback is routed by looking its inference up in the
store, which per-worker stores cannot do for a partition that moved, so these
runs replay no feedback.

    python -m llmpulse.bench.fault --json fault.json
    python -m llmpulse.bench.fault --fault broker
    python -m llmpulse.bench.fault --fault pause
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
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
from llmpulse.bench.fault_stores import saved_engine_events
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

FAULTS = ("worker", "broker", "scale", "rolling", "pause")
"""``worker``: kill -9 of the only worker; the others run on the cluster of three
brokers: ``broker`` kill -9 of a broker, ``scale`` workers 1 -> 2 -> 3 and back to
1, ``rolling`` a clean restart of each of two workers in turn, ``pause`` one of two
workers SIGSTOPped past its session timeout, then SIGCONT."""
MULTI_WORKER = ("scale", "rolling", "pause")
PARTITIONS = 6
"""Partitions per topic: three workers hold two each."""
BROKER_DOWN_S = 5.0
"""How long a killed broker stays down before it is started again."""

# against a Tansu cluster: no idempotence (docs/cluster.md); few, large envelopes
_CLUSTER_SHIM = {"producer_config": {"enable.idempotence": False}, "buckets": 8}

_CONFIG = ("signals:\n  latency_window_s: 10\n  window_s: 20\n  poll_s: 0.5\n"
           "  snapshot_s: 2\n")  # snapshots every 2 s: the kill lands between two of them
# several workers on 2 cores: one engine process each; a paused worker loses its
# partitions after 10 s (a start waits 4 sessions + 10 s for its partitions: a join
# over the S3-backed brokers on a loaded machine needs that). A worker stopped while others go on saves its open windows
# for the worker that gets its partitions (``save``); the last one to stop writes
# them (``flush``), as the undisturbed reference does
_MULTI_CONFIG = "session_timeout_s: 10\n" + _CONFIG + "  engine_processes: 1\n  stop: {stop}\n"


def _drive(bootstrap: str, app: str, seed: int, duration: float, start: float, speed: float,
           out: dict[str, Any], shim: dict[str, Any] | None = None,
           feedback_share: float | None = None) -> None:
    """Replay the simulator ``speed`` times faster than real time.

    Each second of event time is sealed and delivered before the next is sent
    (``mon.flush`` after every chunk). Without that, the replay itself put
    events out of order by more than the allowed lateness: an envelope is
    sealed ``linger_ms`` of wall time after its first event, so when the
    sender ran late and sent several seconds of event time at once (a start,
    a loaded machine: ``speed`` times the wall delay), each bucket's envelope
    held all of them, and the envelopes of the buckets sharing a partition
    interleaved: a partition's event time went back by up to that burst
    (measured: 5.4-5.9 s on every partition of an undisturbed 6x run, against
    the latency windows' 5 s lateness). A live application sends in real
    time, where that burst is ``linger_ms``."""
    from llmpulse.monitor import Monitor
    from llmpulse.simulate import Incident, SupportAppSimulator
    from llmpulse.simulate import run as run_sim

    extra = {} if feedback_share is None else {"feedback_share": feedback_share}
    sim = SupportAppSimulator(seed=seed, rate=40.0, start_ts=start, app=app,
                              incidents=[Incident.parse(i) for i in INCIDENTS], **extra)
    with Monitor(app=app, bootstrap=bootstrap, **(shim or {})) as mon:
        t0 = time.monotonic()  # after the connection: its set-up is no burst of events
        out.update(run_sim(mon, sim, duration, realtime=True,
                           clock=lambda: t0 + (time.monotonic() - t0) * speed,
                           progress=lambda _: _seal(mon)))
        mon.flush(60)
    out["ended_at"] = time.monotonic()


def _seal(mon: Any) -> None:
    if not mon.flush(120):
        raise RuntimeError("the replay could not deliver a second of events within 120 s")


def _read(data_dir: Path) -> dict[str, Any]:
    from llmpulse.store import Store

    store = Store.open(f"chdb://{data_dir / 'store'}", ddl=False)
    try:
        signals = store.query(
            "SELECT app, model, model_version, signal, dimension, toString(ts) AS t, value, n, "
            "toString(computed_at) AS at FROM signals FINAL WHERE app != 'llmpulse'")
        alerts = store.query(
            "SELECT alert_id, rule, state, signal, dimension, toString(started_at) AS s, "
            "concat(app, '/', model, '/', model_version) AS g, toString(updated_at) AS u "
            "FROM alerts FINAL WHERE app != 'llmpulse'")
        ids = store.query("SELECT event_id, count() AS rows FROM inference_events FINAL "
                          "GROUP BY event_id")
    finally:
        store.close()
    return {
        "event_ids": {str(r["event_id"]) for r in ids},
        "event_rows": sum(int(r["rows"]) for r in ids),
        "signals": {(r["app"], r["model"], r["model_version"], r["signal"], r["dimension"], r["t"]):
                    (r["at"], round(float(r["value"]), 6), int(r["n"])) for r in signals},
        "alerts": {str(r["alert_id"]): (r["u"], tuple(str(r[k]) for k in
                                                      ("alert_id", "rule", "state", "signal",
                                                       "dimension", "s", "g")))
                   for r in alerts},
    }


def merge_stores(stores: list[dict[str, Any]]) -> dict[str, Any]:
    """Signal windows, alerts and inference events of several workers' stores as one
    ClickHouse table would keep them (``FINAL``): per window the row computed last,
    per alert the row updated last; an event stored by two workers (a partition read
    again after it moved) is one event, and only rows repeated within a store are
    visible twice (``event_rows`` over ``events_stored``).

    >>> a = {"signals": {("w",): ("10:00:01", 1.0, 3)}, "alerts": {"x": ("1", ("x", "firing"))},
    ...      "event_ids": {"e1", "e2"}, "event_rows": 3}
    >>> b = {"signals": {("w",): ("10:00:02", 2.0, 4)}, "alerts": {"x": ("2", ("x", "resolved"))},
    ...      "event_ids": {"e2", "e3"}, "event_rows": 2}
    >>> m = merge_stores([a, b])
    >>> m["signals"], m["alerts"], m["events_stored"], m["event_rows"], sorted(m["event_ids"])
    ({('w',): (2.0, 4)}, [('x', 'resolved')], 3, 4, ['e1', 'e2', 'e3'])
    """
    signals: dict[tuple[str, ...], tuple[str, float, int]] = {}
    alerts: dict[str, tuple[str, tuple[str, ...]]] = {}
    for st in stores:
        for k, v in st["signals"].items():
            if k not in signals or v[0] > signals[k][0]:
                signals[k] = v
        for aid, (at, row) in st["alerts"].items():
            if aid not in alerts or at > alerts[aid][0]:
                alerts[aid] = (at, row)
    ids: set[str] = set().union(*(st.get("event_ids", set()) for st in stores))
    repeated = sum(int(st.get("event_rows", 0)) - len(st.get("event_ids", ())) for st in stores)
    return {"signals": {k: (v[1], v[2]) for k, v in signals.items()},
            "alerts": [row for _, row in alerts.values()],
            "events_stored": len(ids), "event_rows": len(ids) + repeated, "event_ids": ids}


def forwarded_event_ids(bootstrap: str, timeout: float = 120.0) -> Counter[str]:
    """The event ids in every message of ``llmpulse.grouped``, read to its end.

    The brokers of the local cluster each answer ListOffsets from their own view of
    the shared log, which lags the writes made through the others for a few seconds,
    and Tansu 0.6 answers with the last batch's base offset + 1: the end is taken as
    an end of partition at or past the largest answer of any broker."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from llmpulse.events import TOPIC_GROUPED

    def conf(servers: str) -> dict[str, Any]:
        return {"bootstrap.servers": servers, "group.id": f"fault-reader-{os.getpid()}",
                "enable.auto.commit": False, "enable.partition.eof": True}

    floors: dict[int, int] = {}
    for server in bootstrap.split(","):
        probe = Consumer(conf(server))
        try:
            parts = probe.list_topics(TOPIC_GROUPED, timeout=30).topics[TOPIC_GROUPED].partitions
            for p in parts:
                high = probe.get_watermark_offsets(TopicPartition(TOPIC_GROUPED, p), timeout=30,
                                                   cached=False)[1]
                floors[p] = max(floors.get(p, 0), int(high))
        finally:
            probe.close()
    c = Consumer(conf(bootstrap))
    ids: Counter[str] = Counter()
    try:
        c.assign([TopicPartition(TOPIC_GROUPED, p, OFFSET_BEGINNING) for p in floors])
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(floors):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{TOPIC_GROUPED}: not read to its end in {timeout:g} s")
            m = c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"{TOPIC_GROUPED}: {err}")
                p = int(m.partition() or 0)
                if int(m.offset() or 0) >= floors.get(p, 0):
                    done.add(p)
                continue
            for line in (m.value() or b"").split(b"\n"):
                if line.strip():
                    ids[str(orjson.loads(line).get("event_id"))] += 1
    finally:
        c.close()
    return ids


def _grouped(worker: Any) -> set[str]:
    """The ``llmpulse.grouped`` partitions a worker holds."""
    from llmpulse.events import TOPIC_GROUPED

    return {a for a in stack_stats(worker.http).get("assignment", [])
            if a.startswith(TOPIC_GROUPED + ":")}


def _shared(workers: list[Any], partitions: int = PARTITIONS) -> bool:
    """Every grouped partition held by exactly one of ``workers``, each holding some."""
    held = [_grouped(w) for w in workers]
    return (all(held) and sum(map(len, held)) == partitions
            and len(set().union(*held)) == partitions)


def _take_all(worker: Any) -> None:
    wait_for(lambda: _shared([worker]), 180, "one worker to hold every partition")


def _apply(fault: str, workers: list[Any], cluster: Any) -> float:
    """Do ``fault`` to the running stack; the seconds it took."""
    t0 = time.monotonic()
    if fault == "worker":
        workers[0].kill()
        workers[0].start()
    elif fault == "broker":
        victim = cluster.busiest()
        cluster.kill(victim)
        time.sleep(BROKER_DOWN_S)
        cluster.restart(victim)
    elif fault == "scale":  # 1 -> 2 -> 3 workers, then back to 1
        for w in workers[1:]:
            w.start()
            wait_for(lambda: _shared([x for x in workers if x.running]), 180,
                     "the partitions to be shared out")
        for w in reversed(workers[1:]):
            w.stop()
        _take_all(workers[0])
    elif fault == "rolling":  # every worker stopped cleanly and started again, one at a time
        for w in reversed(workers):
            w.stop()
            if w is workers[0]:  # the one that stops last, at the end of the run
                (w.root / "llmpulse.yaml").write_text(_MULTI_CONFIG.format(stop="flush"))
            w.start()
            wait_for(lambda: _shared(workers), 180, "the partitions to be shared out")
    elif fault == "pause":  # past its session timeout: the group moves its partitions
        victim = workers[-1]
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            _take_all(workers[0])
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        wait_for(lambda: _shared(workers), 180, "the partitions to be shared out again")
    return time.monotonic() - t0


def _one_run(root: Path, rules: Path, hook: Any, *, crash: bool, seed: int, duration: float,
             start: float, speed: float, fault: str = "worker") -> dict[str, Any]:
    from llmpulse.broker import EmbeddedBroker, create_topics
    from llmpulse.cluster import LocalCluster, S3TestServer
    from llmpulse.events import TOPICS

    multi = fault in MULTI_WORKER
    with contextlib.ExitStack() as kafka:
        cluster: LocalCluster | None = None
        if fault != "worker":
            s3 = kafka.enter_context(S3TestServer(log_path=root / "s3.log"))
            cluster = kafka.enter_context(LocalCluster(s3.storage, log_dir=root / "cluster"))
            bootstrap = cluster.bootstrap
        else:
            bootstrap = kafka.enter_context(EmbeddedBroker()).bootstrap
        create_topics(bootstrap, {t: PARTITIONS for t in TOPICS})
        # workers against a broker that outlives them, as an external Kafka would; each
        # has a store of its own (chDB opens a directory in one process)
        n_workers = 1 if not crash else {"scale": 3, "rolling": 2, "pause": 2}.get(fault, 1)
        def config(i: int) -> str:
            if not multi:
                return _CONFIG
            last = i == 0 and not (crash and fault == "rolling")
            return _MULTI_CONFIG.format(stop="flush" if last else "save")

        workers = [bench_stack(root / f"w{i}" if i else root, config(i),
                               {"LLMPULSE_KAFKA": bootstrap, "LLMPULSE_RULES": str(rules)})
                   for i in range(n_workers)]
        first = len(hook.received)
        out: dict[str, Any] = {}
        restart_s = None
        mid_traffic: bool | None = None
        began: float | None = None
        traffic_s: float | None = None
        try:
            workers[0].start()
            if fault in ("rolling", "pause") and crash:
                workers[1].start()
                wait_for(lambda: _shared(workers), 180, "the partitions to be shared out")
            traffic = threading.Thread(target=_drive, args=(
                bootstrap, "support-assistant", seed, duration, start, speed, out,
                _CLUSTER_SHIM if cluster is not None else None, 0.0 if multi else None))
            traffic.start()
            if crash:
                wait_for(lambda: any(p.get("event_action") == "trigger"
                                  for _, p in hook.received[first:]), 120, "a first page")
                time.sleep(2.5)  # the fault lands after the first page, mid-incident
                began = time.monotonic()
                restart_s = _apply(fault, workers, cluster)
                # a machine slower than the replay may end the fault after the
                # traffic ended: the run is still compared, and the figures say so
                mid_traffic = traffic.is_alive()
            traffic.join()
            if began is not None:
                # how much of the fault the traffic flowed through
                ended = float(out.get("ended_at", began))
                traffic_s = max(0.0, min(ended, began + float(restart_s or 0.0)) - began)
            if crash and fault == "worker":
                restart_s = workers[0].ready_s
            total = int(out["inference"])
            live = [w for w in workers if w.running]

            def kept() -> dict[str, int]:
                rows = [post_sql(w.http, "SELECT count() AS rows, uniqExact(event_id) AS ids "
                                         "FROM inference_events FINAL")[0] for w in live]
                return {"rows": sum(int(r["rows"]) for r in rows),
                        "ids": sum(int(r["ids"]) for r in rows)}

            with contextlib.suppress(TimeoutError):  # counted below: events lost
                wait_for(lambda: kept()["ids"] >= total, 120, "every event stored")
            # the engines' counters reach /api/stats once a poll; the figures say
            # what they took in if that is less than everything (a loaded machine
            # replays slowly: a shorter wait counted a slow engine as a lossy one)
            feedback = int(out.get("feedback", 0))
            https = [w.http for w in live]
            try:
                stats = wait_for(lambda: _engines_took_all(https, total), 180,
                                 "the signal engines' counters to count every event")
            except TimeoutError:
                stats = [dict(stack_stats(h)["signals"]) for h in https]
            # then the feedback, on its own: a count that never reaches what was sent
            # (feedback lost, or counted in a state a crash threw away) leaves the
            # inference figures above as they were
            with contextlib.suppress(TimeoutError):
                stats = wait_for(lambda: _engines_took_all(https, total, feedback), 60,
                                 "the signal engines to count every feedback event")
            if len(live) > 1:  # the last worker to stop holds every partition and flushes
                for w in live[1:]:
                    w.stop()
                _take_all(live[0])
        finally:
            codes = []
            for w in reversed(workers):
                try:
                    codes.append(w.stop())  # flushes the open windows
                except subprocess.TimeoutExpired:
                    codes.append(-9)
                w.close()
        if any(codes):
            raise RuntimeError(f"llmpulse up exited {codes}; see the logs under {root}")
        forwarded = forwarded_event_ids(bootstrap)
    left = [w for w in workers if w not in live]  # stopped mid-run (scale): their engines'
                                                  # counts are in the states they saved
    engines = [s["engine"] for s in stats]
    late_groups = sorted({g for e in engines for g in e.get("late_dropped_by_group", {})})
    dups = sum(int(e.get("duplicates_dropped", 0)) for e in engines)
    stored = merge_stores([_read(w.data_dir) for w in workers])
    return {**stored,
            # stored events that were never forwarded to the signal engines' topic
            # (an ingest batch stored and not forwarded), told apart from events
            # forwarded and lost on the way into an engine
            "events_not_forwarded": len(stored["event_ids"] - set(forwarded)),
            "not_forwarded_examples": sorted(stored["event_ids"] - set(forwarded))[:5],
            "pages": [p for _, p in hook.received[first:]],
            "events": total, "restart_s": restart_s, "killed_mid_traffic": mid_traffic,
            "traffic_during_fault_s": traffic_s,
            "late_groups": late_groups,
            "engine_events": sum(int(e["events_in"]) for e in engines) - dups
            + sum(saved_engine_events(w.data_dir) for w in left),
            "late_dropped": sum(int(e["late_dropped"]) for e in engines),
            "duplicates_dropped": dups,
            "replay": {k: sum(int(s.get(k, 0)) for s in stats)
                       for k in ("replay_seeks", "replay_skipped", "replay_gaps", "snapshots")}}


def _engines_took_all(https: list[str], total: int, feedback: int = 0
                      ) -> list[dict[str, Any]] | None:
    """The stacks' signal stats once their engines counted ``total`` distinct inferences
    and at least ``feedback`` feedback events. Feedback reaches the engine after its
    inference is stored (routed by a lookup, waiting up to ``feedback_wait_s``): a stop
    before it arrived left the windows it belongs to without it, missing or different
    from a run that waited longer, whatever the fault."""
    stats = [dict(stack_stats(h)["signals"]) for h in https]
    engines = [s.get("engine", {}) for s in stats]
    taken = sum(int(e.get("events_in", 0)) - int(e.get("duplicates_dropped", 0))
                for e in engines)
    fed = sum(int(e.get("feedback_in", 0)) for e in engines)
    return stats if taken >= total and fed >= feedback else None


def _alert_view(alerts: list[tuple[str, ...]]) -> Counter[tuple[str, ...]]:
    # (alert_id, rule, state, signal, dimension, started_at, group)
    return Counter(a[:6] if a[3] not in FEEDBACK_SIGNALS else ("", a[1], a[2], a[3], a[4], "")
                   for a in alerts)


def _page_view(pages: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for p in pages:
        details = p.get("payload", {}).get("custom_details", {})
        alert = details.get("alert_id", "") if details.get("signal") not in FEEDBACK_SIGNALS else ""
        out[(str(p.get("dedup_key")), str(p.get("event_action")), str(alert))] += 1
    return out


def compare(ref: dict[str, Any], crashed: dict[str, Any]) -> dict[str, Any]:
    """Figures of a disturbed run against its reference (see the module docstring);
    every window of both runs is compared (``late_groups`` names the groups where
    a run dropped late events, which the replay must not cause).

    >>> page = {"dedup_key": "k", "event_action": "trigger",
    ...         "payload": {"custom_details": {"alert_id": "a1", "signal": "latency.p95_ms"}}}
    >>> run = {"signals": {("g", "latency.p95_ms", "t1"): (1.0, 5)}, "alerts": [],
    ...        "pages": [page], "events": 10, "events_stored": 10, "event_rows": 10,
    ...        "engine_events": 10, "late_dropped": 0, "duplicates_dropped": 0,
    ...        "late_groups": [], "restart_s": 1.0, "replay": {}}
    >>> bad = {**run, "signals": {("g", "latency.p95_ms", "t1"): (2.0, 5),
    ...                           ("g", "latency.p95_ms", "t2"): (1.0, 1)}, "pages": [page, page]}
    >>> r = compare(run, bad)
    >>> r["windows_missing"], r["windows_extra"], r["windows_differing"], r["duplicate_triggers"]
    (0, 1, 1, 1)
    """
    rs, cs = ref["signals"], crashed["signals"]
    differing = sorted(k for k in set(rs) & set(cs) if rs[k] != cs[k])
    ra, ca = _alert_view(ref["alerts"]), _alert_view(crashed["alerts"])
    rp, cp = _page_view(ref["pages"]), _page_view(crashed["pages"])
    triggers = Counter((p["dedup_key"], p["payload"]["custom_details"]["alert_id"])
                       for p in crashed["pages"] if p.get("event_action") == "trigger")
    return {
        "windows": len(rs),
        "late_groups": sorted(set(ref["late_groups"]) | set(crashed["late_groups"])),
        "windows_missing": len(set(rs) - set(cs)),
        "windows_extra": len(set(cs) - set(rs)),
        "windows_differing": len(differing),
        "differing_examples": [[list(k), rs[k], cs[k]] for k in differing[:5]],
        "missing_examples": [[list(k), rs[k]] for k in sorted(set(rs) - set(cs))[:8]],
        "extra_examples": [[list(k), cs[k]] for k in sorted(set(cs) - set(rs))[:8]],
        "alerts": sum(ra.values()),
        "alerts_lost": sum((ra - ca).values()),
        "alerts_extra": sum((ca - ra).values()),
        "alerts_lost_examples": [list(a) for a in sorted((ra - ca).elements())[:5]],
        "alerts_extra_examples": [list(a) for a in sorted((ca - ra).elements())[:5]],
        "pagerduty_events": sum(cp.values()),
        "pagerduty_triggers": sum(triggers.values()),
        "duplicate_triggers": sum(n - 1 for n in triggers.values() if n > 1),
        "pages_lost": sum((rp - cp).values()),
        "pages_extra": sum((cp - rp).values()),
        "events": crashed["events"],
        "events_lost": crashed["events"] - crashed["events_stored"],
        "events_duplicated": crashed["event_rows"] - crashed["events_stored"],
        "events_not_forwarded": crashed.get("events_not_forwarded", 0),
        "not_forwarded_examples": crashed.get("not_forwarded_examples", []),
        "engine_events_reference": ref["engine_events"],
        "engine_events_crashed": crashed["engine_events"],
        "late_dropped": ref["late_dropped"] + crashed["late_dropped"],
        "late_dropped_crashed": crashed["late_dropped"],
        "duplicates_dropped": crashed["duplicates_dropped"],
        "restart_s": crashed["restart_s"],
        "killed_mid_traffic": crashed.get("killed_mid_traffic"),
        "traffic_during_fault_s": crashed.get("traffic_during_fault_s"),
        "replay": crashed["replay"],
    }


def run(root: Path | None = None, *, seed: int = 7, duration: float = 150.0,
        speed: float | None = None, quick: bool = False, fault: str = "worker") -> dict[str, Any]:
    """Both runs and their comparison (``root``: where the runs keep their files;
    ``fault``: what is done, one of :data:`FAULTS`; ``speed``: the replay's, default
    6x, 3x for the faults that start and stop workers, so they land mid-traffic).
    ``quick`` changes nothing: the incidents need the whole run, about a minute each.

    >>> run(fault="fire")
    Traceback (most recent call last):
    ...
    ValueError: fault: 'fire' is not one of worker, broker, scale, rolling, pause
    """
    if fault not in FAULTS:
        raise ValueError(f"fault: {fault!r} is not one of {', '.join(FAULTS)}")
    if speed is None:
        speed = 3.0 if fault in MULTI_WORKER else 6.0
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


FAULT_TEXT = {
    "worker": "kill -9 of the worker, restarted",
    "broker": "kill -9 of a broker of three, restarted 5 s later",
    "scale": "workers scaled 1 -> 2 -> 3, then removed back to 1",
    "rolling": "rolling restart of both workers (clean stop with signals.stop: save)",
    "pause": "one of two workers paused (SIGSTOP) past its 10 s session timeout, then SIGCONT",
}


def format_table(r: dict[str, Any]) -> str:
    fault = str(r.get("fault", "worker"))
    return "\n".join([
        f"fault: {FAULT_TEXT[fault]}, mid-incident ({r['events']} inference events, "
        f"{r['event_seconds']:g} s of event time at {r['speed']:g}x, seed {r['seed']}"
        + (", no feedback" if fault in MULTI_WORKER else "")
        + f"; the fault took {r['restart_s']:.1f} s; it ended "
        f"{'while traffic flowed' if r.get('killed_mid_traffic') else 'after the traffic ended'}"
        + (f", traffic flowed through its first {r['traffic_during_fault_s']:.1f} s"
           if r.get("traffic_during_fault_s") is not None and not r.get("killed_mid_traffic")
           else "") + ")",
        f"  inference events: lost {r.get('events_lost', 0)}, "
        f"visible twice {r.get('events_duplicated', 0)}",
        f"  signal windows: {r['windows']} in the reference; missing {r['windows_missing']}, "
        f"extra {r['windows_extra']}, different value {r['windows_differing']} (every window "
        "compared)",
        f"  alerts: {r['alerts']}; lost {r['alerts_lost']}, extra {r['alerts_extra']}"
        + "".join(f"\n    {what}: {' '.join(a for a in alert if a)}"
                  for what in ("lost", "extra") for alert in r.get(f"alerts_{what}_examples", [])),
        f"  PagerDuty: {r['pagerduty_events']} events, {r['pagerduty_triggers']} triggers; "
        f"triggered twice {r['duplicate_triggers']}, lost {r['pages_lost']}, extra {r['pages_extra']}",
        f"  engine events: {r['engine_events_crashed']} (reference {r['engine_events_reference']}; "
        f"stored and never forwarded to the engines {r.get('events_not_forwarded', 0)}); "
        f"duplicates dropped {r['duplicates_dropped']}, late {r['late_dropped']}; replay {r['replay']}",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=150.0, help="event time of each run")
    ap.add_argument("--fault", choices=FAULTS, default="worker", help="what is done")
    ap.add_argument("--speed", type=float, default=None,
                    help="replay speed (default: the fault's, see run())")
    a = ap.parse_args()
    if a.speed is not None and not a.speed > 0:
        ap.error(f"--speed: must be > 0, got {a.speed!r}")
    result = run(seed=a.seed, duration=a.seconds, fault=a.fault, speed=a.speed)
    return finish(result, format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
