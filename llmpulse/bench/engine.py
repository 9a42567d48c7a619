"""``python -m llmpulse.bench.engine``: CPU of the signal engine alone, per event.

Feeds simulator inference events (with a share of feedback) to a
:class:`~llmpulse.streams.engine.SignalEngine` the way the engine process gets them:
newline-joined JSON chunks through :func:`~llmpulse.streams.engine_process.add_chunks`,
one chunk per source partition in turn, a :meth:`~llmpulse.streams.engine.SignalEngine.poll`
after each chunk with the clock following event time (``--rate`` events/s).
Windows are shortened (5 s latency, 10 s for the other families) so they
close within a run. Reports:

* ``add``: decoding plus windowing plus the feedback join, us per event;
* ``poll``: closing windows, building batches and running detectors, us per event;
* events/s of the two together, and seconds per detector;
* snapshot: ``pickle.dumps(engine.snapshot())`` (what the engine process
  writes) with ``--snapshot-events`` events buffered in open windows, its
  size, and the time to restore it.

    python -m llmpulse.bench.engine --events 400000 --json engine.json

>>> r = run(events=3000, snapshot_events=500, chunk=500)
>>> r["events"], r["snapshot"]["buffered_events"], r["events_per_s"] > 0
(3000, 500, True)
"""

from __future__ import annotations

import argparse
import gc
import heapq
import pickle
import random
import sys
import time
from typing import Any

from llmpulse.bench._stack import finish

__all__ = ["format_table", "make_lines", "run"]

WINDOWS_S: dict[str, tuple[float, float]] = {
    "latency": (5.0, 2.5),
    "drift": (10.0, 5.0),
    "bias": (10.0, 5.0),
    "hallucination": (10.0, 5.0),
    "quality": (10.0, 5.0),
}
"""Shortened windows (length, lateness) so that a run closes several of each."""


def make_lines(
    n: int, *, rate: float = 20_000.0, feedback_share: float = 0.05, seed: int = 7,
    start_s: float = 1_700_000_000.0, groups: int | None = None,
) -> list[tuple[int, bytes]]:
    """``n`` inference lines (and about ``feedback_share * n`` feedback lines,
    2 s after their inference) as (event time ms, JSON bytes), in time order;
    with ``groups``, spread round-robin over that many model versions.

    >>> import orjson
    >>> lines = make_lines(40, feedback_share=0.0, groups=3)
    >>> sorted({orjson.loads(line)["model_version"] for _, line in lines})
    ['g0', 'g1', 'g2']
    """
    import orjson

    from llmpulse.bench._stack import event_pool
    from llmpulse.bench.cost import grouped_pool

    rng = random.Random(seed)
    pool = event_pool(min(n, 20_000) or 1)
    if groups:
        pool = grouped_pool(pool, groups)
    infs: list[tuple[int, bytes]] = []
    fbs: list[tuple[int, bytes]] = []
    for i in range(n):
        ev = dict(pool[i % len(pool)])
        rid = f"req_{rng.getrandbits(64):016x}"
        ts = int((start_s + i / rate) * 1000)
        ev.update(event_id=f"{rng.getrandbits(128):032x}", request_id=rid, ts=ts, app="load")
        infs.append((ts, orjson.dumps(ev)))
        if rng.random() < feedback_share:
            fb: dict[str, Any] = {"event_id": f"{rng.getrandbits(128):032x}", "request_id": rid,
                                  "ts": ts + 2000, "app": "load"}
            if "prediction" in ev:
                fb["label"] = rng.choice(["billing", "technical", "account", "other"])
            else:
                fb["score"] = rng.choice([1.0, -1.0])
                fb["hallucination"] = rng.random() < 0.1
            fbs.append((ts + 2000, orjson.dumps(fb)))
    return list(heapq.merge(infs, fbs, key=lambda t: t[0]))


def _engine(clock: Any) -> Any:
    from llmpulse.streams.engine import SignalEngine, default_detectors
    from llmpulse.streams.windows import WindowSpec

    windows = {fam: WindowSpec(length, late) for fam, (length, late) in WINDOWS_S.items()}
    return SignalEngine(default_detectors(embedding=False), windows, clock=clock)


def run(
    events: int = 400_000, *, snapshot_events: int = 200_000, chunk: int = 1000,
    rate: float = 5_000.0, feedback_share: float = 0.05, partitions: int = 4,
    gc_tuning: bool = True, quick: bool = False, groups: int | None = None,
) -> dict[str, Any]:
    import llmpulse.streams.engine_process as ep

    if quick:
        events, snapshot_events = min(events, 100_000), min(snapshot_events, 50_000)

    add_chunks = ep.add_chunks
    lines = make_lines(events, rate=rate, feedback_share=feedback_share, groups=groups)
    old_threshold = gc.get_threshold()
    # The engine process tunes its collector at start (tune_gc), if it has one.
    tuned = gc_tuning and hasattr(ep, "tune_gc")
    if tuned:
        ep.tune_gc()
    n_feedback = len(lines) - events
    now = [lines[0][0] / 1000.0 if lines else 0.0]
    eng = _engine(lambda: now[0])
    t_add = t_poll = 0.0
    signals = 0
    gc.collect()
    for k, i in enumerate(range(0, len(lines), chunk)):
        part = lines[i:i + chunk]
        blob = b"\n".join(line for _, line in part)
        now[0] = part[-1][0] / 1000.0
        a = time.perf_counter()
        add_chunks(eng, [(k % partitions, blob)])
        b = time.perf_counter()
        signals += len(eng.poll())
        c = time.perf_counter()
        t_add += b - a
        t_poll += c - b
    stats = eng.stats()
    del eng, lines
    gc.collect()

    # Snapshot with many events buffered in open windows (no poll: nothing closes).
    snap_lines = make_lines(snapshot_events, rate=rate, feedback_share=0.0, seed=8)
    now[0] = snap_lines[0][0] / 1000.0 if snap_lines else 0.0
    eng = _engine(lambda: now[0])
    for k, i in enumerate(range(0, len(snap_lines), chunk)):
        add_chunks(eng, [(k % partitions, b"\n".join(line for _, line in snap_lines[i:i + chunk]))])
    del snap_lines
    gc.collect()
    a = time.perf_counter()
    blob = pickle.dumps(eng.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
    b = time.perf_counter()
    fresh = _engine(lambda: now[0])
    fresh.restore(pickle.loads(blob))
    c = time.perf_counter()
    restored_open = fresh.stats()["open_windows"]
    if restored_open != eng.stats()["open_windows"]:
        raise RuntimeError("restored engine has different open windows")
    if tuned:
        gc.unfreeze()
        gc.set_threshold(*old_threshold)

    total = t_add + t_poll
    return {
        "benchmark": "engine",
        "events": events,
        "groups": groups,
        "feedback": n_feedback,
        "chunk": chunk,
        "rate": rate,
        "gc_tuned": tuned,
        "add_s": t_add,
        "poll_s": t_poll,
        "add_us_per_event": t_add / max(1, events) * 1e6,
        "poll_us_per_event": t_poll / max(1, events) * 1e6,
        "events_per_s": events / total if total else 0.0,
        "signals": signals,
        "windows_closed": stats["windows_closed"],
        "duplicates_dropped": stats.get("duplicates_dropped", 0),
        "detector_seconds": dict(sorted(stats["detector_seconds"].items(), key=lambda kv: -kv[1])),
        "snapshot": {
            "buffered_events": snapshot_events,
            "seconds": b - a,
            "bytes": len(blob),
            "restore_seconds": c - b,
        },
    }


def format_table(r: dict[str, Any]) -> str:
    n = max(1, r["events"])
    rows = [
        f"events {r['events']} (+{r['feedback']} feedback), groups {r['groups'] or 'simulator'}, "
        f"chunks of {r['chunk']}, "
        f"{r['windows_closed']} windows closed, {r['signals']} signals, "
        f"{r['duplicates_dropped']} duplicates dropped, collector tuned: {r['gc_tuned']}",
        f"{'add':<48} {r['add_s']:8.2f} s {r['add_us_per_event']:7.2f} us/event",
        f"{'poll':<48} {r['poll_s']:8.2f} s {r['poll_us_per_event']:7.2f} us/event",
        f"{'total':<48} {r['events_per_s']:8.0f} events/s",
    ]
    for name, s in r["detector_seconds"].items():
        rows.append(f"  {name:<46} {s:8.2f} s {s / n * 1e6:7.2f} us/event")
    sn = r["snapshot"]
    rows.append(
        f"snapshot of {sn['buffered_events']} buffered events: {sn['seconds']:.2f} s, "
        f"{sn['bytes'] / 1e6:.1f} MB; restore {sn['restore_seconds']:.2f} s"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000, help="inference events to feed")
    ap.add_argument("--snapshot-events", type=int, default=200_000,
                    help="events buffered in open windows for the snapshot measurement")
    ap.add_argument("--chunk", type=int, default=1000, help="lines per add call")
    ap.add_argument("--rate", type=float, default=5_000.0,
                    help="event-time rate, events/s (sets how many events a window holds)")
    ap.add_argument("--feedback-share", type=float, default=0.05)
    ap.add_argument("--no-gc-tuning", action="store_true",
                    help="keep the default collector thresholds (the engine process tunes them)")
    ap.add_argument("--groups", type=int, default=None,
                    help="spread the events over this many model versions (default: the "
                         "simulator's own)")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    result = run(a.events, snapshot_events=a.snapshot_events, chunk=a.chunk, rate=a.rate,
                 feedback_share=a.feedback_share, gc_tuning=not a.no_gc_tuning,
                 groups=a.groups)
    return finish(result, format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
