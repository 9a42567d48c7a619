"""A clean stop of an embedded ``llmpulse up`` stops its in-memory broker; the
next ``up`` starts a new one whose partitions number from offset 0 again.

The signal engine's saved state records the ``llmpulse.grouped`` offsets it
covers; those belong to the old broker's log. Taken for the new log they
would skip its first messages as an already-processed replay, and the first
windows after the restart would miss events. Every window of the batch sent
after the restart must count every event sent into it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from llmpulse.harness import wait_for
from llmpulse.monitor import Monitor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S = 10
PER_WINDOW = 6  # inference events per 10 s window
WINDOWS = 4  # windows per batch


def _config(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "llmpulse.yaml").write_text(
        f"signals:\n  latency_window_s: {WINDOW_S}\n  window_s: 30\n  poll_s: 0.5\n"
        "  engine_processes: 1\n  stop: flush\n"
        "broker:\n  storage: memory\n")  # a new log at every start


def _send(bootstrap: str, start: int) -> dict[int, int]:
    """PER_WINDOW events in each of WINDOWS windows from ``start`` (epoch s, aligned);
    the events sent per window, by the window's end (a signal's ``ts``)."""
    sent: dict[int, int] = {}
    with Monitor(app="incarn", bootstrap=bootstrap) as mon:
        for w in range(WINDOWS):
            t = start + w * WINDOW_S
            for i in range(PER_WINDOW):
                mon.inference(ts=(t + i) * 1000 + 100, model="m", model_version="v1",
                              latency_ms=100.0 + 10 * i, status="ok",
                              input_tokens=10, output_tokens=5)
                sent[t + WINDOW_S] = sent.get(t + WINDOW_S, 0) + 1
        assert mon.flush(30)
    return sent


def _windows(data_dir: Path) -> dict[int, int]:
    """Largest n per 10 s latency window end (epoch s) in a stopped stack's store."""
    from llmpulse.store import Store

    store = Store.open(f"chdb://{data_dir / 'store'}", ddl=False)
    try:
        rows = store.query(
            "SELECT toUnixTimestamp(ts) AS t, max(n) AS n FROM signals FINAL "
            f"WHERE app = 'incarn' AND window_s = {WINDOW_S} AND signal LIKE 'latency.%' "
            "GROUP BY t")
    finally:
        store.close()
    return {int(r["t"]): int(r["n"]) for r in rows}


def _taken(sp: Any, events: int) -> dict[str, Any]:
    """The signal counters once the engine took in ``events`` events or skipped a message."""
    def ready() -> dict[str, Any] | None:
        sig = sp.get("/api/stats")["signals"]
        done = int(sig["engine"].get("events_in", 0)) >= events
        return sig if done or int(sig.get("replay_skipped", 0)) > 0 else None
    return dict(wait_for(ready, 120, f"the engine to take in {events} events"))


def test_signals_after_a_clean_restart_on_a_new_broker(stack_factory: Any,
                                                        tmp_path: Path) -> None:
    root = tmp_path / "stack"
    _config(root)
    data = root / "data"
    base = (int(time.time()) // 60) * 60 - 600  # aligned, in the recent past
    sp = stack_factory(data)

    sp.start()
    first = _send(sp.kafka, base)
    n1 = sum(first.values())
    sp.wait_stored("llmpulse.inference", n1, timeout=120)
    before = _taken(sp, n1)
    assert before.get("replay_skipped", 0) == 0
    assert sp.stop() == 0  # clean: the embedded broker stops with it
    assert (data / "worker" / "signals.pkl").exists()
    assert _windows(data) == first

    sp.start()  # a new broker: its partitions number from 0 again
    second = _send(sp.kafka, base + WINDOWS * WINDOW_S + 60)
    n2 = sum(second.values())
    sp.wait_stored("llmpulse.inference", n2, timeout=120)
    after = _taken(sp, n1 + n2)
    assert sp.stop() == 0
    assert after.get("replay_skipped", 0) == 0, after
    got = _windows(data)
    assert {t: got.get(t) for t in second} == second, got
    assert {t: got.get(t) for t in first} == first, got
