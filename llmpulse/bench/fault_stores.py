"""What the engines of workers that left a fault run took in.

In a run where workers leave (``--fault scale``), a leaving worker's engine hands
its windows to the others, but its counters stay in the state it saved at its stop
(``signals.stop: save``); the engines still running count only what they took in
themselves. The run's engine figure adds the saved counts of the workers that left.
"""

from __future__ import annotations

import pickle
from pathlib import Path

__all__ = ["saved_engine_events"]


def saved_engine_events(data_dir: Path) -> int:
    """Events a stopped worker's engine took in, less the copies it dropped, from the
    state it saved at its stop (``signals.stop: save``); 0 without one."""
    path = data_dir / "worker" / "signals.pkl"
    if not path.exists():
        return 0
    state = pickle.loads(path.read_bytes())
    engine = pickle.loads(state["engine"])
    shards = [pickle.loads(s) for s in engine["shards"]] if "shards" in engine else [engine]
    events = sum(int(sh["counters"]["events_in"]) for sh in shards)
    # copies dropped, per window length as the live engine counts them (the most of any)
    copies: dict[float, int] = {}
    for sh in shards:
        for length, _lateness, buf in sh["buffers"]:
            copies[float(length)] = copies.get(float(length), 0) + int(buf.get("duplicates", 0))
    return events - max(copies.values(), default=0)
