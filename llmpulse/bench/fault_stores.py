"""What the engines of workers that left a fault run took in.

In a run where workers leave (``--fault scale``), a leaving worker's engine hands
its windows to the others, but its counters stay in the state it saved at its stop
(``signals.stop: save``); the engines still running count only what they took in
themselves. The run's engine figure adds the saved counts of the workers that left.
"""

from __future__ import annotations

import pickle
from pathlib import Path

__all__ = ["saved_counts", "saved_engine_events"]


def saved_counts(data_dir: Path) -> tuple[int, dict[float, int]]:
    """``events_in`` of the engine state a stopped worker saved at its stop
    (``signals.stop: save``), and the copies its windows dropped (duplicates and
    repeats) per window length; ``(0, {})`` without a saved state. A copy is dropped
    once per length, maybe by different workers (a short window closed here, the long
    one handed over), so copies add up per length across workers."""
    path = data_dir / "worker" / "signals.pkl"
    if not path.exists():
        return 0, {}
    state = pickle.loads(path.read_bytes())
    engine = pickle.loads(state["engine"])
    shards = [pickle.loads(s) for s in engine["shards"]] if "shards" in engine else [engine]
    events = sum(int(sh["counters"]["events_in"]) for sh in shards)
    copies: dict[float, int] = {}
    for sh in shards:
        for length, _lateness, buf in sh["buffers"]:
            dropped = int(buf.get("duplicates", 0)) + int(buf.get("repeats", 0))
            copies[float(length)] = copies.get(float(length), 0) + dropped
    return events, copies


def saved_engine_events(data_dir: Path) -> int:
    """Events a stopped worker's engine took in, less the copies it dropped (per
    window length, the most of any, as the live engine counts them); 0 without a
    saved state."""
    events, copies = saved_counts(data_dir)
    return events - max(copies.values(), default=0)
