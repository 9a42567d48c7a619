"""The fault benchmark's comparison: what counts as lost, extra or different (every
window compared, groups with late events included), and how several workers'
stores are read as one table."""

from __future__ import annotations

from typing import Any

from llmpulse.bench.fault import compare, merge_stores


def _run(signals: dict[tuple[str, ...], tuple[float, int]], alerts: list[tuple[str, ...]],
         pages: list[dict[str, Any]], late: list[str], stored: int = 100,
         rows: int = 100) -> dict[str, Any]:
    return {"signals": signals, "alerts": alerts, "pages": pages, "late_groups": late,
            "events": 100, "events_stored": stored, "event_rows": rows,
            "engine_events": 100, "late_dropped": 3 if late else 0,
            "duplicates_dropped": 0, "restart_s": 1.0, "replay": {}}


def _page(key: str, action: str, alert: str, source: str | None) -> dict[str, Any]:
    page: dict[str, Any] = {"dedup_key": key, "event_action": action}
    if source:
        page["payload"] = {"source": source, "custom_details": {"alert_id": alert,
                                                               "signal": "latency.p99_ms"}}
    return page


def test_every_window_is_compared_groups_with_late_events_included() -> None:
    w = ("a", "m", "1", "latency.p99_ms", "", "2026-01-01 00:00:10")
    late_w = ("a", "late", "1", "latency.p99_ms", "", "2026-01-01 00:00:10")
    other_w = ("a", "m", "1", "errors.rate", "", "2026-01-01 00:00:10")
    alert = ("x1", "slow", "firing", "latency.p99_ms", "", "2026-01-01 00:00:10", "a/m/1")
    late_alert = ("x2", "slow", "firing", "latency.p99_ms", "", "2026-01-01 00:00:10", "a/late/1")
    pages = [_page("k1", "trigger", "x1", "a/m@1"), _page("k2", "trigger", "x2", "a/late@1"),
             _page("k2", "resolve", "", None)]
    ref = _run({w: (1.0, 5), late_w: (2.0, 5), other_w: (0.1, 5)}, [alert, late_alert], pages, [])
    crashed = _run({w: (1.0, 5), late_w: (9.0, 4)}, [alert], pages[:1], ["a/late/1"])
    r = compare(ref, crashed)
    assert r["late_groups"] == ["a/late/1"] and "windows_void_late" not in r
    assert (r["windows"], r["windows_missing"], r["windows_differing"]) == (3, 1, 1)
    assert (r["alerts"], r["alerts_lost"], r["alerts_extra"]) == (2, 1, 0)
    assert (r["pages_lost"], r["pages_extra"], r["duplicate_triggers"]) == (2, 0, 0)


def test_stores_of_several_workers_read_as_one_table() -> None:
    w1, w2 = ("a", "m", "1", "latency.p99_ms", "", "t1"), ("a", "m", "1", "latency.p99_ms", "", "t2")
    a = {"signals": {w1: ("2026-01-01 00:00:11", 1.0, 5)},
         "alerts": {"x1": ("2026-01-01 00:00:11", ("x1", "firing"))}}
    b = {"signals": {w1: ("2026-01-01 00:00:12", 1.5, 6), w2: ("2026-01-01 00:00:21", 2.0, 3)},
         "alerts": {"x1": ("2026-01-01 00:00:09", ("x1", "older"))}}
    merged = merge_stores([a, b])
    assert merged["signals"] == {w1: (1.5, 6), w2: (2.0, 3)}
    assert merged["alerts"] == [("x1", "firing")]


def test_an_event_stored_by_two_workers_is_one_event() -> None:
    """Each worker of the bench keeps its own store: an event read again after its
    partition moved is in two of them, which one shared table keeps once. A row
    repeated within one store stays visible twice."""
    empty: dict[str, Any] = {"signals": {}, "alerts": {}}
    a = {**empty, "event_ids": {"e1", "e2", "e3"}, "event_rows": 3}
    b = {**empty, "event_ids": {"e3", "e4"}, "event_rows": 3}  # e4 twice in b
    merged = merge_stores([a, b])
    assert (merged["events_stored"], merged["event_rows"]) == (4, 5)


def test_a_page_sent_twice_and_a_lost_alert_are_counted() -> None:
    alert = ("x1", "slow", "firing", "latency.p99_ms", "", "2026-01-01 00:00:10", "a/m/1")
    trigger = _page("k1", "trigger", "x1", "a/m@1")
    r = compare(_run({}, [alert], [trigger], []), _run({}, [], [trigger, trigger], []))
    assert r["alerts_lost"] == 1 and r["duplicate_triggers"] == 1 and r["pages_extra"] == 1


def test_events_lost_and_visible_twice_are_counted() -> None:
    r = compare(_run({}, [], [], []), _run({}, [], [], [], stored=97, rows=99))
    assert (r["events_lost"], r["events_duplicated"]) == (3, 2)
    r = compare(_run({}, [], [], []), _run({}, [], [], []))
    assert (r["events_lost"], r["events_duplicated"]) == (0, 0)
