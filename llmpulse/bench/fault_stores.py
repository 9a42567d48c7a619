"""What stopped workers of a fault run kept: their stores' events and their engines' counts.

In a run where workers leave (``--fault scale``), each worker has a store of its
own (chDB opens a directory in one process) and the events a leaving worker's
ingest stored stay in its store, as they would in one shared ClickHouse table;
its engine's counts stay in the state it saved at its stop. The figures of a run
are therefore taken from every worker's store and every stopped worker's saved
state, not from the workers still running only (which counted a leaving
worker's events as lost).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

__all__ = ["saved_engine_events", "stored_events"]


def stored_events(data_dirs: Sequence[Path]) -> dict[str, int]:
    """Inference events in the stores of stopped workers as one table would show them
    (``FINAL``, one row per ``event_id`` and store): ``ids`` distinct event ids over all
    stores, ``rows`` those plus the copies a store shows twice."""
    from llmpulse.store import Store

    ids: set[str] = set()
    extra = 0
    for d in data_dirs:
        store = Store.open(f"chdb://{d / 'store'}", ddl=False)
        try:
            rows = store.query("SELECT event_id, count() AS n FROM inference_events FINAL "
                               "GROUP BY event_id")
        finally:
            store.close()
        for r in rows:
            ids.add(str(r["event_id"]))
            extra += int(r["n"]) - 1
    return {"ids": len(ids), "rows": len(ids) + extra}


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
