"""The alert state machine and the retrain trigger, driven by event time."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

import pytest

from llmpulse.detectors.base import Signal
from llmpulse.store import DDL, Store
from llmpulse.streams.alerting import HISTORY_WINDOWS, AlertEvent, AlertManager
from llmpulse.streams.retrain_trigger import RetrainTrigger
from llmpulse.streams.rules import Rules

T0 = 1_700_000_000.0
W = 60.0


def rules(**fields: object) -> Rules:
    base: dict[str, object] = {
        "name": "p99", "signal": "latency.p99_ms", "op": ">", "threshold": 4000,
        "for": 3, "resolve_for": 2, "cooldown": 0, "max_fires_per_hour": 100,
        "severity": "critical",
    }
    base.update(fields)
    return Rules.from_dict({"rules": [base]})


def sig(i: int, value: float, *, n: int = 500, signal: str = "latency.p99_ms",
        dimension: str = "", detail: dict | None = None, model: str = "gpt") -> Signal:
    """The signal of window ``i`` (window end ``T0 + i * W``)."""
    return Signal(signal, value, n=n, dimension=dimension, ts=T0 + i * W, window_s=W,
                  app="support", model=model, model_version="1", detail=detail or {})


def run(am: AlertManager, values: Iterable[float], start: int = 1) -> list[tuple[int, str]]:
    """(window index, kind) of each event while feeding ``values``."""
    out = []
    for i, v in enumerate(values, start):
        out += [(i, e.kind) for e in am.process(sig(i, v))]
    return out


HI, LO = 5000.0, 1000.0


def test_fires_after_for_consecutive_breaches_and_a_healthy_window_resets() -> None:
    am = AlertManager(rules())
    assert run(am, [HI, HI, LO, HI, HI, HI]) == [(6, "firing")]
    row = am.open_alerts()[0]
    assert row["started_at"] == T0 + 3 * W  # start of window 4, the first of the streak
    assert row["updated_at"] == T0 + 6 * W
    detail = json.loads(row["detail"])
    assert [v["value"] for v in detail["values"]] == [HI, HI, HI]
    assert detail["window"] == {"start": T0 + 3 * W, "end": T0 + 6 * W}
    assert detail["n"] == 500 and detail["for"] == 3


def test_resolves_after_resolve_for_healthy_windows_only() -> None:
    am = AlertManager(rules())
    events = run(am, [HI, HI, HI, LO, HI, LO, LO, LO])
    assert events == [(3, "firing"), (7, "resolved")]
    assert am.open_alerts() == []


def test_one_open_alert_per_key_and_separate_keys_per_dimension() -> None:
    am = AlertManager(rules(signal="bias.accuracy_gap", op="<", threshold=-0.1, **{"for": 1}))
    fired = []
    for i in range(1, 6):
        for dim in ("language=de", "language=fr"):
            fired += am.process(sig(i, -0.3, signal="bias.accuracy_gap", dimension=dim))
    assert [(e.kind, e.row["dimension"]) for e in fired] == [
        ("firing", "language=de"), ("firing", "language=fr")]
    assert len(am.open_alerts()) == 2
    assert fired[0].row["alert_id"] != fired[1].row["alert_id"]
    assert fired[0].dedup_key != fired[1].dedup_key


def test_cooldown_holds_a_new_fire_until_it_has_passed_in_event_time() -> None:
    am = AlertManager(rules(cooldown="10m", **{"for": 1, "resolve_for": 1}))
    # resolve at window 2; cooldown ends at window 12; breaches in 3..14
    events = run(am, [HI, LO] + [HI] * 12)
    assert events == [(1, "firing"), (2, "resolved"), (12, "firing")]
    assert am.stats()["suppressed_cooldown"] == 9


def test_max_fires_per_hour_suppresses_flapping() -> None:
    am = AlertManager(rules(max_fires_per_hour=2, **{"for": 1, "resolve_for": 1}))
    events = run(am, [HI, LO] * 60)  # flaps every window for two hours
    fires = [i for i, k in events if k == "firing"]
    assert fires == [1, 3, 61, 63]  # two per hour of event time, then quiet
    assert am.stats()["suppressed_rate"] == 56


def test_small_windows_are_ignored_and_do_not_break_a_streak() -> None:
    am = AlertManager(rules(min_n=100))
    events = []
    for i, (v, n) in enumerate([(HI, 500), (HI, 500), (LO, 10), (HI, 500)], 1):
        events += [(i, e.kind) for e in am.process(sig(i, v, n=n))]
    assert events == [(4, "firing")]
    assert am.stats()["ignored"] == 1


def test_a_gap_in_windows_breaks_a_pending_streak() -> None:
    am = AlertManager(rules())
    am.process(sig(1, HI))
    am.process(sig(2, HI))
    assert am.process(sig(6, HI)) == []  # three windows missing: start again
    assert am.process(sig(7, HI)) == []
    assert [e.kind for e in am.process(sig(8, HI))] == ["firing"]


def test_replayed_and_out_of_order_signals_are_ignored() -> None:
    am = AlertManager(rules(**{"for": 2}))
    first = am.process(sig(1, HI)) + am.process(sig(2, HI))
    assert [e.kind for e in first] == ["firing"]
    assert am.process(sig(2, HI)) == [] and am.process(sig(1, LO)) == []
    assert am.stats()["replayed"] == 2


def fb(i: int, value: float, revision: int = 0, *, n: int = 500) -> Signal:
    """Window ``i`` of a feedback signal, in its ``revision``-th computation."""
    return sig(i, value, n=n, detail={"revision": revision})


def test_a_recomputed_window_that_now_breaches_counts_once() -> None:
    """Late feedback re-emits a window: healthy on its first computation, breaching
    with more labels. It joins the streak it interrupted; the same value again, or
    an older window recomputed the same, changes nothing."""
    am = AlertManager(rules(**{"for": 3}))
    assert am.process(fb(1, HI)) + am.process(fb(2, LO)) == []
    assert am.process(fb(2, LO, 1)) == []  # recomputed, still healthy
    assert am.process(fb(2, HI, 2)) == []  # now breaching: streak of 2
    assert am.process(fb(2, HI, 2)) == []  # the same again: a replay
    fired = am.process(fb(3, HI))
    assert [e.kind for e in fired] == ["firing"]
    assert fired[0].row["started_at"] == sig(1, HI).ts - sig(1, HI).window_s
    assert am.process(fb(1, HI, 1)) == []
    st = am.stats()
    assert (st["recomputed_breach"], st["replayed"]) == (1, 3)
    # and the state survives a restart mid-way
    am2 = AlertManager(rules(**{"for": 2}))
    am2.process(fb(1, HI))
    am2.process(fb(2, LO))
    am3 = AlertManager(rules(**{"for": 2}))
    am3.restore(json.loads(json.dumps(am2.snapshot())))
    assert [e.kind for e in am3.process(fb(2, HI, 1))] == ["firing"]


def test_recomputed_windows_complete_a_streak_in_whichever_order_they_come() -> None:
    """The first computations of four windows: healthy, healthy, too few labels,
    healthy. Their recomputations, newest first, breach: the alert fires once, at the
    third breaching window, as it would have had every label come in time; the manager
    without recomputation (signals of a key that is never recomputed) stays quiet."""
    firsts = [fb(1, LO), fb(2, LO), fb(3, HI, n=10), fb(4, LO), fb(5, LO)]
    later = [fb(4, HI, 1), fb(3, HI, 1), fb(2, HI, 1)]
    am = AlertManager(rules(**{"for": 3, "min_n": 100}))
    assert [e for s in firsts for e in am.process(s)] == []
    events = [e for s in later for e in am.process(s)]
    assert [e.kind for e in events] == ["firing"]
    row = events[0].row
    assert (row["started_at"], row["updated_at"]) == (T0 + 1 * W, T0 + 4 * W)
    assert row["value"] == HI
    assert am.stats()["open"] == 1
    # a window older than the kept ones changes nothing
    assert am.process(fb(1, HI, 1)) == []
    # the same windows in time would have fired the same alert
    direct = AlertManager(rules(**{"for": 3, "min_n": 100}))
    in_time = [e for s in [fb(1, LO), fb(2, HI), fb(3, HI), fb(4, HI)] for e in direct.process(s)]
    assert [(e.kind, e.row["alert_id"]) for e in in_time] == [("firing", row["alert_id"])]
    # unmarked signals keep no history: windows 3 and 2 again are replays (window 4
    # comes to a key forgotten as idle, as a new window), and nothing fires
    plain = AlertManager(rules(**{"for": 3, "min_n": 100}))
    for s in [*firsts, *later]:
        assert plain.process(sig(int((s.ts - T0) / W), s.value, n=s.n)) == []
    assert plain.stats()["replayed"] == 2


def test_a_recomputation_that_breaks_a_streak_or_heals_an_open_alert() -> None:
    """A recomputed window that no longer breaches takes its part of a pending streak
    back; one after the firing counts as healthy, and resolves the alert when it makes
    ``resolve_for`` healthy windows in a row. A transition made stays made."""
    am = AlertManager(rules(**{"for": 3, "resolve_for": 2}))
    assert am.process(fb(1, HI)) + am.process(fb(2, HI)) == []
    assert am.process(fb(1, LO, 1)) == []  # the streak is now window 2 alone
    assert am.process(fb(3, HI)) == []
    fired = am.process(fb(4, HI))
    assert [e.row["started_at"] for e in fired] == [T0 + 1 * W]
    assert am.process(fb(5, LO)) + am.process(fb(6, HI)) == []
    resolved = am.process(fb(6, LO, 1))
    assert [(e.kind, e.row["resolved_at"]) for e in resolved] == [("resolved", T0 + 6 * W)]
    assert am.process(fb(3, LO, 1)) == []  # before the resolve: nothing reopens
    assert am.process(fb(7, HI)) == []
    assert am.stats()["fired"] == 1


def test_recomputed_keys_keep_a_bounded_history_and_move_with_their_group() -> None:
    am = AlertManager(rules(**{"for": 2}))
    for i in range(1, 200):
        am.process(fb(i, LO))
    (state,) = am.snapshot()["states"]
    assert len(state["history"]) == HISTORY_WINDOWS
    assert am.process(fb(199 - HISTORY_WINDOWS, HI, 1)) == []  # too old: a replay
    other = AlertManager(rules(**{"for": 2}))
    other.merge(json.loads(json.dumps(am.export(lambda app, model, version: True))))
    assert other.process(fb(198, HI, 1)) == []
    assert [e.row["started_at"] for e in other.process(fb(199, HI, 1))] == [T0 + 197 * W]


def test_not_significant_windows_count_as_healthy() -> None:
    am = AlertManager(rules(signal="bias.*", op="<", threshold=-0.1, **{"for": 2, "resolve_for": 1}))
    def s(i: int, significant: bool) -> Signal:
        return sig(i, -0.3, signal="bias.accuracy_gap", dimension="tier=free",
                   detail={"significant": significant, "p_adjusted": 0.001 if significant else 0.2})
    kinds = [(i, e.kind) for i, sg in enumerate([True, False, True, True, False], 1)
             for e in am.process(s(i, sg))]
    assert kinds == [(4, "firing"), (5, "resolved")]


def test_change_alerts_resolve_after_quiet_event_time() -> None:
    rs = Rules.from_dict({"rules": [{"name": "slower", "signal": "latency.change", "change": True,
                                     "resolve_after": "10m", "cooldown": 0}]})
    am = AlertManager(rs)
    fired = am.process(sig(1, 1.0, signal="latency.change"))
    assert [e.kind for e in fired] == ["firing"]
    assert am.process(sig(5, 900.0)) == []  # other signals move event time
    assert am.advance(T0 + 10 * W) == []
    [resolved] = am.advance(T0 + 11 * W)
    assert resolved.kind == "resolved"
    assert resolved.row["resolved_at"] == T0 + 11 * W  # last breach + resolve_after
    assert resolved.detail["resolution"] == "no breach for 600 s"


def test_rows_have_exactly_the_alerts_table_columns_and_insert(tmp_path) -> None:
    am = AlertManager(rules(**{"for": 1, "resolve_for": 1}))
    events = am.process(sig(1, HI)) + am.process(sig(2, LO))
    columns = re.findall(r"^\s+(\w+) ", DDL["alerts"].split("(", 1)[1], re.MULTILINE)
    for ev in events:
        assert list(ev.row) == columns
        assert isinstance(ev.row["detail"], str) and json.loads(ev.row["detail"])
    store = Store.open(f"chdb://{tmp_path}/store")
    try:
        store.insert_rows("alerts", [e.row for e in events])
        rows = store.query("SELECT alert_id, state, value, resolved_at FROM alerts FINAL")
    finally:
        store.close()
    assert rows == [{"alert_id": events[0].row["alert_id"], "state": "resolved", "value": LO,
                     "resolved_at": "2023-11-14 22:15:20.000"}]


def test_links_dashboard_runbook_and_report() -> None:
    rs = rules(runbook="https://runbooks.example/p99", **{"for": 1})
    am = AlertManager(rs, dashboard_url="http://grafana.local/d/llmpulse/", link_padding_s=600)
    [ev] = am.process(sig(1, HI, dimension="", detail={"report": "/r/drift.html", "p": [1, 2]}))
    links = ev.detail["links"]
    assert links["runbook"] == "https://runbooks.example/p99"
    assert links["report"] == "/r/drift.html"
    url = urlsplit(links["dashboard"])
    assert url.scheme + "://" + url.netloc + url.path == "http://grafana.local/d/llmpulse"
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert q == {"var-signal": "latency.p99_ms", "var-app": "support", "var-model": "gpt",
                 "var-model_version": "1", "from": str(int((T0 - 600) * 1000)),
                 "to": str(int((T0 + W + 600) * 1000))}
    assert ev.detail["signal_detail"] == {"report": "/r/drift.html"}  # lists stay out
    assert "dashboard" not in AlertManager(rs).process(sig(1, HI))[0].detail["links"]


def test_snapshot_restore_at_every_point_gives_the_same_events() -> None:
    rs = rules(cooldown="3m", max_fires_per_hour=3, **{"for": 2, "resolve_for": 2})
    values = [HI, HI, LO, HI, LO, LO, HI, HI, HI, LO, LO, HI, HI, HI, HI, LO, LO, LO, HI, HI]
    signals = [sig(i, v) for i, v in enumerate(values, 1)]
    whole = AlertManager(rs)
    reference = [e.row for s in signals for e in whole.process(s)]
    assert len(reference) >= 4
    for cut in range(len(signals) + 1):
        first = AlertManager(rs)
        rows = [e.row for s in signals[:cut] for e in first.process(s)]
        state = json.loads(json.dumps(first.snapshot()))
        second = AlertManager(rs)
        second.restore(state)
        # replaying the last few signals after a restart changes nothing
        rows += [e.row for s in signals[max(0, cut - 3):] for e in second.process(s)]
        assert rows == reference, cut


def test_restore_drops_states_of_removed_rules() -> None:
    am = AlertManager(rules(**{"for": 1}))
    am.process(sig(1, HI))
    other = AlertManager(Rules.from_dict({"rules": [{"name": "x", "signal": "errors.rate", "op": ">", "threshold": 1}]}))
    other.restore(am.snapshot())
    assert other.open_alerts() == [] and other.stats()["tracked_keys"] == 0
    with pytest.raises(ValueError, match="unknown alert state version"):
        other.restore({"version": 9})


def test_healthy_keys_are_not_remembered() -> None:
    am = AlertManager(rules())
    for i in range(1, 50):
        for dim in range(20):
            am.process(sig(i, LO, dimension=f"d{dim}"))
    assert am.stats()["tracked_keys"] == 0


# -- retrain trigger -------------------------------------------------------------


def retrain_events(model: str = "intent-router", start: int = 1) -> list[AlertEvent]:
    rs = Rules.from_dict({"rules": [
        {"name": "drift", "signal": "drift.*", "op": ">=", "threshold": 0.25,
         "actions": ["notify", "retrain"], "cooldown": 0},
        {"name": "p99", "signal": "latency.p99_ms", "op": ">", "threshold": 4000},
    ]})
    am = AlertManager(rs)
    out = []
    for i, name in enumerate(["drift.psi", "drift.ks", "latency.p99_ms"], start):
        out += am.process(sig(i, 5000.0, signal=name, dimension="x", model=model))
    return out


def test_retrain_requests_one_per_model_while_pending() -> None:
    trig = RetrainTrigger(window_s=6 * 3600, pending_ttl_s=3600)
    events = retrain_events()
    assert [e.row["rule"] for e in events] == ["drift", "drift", "p99"]
    reqs = [trig.process(e) for e in events]
    assert reqs[1:] == [None, None]  # second drift alert: pending; p99: no retrain action
    req = reqs[0]
    assert req is not None
    assert req == {
        "request_id": req["request_id"], "model": "intent-router", "model_version": "1",
        "app": "support", "alert_id": events[0].row["alert_id"], "rule": "drift",
        "signal": "drift.psi", "window": {"start": T0 + W - 6 * 3600, "end": T0 + W},
        "ts": T0 + W,
    }
    assert trig.process(events[0]) is None  # the same alert replayed
    assert trig.process(retrain_events(model="other")[0])["model"] == "other"
    assert trig.complete("intent-router") and not trig.complete("intent-router")
    again = trig.process(events[1])
    assert again is not None and again["alert_id"] == events[1].row["alert_id"]


def test_a_pending_request_expires_after_its_ttl_in_event_time() -> None:
    trig = RetrainTrigger(window_s=3600, pending_ttl_s=30 * 60)
    assert trig.process(retrain_events()[0]) is not None
    assert trig.process(retrain_events(start=20)[0]) is None  # 19 min later
    late = trig.process(retrain_events(start=40)[0])  # 39 min later
    assert late is not None and trig.counters["expired"] == 1


def test_retrain_state_round_trips_and_request_ids_are_stable() -> None:
    a, b = RetrainTrigger(), RetrainTrigger()
    ev = retrain_events()[0]
    req = a.process(ev)
    b.restore(json.loads(json.dumps(a.snapshot())))
    assert b.process(retrain_events(start=2)[0]) is None
    assert RetrainTrigger().process(ev)["request_id"] == req["request_id"]  # type: ignore[index]
    assert RetrainTrigger.from_rules(Rules.default(env={})).window_s == 86400.0


def test_resolve_after_counts_the_alerts_own_series_not_other_families() -> None:
    # A catch-up: the drift family's minute windows run half an hour ahead of the
    # latency family's ten-second windows. A latency change alert must resolve on
    # latency time, as it would live: the second detection, 5 min after the first,
    # keeps it open, and it resolves 10 min after that one.
    rs = Rules.from_dict({"rules": [{"name": "slower", "signal": "latency.change", "change": True,
                                     "resolve_after": "10m", "cooldown": 0}]})
    am = AlertManager(rs)

    def lat(t: float, name: str = "latency.p99_ms", value: float = 900.0) -> Signal:
        return Signal(name, value, n=500, ts=T0 + t, window_s=10.0, app="support", model="gpt",
                      model_version="1")

    def drift(t: float) -> Signal:
        return Signal("drift.psi", 0.01, n=500, ts=T0 + t, window_s=60.0, app="support",
                      model="gpt", model_version="1", dimension="latency_ms")

    events = am.process(lat(10, "latency.change", 1.0))
    events += am.process_many(drift(60 * i) for i in range(1, 31))  # drift is at +30 min
    events += am.process_many(lat(t) for t in range(20, 300, 10))
    events += am.process(lat(300, "latency.change", 1.0))  # still slow 5 min later
    events += am.process_many(lat(t) for t in range(310, 1000, 10))
    assert [(e.kind, e.row["updated_at"] - T0) for e in events] == [
        ("firing", 10.0), ("resolved", 900.0)]


def test_series_clocks_survive_a_restart() -> None:
    rs = Rules.from_dict({"rules": [{"name": "slower", "signal": "latency.change", "change": True,
                                     "resolve_after": "10m", "cooldown": 0}]})
    am = AlertManager(rs)
    am.process(sig(1, 1.0, signal="latency.change"))
    am.process(sig(8, 900.0))
    again = AlertManager(rs)
    again.restore(json.loads(json.dumps(am.snapshot())))
    assert again.process(sig(30, 0.01, signal="drift.psi", dimension="latency_ms")) == []
    [resolved] = again.process(sig(11, 900.0))
    assert resolved.kind == "resolved" and resolved.row["resolved_at"] == T0 + 11 * W


def test_keys_kept_for_their_windows_are_forgotten_once_those_are_too_old(monkeypatch) -> None:
    """A retired model version's feedback keys go once their windows can no longer be
    computed again; a live group's stay, and so does a stopped group's open alert."""
    from llmpulse.streams import alerting

    monkeypatch.setattr(alerting, "SWEEP_EVERY", 10)
    am = AlertManager(rules(**{"for": 1}))
    for i in range(1, 6):
        am.process(sig(i, LO, model="old", detail={"revision": 0}))
        am.process(sig(i, HI if i == 5 else LO, model="firing", detail={"revision": 0}))
    assert am.stats()["tracked_keys"] == 2 and am.stats()["open"] == 1
    for i in range(6, 6 + HISTORY_WINDOWS):
        am.process(fb(i, LO))
    assert am.stats()["tracked_keys"] == 3, "not yet: the old windows may still change"
    for i in range(6 + HISTORY_WINDOWS, 6 + HISTORY_WINDOWS + 20):
        am.process(fb(i, LO))
    assert {k[3] for k in am._states} == {"gpt", "firing"}
    assert am.stats()["swept"] == 1


def test_an_alert_fired_on_going_through_windows_again_explains_its_own_window() -> None:
    """Three windows healthy on their first computation breach when recomputed, the
    last window first: the alert fires at window 3, and its detail is window 3's
    (the breaching value's own explanation), not that of the recomputation that
    came last (window 1)."""
    am = AlertManager(rules(**{"for": 3}))
    for i in (1, 2, 3):
        assert am.process(fb(i, LO)) == []
    fired = []
    for i in (3, 2, 1):
        fired += am.process(sig(i, HI + i, detail={"revision": 1, "window": f"w{i}"}))
    [alert] = fired
    assert alert.row["updated_at"] == T0 + 3 * W
    assert alert.detail["signal_detail"] == {"revision": 1, "window": "w3"}
    assert [v["value"] for v in alert.detail["values"]] == [HI + 1, HI + 2, HI + 3]
    # going through the windows again while it is open does not add their values twice
    assert am.process(fb(4, HI)) + am.process(fb(5, LO)) == []
    assert am.process(fb(5, HI, 1)) == []
    (state,) = am.snapshot()["states"]
    kept = [v[0] for v in state["values"]]
    assert len(kept) == len(set(kept)) and kept[-2:] == [T0 + 4 * W, T0 + 5 * W]


def test_a_held_back_fire_is_counted_once_per_window_however_often_it_is_gone_through() -> None:
    """Windows that would fire inside the cooldown are suppressed; recomputing the
    key's windows goes through them again without counting them again, and counts a
    window that newly joins the suppressed streak."""
    am = AlertManager(rules(**{"for": 2, "resolve_for": 1, "cooldown": 10 * W}))
    assert [e.kind for e in am.process(fb(1, HI)) + am.process(fb(2, HI))] == ["firing"]
    assert [e.kind for e in am.process(fb(3, LO))] == ["resolved"]
    for i in (4, 5, 6):  # 5 and 6 would fire: suppressed
        assert am.process(fb(i, HI)) == []
    assert am.stats()["suppressed_cooldown"] == 2
    assert am.process(fb(7, LO)) + am.process(fb(8, LO)) == []
    assert am.process(fb(8, HI, 1)) == []  # 4-6 gone through again: nothing new held back
    assert am.stats()["suppressed_cooldown"] == 2
    assert am.process(fb(7, HI, 1)) == []  # 7 and 8 join the streak: both held back
    assert am.stats()["suppressed_cooldown"] == 4
    assert am.stats()["recomputed"] == 2


def test_an_app_replaying_old_windows_keeps_its_keys_beside_a_live_app(monkeypatch) -> None:
    """The sweep measures a key's age by its own app's newest signal: a live app far
    ahead in event time does not sweep the keys of an app that replays older data,
    whose late labels still complete a streak."""
    from llmpulse.streams import alerting

    monkeypatch.setattr(alerting, "SWEEP_EVERY", 5)
    am = AlertManager(rules(**{"for": 2}))

    def of(app: str, i: int, value: float, revision: int = 0) -> Signal:
        return Signal("latency.p99_ms", value, n=500, ts=T0 + i * W, window_s=W, app=app,
                      model="gpt", model_version="1", detail={"revision": revision})

    am.process(of("backfill", 1, LO))
    am.process(of("backfill", 2, LO))
    for i in range(10 * HISTORY_WINDOWS, 10 * HISTORY_WINDOWS + 20):
        am.process(of("live", i, LO))
    assert am.stats()["swept"] == 0
    assert am.process(of("backfill", 1, HI, 1)) == []
    [fired] = am.process(of("backfill", 2, HI, 1))
    assert (fired.row["app"], fired.row["started_at"]) == ("backfill", T0)
