"""A signal-engine process that dies (the OOM killer's pick: it is the largest process
of the stack) stops ``llmpulse up`` with exit status 70 instead of leaving it half alive.

Before, the Faust app was marked crashed by the next engine call and ran on without
its signal timer: ingest went on, ``/api/stats`` answered, and no signal was computed
again until someone restarted it by hand (measured: 60 s of traffic after the kill,
100,000 events stored, no signal after the kill). Now ``up`` exits at once, so a
restart policy (compose's ``restart: unless-stopped``, systemd) starts it again, and the
start restores the engine from its last saved state and replays the rest. Here the
restart is the test's: every event is stored once, and every event is counted in the
5 s windows' ``errors.rate`` signals, those open at the kill included.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from llmpulse.events import TOPIC_INFERENCE
from llmpulse.harness import UpProcess, wait_for
from llmpulse.monitor import Monitor
from llmpulse.stack import EXIT_CRASHED

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = ("signals:\n  latency_window_s: 5\n  window_s: 10\n  poll_s: 0.5\n  snapshot_s: 2\n"
          "  engine_processes: 1\n")
APP = "engine-crash"


def _engine_children(pid: int | None) -> list[int]:
    out = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.append(int(child))
            except OSError:
                continue
    return out


def _send(up: UpProcess, start: int, seconds: float, rate: float = 150.0) -> int:
    n = int(seconds * rate)
    with Monitor(app=APP, bootstrap=up.kafka, model="m", model_version="1") as mon:
        t0 = time.monotonic()
        for i in range(start, start + n):
            mon.inference(request_id=f"{APP}-{i}", latency_ms=100.0 + i % 50,
                          status="error" if i % 7 == 0 else "ok", input_tokens=10,
                          output_tokens=20)
            ahead = t0 + (i - start + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        assert mon.flush(60)
    return n


def _windows(up: UpProcess) -> list[tuple[str, int]]:
    rows = up.sql(f"SELECT toString(ts) AS t, n FROM signals FINAL WHERE app = '{APP}' "
                  "AND signal = 'errors.rate' AND window_s = 5 ORDER BY ts")
    return [(r["t"], int(r["n"])) for r in rows]


def _events(up: UpProcess) -> list[tuple[str, int]]:
    rows = up.sql("SELECT toString(toStartOfInterval(ts, INTERVAL 5 SECOND)) AS t, count() AS n "
                  f"FROM inference_events FINAL WHERE app = '{APP}' GROUP BY t ORDER BY t")
    return [(r["t"], int(r["n"])) for r in rows]


def test_a_dead_engine_process_stops_up_and_a_restart_counts_every_event(tmp_path: Path) -> None:
    up = UpProcess(tmp_path, config_yaml=CONFIG)
    try:
        up.start()
        sent = _send(up, 0, 20.0)
        up.wait_stored(TOPIC_INFERENCE, sent, timeout=120)
        [engine] = _engine_children(up.pid)
        os.kill(engine, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not up.running, 90, "up exits after its engine process died")
        assert up.proc is not None and up.proc.returncode == EXIT_CRASHED, up.log()
        log = up.log(200_000)
        assert "the worker crashed" in log and f"exit status {EXIT_CRASHED}" in log, log
        assert time.monotonic() - killed < 90

        up.start()  # what a restart policy does
        sent += _send(up, sent, 15.0)

        def stored() -> tuple[int, int]:
            rows = up.sql("SELECT count() AS n, uniqExact(event_id) AS u FROM inference_events "
                          f"FINAL WHERE app = '{APP}'")
            return int(rows[0]["n"]), int(rows[0]["u"])

        wait_for(lambda: stored()[1] >= sent, 120, "every event stored")
        assert stored() == (sent, sent)

        def counted() -> int:
            got = up.sql(f"SELECT sum(n) AS n FROM signals FINAL WHERE app = '{APP}' "
                         "AND signal = 'errors.rate' AND window_s = 5")
            return int(got[0]["n"] or 0)

        # the last windows close once the source idles after the traffic
        try:
            wait_for(lambda: counted() >= sent, 120, "every event counted in a 5 s window")
        except TimeoutError as exc:  # which windows fell short, to tell slow from lost
            raise AssertionError(f"{exc}: {counted()} of {sent} counted; windows "
                                 f"{_windows(up)}; events per 5 s {_events(up)}; log:\n"
                                 f"{up.log(20_000)}") from None
        assert counted() == sent  # none twice: the replay after the restart adds no copy
    finally:
        up.close()
