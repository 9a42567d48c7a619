"""Deferred detectors: a slow family (embedding drift) delays only itself.

The slow detector here blocks on a gate the test opens, so the test shows
ordering (which signals come out while it is still computing), not timing.
The embedding tests run the real MiniLM encoder.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from llmpulse.detectors.base import Batch, Deferrable, Detector, Signal
from llmpulse.detectors.drift.embedding import EmbeddingDrift
from llmpulse.detectors.embedding import MiniLMEmbedder
from llmpulse.detectors.latency import ErrorRates
from llmpulse.events import TOPIC_INFERENCE
from llmpulse.simulate import SupportAppSimulator
from llmpulse.streams.deferred import DeferredRunner, DeferredTask
from llmpulse.streams.engine import SignalEngine

T0 = 1_700_000_040.0  # a 60 s boundary


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def chunks(duration_s: float, rate: float = 5, seed: int = 3) -> list[list[dict[str, Any]]]:
    sim = SupportAppSimulator(seed=seed, rate=rate, start_ts=T0)
    return [[e for t, e in c if t == TOPIC_INFERENCE] for c in sim.batches(duration_s)]


class GatedCount(Detector, Deferrable):
    """Counts a window's events; completing waits for ``gate`` (a slow embedder)."""

    signals = ("drift.gated_count",)

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.completed = 0

    def prepare(self, batch: Batch) -> tuple[float, float, int]:
        return (batch.start, batch.end, len(batch))

    def complete(self, job: tuple[float, float, int]) -> list[Signal]:
        self.gate.wait(60)  # a safety net only: the test opens the gate
        self.completed += 1
        start, end, n = job
        return [Batch({}, start=start, end=end).signal("drift.gated_count", n, n=n)]

    def update(self, batch: Batch) -> list[Signal]:
        return self.complete(self.prepare(batch))

    def snapshot(self) -> dict[str, Any]:
        return {"completed": self.completed}

    def restore(self, state: Any) -> None:
        self.completed = int(state["completed"])


def gated_engine(gate: threading.Event, clock: Clock) -> SignalEngine:
    return SignalEngine({"latency": lambda: [ErrorRates()], "drift": lambda: [GatedCount(gate)]},
                        clock=clock)


def test_a_slow_family_does_not_hold_up_the_others() -> None:
    gate = threading.Event()
    clock = Clock()
    engine = gated_engine(gate, clock)
    stream = chunks(150)
    out: list[Signal] = []
    for chunk in stream:
        clock.t += 1.0
        engine.add_inference(chunk)
        out += engine.poll()
    # the 60 s drift windows closed, their slow part is still waiting at the gate
    assert engine.stats()["deferred"]["pending"] >= 1
    assert not [s for s in out if s.signal == "drift.gated_count"]
    # meanwhile every 10 s latency window the watermark allowed has closed: the
    # ones after the first drift window's end too
    latency_ends = {s.ts for s in out if s.signal == "errors.rate"}
    assert {T0 + 10 * k for k in range(1, 14)} <= latency_ends
    gate.set()
    out += engine.flush()
    counts = sorted((s.ts, s.model, s.n) for s in out if s.signal == "drift.gated_count")
    assert [ts for ts, _, _ in counts if ts <= T0 + 120] == sorted([T0 + 60] * 3 + [T0 + 120] * 3)
    events = [e for c in stream for e in c]
    for ts, model, n in counts:
        assert n == sum(1 for e in events if e["model"] == model and ts - 60 <= e["ts"] / 1000 < ts)
    assert engine.stats()["deferred"]["pending"] == 0
    assert engine.stats()["detector_errors"] == {}


def test_without_deferral_the_slow_family_holds_up_the_close() -> None:
    # the baseline the deferral is measured against: inline, the close waits for it
    gate = threading.Event()
    gate.set()
    clock = Clock()
    engine = SignalEngine({"latency": lambda: [ErrorRates()], "drift": lambda: [GatedCount(gate)]},
                          clock=clock, defer=False)
    out: list[Signal] = []
    for chunk in chunks(100):
        clock.t += 1.0
        engine.add_inference(chunk)
        out += engine.poll()
    assert [s for s in out if s.signal == "drift.gated_count"]  # in the same poll as its close
    assert "deferred" not in engine.stats() or engine.stats()["deferred"] == {}


def test_pending_jobs_survive_a_snapshot() -> None:
    gate = threading.Event()
    gate.set()
    clock = Clock()
    a = gated_engine(gate, clock)
    runner = a._deferred
    assert runner is not None
    stream = chunks(100)
    with runner.held():  # no job starts: the snapshot finds them all waiting
        for chunk in stream[:95]:
            clock.t += 1.0
            a.add_inference(chunk)
            a.poll()
        state = pickle.loads(pickle.dumps(a.snapshot()))
    assert len(state["deferred"]["pending"]) == 3  # the first drift window, three models
    b = gated_engine(gate, Clock(clock.t))
    b.restore(state)
    want = sorted((s.ts, s.model, s.n) for s in a.flush() if s.signal == "drift.gated_count")
    got = sorted((s.ts, s.model, s.n) for s in b.flush() if s.signal == "drift.gated_count")
    assert got == want and len(want) == 6


def test_pending_jobs_move_with_their_partition() -> None:
    """A partition handed to another engine takes its groups' waiting jobs along:
    the new owner emits their signals, the old one no longer does."""
    gate = threading.Event()
    clock = Clock()
    a = gated_engine(gate, clock)
    runner = a._deferred
    assert runner is not None
    stream = chunks(95)
    models = sorted({e["model"] for c in stream for e in c})
    moved = models[0]
    keys = {f"{e['app']}/{e['model']}/{e['model_version']}".encode()
            for c in stream for e in c if e["model"] == moved}
    with runner.held():  # no job starts: the first drift window's three wait
        for chunk in stream:
            clock.t += 1.0
            a.add_inference(chunk)
            a.poll()
        part = pickle.loads(pickle.dumps(a.snapshot_groups(keys)))
        a.drop_groups(keys)
    assert [g for _, g, *_ in part["deferred"]["pending"]] == [[*g] for g in
                                                               [_group_of(stream, moved)]]
    b = gated_engine(gate, Clock(clock.t))
    b.merge(part)
    gate.set()
    old = [(s.model, s.ts) for s in a.flush() if s.signal == "drift.gated_count"]
    new = [(s.model, s.ts) for s in b.flush() if s.signal == "drift.gated_count"]
    assert (moved, T0 + 60) in new and all(m == moved for m, _ in new)
    assert old and all(m != moved for m, _ in old)


def _group_of(stream: list[list[dict[str, Any]]], model: str) -> tuple[str, str, str]:
    e = next(e for c in stream for e in c if e["model"] == model)
    return (e["app"], e["model"], e["model_version"])


def test_a_full_queue_drops_and_counts() -> None:
    gate = threading.Event()
    runner = DeferredRunner(max_pending=1)
    det = GatedCount(gate)
    with runner.held():  # nothing starts: the queue holds what was submitted
        assert runner.submit(DeferredTask("drift", ("a", "m", "1"), 0, "d", det, (0.0, 1.0, 1), 1.0))
        assert not runner.submit(DeferredTask("drift", ("a", "m", "1"), 0, "d", det, (1.0, 2.0, 2), 2.0))
    gate.set()
    assert runner.wait(60)
    assert [t.job for t, _, _, _ in runner.take()] == [(0.0, 1.0, 1)]
    assert runner.stats() == {"pending": 0, "submitted": 1, "completed": 1, "skipped": 0,
                              "dropped": 1}


def test_a_detector_behind_tests_its_newest_window() -> None:
    gate = threading.Event()
    gate.set()
    clock = Clock()
    engine = gated_engine(gate, clock)
    runner = engine._deferred
    assert runner is not None
    stream = chunks(300)
    out: list[Signal] = []
    with runner.held():  # the slow family falls behind: four drift windows close meanwhile
        for chunk in stream:
            clock.t += 1.0
            engine.add_inference(chunk)
            out += engine.poll()
        stats = engine.stats()["deferred"]
        assert stats["pending"] == 3 and stats["skipped"] == 3 * 3  # one waiting job per model
    out += engine.flush()  # the flush closes the last window, and skips nothing
    ends = sorted((s.ts, s.model) for s in out if s.signal == "drift.gated_count")
    models = sorted({m for _, m in ends})
    assert ends == sorted([(T0 + 240, m) for m in models] + [(T0 + 300, m) for m in models])
    assert engine.stats()["deferred"]["skipped"] == 9


# -- with the real encoder -----------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder.default()


def embedding_engine(embedder: MiniLMEmbedder, clock: Clock, *, defer: bool) -> SignalEngine:
    def drift() -> list[Detector]:
        return [EmbeddingDrift("prompt", tests=("mmd",), min_texts=10, max_texts=24,
                               reference_size=32, n_permutations=50, embedder=embedder)]

    return SignalEngine({"latency": lambda: [ErrorRates()], "drift": drift}, clock=clock,
                        defer=defer, deferred_latest_only=False)


def test_deferred_embedding_drift_gives_the_inline_signals(embedder: MiniLMEmbedder) -> None:
    stream = chunks(240, rate=3, seed=5)
    results = []
    for defer in (False, True):
        clock = Clock()
        engine = embedding_engine(embedder, clock, defer=defer)
        out: list[Signal] = []
        for chunk in stream:
            clock.t += 1.0
            engine.add_inference(chunk)
            out += engine.poll()
        out += engine.flush()
        assert engine.stats()["detector_errors"] == {}
        results.append(sorted((s.ts, s.model, s.signal, s.value, s.n, s.detail["p_value"],
                               s.detail["sampling_rate"], s.detail["window_n"])
                              for s in out if s.signal.startswith("drift.embedding")))
    inline, deferred = results
    assert inline and deferred == inline
    # each window is larger than the 32 texts a window may embed: the rate says what was kept
    for _ts, _model, _sig, _value, n, _p, rate, window_n in deferred:
        assert window_n > 32 and n == 24
        assert rate == pytest.approx(24 / window_n)


class HashEmbedder:
    """A cheap, deterministic stand-in for MiniLM: the job's texts are what is tested."""

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        return np.array([[float((hash(t) >> k) & 0xFF) for k in range(0, 64, 8)] for t in texts],
                        dtype=np.float32)


def test_an_erasure_takes_the_texts_out_of_waiting_jobs() -> None:
    """Waiting embedding jobs hold a sample of the window's prompts and snapshots keep
    them: an erasure must take the erased requests' texts out, or they outlive it."""
    clock = Clock()
    engine = SignalEngine({"drift": lambda: [EmbeddingDrift(field="prompt", embedder=HashEmbedder(),
                                                            min_texts=5)]}, clock=clock)
    runner = engine._deferred
    assert runner is not None
    stream = chunks(100, rate=5)
    events = [e for c in stream for e in c]
    with runner.held():  # no job starts: they all wait, texts and all
        for chunk in stream[:95]:
            clock.t += 1.0
            engine.add_inference(chunk)
            engine.poll()
        before = pickle.dumps(engine.snapshot())
        pending = pickle.loads(before)["deferred"]["pending"]
        assert pending, "the first drift window's jobs wait"
        held = [(t, r) for p in pending for t, r in zip(p[3].texts, p[3].ids, strict=True)]
        assert held
        victim_text, victim = held[0]
        assert victim_text.encode() in before
        gone = engine.forget_requests({victim})
        after = pickle.dumps(engine.snapshot())
    assert gone >= 1
    kept = [r for p in pickle.loads(after)["deferred"]["pending"] for r in p[3].ids]
    assert victim not in kept and len(kept) == len(held) - sum(1 for _, r in held if r == victim)
    # the text is gone unless another, not erased, request asked the very same thing
    same = [e for e in events if e.get("prompt") == victim_text and e["request_id"] != victim]
    assert (victim_text.encode() in after) == bool(same)
    assert engine.flush() is not None  # the jobs left still complete
