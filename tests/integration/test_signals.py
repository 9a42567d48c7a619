"""Signals and alerts end to end, and scale-out: real broker, real store, real workers.

Traffic is the simulator replayed a few times faster than real time (event
time stays ordered well within the windows' allowed lateness), so a few
minutes of event time take seconds.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmpulse.broker import EmbeddedBroker, create_topics, free_port
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE, TOPICS
from llmpulse.harness import wait_for
from llmpulse.monitor import Monitor
from llmpulse.simulate import Incident, SupportAppSimulator, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEED = 6.0  # event seconds per wall second


def drive(bootstrap: str, seed: int, duration: float, incidents: list[str], rate: float = 40.0,
          app: str = "support-assistant", start: float | None = None) -> dict[str, Any]:
    if start is None:
        start = time.time() - duration - 5
    sim = SupportAppSimulator(seed=seed, rate=rate, incidents=[Incident.parse(i) for i in incidents],
                              start_ts=start, app=app)
    t0 = time.monotonic()
    with Monitor(app=app, bootstrap=bootstrap) as mon:
        out = run(mon, sim, duration, realtime=True,
                  clock=lambda: t0 + (time.monotonic() - t0) * SPEED)
        assert mon.flush(30)
    return out


def write_config(d: Path, latency_window: float, window: float, extra: str = "") -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "llmpulse.yaml").write_text(
        f"signals:\n  latency_window_s: {latency_window}\n  window_s: {window}\n"
        f"  poll_s: 0.5\n  snapshot_s: 0\n{extra}")


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_latency_spike_raises_one_alert_and_pages_the_webhook(stack_factory, tmp_path) -> None:
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received.clear()
    rules = tmp_path / "rules.yaml"
    default = (Path(__file__).resolve().parents[2] / "llmpulse/rules/default.yaml").read_text()
    assert "\nnotify:" not in default
    rules.write_text(default + f"""
notify:
  hook:
    type: webhook
    url: http://127.0.0.1:{port}/alerts
    secret: s3cret
""")
    d = tmp_path / "alerting"
    write_config(d, 10, 30)
    sp = stack_factory(d / "data", LLMPULSE_RULES=str(rules))
    sp.start()  # reads llmpulse.yaml from its working directory, the data dir's parent
    try:
        out = drive(sp.endpoints["kafka"], seed=3, duration=240,
                    incidents=["latency_spike:90:180:factor=5"])
        sp.wait_stored(TOPIC_INFERENCE, out["inference"])
        sp.wait_stored(TOPIC_FEEDBACK, out["feedback"])
        hooks = wait_for(lambda: [h for h in _Hook.received
                                  if h["alert"]["signal"].startswith(("latency.", "errors."))],
                         60, "a latency page on the webhook")
        names = {r["signal"] for r in sp.sql("SELECT DISTINCT signal FROM signals FINAL")}
        for expected in ("latency.p99_ms", "errors.rate", "tokens.output_per_s", "cost.usd",
                         "hallucination.groundedness_mean", "quality.accuracy",
                         "llmpulse.events_per_s"):
            assert expected in names, (expected, sorted(names))
        assert any(n.startswith("bias.") for n in names)
        alerts = sp.sql("SELECT rule, signal, state, started_at FROM alerts FINAL")
        latency_alerts = [a for a in alerts if a["signal"].startswith(("latency.", "errors."))]
        assert latency_alerts, alerts
        # nothing unrelated to a slowdown fired
        unrelated = ("bias.", "hallucination.", "quality.")
        assert not [a for a in alerts if a["signal"].startswith(unrelated)], alerts
        first = sorted(latency_alerts, key=lambda a: a["started_at"])[0]
        assert first["started_at"] >= _ts_text(out["incidents"][0]["start_ts"] - 10)
        body = hooks[0]
        assert body["kind"] == "firing" and body["rule"]["name"] == body["alert"]["rule"]
        assert body["alert"]["value"] > body["alert"]["threshold"] or body["alert"]["signal"] == "latency.change"
    finally:
        server.shutdown()
        assert sp.stop() == 0


def _ts_text(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch_s))


def _signals(data_dir: Path) -> dict[tuple[str, ...], tuple[float, int]]:
    """Signals in a stopped worker's store, read directly."""
    from llmpulse.store import Store

    store = Store.open(f"chdb://{data_dir / 'store'}", ddl=False)
    try:
        rows = store.query(
            "SELECT app, model, model_version, signal, dimension, toString(ts) AS t, value, n "
            "FROM signals FINAL WHERE app != 'llmpulse'")
    finally:
        store.close()
    return {(r["app"], r["model"], r["model_version"], r["signal"], r["dimension"], r["t"]):
            (round(float(r["value"]), 6), int(r["n"])) for r in rows}


def test_two_workers_split_partitions_and_produce_the_same_signals_as_one(
        stack_factory, tmp_path) -> None:
    results = []
    late_groups: set[str] = set()
    duration = 100.0
    start = time.time() - duration - 5
    for workers in (1, 2):
        with EmbeddedBroker() as b:
            create_topics(b.bootstrap, {t: 4 for t in TOPICS})
            procs = []
            for w in range(workers):
                d = tmp_path / f"run{workers}" / f"w{w}"
                # windows of 300 s allow 150 s of lateness, more than the 100 s of event
                # time sent: no window closes before every event is in, however slowly
                # the machine keeps up with the replay; the stop flushes them all
                write_config(d, 300, 300, extra="  engine_processes: 1\n")
                procs.append(stack_factory(d / "data", LLMPULSE_KAFKA=b.bootstrap).start())
            if workers == 2:  # both must hold partitions before traffic starts
                def both_assigned(procs: list[Any] = procs) -> bool:
                    return all(any(a.startswith(TOPIC_INFERENCE)
                                   for a in p.get("/api/stats")["assignment"]) for p in procs)
                wait_for(both_assigned, 60, "a rebalance giving both workers partitions")
                owned = [set(p.get("/api/stats")["assignment"]) for p in procs]
                assert not owned[0] & owned[1]
            out = drive(b.bootstrap, seed=5, duration=duration, start=start,
                        incidents=["latency_spike:40:70"])
            total = out["inference"]

            def stored(procs: list[Any] = procs, total: int = total) -> bool:
                return sum(p.get("/api/stats")["stored"].get(TOPIC_INFERENCE, 0)
                           for p in procs) >= total
            wait_for(stored, 60, "every event stored")

            def engines(procs: list[Any] = procs, total: int = total) -> list[dict[str, Any]]:
                """The engines' counters once they count every event (refreshed once a poll)."""
                got = [p.get("/api/stats")["signals"]["engine"] for p in procs]
                return got if sum(int(e.get("events_in", 0)) for e in got) >= total else []
            for eng in wait_for(engines, 60, "the signal engines to count every event"):
                # no event can be late here unless a worker stalled longer than the
                # watermark's idle time (30 s); such a group is left out, and named
                late_groups.update(eng.get("late_dropped_by_group", {}))
            for p in procs:
                assert p.stop() == 0  # the stop flushes the open windows into signals
            merged: dict[tuple[str, ...], tuple[float, int]] = {}
            for p in procs:
                sigs = _signals(p.data_dir)
                assert not set(sigs) & set(merged), "two workers wrote the same window"
                merged.update(sigs)
            results.append(merged)
    one, two = ({k: v for k, v in r.items() if "/".join(k[:3]) not in late_groups}
                for r in results)
    assert len(one) > 50, f"{len(results[0])} windows, groups with late events: {late_groups}"
    assert len({k[:3] for k in one}) >= 2, late_groups
    assert one.keys() == two.keys()
    diff = {k: (one[k], two[k]) for k in one if one[k] != two[k]}
    assert not diff, list(diff.items())[:5]



def test_kill9_while_incidents_run_loses_no_window_and_pages_once(tmp_path) -> None:
    """Seeded traffic with incidents, once undisturbed and once with the worker killed
    (SIGKILL) mid-incident and restarted (:mod:`llmpulse.bench.fault`): the same signal
    windows with the same values, the same alerts, every PagerDuty event once."""
    from llmpulse.bench.fault import run as fault_run

    r = fault_run(tmp_path, seed=7, duration=150.0)
    # a string, not the dict: pytest cuts a message it has to repr, and the examples
    # of what differs are what a failure has to show
    why = json.dumps(r, default=str, indent=1)
    # groups with late events (a machine that fell behind the replay) are left out
    assert r["windows"] > 100 and r["alerts"] > 0 and r["pagerduty_triggers"] > 0, why
    assert r["windows_missing"] == r["windows_extra"] == 0, why
    assert r["windows_differing"] == 0, why
    assert r["alerts_lost"] == r["alerts_extra"] == 0, why
    assert r["duplicate_triggers"] == r["pages_lost"] == r["pages_extra"] == 0, why
    # no event counted twice past the engine's de-duplication. Fewer can be counted: the
    # counters live in the local snapshot, and when a later state of a partition on the
    # changelog is taken over at the restart, the events it covers are not read again
    # and were never counted here. That each event is in its windows exactly once is
    # asserted above: every window's sample size equals the reference's
    assert r["engine_events_crashed"] <= r["engine_events_reference"], why


def test_a_page_owed_at_a_crash_is_sent_after_the_restart_and_only_once(
        stack_factory, tmp_path) -> None:
    """The alert state a killed worker left: a transition saved with its page still in the
    outbox. The restarted worker sends it; the next restart does not send it again."""
    from llmpulse.detectors.base import Signal
    from llmpulse.streams.alerting import AlertManager
    from llmpulse.streams.notify import Notifier
    from llmpulse.streams.retrain_trigger import RetrainTrigger
    from llmpulse.streams.rules import Rules

    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received.clear()
    default = (Path(__file__).resolve().parents[2] / "llmpulse/rules/default.yaml").read_text()
    text = default + f"\nnotify:\n  hook:\n    type: webhook\n    url: http://127.0.0.1:{port}/alerts\n"
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(text)
    rules = Rules.from_yaml(text)
    am = AlertManager(rules)
    events = []
    for k in range(2):  # error-rate-high: for 2 windows
        events += am.process(Signal("errors.rate", 0.3, n=500, ts=1_700_000_010.0 + 10 * k,
                                    window_s=10.0, app="owed", model="m", model_version="1"))
    (ev,) = events
    state_dir = tmp_path / "owed" / "data" / "worker"
    state_dir.mkdir(parents=True)
    (state_dir / "alerts.json").write_text(json.dumps({
        "alerts": am.snapshot(), "notifier": Notifier.from_rules(rules).snapshot(),
        "trigger": RetrainTrigger.from_rules(rules).snapshot(),
        "outbox": [{"kind": ev.kind, "row": ev.row, "key": list(ev.key)}]}))
    write_config(tmp_path / "owed", 10, 20)
    sp = stack_factory(tmp_path / "owed" / "data", LLMPULSE_RULES=str(rules_path))
    try:
        sp.start()
        pages = wait_for(lambda: [h for h in _Hook.received if h["alert"]["app"] == "owed"],
                         30, "the owed page")
        assert [(p["kind"], p["alert"]["alert_id"]) for p in pages] == [("firing", ev.row["alert_id"])]
        wait_for(lambda: sp.get("/api/stats")["alerts"]["pages_owed"] == 0, 10, "an empty outbox")
        assert sp.stop() == 0
        sp.start()
        # the alert state (with its outbox, the only source of a page here: no traffic)
        # is restored before the worker serves; nothing owed is nothing sent again
        alerts = sp.get("/api/stats")["alerts"]
        assert alerts["pages_owed"] == 0, alerts
        assert alerts["alerts"].get("pages_resent_after_restart", 0) == 0, alerts
        assert len([h for h in _Hook.received if h["alert"]["app"] == "owed"]) == 1
    finally:
        server.shutdown()
        assert sp.stop() == 0
