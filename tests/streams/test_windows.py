"""Event-time windows and the watermark: when windows close, what is late."""

from __future__ import annotations

import orjson
import pytest

from llmpulse.streams.windows import (
    DEFAULT_WINDOWS,
    TumblingWindows,
    Watermark,
    WindowSpec,
    event_ms,
)

G = ("support", "router", "1")
H = ("support", "answer", "2")


def ev(ts_ms: int, eid: str = "") -> dict:
    return {"ts": ts_ms, "event_id": eid or f"e{ts_ms}"}


def test_spec_alignment_and_validation() -> None:
    spec = WindowSpec(10.0, 5.0)
    assert spec.start_of(1_700_000_009_999) == 1_700_000_000_000
    assert spec.start_of(1_700_000_010_000) == 1_700_000_010_000
    assert DEFAULT_WINDOWS["latency"] == WindowSpec(10.0, 5.0)
    assert DEFAULT_WINDOWS["drift"] == WindowSpec(60.0, 30.0)
    with pytest.raises(ValueError):
        WindowSpec(0.0)
    with pytest.raises(ValueError):
        WindowSpec(10.0, -1.0)
    with pytest.raises(ValueError):
        WindowSpec(0.0005)


def test_window_closes_exactly_when_watermark_minus_lateness_reaches_its_end() -> None:
    spec = WindowSpec(10.0, 5.0)
    win = TumblingWindows(spec)
    for ts in (0, 3_000, 9_999, 10_000):
        assert win.add(G, ev(ts))
    # watermark 14_999: threshold 9_999 < end 10_000, nothing closes
    assert win.close(14_999 - spec.lateness_ms) == []
    closed = win.close(15_000 - spec.lateness_ms)
    assert [(g, s, [e["ts"] for e in evs]) for g, s, evs in closed] == [(G, 0, [0, 3_000, 9_999])]
    assert len(win) == 1  # [10 s, 20 s) still open


def test_late_events_are_dropped_and_counted_per_group() -> None:
    win = TumblingWindows(WindowSpec(10.0, 5.0))
    win.add(G, ev(1_000))
    win.add(H, ev(1_000))
    win.close(10_000)
    assert not win.add(G, ev(9_999))
    assert not win.add(G, ev(5_000))
    assert not win.add(H, ev(0))
    assert win.add(G, ev(10_000))  # next window is still open
    assert win.late == {G: 2, H: 1}


def test_closed_events_are_in_event_time_order_whatever_the_arrival_order() -> None:
    win = TumblingWindows(WindowSpec(10.0))
    for ts, eid in [(5_000, "b"), (1_000, "z"), (5_000, "a"), (2_000, "y")]:
        win.add(G, ev(ts, eid))
    [(_, _, evs)] = win.close(10_000)
    assert [e["event_id"] for e in evs] == ["z", "y", "a", "b"]


def test_windows_close_oldest_first_across_groups_and_close_all() -> None:
    win = TumblingWindows(WindowSpec(10.0))
    for g, ts in [(H, 25_000), (G, 1_000), (H, 2_000), (G, 12_000)]:
        win.add(g, ev(ts))
    assert [(g, s) for g, s, _ in win.close(20_000)] == [(H, 0), (G, 0), (G, 10_000)]
    assert [(g, s) for g, s, _ in win.close_all()] == [(H, 20_000)]
    assert win.close_all() == []


def test_snapshot_round_trips_through_json() -> None:
    win = TumblingWindows(WindowSpec(10.0, 5.0))
    win.add(G, ev(1_000))
    win.add(G, ev(12_000))
    win.close(10_000)
    win.add(G, ev(2_000))
    other = TumblingWindows(WindowSpec(10.0, 5.0))
    other.restore(orjson.loads(orjson.dumps(win.snapshot())))
    assert other.late == {G: 1}
    assert not other.add(G, ev(3_000))
    assert [(g, s, len(e)) for g, s, e in other.close(20_000)] == [(G, 10_000, 1)]


def test_watermark_is_the_min_over_active_sources() -> None:
    wm = Watermark(idle_s=30.0)
    assert wm.current(0.0) is None
    wm.observe(0, 100_000, now=0.0)
    wm.observe(1, 40_000, now=0.0)
    assert wm.current(1.0) == 40_000  # partition 1 is behind: nothing of it is late yet
    wm.observe(1, 90_000, now=10.0)
    assert wm.current(10.0) == 90_000
    # partition 0 goes quiet; partition 1 keeps going and now leads
    wm.observe(1, 95_000, now=35.0)
    assert wm.current(35.0) == 95_000
    wm.observe(1, 120_000, now=36.0)
    assert wm.current(36.0) == 120_000  # idle partition 0 no longer holds it at 100_000


def test_watermark_never_goes_back_and_extrapolates_when_all_idle() -> None:
    wm = Watermark(idle_s=5.0)
    wm.observe("a", 50_000, now=0.0)
    assert wm.current(0.0) == 50_000
    wm.observe("b", 10_000, now=1.0)  # a new, slower source appears
    assert wm.current(1.0) == 50_000  # monotonic
    # every source idle: event time advances with the wall clock from the furthest
    assert wm.current(10.0) == 50_000 + 10_000
    wm.forget("a")
    assert wm.current(10.0) == 60_000


def test_watermark_restore_does_not_trust_old_wall_times() -> None:
    wm = Watermark(idle_s=5.0)
    wm.observe(0, 50_000, now=0.0)
    wm.observe(1, 20_000, now=0.0)
    assert wm.current(0.0) == 20_000
    state = orjson.loads(orjson.dumps(wm.snapshot()))
    again = Watermark()
    again.restore(state, now=1_000.0)
    # both sources count as just heard from: no extrapolation over the downtime
    assert again.current(1_001.0) == 20_000
    assert again.idle_s == 5.0


def test_event_ms_accepts_rfc3339() -> None:
    assert event_ms({"ts": "2023-11-14T22:13:20.5Z"}) == 1_700_000_000_500


def test_a_closed_window_keeps_one_event_per_event_id() -> None:
    win = TumblingWindows(WindowSpec(10.0, 0.0))
    events = [{"ts": 1_000 + i, "event_id": f"e{i}", "v": i} for i in range(5)]
    for ev in [*events, events[3], dict(events[1]), events[3]]:  # replays, in any order
        assert win.add(G, ev)
    no_id = [{"ts": 2_000, "v": "a"}, {"ts": 2_000, "v": "b"}]  # no event_id: never merged
    assert win.add_many([(G, e, 2_000) for e in no_id]) == []
    [(group, start, got)] = win.close(10_000)
    assert (group, start) == (G, 0)
    assert [e.get("event_id") for e in got] == ["e0", "e1", "e2", "e3", "e4", None, None]
    assert [e["v"] for e in got] == [0, 1, 2, 3, 4, "a", "b"]
    assert win.duplicates == 3
    other = TumblingWindows(WindowSpec(10.0, 0.0))
    other.restore(win.snapshot())
    assert other.duplicates == 3


def test_add_many_equals_add_one_by_one() -> None:
    spec = WindowSpec(10.0, 0.0)
    one, many = TumblingWindows(spec), TumblingWindows(spec)
    one.close(20_000)
    many.close(20_000)
    items = [((G, H)[i % 2], {"ts": ts, "event_id": str(i)}, ts)
             for i, ts in enumerate([5_000, 25_000, 19_999, 20_000, 31_000, 1])]
    late = [i for i, (g, e, ts) in enumerate(items) if not one.add(g, e, ts)]
    assert many.add_many(items) == late == [0, 2, 5]
    assert many.late == one.late
    assert many.close_all() == one.close_all()
