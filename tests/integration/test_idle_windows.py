"""Idleness: the last windows of a stream close while the worker runs.

A source counts as idle only when the worker has nothing unread (its
consumer at the partitions' end); this checks the other side of that rule:
once traffic stops and everything is read, the windows the last events fell
in close without a shutdown flush.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmpulse.bench._stack import wait_for
from llmpulse.events import TOPIC_INFERENCE
from tests.integration.test_signals import drive, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_last_windows_close_once_everything_is_read(stack_factory: Any, tmp_path: Any) -> None:
    d = tmp_path / "idle"
    write_config(d, 10, 20)
    sp = stack_factory(d / "data").start()
    out = drive(sp.endpoints["kafka"], seed=3, duration=30.0, incidents=[])
    sp.wait_stored(TOPIC_INFERENCE, int(out["inference"]))
    [last] = sp.sql("SELECT toUnixTimestamp64Milli(max(ts)) AS ms FROM inference_events")
    end_s = (int(last["ms"]) // 10_000 + 1) * 10

    def closed() -> bool:
        rows = sp.sql("SELECT toUnixTimestamp(max(ts)) AS s FROM signals "
                      "WHERE signal = 'errors.rate' AND app != 'llmpulse'")
        return bool(rows) and int(rows[0]["s"] or 0) >= end_s

    # idle_s (30 s) after the last event is read, plus lateness and polls; generous on a busy machine
    try:
        wait_for(closed, 240, "the window of the last events closed while the worker runs")
    except AssertionError:
        print(idle_view(sp, end_s, int(out["inference"])))
        raise
    stats = sp.get("/api/stats")["signals"]["engine"]
    assert stats["late_dropped"] == 0, idle_view(sp, end_s, int(out["inference"]))


def idle_view(sp: Any, end_s: int, sent: int) -> str:
    """What the worker saw when a window did not close: read positions against end
    offsets, the engine's watermark and sources, what it took in and dropped."""
    stats = sp.get("/api/stats")
    sig = stats.get("signals", {})
    engine = sig.get("engine", {})
    shards = engine.get("shards") or [engine]
    lines = [f"window ending {end_s} s; {sent} inference events sent, "
             f"{engine.get('events_in')} taken in by the engine, "
             f"{engine.get('late_dropped')} late ({engine.get('late_dropped_by_group')})",
             f"lag {stats.get('lag')}; polls with backlog {sig.get('polls_with_backlog', 0)}, "
             f"forwards in flight {sig.get('forwarding')}, end offsets unanswered "
             f"{sig.get('end_offsets_unanswered', 0)}",
             f"[position, end] per partition {sig.get('backlog')}"]
    for i, sh in enumerate(shards):
        lines.append(f"shard {i}: watermark {sh.get('watermark_ms')}, events {sh.get('events_in')}, "
                     f"open windows {sh.get('open_windows')}, sources [source, max ms, silent s] "
                     f"{sh.get('sources')}")
    lines.append(sp.log(2000))
    return "\n".join(lines)
