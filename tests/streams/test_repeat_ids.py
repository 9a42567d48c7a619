"""The closed windows' event ids: one set for every window length of an engine,
kept while the longest window that holds an id needs it, saved as raw bytes, and
read from the snapshots older versions wrote (one set per window length)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmpulse.detectors.latency import ErrorRates
from llmpulse.streams.engine import SignalEngine
from llmpulse.streams.repeats import RepeatIds, id_hashes
from llmpulse.streams.windows import TumblingWindows, WindowSpec

G = ("a", "x", "1")
WINDOWS = {"latency": WindowSpec(10, 5), "drift": WindowSpec(60, 30)}
# written by the engine of commit 9c5012a (ids per window length, ``closed_ids``):
# groups a/x/1 and a/y/1, events x0..x99 and y0..y99 at 0..99 s, the 10 s windows
# closed through 90 s and the 60 s ones through 60 s; ``snapshot`` (the whole
# engine) and ``group_state`` (the share of a/x/1, as handed to another worker)
OLD_STATE = Path(__file__).parent / "data" / "engine_state_closed_ids.pkl"


def _ev(i: int, model: str = "x", ts_ms: int | None = None) -> dict[str, Any]:
    return {"event_id": f"{model}{i}", "request_id": f"r{model}{i}",
            "ts": 1_000 * i if ts_ms is None else ts_ms, "app": "a", "model": model,
            "model_version": "1", "latency_ms": 10.0 + i, "status": "ok",
            "input_tokens": 1, "output_tokens": 2}


def _engine() -> SignalEngine:
    return SignalEngine({f: (lambda: [ErrorRates(min_n=1)]) for f in WINDOWS}, WINDOWS,
                        clock=lambda: 0.0, defer=False)


def _closed_all(eng: SignalEngine) -> None:
    while eng.advance(0.0):  # each call closes one more window length (close budget)
        pass


def _dropped(eng: SignalEngine) -> tuple[dict[str, int], int]:
    stats = eng.stats()
    return stats["repeats_dropped_by_window"], stats["late_dropped"]


def test_an_engine_keeps_each_id_once_for_all_its_window_lengths() -> None:
    eng = _engine()
    eng.add_inference([_ev(i, m) for i in range(100) for m in "xy"], source=(0, 0))
    _closed_all(eng)  # watermark 99 s: 10 s windows closed through 90 s, 60 s through 60 s
    assert len(eng.repeat_ids) == 180 == eng.stats()["repeat_ids"]  # x0..x89, y0..y89: once
    # in spans of 10 s (the greatest common divisor of the lengths), 60 s windows too
    assert sorted(eng.repeat_ids._ids) == [(g, s, 10_000) for g in (G, ("a", "y", "1"))
                                           for s in range(0, 90_000, 10_000)]
    assert all(len(v) == 10 for v in eng.repeat_ids._ids.values())
    # a copy for windows closed in both lengths is a repeat in both; one whose 60 s
    # window is still open is a repeat in the 10 s length and a duplicate in the other
    assert eng.add_inference([_ev(5), _ev(65), _ev(200, ts_ms=5_000)], source=(0, 0)) == 1
    assert _dropped(eng) == ({"10s": 2, "60s": 1}, 2)  # x200 is late in both lengths
    eng.flush()
    assert eng.stats()["duplicates_dropped_by_window"] == {"10s": 0, "60s": 1}


def test_ids_stay_while_the_longest_window_holding_them_is_within_the_horizon() -> None:
    shared = RepeatIds(span_ms=10_000)
    short = TumblingWindows(WindowSpec(10), repeat_horizon_s=20, repeat_ids=shared)
    long = TumblingWindows(WindowSpec(60), repeat_horizon_s=20, repeat_ids=shared)
    for win in (short, long):
        win.add(G, _ev(1))
        win.add(G, _ev(61))
    for threshold in (60_000, 80_000):
        short.close(threshold)
        long.close(threshold)
    # [0, 10 s) ended 70 s ago, past the horizon of the 10 s length; [0, 60 s) ended
    # 20 s ago: its 60 s window still needs the id
    assert not long.add(G, _ev(1)) and long.repeats == 1 and long.late == {}
    assert len(shared) == 2  # and x61, whose 10 s window closed at 80 s
    long.close(80_001)
    short.close(80_001)
    assert len(shared) == 1 and shared.holds(G, "x61", 61_000)
    assert not long.add(G, _ev(1)) and long.late == {G: 1}


def test_prune_takes_the_oldest_buckets_first_and_only_those() -> None:
    ids = RepeatIds(span_ms=1_000)
    for t in (5, 3, 9, 1, 7):  # closed out of order (groups held back, longer windows)
        ids.add(G, [_ev(t)])
    assert ids.prune(2_000) == 1 and ids.prune(2_000) == 0
    assert ids.prune(8_000) == 3 and len(ids) == 1
    assert ids.holds(G, "x9", 9_000) and not ids.holds(G, "x7", 7_000)


def test_a_dropped_group_leaves_nothing_behind() -> None:
    ids = RepeatIds(span_ms=1_000)
    other = ("a", "y", "1")
    ids.add(G, [_ev(1), _ev(2)])
    ids.add(other, [_ev(1, "y")])
    ids.drop({G})
    assert ids.groups() == {other} and ids.nbytes == 8 and len(ids._ends) == 1
    assert ids.prune(10_000) == 1 and ids.groups() == set()


def test_the_saved_ids_are_bytes_in_either_codec_and_a_bad_state_is_refused() -> None:
    eng = _engine()
    eng.add_inference([_ev(i) for i in range(100)], source=(0, 0))
    _closed_all(eng)
    state = eng.snapshot()["repeat_ids"]
    assert state["codec"] == "delta-zstd" and isinstance(state["hashes"], bytes)
    assert sum(n for *_, n in state["keys"]) == 90
    raw = np.concatenate([eng.repeat_ids._ids[(tuple(g), s, sp)] for g, s, sp, _ in state["keys"]])
    plain = {**state, "codec": "raw", "hashes": raw.astype("<u8").tobytes()}
    for st in (state, plain, {k: v for k, v in plain.items() if k != "codec"}):
        ids = RepeatIds(10_000)
        ids.merge(st)
        assert len(ids) == 90 and ids.holds(G, "x42", 42_000) and not ids.holds(G, "x42", 52_000)
    with pytest.raises(ValueError, match="repeat_ids: key .* does not fit"):
        RepeatIds(10_000).merge({**plain, "hashes": plain["hashes"][:-8]})
    with pytest.raises(ValueError, match="repeat_ids: 1 hashes not named by a key"):
        RepeatIds(10_000).merge({**plain, "hashes": plain["hashes"] + bytes(8)})
    with pytest.raises(ValueError, match="repeat_ids: codec 'lz4' not supported"):
        RepeatIds(10_000).merge({**state, "codec": "lz4"})


def _old() -> dict[str, Any]:
    with OLD_STATE.open("rb") as f:
        state: dict[str, Any] = pickle.load(f)
    return state


def test_the_fixture_is_a_state_with_ids_per_window_length() -> None:
    old = _old()
    for part in (old["snapshot"], old["group_state"]):
        assert "repeat_ids" not in part
        assert all(buf["closed_ids"] for _, _, buf in part["buffers"])


def test_a_worker_upgraded_mid_stream_reads_the_ids_its_predecessor_saved() -> None:
    eng = _engine()
    eng.restore(_old()["snapshot"])
    # x5 was in closed windows of both lengths, x65 in a closed 10 s window, x200 never
    assert eng.add_inference([_ev(5), _ev(65), _ev(5, "y"), _ev(200, ts_ms=5_000)],
                             source=(0, 0)) == 1
    assert _dropped(eng) == ({"10s": 3, "60s": 2}, 2)  # x200 is late in both lengths
    # saved again in this version's layout, once for both lengths, they still count
    again = pickle.loads(pickle.dumps(eng.snapshot()))
    assert not any("closed_ids" in buf for _, _, buf in again["buffers"])
    assert sum(n for *_, n in again["repeat_ids"]["keys"]) > 0
    after = _engine()
    after.restore(again)
    assert after.add_inference([_ev(6), _ev(7, "y")], source=(0, 0)) == 0
    assert _dropped(after) == ({"10s": 5, "60s": 4}, 2)
    # the ids read from the old layout (a set per window) and the new (per span) are
    # the same ids
    assert after.repeat_ids.holds(G, "x59", 59_000) and after.repeat_ids.holds(G, "x89", 89_000)
    assert not after.repeat_ids.holds(G, "x95", 95_000)  # its windows never closed


def test_a_group_handed_over_by_an_older_worker_keeps_its_ids() -> None:
    eng = _engine()
    eng.merge(_old()["group_state"])
    assert eng.add_inference([_ev(5), _ev(80)], source=(0, 0)) == 0
    assert _dropped(eng) == ({"10s": 2, "60s": 1}, 0)
    assert eng.repeat_ids.groups() == {G}  # only the handed-over group's
    # and it hands them on in this version's layout
    part = eng.snapshot_groups({b"a/x/1"}, partition=0)
    assert eng.drop_groups({b"a/x/1"}, partition=0) == 1 and len(eng.repeat_ids) == 0
    nxt = _engine()
    nxt.merge(part)
    assert nxt.add_inference([_ev(7)], source=(0, 0)) == 0
    assert _dropped(nxt) == ({"10s": 1, "60s": 1}, 0)


def test_hashes_are_those_older_versions_wrote() -> None:
    """A snapshot of an older version holds hashes of the same function: a window's
    set in the fixture is the hashes of its ids today."""
    import base64

    for length, _, buf in _old()["snapshot"]["buffers"]:
        for g, start, text in buf["closed_ids"]:
            if length == 10 and g == ["a", "x", "1"] and start == 20_000:
                saved = np.frombuffer(base64.b64decode(text), dtype="<u8")
                assert saved.tolist() == id_hashes([_ev(i) for i in range(20, 30)]).tolist()
                return
    raise AssertionError("no 10 s window [20, 30 s) of a/x/1 in the fixture")


def test_a_window_longer_than_the_span_fills_each_span_with_its_own_ids() -> None:
    ids = RepeatIds(span_ms=10_000)
    window = [_ev(i) for i in range(60)] + [{**_ev(99), "ts": 59_999}, {"ts": 59_999}]
    ids.add(G, window)  # a 60 s window as it closes: sorted by time
    assert [(s, len(v)) for (_, s, _), v in sorted(ids._ids.items())] == [
        (s, 11 if s == 50_000 else 10) for s in range(0, 60_000, 10_000)]
    assert all(ids.holds(G, f"x{i}", 1_000 * i) for i in range(60))
    assert not ids.holds(G, "x15", 25_000) and ids.holds(G, "x99", 59_999)


def test_windows_added_together_keep_what_they_keep_added_one_by_one() -> None:
    """A poll hashes the ids of all the windows it closes in one go: the same hashes,
    buckets and state as window by window (ids of several lengths, a NUL inside an
    id, events without an id, a window spanning several spans, a group seen twice)."""
    windows = [
        (G, [_ev(i) for i in range(5)]),
        (("a", "y", "1"), [_ev(i, "y") for i in range(3)] + [{"ts": 4_000}]),
        (G, [{**_ev(i), "event_id": f"x{i}\0tail" * (i + 1)} for i in range(20, 35)]),
        (("a", "z", "1"), []),
        (G, [_ev(i) for i in range(3, 8)]),
    ]
    one, together = RepeatIds(span_ms=10_000), RepeatIds(span_ms=10_000)
    for g, events in windows:
        one.add(g, events)
    together.add_windows(windows)
    groups = {G, ("a", "y", "1")}
    assert sorted(together._ids) == sorted(one._ids) and len(together) == len(one) == 26
    assert all(together._ids[k].tolist() == one._ids[k].tolist() for k in one._ids)
    assert together.state(groups) == one.state(groups)
    assert together.holds(G, "x21\0tail" * 22, 21_000)


def test_an_engine_let_go_is_freed_at_once_with_its_ids() -> None:
    """The shared set refers to no buffer: a replaced engine (a restore into a fresh
    one) does not wait for the cyclic garbage collector with its open windows."""
    import weakref

    eng = _engine()
    eng.add_inference([_ev(i) for i in range(100)], source=(0, 0))
    _closed_all(eng)
    ids = weakref.ref(eng.repeat_ids)
    gone = weakref.ref(eng)
    del eng
    assert gone() is None and ids() is None
