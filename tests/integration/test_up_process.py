"""``llmpulse up`` run through :class:`llmpulse.harness.UpProcess`: Ctrl-C of a terminal
(SIGINT to the whole process group) stops it cleanly, and the harness leaves nothing running."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from llmpulse.broker import pid_alive
from llmpulse.broker_record import read_record
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE
from llmpulse.harness import UpError, UpProcess
from llmpulse.monitor import Monitor

pytestmark = pytest.mark.integration


def _stored(data_dir: Path, app: str) -> dict[str, int]:
    """What a stopped stack's store holds for ``app``, read directly."""
    from llmpulse.store import Store

    store = Store.open(f"chdb://{data_dir / 'store'}", ddl=False)
    try:
        inf = store.query("SELECT count() AS n, uniqExact(event_id) AS u FROM inference_events "
                          "FINAL WHERE app = {a:String}", {"a": app})[0]
        fb = store.query("SELECT count() AS n FROM feedback_events FINAL "
                         "WHERE request_id LIKE {p:String}", {"p": f"{app}-%"})[0]
        sig = store.query("SELECT count() AS n FROM signals FINAL WHERE app = {a:String}",
                          {"a": app})[0]
    finally:
        store.close()
    return {"inference": int(inf["n"]), "unique": int(inf["u"]), "feedback": int(fb["n"]),
            "signals": int(sig["n"])}


def _engine_children(pid: int | None) -> list[int]:
    """The signal-engine processes ``pid`` spawned (Linux /proc)."""
    out = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmd:
                out.append(int(child))
    return out


def test_ctrl_c_to_the_process_group_stops_cleanly_and_keeps_every_event(tmp_path: Path) -> None:
    # two signal-engine child processes (the default) share the terminal's process group
    up = UpProcess(tmp_path, new_session=True, config_yaml="signals:\n  engine_processes: 2\n")
    try:
        up.start()
        engines = _engine_children(up.pid)
        assert len(engines) == 2 and all(os.getpgid(c) == up.pid for c in engines), engines
        app = f"sigint-{os.getpid()}"
        n = 2_000
        with Monitor(app=app, bootstrap=up.kafka, model="m", model_version="1") as mon:
            for i in range(n):
                mon.inference(request_id=f"{app}-{i}", latency_ms=100.0 + i % 50, status="ok",
                              input_tokens=10, output_tokens=20)
                if i % 10 == 0:
                    mon.feedback(request_id=f"{app}-{i}", score=1.0)
            assert mon.flush(60)
        up.wait_stored(TOPIC_INFERENCE, n, timeout=120)
        up.wait_stored(TOPIC_FEEDBACK, n // 10, timeout=120)
        code = up.interrupt(timeout=120)
        log = up.log(100_000)
        assert code == 0, log
        assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
        assert not (up.data_dir / "endpoints.json").exists()
        got = _stored(up.data_dir, app)
        assert got["inference"] == got["unique"] == n, got
        assert got["feedback"] == n // 10, got
        assert got["signals"] > 0, "the stop flushes the open windows through the engine processes"
    finally:
        up.close()


def test_close_stops_the_embedded_broker_a_killed_up_left_running(tmp_path: Path) -> None:
    up = UpProcess(tmp_path)
    try:
        up.start()
        first_log = up.log_path
        up.kill()
        rec = read_record(up.data_dir)
        assert rec is not None and pid_alive(rec.pid), "the broker outlives a crash"
        up.start()  # re-adopts it
        assert up.starts == 2 and up.logs == [first_log, up.log_path] and up.log_path != first_log
        assert up.endpoints["kafka"].endswith(f":{rec.port}")
        up.kill()
        assert pid_alive(rec.pid)
    finally:
        up.close()
    assert not up.running
    deadline = time.monotonic() + 10
    while pid_alive(rec.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(rec.pid)
    assert read_record(up.data_dir) is None


def test_a_stack_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    up = UpProcess(tmp_path, env={"LLMPULSE_CLICKHOUSE": "mysql://nowhere"})
    with pytest.raises(UpError) as err:
        up.start(timeout=60)
    assert "llmpulse up exited 2" in str(err.value) and "LLMPULSE_CLICKHOUSE" in str(err.value)
    assert not up.running


def test_a_second_ctrl_c_stops_a_stack_whose_broker_died(tmp_path: Path) -> None:
    # an outside fault test killed the embedded broker under traffic: the stop then
    # waited for good in the worker's close, and a second Ctrl-C and SIGTERM did nothing
    # for 7 minutes (kill -9 only); nothing was lost, but nothing was stored either
    # while a new `up` refused to start beside the hung one
    import signal

    up = UpProcess(tmp_path, new_session=True)
    try:
        up.start()
        app = f"dead-broker-{os.getpid()}"
        with Monitor(app=app, bootstrap=up.kafka, model="m", model_version="1") as mon:
            for i in range(200):
                mon.inference(request_id=f"{app}-{i}", latency_ms=10.0, status="ok",
                              input_tokens=1, output_tokens=1)
            assert mon.flush(60)
        up.wait_stored(TOPIC_INFERENCE, 200, timeout=120)
        rec = read_record(up.data_dir)
        assert rec is not None
        os.kill(rec.pid, signal.SIGKILL)
        assert up.proc is not None
        os.killpg(up.pid, signal.SIGINT)
        time.sleep(3.0)
        os.killpg(up.pid, signal.SIGINT)  # "a second Ctrl-C stops at once"
        code = up.proc.wait(150)  # TimeoutExpired: it hung as before
        log = up.log(10**9)  # all of it: the client's reconnect errors fill its tail
        assert code == 0, f"exit status {code}\n{log[-3000:]}"
        assert "drain ended (stopped at the operator's request)" in log, log[-3000:]
        assert _stored(up.data_dir, app)["unique"] == 200
    finally:
        up.close()
