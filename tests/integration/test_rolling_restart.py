"""A rolling restart: the worker stopped cleanly (SIGTERM) mid-window with
``signals.stop: save`` and started again changes no signal.

The same seeded traffic runs twice on a Kafka that outlives the worker (as
in the distributed setup): once undisturbed on one embedded broker, once with
the worker stopped after the first half of the events (windows open), the
second half sent while it is down, and the worker started again, on one
embedded broker and on the local three-broker cluster (the ``kafka`` fixture). Both runs end with a
flushing stop, so every window is written; the restarted run must write the
same windows with the same counts and values, with no late event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from llmpulse.broker import EmbeddedBroker, create_topics
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE, TOPICS
from llmpulse.harness import wait_for
from llmpulse.monitor import Monitor
from llmpulse.simulate import Incident, SupportAppSimulator
from tests.integration.conftest import KafkaFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEED = 6.0  # event seconds per wall second
DURATION = 90.0
SPLIT = 45  # chunks (seconds of event time) before the stop: inside a 30 s window
WARM_UP = 3
"""Chunks sent first and waited on (see the restarted run)."""


def _config(root: Path, stop: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "llmpulse.yaml").write_text(
        "signals:\n  latency_window_s: 10\n  window_s: 30\n  poll_s: 0.5\n  snapshot_s: 0\n"
        f"  engine_processes: 1\n  stop: {stop}\n")


def _send(bootstrap: str, chunks: list[list[Any]],
          shim: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The chunks at SPEED times real time (event time stays ordered within the
    windows' lateness however the partitions are read)."""
    sent = {TOPIC_INFERENCE: 0, TOPIC_FEEDBACK: 0}
    t0 = time.monotonic()
    with Monitor(app="rolling", bootstrap=bootstrap, **dict(shim or {})) as mon:
        for c, chunk in enumerate(chunks):
            wait = c / SPEED - (time.monotonic() - t0)
            if wait > 0:
                time.sleep(wait)
            for topic, ev in chunk:
                if topic == TOPIC_INFERENCE:
                    mon.inference(**ev)
                else:
                    mon.feedback(**ev)
                sent[topic] += 1
        assert mon.flush(60)
    return sent


def _signals(data_dir: Path) -> dict[tuple[str, ...], tuple[float, int]]:
    """Signal windows in a stopped worker's store: key -> (value, n)."""
    from llmpulse.store import Store

    store = Store.open(f"chdb://{data_dir / 'store'}", ddl=False)
    try:
        rows = store.query(
            "SELECT model, model_version, signal, dimension, window_s, toString(ts) AS t, "
            "value, n FROM signals FINAL WHERE app = 'rolling'")
    finally:
        store.close()
    return {(r["model"], r["model_version"], r["signal"], r["dimension"], str(r["window_s"]),
             r["t"]): (round(float(r["value"]), 6), int(r["n"])) for r in rows}


def _engine_holds(sp: Any, events: int, feedback: int = 0) -> dict[str, Any]:
    """The engine's counters once it has taken in ``events`` inferences and
    ``feedback`` feedback events. Feedback read before its inference was stored
    waits in the worker (``pending_feedback``) and reaches the engine later; a stop
    before that leaves it waiting on disk for the next start, out of the flushed
    windows."""
    def ready() -> dict[str, Any] | None:
        stats = sp.get("/api/stats")["signals"]
        eng = stats["engine"]
        done = (int(eng.get("events_in", 0)) >= events
                and int(eng.get("feedback_in", 0)) >= feedback
                and not stats.get("pending_feedback"))
        return eng if done else None
    return dict(wait_for(ready, 180, f"the engine to take in {events} events, "
                                     f"{feedback} feedback"))


def _traffic() -> tuple[list[list[Any]], int, int, int]:
    """Seeded chunks with an incident, and the counts: inferences, those before the
    split, feedback."""
    sim = SupportAppSimulator(seed=11, rate=30.0, app="rolling",
                              incidents=[Incident.parse("latency_spike:30:60:factor=4")],
                              start_ts=time.time() - DURATION - 5)
    chunks = list(sim.batches(DURATION, 1.0))
    n_inference = sum(1 for ch in chunks for t, _ in ch if t == TOPIC_INFERENCE)
    n_first = sum(1 for ch in chunks[:SPLIT] for t, _ in ch if t == TOPIC_INFERENCE)
    n_feedback = sum(1 for ch in chunks for t, _ in ch if t == TOPIC_FEEDBACK)
    return chunks, n_inference, n_first, n_feedback


def _same_signals(runs: dict[str, dict[tuple[str, ...], tuple[float, int]]],
                  engines: dict[str, dict[str, Any]],
                  mid: dict[tuple[str, ...], tuple[float, int]]) -> None:
    ref, got = runs["undisturbed"], runs["restarted"]
    assert len(ref) > 100, len(ref)
    # the 10 s windows written before the stop closed by the watermark: each is the
    # undisturbed run's window, none a partial one closed by the stop (30 s windows
    # with feedback are recomputed as labels arrive, so their early rows differ)
    early = {k: v for k, v in mid.items() if k[4] == "10"}
    assert early and all(ref.get(k) == v for k, v in early.items()), \
        [(k, v, ref.get(k)) for k, v in early.items() if ref.get(k) != v][:5]
    assert got.keys() == ref.keys(), (sorted(set(ref) ^ set(got))[:10])
    diff = {k: (ref[k], got[k]) for k in ref if ref[k] != got[k]}
    # with what tells a late event from a lost one: the engines' late and duplicate counts
    assert not diff, (list(diff.items())[:5], {
        name: {k: eng.get(k) for k in ("events_in", "late_dropped", "late_dropped_by_group",
                                       "duplicates_dropped")} for name, eng in engines.items()})
    for name, eng in engines.items():
        assert eng["late_dropped"] == 0, (name, eng.get("late_dropped_by_group"))
    # every event taken in once across the restart (the counters travel with the state)
    assert engines["restarted"]["events_in"] == engines["undisturbed"]["events_in"]


def _finish(sp: Any, root: Path, n_inference: int, n_feedback: int,
            ) -> tuple[dict[str, Any], dict[tuple[str, ...], tuple[float, int]]]:
    """End a run: the engine's counters once it took in every event, a clean stop,
    the signal windows written."""
    eng = _engine_holds(sp, n_inference, n_feedback)
    assert sp.stop(timeout=120) == 0
    return eng, _signals(root / "data")


def test_a_rolling_restart_mid_window_changes_no_signal(stack_factory: Any, tmp_path: Path,
                                                        kafka: KafkaFactory) -> None:
    chunks, n_inference, n_first, n_feedback = _traffic()
    runs: dict[str, dict[tuple[str, ...], tuple[float, int]]] = {}
    engines: dict[str, dict[str, Any]] = {}
    mid: dict[tuple[str, ...], tuple[float, int]] = {}

    root = tmp_path / "undisturbed"
    with EmbeddedBroker() as b:
        create_topics(b.bootstrap, {t: 4 for t in TOPICS})
        _config(root, "flush")
        sp = stack_factory(root / "data", LLMPULSE_KAFKA=b.bootstrap).start()
        _send(b.bootstrap, chunks)
        engines["undisturbed"], runs["undisturbed"] = _finish(sp, root, n_inference, n_feedback)

    root = tmp_path / "restarted"
    with kafka.start() as k:
        _config(root, "save")
        sp = k.runs(stack_factory(root / "data", LLMPULSE_KAFKA=k.bootstrap)).start(
            kafka.stack_timeout())
        # the stream starts before the windows can close: a source (an inference
        # partition) whose first events come after another's moved event time past the
        # 10 s windows' lateness (under 1 s of wall time at SPEED) would find the first
        # window closed, and the cluster's first fetches can be that far apart
        _send(k.bootstrap, chunks[:WARM_UP], k.shim)
        _engine_holds(sp, sum(1 for ch in chunks[:WARM_UP] for t, _ in ch if t == TOPIC_INFERENCE))
        _send(k.bootstrap, chunks[WARM_UP:SPLIT], k.shim)
        _engine_holds(sp, n_first)
        assert sp.stop(timeout=120) == 0  # SIGTERM mid-window: saved, nothing flushed
        assert (root / "data" / "worker" / "signals.pkl").exists()
        mid = _signals(root / "data")
        _send(k.bootstrap, chunks[SPLIT:], k.shim)  # while the worker is down
        _config(root, "flush")  # the final stop writes what is still open
        sp.start(kafka.stack_timeout())
        engines["restarted"], runs["restarted"] = _finish(sp, root, n_inference, n_feedback)
    _same_signals(runs, engines, mid)


def test_a_restart_of_up_on_its_log_on_disk_mid_window_changes_no_signal(stack_factory,
                                                                          tmp_path) -> None:
    """``llmpulse up`` with its embedded broker on disk (the default) stopped mid-window
    with ``signals.stop: save``: the next ``up`` finds the same log, cluster id and
    offsets, and continues the open windows."""
    chunks, n_inference, n_first, n_feedback = _traffic()
    runs: dict[str, dict[tuple[str, ...], tuple[float, int]]] = {}
    engines: dict[str, dict[str, Any]] = {}
    mid: dict[tuple[str, ...], tuple[float, int]] = {}
    for name in ("undisturbed", "restarted"):
        root = tmp_path / name
        _config(root, "save" if name == "restarted" else "flush")
        sp = stack_factory(root / "data").start()
        if name == "undisturbed":
            _send(sp.kafka, chunks)
        else:
            _send(sp.kafka, chunks[:SPLIT])
            _engine_holds(sp, n_first)
            assert sp.stop() == 0  # its broker stops too; the log stays on disk
            mid = _signals(root / "data")
            _config(root, "flush")
            sp.start()
            _send(sp.kafka, chunks[SPLIT:])
        _engine_holds(sp, n_inference, n_feedback)  # every event read: the log was checked
        # the same log and cluster id: the saved offsets were kept, not dropped
        dropped = sp.get("/api/stats")["signals"].get("positions_dropped")
        engines[name], runs[name] = _finish(sp, root, n_inference, n_feedback)
        assert not dropped
    _same_signals(runs, engines, mid)
