"""``llmpulse bench repeat_ids``: what the closed windows' event id hashes cost an engine.

The engine keeps a 64-bit hash of the ``event_id`` of every event of a window it
closed for ``repeat_horizon_s`` of event time (600 s by default), one set for all
window lengths (:mod:`llmpulse.streams.repeats`), so a copy forwarded again after
a rebalance is told from a late event; they travel in every engine snapshot and
hand-off. This feeds simulator inference events (``--rate`` requests/s, two
inferences each) to a :class:`~llmpulse.streams.engine.SignalEngine` with three
window lengths (5 s, 10 s, 60 s) and a cheap detector, the clock following event
time, one chunk and one poll per second of event time, for ``--duration``
seconds, timing that feed (``feed_us_per_event``: windows, closes, the id sets;
``feed_cpu_us_per_event`` in CPU time of this process, less disturbed by others);
then times ``pickle.dumps(engine.snapshot())`` (what the engine process writes)
and its restore, with the hashes and with them dropped (the same open windows:
the trivial baseline), best of ``--repeat``. ``--horizon`` sets
``repeat_horizon_s``.

    python -m llmpulse.bench.repeat_ids --rate 1500 --duration 600 --horizon 600

>>> r = run(rate=20, duration_s=90, repeat=1)
>>> r["inferences"] > 3000, r["with_ids"]["ids"] > 0, r["without_ids"]["ids"]
(True, True, 0)
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from typing import Any

from llmpulse.detectors.latency import ErrorRates
from llmpulse.simulate import SupportAppSimulator
from llmpulse.streams.engine import SignalEngine
from llmpulse.streams.windows import WindowSpec

__all__ = ["format_table", "run"]

WINDOWS = {"latency": WindowSpec(5.0, 2.5), "drift": WindowSpec(10.0, 5.0),
           "bias": WindowSpec(60.0, 30.0)}


def _engine(clock: Any) -> SignalEngine:
    return SignalEngine({f: (lambda: [ErrorRates(min_n=1)]) for f in WINDOWS}, WINDOWS, clock=clock)


def _measure(engine: SignalEngine, repeat: int) -> dict[str, Any]:
    best_dump = best_load = cpu_dump = cpu_load = float("inf")
    blob = b""
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        blob = pickle.dumps(engine.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
        c1, t1 = time.process_time(), time.perf_counter()
        fresh = _engine(engine.clock)
        fresh.restore(pickle.loads(blob))
        c2, t2 = time.process_time(), time.perf_counter()
        best_dump, best_load = min(best_dump, t1 - t0), min(best_load, t2 - t1)
        cpu_dump, cpu_load = min(cpu_dump, c1 - c0), min(cpu_load, c2 - c1)
    return {"bytes": len(blob), "snapshot_s": round(best_dump, 4),
            "restore_s": round(best_load, 4), "snapshot_cpu_s": round(cpu_dump, 4),
            "restore_cpu_s": round(cpu_load, 4), "ids": len(engine.repeat_ids),
            "ids_memory_bytes": engine.repeat_ids.nbytes,
            "open_events": sum(len(v) for b in engine._buffers.values() for v in b._open.values())}


def run(rate: float = 1500.0, duration_s: int = 600, repeat: int = 3, seed: int = 11,
        horizon_s: float = 600.0, quick: bool = False) -> dict[str, Any]:
    if quick:
        rate, duration_s, repeat = min(rate, 50.0), min(duration_s, 120), 1
    now = [0.0]
    engine = _engine(lambda: now[0])
    for buf in engine._buffers.values():
        buf.repeat_horizon_ms = int(horizon_s * 1000)
    sim = SupportAppSimulator(seed=seed, rate=rate, start_ts=1_750_000_000.0)
    n = 0
    feed_s = feed_cpu_s = 0.0
    for batch in sim.batches(duration_s):
        evs = [e for topic, e in batch if topic == "llmpulse.inference"]
        if not evs:
            continue
        n += len(evs)
        now[0] = max(now[0], max(e["ts"] for e in evs) / 1000)
        c0, t0 = time.process_time(), time.perf_counter()
        engine.add_inference(evs, source=(0, 0))
        engine.poll()
        feed_s += time.perf_counter() - t0
        feed_cpu_s += time.process_time() - c0
    out: dict[str, Any] = {"rate_requests_per_s": rate, "duration_s": duration_s,
                           "inferences": n, "windows_s": [w.length_s for w in WINDOWS.values()],
                           "repeat_horizon_s": horizon_s, "feed_s": round(feed_s, 3),
                           "feed_us_per_event": round(feed_s / max(1, n) * 1e6, 3),
                           "feed_cpu_us_per_event": round(feed_cpu_s / max(1, n) * 1e6, 3)}
    out["with_ids"] = _measure(engine, repeat)
    engine.repeat_ids.clear()
    out["without_ids"] = _measure(engine, repeat)
    return out


def format_table(result: dict[str, Any]) -> str:
    w, wo = result["with_ids"], result["without_ids"]
    lines = [f"repeat ids: {result['inferences']} inferences over {result['duration_s']} s of event "
             f"time, windows {result['windows_s']} s, horizon {result['repeat_horizon_s']:g} s; "
             f"feed {result['feed_us_per_event']:.2f} us/event "
             f"({result['feed_cpu_us_per_event']:.2f} cpu)",
             f"  {'':<12}{'ids':>10}{'snapshot MB':>13}{'snapshot s (cpu)':>20}"
             f"{'restore s (cpu)':>20}"]
    for name, r in (("with ids", w), ("without", wo)):
        lines.append(f"  {name:<12}{r['ids']:>10}{r['bytes'] / 1e6:>13.1f}"
                     f"{r['snapshot_s']:>12.3f} ({r['snapshot_cpu_s']:.3f})"
                     f"{r['restore_s']:>12.3f} ({r['restore_cpu_s']:.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmpulse.bench.repeat_ids", description=__doc__)
    ap.add_argument("--rate", type=float, default=1500.0, help="requests/s (two inferences each)")
    ap.add_argument("--duration", type=int, default=600, help="seconds of event time")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--horizon", type=float, default=600.0, help="repeat_horizon_s")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.rate, args.duration, args.repeat, horizon_s=args.horizon), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
