"""A worker stopped cleanly while events keep arriving forwards every event it stored.

Faust stops an agent by cancelling it, and the stream acks the batch in hand
however far the agent got with it. Before :mod:`llmpulse.streams.whole`, an
ingest batch taken in just after the signal engine stopped was stored, then cut
before it was forwarded to ``llmpulse.grouped``, and committed: its events were
in the store and in no signal (measured: 1,635 of 172,000 events over eight
stops at 700 events/s; whole batches of up to 500 events at five of the eight).

Here a worker on a broker that outlives it (as Kafka would) is stopped with
SIGTERM and started again eight times while a shim sends 800 events/s; then the
whole of ``llmpulse.grouped`` is read: every stored event must be in it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from llmpulse.bench._stack import event_pool, paced_send
from llmpulse.bench.fault import _read, forwarded_event_ids
from llmpulse.broker import EmbeddedBroker, create_topics
from llmpulse.events import TOPICS
from llmpulse.harness import UpProcess, wait_for
from llmpulse.monitor import Monitor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = ("session_timeout_s: 10\nsignals:\n  latency_window_s: 10\n  window_s: 20\n"
          "  poll_s: 0.5\n  snapshot_s: 2\n  engine_processes: 1\n  stop: save\n")
RATE = 800.0
STOPS = 8


def test_every_event_stored_during_clean_stops_under_traffic_is_forwarded(tmp_path: Path) -> None:
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, {t: 6 for t in TOPICS})
        worker = UpProcess(tmp_path / "w", config_yaml=CONFIG,
                           env={"LLMPULSE_KAFKA": broker.bootstrap, "HF_HUB_OFFLINE": "1"})
        stop = threading.Event()
        sent = [0]
        errors: list[BaseException] = []

        def drive() -> None:
            try:
                pool = event_pool(1000)
                with Monitor(app="stops", bootstrap=broker.bootstrap) as mon:
                    while not stop.is_set():
                        sent[0] += paced_send(lambda **ev: mon.inference(**ev), pool, RATE,
                                              0.5)[0]
                    assert mon.flush(60)
            except BaseException as exc:  # reported by the test, not lost in the thread
                errors.append(exc)

        try:
            worker.start()
            traffic = threading.Thread(target=drive)
            traffic.start()
            for _ in range(STOPS):
                time.sleep(5.0)  # events flow while the worker stops
                assert worker.stop(timeout=180) == 0
                worker.start()
            time.sleep(3.0)
            stop.set()
            traffic.join(120)
            assert not errors, errors
            wait_for(lambda: int(worker.sql("SELECT count() AS n FROM inference_events FINAL")
                                 [0]["n"]) >= sent[0], 120, "every event stored")
        finally:
            stop.set()
            worker.stop(timeout=180)
            worker.close()
        forwarded = forwarded_event_ids(broker.bootstrap)
    stored = _read(worker.data_dir)["event_ids"]
    assert len(stored) == sent[0] > 5_000
    never = stored - set(forwarded)
    assert not never, f"{len(never)} of {len(stored)} stored events never forwarded, e.g. {sorted(never)[:3]}"
