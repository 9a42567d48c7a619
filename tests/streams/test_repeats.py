"""A copy of an event that arrives after its window closed is a repeat, not a late event.

Ingest read again after a rebalance forwards events a second time, at new
offsets of ``llmpulse.grouped``; the windows that held them may have closed.
"""

from __future__ import annotations

import json

import pytest

from llmpulse.streams.engine import SignalEngine, default_detectors
from llmpulse.streams.windows import TumblingWindows, WindowSpec

G = ("app", "m", "1")


def _ev(i: int, ts_ms: int, model: str = "m") -> dict[str, object]:
    return {"event_id": f"e{i}", "request_id": f"r{i}", "ts": ts_ms, "app": "app",
            "model": model, "model_version": "1", "latency_ms": 10.0 + i, "status": "ok",
            "input_tokens": 1, "output_tokens": 2}


def _closed(win: TumblingWindows) -> list[tuple[object, int, int]]:
    return [(g, start, len(evs)) for g, start, evs in win.close(10_000)]


def test_a_copy_for_a_closed_window_that_held_it_is_a_repeat_and_a_new_event_is_late() -> None:
    win = TumblingWindows(WindowSpec(10, 0))
    for i in range(5):
        assert win.add(G, _ev(i, 1_000 * i))
    assert _closed(win) == [(G, 0, 5)]
    assert win.add_many([(G, _ev(2, 2_000), 2_000), (G, _ev(7, 2_500), 2_500),
                         (G, _ev(4, 4_000), 4_000)]) == [1]
    assert win.repeats == 2 and win.late == {G: 1}
    # an event without an id cannot be told from a copy: late
    assert not win.add(G, {"ts": 3_000})
    assert win.repeats == 2 and win.late == {G: 2}
    # the same id in another group or window was not held there: late
    assert not win.add(("app", "other", "1"), _ev(2, 2_000))
    assert win.late[("app", "other", "1")] == 1


def test_repeats_are_recognised_for_the_horizon_only() -> None:
    win = TumblingWindows(WindowSpec(10, 0), repeat_horizon_s=20)
    win.add(G, _ev(1, 1_000))
    win.close(10_000)
    win.close(30_000)  # the window [0, 10 s) ended 20 s before: still kept
    assert not win.add(G, _ev(1, 1_000)) and win.repeats == 1
    win.close(31_000)  # past the horizon: its ids are gone, a copy counts as late
    assert not win.add(G, _ev(1, 1_000)) and win.repeats == 1 and win.late == {G: 1}


def test_the_ids_of_closed_windows_survive_a_snapshot_as_json() -> None:
    win = TumblingWindows(WindowSpec(10, 0))
    win.add(G, _ev(1, 1_000))
    win.close(10_000)
    again = TumblingWindows(WindowSpec(10, 0))
    again.restore(json.loads(json.dumps(win.snapshot())))
    assert not again.add(G, _ev(1, 1_000))
    assert again.repeats == 1 and again.late == {}


def _engine() -> SignalEngine:
    return SignalEngine({"latency": default_detectors()["latency"]},
                        {"latency": WindowSpec(10, 5)}, clock=lambda: 0.0)


@pytest.mark.parametrize("moved", [False, True])
def test_the_engine_counts_a_repeat_apart_from_late_also_after_a_hand_off(moved: bool) -> None:
    """The worker that takes a partition over knows which events the windows closed
    on the worker before it held (a worker paused past its session timeout reads
    them again when it resumes)."""
    a = _engine()
    a.add_inference([_ev(i, 1_000 * i) for i in range(1, 20)], source=(0, 0))
    assert {s.ts for s in a.advance(0.0)} == {10.0}  # [0, 10 s) closed with e1..e9
    eng = a
    if moved:
        eng = _engine()
        eng.merge(a.snapshot_groups({b"app/m/1"}, partition=0))
    assert eng.add_inference([_ev(3, 3_000), _ev(99, 3_000)], source=(0, 0)) == 1
    stats = eng.stats()
    assert stats["repeats_dropped"] == 1 and stats["late_dropped"] == 1, stats
    # a restart keeps them too
    again = _engine()
    again.restore(eng.snapshot())
    assert again.add_inference([_ev(4, 4_000)], source=(0, 0)) == 0
    assert again.stats()["repeats_dropped"] == 2
