"""The signal engine on seeded streams: windows, late events, feedback
re-emission, horizon, scale-out merge, failing detectors, snapshot/restore."""

from __future__ import annotations

import pickle
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import orjson
import pytest

from llmpulse.detectors.base import Batch, Detector, Signal
from llmpulse.detectors.latency import ErrorRates
from llmpulse.detectors.testing import synthetic_events
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE
from llmpulse.simulate import SupportAppSimulator
from llmpulse.streams.engine import SignalEngine, default_detectors

T0 = 1_700_000_040.0  # on a 60 s boundary, so windows of both lengths line up with the stream


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def families(*names: str, **kw: Any) -> dict[str, Any]:
    d = default_detectors(**kw)
    return {n: d[n] for n in names}


def stream(duration_s: float = 60, rate: float = 10, seed: int = 3, **kw: Any) -> list[list[tuple[str, dict]]]:
    sim = SupportAppSimulator(seed=seed, rate=rate, start_ts=T0, **kw)
    return list(sim.batches(duration_s))


def drive(engine: SignalEngine, clock: Clock, chunks: list[list[tuple[str, dict]]],
          *, flush: bool = True) -> list[Signal]:
    """One chunk per second of wall time, polling after each, as an agent would."""
    out: list[Signal] = []
    for chunk in chunks:
        clock.t += 1.0
        engine.add_inference([e for t, e in chunk if t == TOPIC_INFERENCE])
        engine.add_feedback([e for t, e in chunk if t == TOPIC_FEEDBACK])
        out += engine.poll()
    if flush:
        out += engine.flush()
    return out


def key(s: Signal) -> tuple:
    return (s.ts, s.app, s.model, s.model_version, s.signal, s.dimension)


def canon(signals: list[Signal]) -> list[bytes]:
    return sorted(orjson.dumps(s.to_row(), option=orjson.OPT_SORT_KEYS) for s in signals)


# -- windows and signals ----------------------------------------------------------


def test_signals_per_group_per_window_have_the_right_names_and_n() -> None:
    clock = Clock()
    engine = SignalEngine(families("latency"), clock=clock)
    chunks = stream(60, rate=20)
    signals = drive(engine, clock, chunks)
    inferences = [e for c in chunks for t, e in c if t == TOPIC_INFERENCE]
    by_window: dict[tuple, list[dict]] = defaultdict(list)
    for e in inferences:
        end = (e["ts"] // 10_000 + 1) * 10.0
        by_window[(end, e["app"], e["model"], e["model_version"])].append(e)
    assert len(by_window) == 3 * 6  # three models, six 10 s windows
    errors = {(s.ts, s.app, s.model, s.model_version): s for s in signals if s.signal == "errors.rate"}
    assert set(errors) == set(by_window)
    for k, evs in by_window.items():
        assert errors[k].n == len(evs)
        assert errors[k].window_s == 10.0
        assert errors[k].value == sum(e["status"] == "error" for e in evs) / len(evs)
    p50 = {(s.ts, s.app, s.model, s.model_version): s for s in signals if s.signal == "latency.p50_ms"}
    for k, evs in by_window.items():
        exact = float(np.quantile([e["latency_ms"] for e in evs], 0.5))
        assert abs(p50[k].value / exact - 1) <= 0.005
    names = {s.signal for s in signals}
    assert {"latency.p50_ms", "latency.p95_ms", "errors.rate", "errors.timeout_rate",
            "tokens.output_per_s", "cost.usd"} <= names
    assert engine.stats()["windows_closed"] == 18
    assert engine.stats()["events_in"] == len(inferences)


def test_windows_close_when_the_watermark_passes_end_plus_lateness() -> None:
    clock = Clock()
    engine = SignalEngine({"latency": lambda: [ErrorRates(min_n=1)]}, clock=clock)
    base = int(T0 * 1000)
    events = synthetic_events(30, seed=1, start=T0, rate=2.0)  # 15 s of events
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    upto_14 = [e for e in events if e["ts"] < base + 14_999]
    engine.add_inference(upto_14 + [{**events[0], "ts": base + 14_999, "event_id": "x"}])
    assert engine.poll() == []  # watermark 14.999 s - 5 s lateness < 10 s
    engine.add_inference([{**events[0], "ts": base + 15_000, "event_id": "y"}])
    [sig, _] = engine.poll()
    assert (sig.signal, sig.ts, sig.n) == ("errors.rate", T0 + 10.0,
                                          sum(e["ts"] < base + 10_000 for e in events))
    assert engine.stats()["open_windows"] == 1


def test_late_events_are_counted_and_change_nothing() -> None:
    clock = Clock()
    engine = SignalEngine(families("latency"), clock=clock)
    chunks = stream(30, rate=10)
    first = drive(engine, clock, chunks, flush=False)
    old = next(e for t, e in chunks[0] if t == TOPIC_INFERENCE)
    late = [{**old, "event_id": f"late-{i}"} for i in range(3)]
    assert engine.add_inference(late) == 3
    stats = engine.stats()
    assert stats["late_dropped"] == 3
    group = "/".join((old["app"], old["model"], old["model_version"]))
    assert stats["late_dropped_by_group"] == {group: {"10s": 3}}
    assert engine.poll() == []
    assert first  # the on-time windows were emitted


def test_idle_or_slow_partition_does_not_close_windows_early() -> None:
    clock = Clock()
    engine = SignalEngine({"latency": lambda: [ErrorRates(min_n=1)]}, clock=clock, idle_s=20)
    events = synthetic_events(200, seed=2, start=T0, rate=5.0)  # 40 s
    engine.add_inference(events[:10], source=1)  # partition 1 stops at ~2 s
    engine.add_inference(events[10:], source=0)  # partition 0 runs to 40 s
    assert engine.poll() == []  # partition 1 is behind: its windows may still fill
    engine.add_inference([{**events[5], "event_id": "slow", "ts": events[9]["ts"] + 1}], source=1)
    assert engine.stats()["late_dropped"] == 0
    clock.t += 21  # partition 1 idle for longer than idle_s, partition 0 still talking
    engine.add_inference([{**events[-1], "event_id": "fresh"}], source=0)
    signals = engine.poll()
    assert [s.ts for s in signals if s.signal == "errors.rate"] == [T0 + 10, T0 + 20, T0 + 30]
    assert sum(s.n for s in signals if s.signal == "errors.rate") == sum(
        e["ts"] < int(T0 * 1000) + 30_000 for e in events) + 1



@pytest.mark.parametrize("max_lead_s", [None, 10.0])
def test_one_event_an_hour_ahead_of_the_clock_does_not_make_the_next_hour_late(
        max_lead_s: float | None) -> None:
    """A client clock an hour fast stamps one event; its partition goes quiet for longer
    than idle_s. Without a bound on the lead (the engine's default; live workers take
    signals.max_event_lead_s), the watermark extrapolates from that event and the next
    events, on time, are all late. With it, they are windowed, and the early event
    waits in its own window."""
    clock = Clock(T0 + 20)
    engine = SignalEngine({"latency": lambda: [ErrorRates(min_n=1)]}, clock=clock, idle_s=30,
                          max_lead_s=max_lead_s)
    events = synthetic_events(200, seed=2, start=T0, rate=10.0)  # 20 s, up to the clock
    engine.add_inference(events[:100], source=0)
    engine.add_inference([{**events[0], "event_id": "fast-clock", "ts": int((T0 + 3500) * 1000)}],
                         source=1)
    out = engine.poll()
    clock.t += 40  # every partition quiet for longer than idle_s
    out += engine.poll()
    on_time = [{**e, "event_id": f"next-{i}", "ts": e["ts"] + 60_000} for i, e in enumerate(events)]
    clock.t += 21  # received once they all happened
    engine.add_inference(on_time, source=0)
    late = engine.stats()["late_dropped"]
    if max_lead_s is None:
        assert late == len(on_time)  # what the bound is for
        return
    assert late == 0 and engine.stats()["events_ahead_of_clock"] == 1
    assert engine.stats()["watermark_ms"] <= int((clock.t + max_lead_s) * 1000)
    clock.t += 120
    engine.add_inference([{**events[0], "event_id": "later", "ts": int(clock.t * 1000)}], source=0)
    out += engine.poll()
    counted = sum(s.n for s in out if s.signal == "errors.rate")
    assert counted == 100 + len(on_time)  # the early event's window has not closed yet


# -- feedback ---------------------------------------------------------------------


def test_late_feedback_recomputes_and_reemits_accuracy_of_its_window() -> None:
    clock = Clock()
    engine = SignalEngine(families("quality"), clock=clock, reemit_interval_s=0)
    chunks = stream(120, rate=10, feedback_share=0.5, feedback_delay_s=5)
    inferences = {e["request_id"]: e for c in chunks for t, e in c if t == TOPIC_INFERENCE}
    # hold back the label of one router request of the first minute
    held = next(e for c in chunks for t, e in c if t == TOPIC_FEEDBACK and "label" in e
                and inferences[e["request_id"]]["ts"] < int(T0 * 1000) + 60_000)
    chunks = [[(t, e) for t, e in c if e is not held] for c in chunks]
    first = drive(engine, clock, chunks, flush=False)
    router = inferences[held["request_id"]]
    group = (router["app"], router["model"], router["model_version"])
    before = [s for s in first if s.signal == "quality.accuracy" and s.ts == T0 + 60
              and (s.app, s.model, s.model_version) == group]
    assert before
    acc = before[-1]  # the last emission is the one the table keeps
    clock.t += 1
    reemitted = engine.stats()["windows_reemitted"]
    engine.add_feedback([held])
    again = engine.poll()
    [new] = [s for s in again if s.signal == "quality.accuracy"]
    correct = router["prediction"]["label"] == held["label"]
    assert (new.ts, new.window_s, new.n) == (acc.ts, acc.window_s, acc.n + 1)
    assert new.detail["correct"] == acc.detail["correct"] + correct
    assert new.value == pytest.approx(new.detail["correct"] / new.n)
    assert (new.app, new.model, new.model_version) == group
    # the label-based bias signals of that window came again too, same ts
    assert {s.signal for s in again} >= {"quality.accuracy"}
    assert all(s.ts == acc.ts for s in again)
    assert engine.stats()["windows_reemitted"] == reemitted + 1


def test_reemission_is_rate_limited_by_wall_clock() -> None:
    clock = Clock()
    engine = SignalEngine(families("quality"), clock=clock, reemit_interval_s=30)
    chunks = stream(240, rate=5, feedback_share=0.6, feedback_delay_s=40)
    drive(engine, clock, chunks, flush=False)
    reemitted = engine.stats()["windows_reemitted"]
    # windows get feedback every second; re-emission at most every 30 s per window
    assert 0 < reemitted <= 3 * 4 * (240 // 30 + 1)
    assert engine.stats()["join"]["feedback_after_close"] > reemitted


def test_feedback_past_the_horizon_is_counted_by_the_engine() -> None:
    clock = Clock()
    engine = SignalEngine(families("quality"), clock=clock, horizon_s=120)
    chunks = stream(300, rate=2, feedback_share=0.0)
    drive(engine, clock, chunks, flush=False)
    first = next(e for c in chunks for t, e in c if t == TOPIC_INFERENCE)
    engine.add_feedback([{"event_id": "f", "request_id": first["request_id"],
                          "ts": first["ts"] + 250_000, "score": 1.0}])
    engine.add_feedback([{"event_id": "g", "request_id": "nobody", "ts": first["ts"], "label": "x"}])
    engine.poll()
    join = engine.stats()["join"]
    assert join["feedback_unmatched"] == 2
    assert join["feedback_joined"] == 0
    assert join["records_expired"] > 0


# -- robustness and persistence ------------------------------------------------------


class Exploding(Detector):
    signals = ("test.boom",)

    def update(self, batch: Batch) -> list[Signal]:
        raise RuntimeError("boom")


def test_engine_survives_a_detector_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    engine = SignalEngine({"latency": lambda: [Exploding(), ErrorRates()]}, clock=clock)
    signals = drive(engine, clock, stream(30, rate=10))
    assert Counter(s.signal for s in signals)["errors.rate"] == 9
    stats = engine.stats()
    assert stats["detector_errors"] == {"latency.Exploding": 9}
    assert stats["detector_calls"]["latency.ErrorRates"] == 9
    assert "boom" in caplog.text


def test_snapshot_restore_mid_stream_gives_the_same_signals() -> None:
    from llmpulse.detectors.drift import (
        KolmogorovSmirnov,
        PopulationStabilityIndex,
        ReferencePolicy,
    )

    dets = families("latency", "bias", "quality")
    dets["drift"] = lambda: [PopulationStabilityIndex(reference=ReferencePolicy.fixed(500)),
                             KolmogorovSmirnov(reference=ReferencePolicy.rolling(2))]
    chunks = stream(300, rate=8, seed=5, feedback_delay_s=10)
    clock_a = Clock()
    a = SignalEngine(dets, clock=clock_a, reemit_interval_s=0)
    drive(a, clock_a, chunks[:150], flush=False)
    state = pickle.loads(pickle.dumps(a.snapshot()))
    clock_b = Clock(clock_a.t)
    b = SignalEngine(dets, clock=clock_b, reemit_interval_s=0)
    b.restore(state)
    rest_a = drive(a, clock_a, chunks[150:])
    rest_b = drive(b, clock_b, chunks[150:])
    assert {s.signal.split(".")[0] for s in rest_a} >= {"latency", "drift", "bias", "quality"}
    assert any(s.signal.startswith("drift.") for s in rest_a)
    assert canon(rest_a) == canon(rest_b)


def test_replayed_events_are_dropped_from_windows_and_counted() -> None:
    """At-least-once delivery: a worker that restarts reads recent events again."""
    dets = families("latency", "bias", "quality", "hallucination")
    chunks = stream(120, rate=10, seed=7, feedback_delay_s=5)
    clock_a = Clock()
    once = SignalEngine(dets, clock=clock_a)
    expected = drive(once, clock_a, chunks)
    clock_b = Clock()
    twice = SignalEngine(dets, clock=clock_b)
    replayed = 0
    got: list[Signal] = []
    for i, chunk in enumerate(chunks):
        clock_b.t += 1.0
        again = chunks[i - 3:i] if i % 20 == 19 else []  # the last 3 s, read again
        for c in [*again, chunk]:
            infs = [e for t, e in c if t == TOPIC_INFERENCE]
            assert twice.add_inference([dict(e) for e in infs]) == 0  # none late
            twice.add_feedback([dict(e) for t, e in c if t == TOPIC_FEEDBACK])
        replayed += sum(t == TOPIC_INFERENCE for c in again for t, _ in c)
        got += twice.poll()
    got += twice.flush()
    assert replayed > 0
    assert canon(got) == canon(expected)
    stats = twice.stats()
    assert stats["duplicates_dropped"] == replayed
    assert stats["duplicates_dropped_by_window"] == {"10s": replayed, "60s": replayed}
    assert once.stats()["duplicates_dropped"] == 0
    assert stats["events_in"] == once.stats()["events_in"] + replayed
    # the join is keyed by request_id: a replayed inference keeps its record
    assert stats["join"]["inference_records"] == once.stats()["join"]["inference_records"]
    restored = SignalEngine(dets, clock=Clock(clock_b.t))
    restored.restore(pickle.loads(pickle.dumps(twice.snapshot())))
    assert restored.stats()["duplicates_dropped"] == replayed


def _as_version_1(state: dict[str, Any]) -> dict[str, Any]:
    """The same state in the version 1 layout: events and join table inline."""
    import cramjam

    def unpack(blob: bytes) -> Any:
        raw = bytes(cramjam.zstd.decompress(blob)) if state["codec"] == "zstd" else blob
        return orjson.loads(raw)

    events = unpack(state["events"])
    old = {k: v for k, v in state.items() if k not in ("codec", "events")}
    old["version"] = 1
    old["buffers"] = [
        [length, lateness, {**buf, "open": [[g, start, [events[i] for i in pos]]
                                            for g, start, pos in buf["open"]]}]
        for length, lateness, buf in state["buffers"]
    ]
    old["join"] = unpack(state["join"])
    return old


def test_snapshot_writes_open_events_once_and_reads_versions_1_and_2() -> None:
    dets = families("latency", "bias", "quality")
    chunks = stream(200, rate=8, seed=9, feedback_delay_s=10)
    clock_a = Clock()
    a = SignalEngine(dets, clock=clock_a, reemit_interval_s=0)
    drive(a, clock_a, chunks[:100], flush=False)
    state = pickle.loads(pickle.dumps(a.snapshot()))
    assert state["version"] == 2 and isinstance(state["events"], bytes)
    n_open = sum(len(pos) for _, _, buf in state["buffers"] for _, _, pos in buf["open"])
    old = _as_version_1(state)
    distinct = {e["event_id"] for _, _, buf in old["buffers"] for _, _, evs in buf["open"] for e in evs}
    assert n_open > len(distinct) > 0  # both window lengths hold the events, written once
    rest_a = drive(a, clock_a, chunks[100:])
    for st in (state, old):
        clock_b = Clock(clock_a.t - 100)
        b = SignalEngine(dets, clock=clock_b, reemit_interval_s=0)
        b.restore(st)
        assert canon(drive(b, clock_b, chunks[100:])) == canon(rest_a)
    with pytest.raises(ValueError, match="version 3 not supported: this engine reads versions 1 and 2"):
        SignalEngine(dets, clock=Clock()).restore({**state, "version": 3})
    with pytest.raises(ValueError, match="codec 'lzma' not supported"):
        SignalEngine(dets, clock=Clock()).restore({**state, "codec": "lzma"})


# -- configuration ------------------------------------------------------------------


def test_unknown_family_needs_a_window() -> None:
    with pytest.raises(ValueError, match="windows"):
        SignalEngine({"mine": lambda: [ErrorRates()]})


def test_embedding_drift_on_tiny_windows() -> None:
    from llmpulse.detectors.drift.embedding import EmbeddingDrift

    made: list[EmbeddingDrift] = []

    def drift() -> list[EmbeddingDrift]:
        made.append(EmbeddingDrift("prompt", tests=("mmd",), min_texts=10, max_texts=24,
                                   reference_size=24, n_permutations=50))
        return made[-1:]

    dets = {"drift": drift}
    clock = Clock()
    # every window tested: on a loaded machine "newest window only" may let the
    # reference take every job (the skipping has its own test, in test_deferred)
    engine = SignalEngine(dets, clock=clock, deferred_latest_only=False)
    chunks = stream(180, rate=0.4, seed=1)
    signals = drive(engine, clock, chunks)
    assert engine.stats()["detector_errors"] == {}
    sig = [s for s in signals if s.signal == "drift.embedding_mmd"]
    assert sig, signals
    assert all(s.dimension == "embedding:prompt" and 10 <= s.n <= 24 for s in sig)
    # an erasure reaches the references the detectors built from the requests' prompts
    held = {r for d in made for r in d.snapshot()["reference_ids"]}
    assert held and "" not in held
    assert engine.forget_requests(held) >= len(held)
    assert not any(d.snapshot()["reference_ids"] for d in made)


def test_a_snapshot_from_before_partials_were_removed_still_restores() -> None:
    dets = families("latency")
    clock = Clock()
    a = SignalEngine(dets, clock=clock)
    drive(a, clock, stream(30, rate=10)[:10], flush=False)
    state = a.snapshot()
    old = {**state, "partials": [], "counters": {**state["counters"], "partials_out": 0}}
    b = SignalEngine(dets, clock=clock)
    b.restore(pickle.loads(pickle.dumps(old)))
    assert b.stats()["open_windows"] == a.stats()["open_windows"] > 0
    with pytest.raises(ValueError, match="partial engines are gone"):
        SignalEngine(dets, clock=clock).restore({**state, "role": "partials"})
