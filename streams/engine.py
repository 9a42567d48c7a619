"""The signal engine: windows in, detectors run per group, labelled signals out.

No Faust and no ClickHouse here: the agents hand validated events to
:meth:`SignalEngine.add_inference` / :meth:`SignalEngine.add_feedback` and
call :meth:`SignalEngine.advance` (or :meth:`~SignalEngine.poll`) on a timer;
what comes back goes to ``llmpulse.signals`` and the ``signals`` table. The
clock is injected, so tests advance time instead of sleeping.

Detector families and what they see (windows in :mod:`llmpulse.streams.windows`):

==============  ==========  =================================================================
family          window      default detectors (one instance per group, made by a factory)
==============  ==========  =================================================================
latency         10 s + 5 s  LatencyPercentiles (DDSketch), ErrorRates, TokenThroughput,
                            CostTotal, LatencyChange
drift           60 s + 30   PopulationStabilityIndex, KolmogorovSmirnov, ChiSquare (default
                            features: latency, tokens, text lengths, ``feature.*``;
                            ``prediction.label``, ``segment.*``); EmbeddingDrift on prompts
                            when ``embedding=True`` (sampled to 256 texts per window,
                            embedded off the window close: see ``defer``)
bias            60 s + 30   SegmentBias on outcomes: demographic parity, error rate gaps
hallucination   60 s + 30   HallucinationSignals (groundedness, log-probabilities)
quality         60 s + 30   LabelAccuracy, FeedbackScore, UserFlaggedRate, SegmentBias on
                            labels and scores, ReferenceOverlap (ROUGE-L/BLEU/chrF against
                            feedback references): run on the window's inferences that received
                            feedback (:mod:`llmpulse.streams.join`), again when late feedback arrives;
                            ABComparison on those and every inference tagged ``experiment``
==============  ==========  =================================================================

Families with the same window share one buffer and one
:class:`~llmpulse.detectors.base.Batch` per closed window. Content families see
inference events only; feedback reaches detectors through the quality
family alone, so each feedback signal has one source.

A detector that raises is logged and counted (``detector_errors``) and the
engine goes on with the next one. :meth:`SignalEngine.stats` has the engine's
own counters: events in, windows closed, late events dropped, repeated
events dropped (the stream is at-least-once: after a worker restart the same
``event_id`` can arrive twice; a closed window keeps one, and a copy that
arrives after its window closed is a repeat, not late), delay from a
window's end to its signals (wall clock), errors and time per detector.

Scale-out is by group: every event of an (app, model, model_version)
reaches one worker (``llmpulse.grouped`` is keyed by group) and, there, one
engine shard, so one engine computes all of a group's signals. Splitting a
hot group's mergeable detectors over workers and merging their states was
measured and left out: those detectors are about a tenth of the engine's
time per event, so it would lift a hot group's ceiling by about 12 %
(docs/signals.md).

>>> from llmpulse.simulate import SupportAppSimulator
>>> sim = SupportAppSimulator(seed=1, rate=20, start_ts=1_700_000_000.0)
>>> now = [1_700_000_000.0]
>>> engine = SignalEngine(default_detectors(embedding=False), clock=lambda: now[0])
>>> signals = []
>>> for chunk in sim.batches(duration_s=30):
...     now[0] += 1.0
...     late = engine.add_inference([e for t, e in chunk if t == "llmpulse.inference"])
...     signals += engine.poll()
>>> sorted({(s.ts, s.n) for s in signals if s.signal == "errors.rate" and s.model == "intent-router"})
[(1700000010.0, 239), (1700000020.0, 206)]
>>> engine.stats()["windows_closed"], engine.stats()["late_dropped"]
(6, 0)
"""

from __future__ import annotations

import gc
import logging
import math
import pickle
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from llmpulse.detectors.base import Batch, Deferrable, Detector, Signal
from llmpulse.streams.deferred import DeferredRunner, DeferredTask
from llmpulse.streams.join import FeedbackJoin
from llmpulse.streams.repeats import RepeatIds
from llmpulse.streams.windows import (
    DEFAULT_WINDOWS,
    Group,
    TumblingWindows,
    Watermark,
    WindowSpec,
    _group,
    event_ms,
)

__all__ = [
    "CONTENT_FAMILIES",
    "DetectorFactory",
    "LABEL_BIAS_METRICS",
    "SNAPSHOT_VERSION",
    "SignalEngine",
    "default_detectors",
]

log = logging.getLogger(__name__)

DetectorFactory = Callable[[], Sequence[Detector]]
"""Makes a family's detectors for one group (called once per group)."""

SNAPSHOT_VERSION = 2
"""Format of :meth:`SignalEngine.snapshot` (1: events inline as Python objects)."""

CONTENT_FAMILIES: tuple[str, ...] = ("latency", "drift", "bias", "hallucination")
"""Families computed from inference events; ``quality`` is computed from feedback."""

LABEL_BIAS_METRICS: tuple[str, ...] = (
    "accuracy",
    "equalized_odds",
    "feedback_score",
    "hallucination_rate",
)
"""SegmentBias metrics that need feedback: they run in the quality family."""


def default_detectors(
    *,
    embedding: bool = False,
    embedder: Any = None,
    hallucination_max_scored: int = 500,
) -> dict[str, DetectorFactory]:
    """The shipped detector set, one factory per family.

    ``embedding=True`` adds prompt :class:`~llmpulse.detectors.drift.embedding.EmbeddingDrift`
    (the costly one: a few hundred texts a second per core; it samples 256
    prompts per window) and, in the quality family,
    :class:`~llmpulse.detectors.quality.semantic.SemanticSimilarity` of responses and
    their references. ``hallucination_max_scored`` caps responses scored
    for groundedness per window (about 1 ms each).

    >>> sorted(default_detectors())
    ['bias', 'drift', 'hallucination', 'latency', 'quality']
    >>> [type(d).__name__ for d in default_detectors()["quality"]()]
    ['LabelAccuracy', 'FeedbackScore', 'UserFlaggedRate', 'SegmentBias', 'ABComparison', 'ReferenceOverlap', 'JudgeAgreement']
    """
    from llmpulse.detectors.bias import SegmentBias
    from llmpulse.detectors.drift import ChiSquare, KolmogorovSmirnov, PopulationStabilityIndex
    from llmpulse.detectors.hallucination import HallucinationSignals
    from llmpulse.detectors.latency import (
        CostTotal,
        ErrorRates,
        LatencyChange,
        LatencyPercentiles,
        TokenThroughput,
    )
    from llmpulse.detectors.quality import (
        ABComparison,
        FeedbackScore,
        JudgeAgreement,
        LabelAccuracy,
        ReferenceOverlap,
        UserFlaggedRate,
    )

    def latency() -> list[Detector]:
        return [
            LatencyPercentiles(sketch=True),
            ErrorRates(),
            TokenThroughput(),
            CostTotal(),
            LatencyChange(),
        ]

    def drift() -> list[Detector]:
        out: list[Detector] = [PopulationStabilityIndex(), KolmogorovSmirnov(), ChiSquare()]
        if embedding:
            from llmpulse.detectors.drift.embedding import EmbeddingDrift

            out.append(EmbeddingDrift("prompt", embedder=embedder))
        return out

    def bias() -> list[Detector]:
        return [SegmentBias(metrics=("demographic_parity", "error_rate"))]

    def hallucination() -> list[Detector]:
        return [HallucinationSignals(max_scored=hallucination_max_scored)]

    def quality() -> list[Detector]:
        out: list[Detector] = [
            LabelAccuracy(),
            FeedbackScore(),
            UserFlaggedRate(),
            SegmentBias(metrics=LABEL_BIAS_METRICS),
            ABComparison(),
            ReferenceOverlap(),
            JudgeAgreement(),
        ]
        if embedding:
            from llmpulse.detectors.quality.semantic import SemanticSimilarity

            out.append(SemanticSimilarity(embedder=embedder))
        return out

    return {
        "latency": latency,
        "drift": drift,
        "bias": bias,
        "hallucination": hallucination,
        "quality": quality,
    }


@dataclass
class _Counters:
    events_in: int = 0
    feedback_in: int = 0
    windows_closed: int = 0
    windows_reemitted: int = 0
    polls_cut: int = 0
    signals_out: int = 0
    close_delay_last_s: float = 0.0
    close_delay_max_s: float = 0.0
    close_delay_sum_s: float = 0.0
    deferred_delay_last_s: float = 0.0
    deferred_delay_max_s: float = 0.0
    detector_errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    detector_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    detector_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a snapshot is built or read (a context
    manager, or a decorator): a snapshot makes a tuple for every feedback-join record
    and a list for every open window, a restore an object for each (millions on a
    busy worker), and each allocation threshold then rescans what the engine holds.
    On a state of 2.3 million join records and 891,000 window events (5 minutes at
    8,000 events/s), a save's snapshot and groups' share took 0.67-0.82x the CPU with
    it off (three interleaved pairs: 10.4-10.5 s against 12.7-15.8 s), and its
    restore 0.56-0.63x (two pairs: 12.4-13.2 s against 21.0-22.2 s). What is
    allocated meanwhile is the snapshot, or the state, itself; cycles made meanwhile
    are collected once it is back on. Re-enabled after only if it was on.

    >>> import gc
    >>> with _gc_paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class SignalEngine:
    """Windows, feedback join and detectors for every (app, model, model_version).

    ``detectors`` maps a family to a factory of its detectors (default:
    :func:`default_detectors` without embedding drift); ``windows`` overrides
    :data:`~llmpulse.streams.windows.DEFAULT_WINDOWS` per family. ``clock`` gives wall
    time in seconds (``time.time``); ``idle_s`` is how long a silent source
    may hold the watermark; ``horizon_s`` how long inferences wait for
    feedback; ``reemit_interval_s`` how often (wall clock) windows that got
    late feedback are recomputed, so a trickle of feedback into a window
    re-emits it once per interval, not once per feedback.
    ``close_budget_s``: see :meth:`advance`.

    ``defer`` (default on): a :class:`~llmpulse.detectors.base.Deferrable`
    detector (embedding drift) only prepares its bounded job when its window
    closes; the job is completed on a thread of the engine's own
    (:mod:`llmpulse.streams.deferred`, at most ``max_deferred`` waiting) and
    its signals come out of a later :meth:`advance`, so a slow family delays
    only itself. :meth:`flush` waits for them. ``deferred_latest_only``: a
    detector that falls behind tests its newest window, skipping (and
    counting) the waiting older one; :meth:`flush` skips none.
    """

    def __init__(
        self,
        detectors: Mapping[str, DetectorFactory] | None = None,
        windows: Mapping[str, WindowSpec] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        idle_s: float = 30.0,
        horizon_s: float = 3600.0,
        max_pending_feedback: int = 100_000,
        reemit_interval_s: float = 10.0,
        close_budget_s: float = 0.0,
        defer: bool = True,
        max_deferred: int = 256,
        deferred_latest_only: bool = True,
        max_lead_s: float | None = None,
    ) -> None:
        self.detectors = dict(default_detectors() if detectors is None else detectors)
        self.windows = {**DEFAULT_WINDOWS, **(windows or {})}
        missing = sorted(set(self.detectors) - set(self.windows))
        if missing:
            raise ValueError(f"windows: no window for families {missing}; pass windows={{...}}")
        self.clock = clock
        self.horizon_s = float(horizon_s)
        self.reemit_interval_s = float(reemit_interval_s)
        self.close_budget_s = float(close_budget_s)
        self._last_redo = -float("inf")
        self._watermark = Watermark(idle_s, max_lead_s)
        self._instances: dict[tuple[str, Group], list[Detector]] = {}
        # the pickled snapshot of each (family, group)'s detectors, dropped when they
        # run: a group with no window closed since the last save (an old model
        # version) is not copied again on every save, however many there are
        self._saved_states: dict[tuple[str, Group], bytes] = {}
        self._names: dict[str, list[str]] = {fam: self._detector_names(fam) for fam in self.detectors}
        self._specs: dict[WindowSpec, list[str]] = {}
        for fam in self.detectors:
            if fam != "quality" and self._names[fam]:
                self._specs.setdefault(self.windows[fam], []).append(fam)
        # one set of closed windows' event ids for every window length
        self._repeat_ids = RepeatIds(math.gcd(*(sp.length_ms for sp in self._specs)) or 1000)
        self._buffers = {spec: TumblingWindows(spec, repeat_ids=self._repeat_ids)
                         for spec in sorted(self._specs, key=lambda sp: sp.length_ms)}
        self._join: FeedbackJoin | None = None
        if self._names.get("quality"):
            self._join = FeedbackJoin(
                self.windows["quality"], horizon_s, max_pending=max_pending_feedback
            )
        self._revisions: dict[tuple[Group, int], int] = {}
        # the partition (first item of a ``(partition, source)`` source) of each group
        # taken over from another engine: its windows close by that partition's sources
        self._taken_over: dict[Group, Hashable] = {}
        self._c = _Counters()
        self._deferred = (DeferredRunner(max_pending=max_deferred,
                                         latest_only=deferred_latest_only) if defer else None)
        self._flushing = False
        self._ready: list[Signal] = []  # deferred signals finished, not yet returned

    @property
    def repeat_ids(self) -> RepeatIds:
        """The event ids of closed windows, one set for every window length
        (:mod:`llmpulse.streams.repeats`)."""
        return self._repeat_ids

    # -- configuration helpers ------------------------------------------------

    def _detector_names(self, family: str) -> list[str]:
        """Names of the family's detectors for counters (probed once)."""
        names = [f"{family}.{type(d).__name__}" for d in self.detectors[family]()]
        dup = {n for n in names if names.count(n) > 1}
        return [f"{n}#{i}" if n in dup else n for i, n in enumerate(names)]

    def _detectors_for(self, family: str, group: Group) -> list[Detector]:
        key = (family, group)
        dets = self._instances.get(key)
        if dets is None:
            dets = list(self.detectors[family]())
            self._instances[key] = dets
        return dets

    def _detector_states(self, key: tuple[str, Group], dets: list[Detector]) -> list[Any]:
        """``[d.snapshot() for d in dets]``, from the copy kept since they last ran.
        Each call gets objects of its own (a caller may change what it got)."""
        blob = self._saved_states.get(key)
        if blob is None:
            blob = pickle.dumps([d.snapshot() for d in dets], protocol=pickle.HIGHEST_PROTOCOL)
            self._saved_states[key] = blob
        states: list[Any] = pickle.loads(blob)
        return states

    # -- input ------------------------------------------------------------------

    def add_inference(self, events: Iterable[Mapping[str, Any]], *, source: Hashable = 0) -> int:
        """Add validated ``inference/v1`` events read from ``source`` (a
        partition); returns how many were late for at least one family."""
        now = self.clock()
        items: list[tuple[Group, Any, int]] = []
        append = items.append
        for ev in events:
            ts = ev["ts"]
            if type(ts) is not int:
                ts = event_ms(ev)
            append(((ev["app"], ev["model"], ev["model_version"]), ev, ts))
        if not items:
            return 0
        late: set[int] = set()
        for buf in self._buffers.values():
            late.update(buf.add_many(items))
        if self._join is not None:
            self._join.add_inferences(items)
        self._watermark.observe(source, max([it[2] for it in items]), now)
        self._c.events_in += len(items)
        return len(late)

    def add_feedback(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Add validated ``feedback/v1`` events; returns how many joined an inference now."""
        if self._join is None:
            return 0
        joined = 0
        for ev in events:
            self._c.feedback_in += 1
            joined += self._join.add_feedback(ev)
        return joined

    def forget_source(self, source: Hashable) -> None:
        """A partition was revoked: stop holding the watermark for it."""
        self._watermark.forget(source)

    def forget_requests(self, request_ids: Set[str]) -> int:
        """Drop every event and join record of ``request_ids`` (an erasure); the count."""
        ids = set(request_ids)
        self._saved_states.clear()  # rare: every group's detectors are copied afresh
        gone = sum(buf.forget(ids) for buf in self._buffers.values())
        if self._join is not None:
            gone += self._join.forget(ids)
        if self._deferred is None:
            return gone + self._forget_in_detectors(ids)
        # waiting jobs hold a sample of the window's texts, and snapshots keep them
        removed = 0

        def without(task: DeferredTask) -> DeferredTask | None:
            nonlocal removed
            job, n = task.detector.forget(task.job, ids)
            removed += n
            return None if job is None else replace(task, job=job)

        with self._deferred.held():  # no job is completing: detectors' state is ours
            self._deferred.rewrite(without)
            gone += removed + self._forget_in_detectors(ids)
        return gone

    def _forget_in_detectors(self, ids: Set[str]) -> int:
        """What detectors keep across windows of ``ids`` (embedding drift's reference)."""
        return sum(d.forget_requests(ids) for dets in self._instances.values() for d in dets)

    # -- output -------------------------------------------------------------------

    def advance(self, now: float | None = None, *, backlog: bool = False,
                hold: bool = False) -> list[Signal]:
        """Close what the watermark allows at wall time ``now``; the signals.

        ``backlog``: the reader has unread events (consumer lag), so no source
        is idle however long it has been silent (:class:`~llmpulse.streams.windows.Watermark`).
        ``hold``: the reader awaits a partition it has not delivered from yet
        (:class:`~llmpulse.streams.windows.AwaitedSources`): the watermark stays where it is.

        Window lengths are closed shortest first; once the closes of one
        length produced signals and took ``close_budget_s`` or more, the
        longer ones wait for the next call (made at once by a caller that
        gets signals back), so a minute window's detectors never hold up the
        ten-second windows that became due with it."""
        now = self.clock() if now is None else now
        wm = self._watermark.current(now, backlog=backlog, hold=hold)
        behind = self._watermark.partitions_behind(now, backlog=backlog) if self._taken_over else {}
        if self._taken_over and not behind:
            self._taken_over = {}  # caught up: they follow the watermark again
        out: list[Signal] = self._take_deferred(now)
        t0 = time.perf_counter()
        ready = len(out)  # deferred signals do not count against the budget
        for spec, buf in self._buffers.items():
            if len(out) > ready and time.perf_counter() - t0 >= self.close_budget_s:
                self._c.polls_cut += 1
                self._c.signals_out += len(out)
                return out
            threshold = None if wm is None else wm - spec.lateness_ms
            caps = {g: behind[p] - spec.lateness_ms for g, p in self._taken_over.items()
                    if p in behind}
            for group, start, events in buf.close(threshold, caps):
                out += self._close(self._specs[spec], spec, group, start, events, now)
        if self._join is not None:
            for group, start in self._join.due(wm):
                out += self._close_quality(group, start, now)
            if now - self._last_redo >= self.reemit_interval_s:
                self._last_redo = now
                for group, start in self._join.redo():
                    out += self._close_quality(group, start, now)
            self._prune_revisions(wm)
        self._c.signals_out += len(out)
        return out

    def poll(self, *, backlog: bool = False, hold: bool = False) -> list[Signal]:
        """:meth:`advance` at the clock's time."""
        return self.advance(backlog=backlog, hold=hold)

    def flush(self, now: float | None = None) -> list[Signal]:
        """Close every open window now (shutdown, end of a replay)."""
        now = self.clock() if now is None else now
        out: list[Signal] = []
        self._flushing = True  # every window closed now is computed
        try:
            out += self._flush(now)
        finally:
            self._flushing = False
        self._c.signals_out += len(out)
        return out

    def _flush(self, now: float) -> list[Signal]:
        out: list[Signal] = []
        for spec, buf in self._buffers.items():
            for group, start, events in buf.close_all():
                out += self._close(self._specs[spec], spec, group, start, events, now)
        if self._join is not None:
            for group, start in [*self._join.flush(), *self._join.redo()]:
                out += self._close_quality(group, start, now)
        if self._deferred is not None:
            self._deferred.wait()
            out += self._take_deferred(now)
        return out

    def _close(
        self,
        families: list[str],
        spec: WindowSpec,
        group: Group,
        start_ms: int,
        events: list[dict[str, Any]],
        now: float,
    ) -> list[Signal]:
        end_ms = start_ms + spec.length_ms
        batch = Batch.from_events(events, start=start_ms / 1000.0, end=end_ms / 1000.0)
        out: list[Signal] = []
        for fam in families:
            out += self._run(fam, group, batch)
        self._c.windows_closed += 1
        self._note_delay(now - end_ms / 1000.0)
        return out

    def _close_quality(self, group: Group, start_ms: int, now: float) -> list[Signal]:
        assert self._join is not None
        spec = self._join.window
        end_ms = start_ms + spec.length_ms
        key = (group, start_ms)
        revision = self._revisions.get(key, -1) + 1
        self._revisions[key] = revision
        if revision:
            self._c.windows_reemitted += 1
        else:
            self._c.windows_closed += 1
            self._note_delay(now - end_ms / 1000.0)
        events = self._join.events(group, start_ms)
        batch = Batch.from_events(events, start=start_ms / 1000.0, end=end_ms / 1000.0)
        # how many times the window was computed before: the alert manager keeps the
        # verdicts of windows that are recomputed, so a late label still completes a streak
        return [Signal(s.signal, s.value, s.n, s.dimension, s.ts, s.window_s, s.app, s.model,
                       s.model_version, {**s.detail, "revision": revision})
                for s in self._run("quality", group, batch)]

    def _run(self, family: str, group: Group, batch: Batch) -> list[Signal]:
        out: list[Signal] = []
        try:
            dets = self._detectors_for(family, group)
        except Exception:
            log.exception("signal engine: making %s detectors for %s failed", family, group)
            self._c.detector_errors[f"{family}.factory"] += 1
            return out
        names = self._names[family]
        app, model, version = group
        c = self._c
        deferred = self._deferred
        self._saved_states.pop((family, group), None)  # their state changes now
        for i, det in enumerate(dets):
            name = names[i]
            t0 = time.perf_counter()
            try:
                if deferred is not None and isinstance(det, Deferrable):
                    job = det.prepare(batch)  # the bounded sample; the costly part waits
                    if job is not None:
                        deferred.submit(DeferredTask(family, group, i, name, det, job, batch.end),
                                        replace=not self._flushing)
                    continue
                signals = det.update(batch)
                out += [s.labelled(app=app, model=model, model_version=version) for s in signals]
            except Exception:
                log.exception("signal engine: %s failed on %s window ending %s", name, group, batch.end)
                c.detector_errors[name] += 1
            finally:
                c.detector_seconds[name] += time.perf_counter() - t0
                c.detector_calls[name] += 1
        return out

    def _take_deferred(self, now: float) -> list[Signal]:
        """Signals of the deferred jobs finished since the last call."""
        self._collect_deferred(now)
        out, self._ready = self._ready, []
        return out

    def _collect_deferred(self, now: float) -> None:
        if self._deferred is None:
            return
        c = self._c
        for task, signals, seconds, failed in self._deferred.take():
            app, model, version = task.group
            self._saved_states.pop((task.family, task.group), None)
            self._ready += [s.labelled(app=app, model=model, model_version=version)
                            for s in signals]
            c.detector_seconds[task.name] += seconds
            if failed:
                c.detector_errors[task.name] += 1
            delay = now - task.end
            c.deferred_delay_last_s = delay
            c.deferred_delay_max_s = max(c.deferred_delay_max_s, delay)

    def _note_delay(self, delay: float) -> None:
        c = self._c
        c.close_delay_last_s = delay
        c.close_delay_sum_s += delay
        if delay > c.close_delay_max_s:
            c.close_delay_max_s = delay

    def _prune_revisions(self, wm: int | None) -> None:
        if wm is None or len(self._revisions) < 1024:
            return
        cutoff = wm - int(round(self.horizon_s * 1000)) - self.windows["quality"].length_ms
        self._revisions = {k: v for k, v in self._revisions.items() if k[1] >= cutoff}

    # -- observability ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The engine's own counters (JSON-able), for ``/api/stats`` and logs."""
        c = self._c
        late_by_group: dict[str, dict[str, int]] = {}
        late = 0
        dups_by_window: dict[str, int] = {}
        repeats_by_window: dict[str, int] = {}
        for spec, buf in self._buffers.items():
            for g, n in buf.late.items():
                late += n
                late_by_group.setdefault("/".join(g), {})[f"{spec.length_s:g}s"] = n
            dups_by_window[f"{spec.length_s:g}s"] = buf.duplicates
            repeats_by_window[f"{spec.length_s:g}s"] = buf.repeats
        closed = max(1, c.windows_closed)
        # the last applied watermark: reading stats must not move it (with the
        # wall clock, that would close windows a backlog still holds events for)
        wm = self._watermark.value
        return {
            "events_in": c.events_in,
            "feedback_in": c.feedback_in,
            "windows_closed": c.windows_closed,
            "windows_reemitted": c.windows_reemitted,
            "polls_cut": c.polls_cut,
            "open_windows": sum(len(b) for b in self._buffers.values()),
            "signals_out": c.signals_out,
            "late_dropped": late,
            "late_dropped_by_group": late_by_group,
            # every window length sees each event: a repeated event is dropped once per length
            "duplicates_dropped": max(dups_by_window.values(), default=0),
            "duplicates_dropped_by_window": dups_by_window,
            # copies of events for windows that closed with them (read again after a
            # rebalance): dropped, not late; once per window length, as duplicates
            "repeats_dropped": max(repeats_by_window.values(), default=0),
            "repeats_dropped_by_window": repeats_by_window,
            # event ids of closed windows kept to tell those copies (once for all lengths)
            "repeat_ids": len(self._repeat_ids),
            "watermark_ms": wm,
            # event times further ahead of the clock than max_lead_s, counted as that far
            "events_ahead_of_clock": self._watermark.clamped,
            "sources": self._watermark.sources_view(self.clock()),
            "close_delay_s": {
                "last": c.close_delay_last_s,
                "max": c.close_delay_max_s,
                "mean": c.close_delay_sum_s / closed,
            },
            "deferred": {} if self._deferred is None else {
                **self._deferred.stats(),
                "delay_s": {"last": c.deferred_delay_last_s, "max": c.deferred_delay_max_s},
            },
            "detector_errors": dict(c.detector_errors),
            "detector_seconds": {k: round(v, 6) for k, v in c.detector_seconds.items()},
            "detector_calls": dict(c.detector_calls),
            "join": {} if self._join is None else self._join.stats(),
        }

    # -- persistence --------------------------------------------------------------

    @_gc_paused()
    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue after a restart: open windows, the
        join table, per-group detector state, counters. Picklable; take it
        at the same point as the consumer offsets it goes with.

        The open windows' events (JSON, as ingest decodes them) are written
        once however many window lengths hold them, as one JSON array in
        bytes (``events``), and the windows as positions in it; the join
        table likewise as JSON bytes. Both are zstd-compressed (``codec``)
        when cramjam is installed. Pickling a few bytes objects is a copy,
        where the events as Python objects cost seconds. The closed windows'
        event ids (``repeat_ids``) are one set for all window lengths, as raw
        uint64 bytes; a snapshot that keeps them per buffer (``closed_ids``,
        base64 text, before they were shared) is read too.
        """
        if self._deferred is None:
            return self._snapshot([])
        # no deferred job runs meanwhile: the detectors' state and the waiting jobs agree
        with self._deferred.held() as pending:
            self._collect_deferred(self.clock())
            return self._snapshot(pending)

    def _snapshot(self, pending: list[DeferredTask]) -> dict[str, Any]:
        c = self._c
        index: dict[int, int] = {}
        shared: dict[int, Any] = {}
        buffers = [
            [spec.length_s, spec.lateness_s, buf.snapshot_shared(index, shared)]
            for spec, buf in self._buffers.items()
        ]
        return {
            "version": SNAPSHOT_VERSION,
            "role": "all",
            "codec": _CODEC,
            "watermark": self._watermark.snapshot(),
            "events": _pack(list(shared.values())),
            "buffers": buffers,
            "repeat_ids": self._repeat_ids.state(),
            "join": None if self._join is None else self._join.packed(_compress),
            "detectors": [
                [fam, list(g), self._detector_states((fam, g), dets)]
                for (fam, g), dets in self._instances.items()
            ],
            "revisions": [[list(g), s, r] for (g, s), r in self._revisions.items()],
            # deferred work: signals finished but not yet returned, jobs not yet done
            "deferred": {
                "ready": list(self._ready),
                "pending": [[t.family, list(t.group), t.index, t.job, t.end] for t in pending],
            },
            "counters": {
                k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(c).items()
            },
        }

    # -- a partition's share, handed from one engine to another ------------------

    def groups_of(self, keys: Set[bytes]) -> set[Group]:
        """The groups this engine holds whose routing key (``app/model/version``,
        the ``llmpulse.grouped`` message key) is in ``keys``."""
        held: set[Group] = set()
        for buf in self._buffers.values():
            held |= buf.groups()
        if self._join is not None:
            held |= self._join.groups()
        held |= {g for _, g in self._instances}
        held |= {g for g, _ in self._revisions}
        return {g for g in held if "/".join(g).encode() in keys}

    @_gc_paused()
    def snapshot_groups(self, keys: Set[bytes], partition: Hashable = None) -> dict[str, Any]:
        r"""The state of the groups whose routing keys are ``keys`` (a partition of
        ``llmpulse.grouped``): open windows, feedback records, detector state,
        window revisions and the close thresholds, to be :meth:`merge`\ d into
        another engine; with ``partition``, also the watermark of the sources
        ``(partition, ...)`` (:meth:`add_inference`). Counters stay with this engine.

        >>> from llmpulse.streams.windows import WindowSpec
        >>> mk = lambda: SignalEngine({"latency": default_detectors()["latency"]},
        ...                           {"latency": WindowSpec(10, 5)}, clock=lambda: 0.0)
        >>> a, b = mk(), mk()
        >>> ev = lambda i, m: {"event_id": f"e{i}", "request_id": f"r{i}", "ts": 1_000 * i,
        ...                    "app": "a", "model": m, "model_version": "1", "latency_ms": 5.0,
        ...                    "status": "ok", "input_tokens": 1, "output_tokens": 1}
        >>> _ = a.add_inference([ev(1, "x"), ev(2, "y")])
        >>> part = a.snapshot_groups({b"a/x/1"}); a.drop_groups({b"a/x/1"}); b.merge(part)
        1
        >>> [(s.model, s.n) for s in a.flush() + b.flush()]
        [('y', 1), ('x', 1)]
        """
        if self._deferred is None:
            return self._snapshot_groups(keys, partition, [])
        # no deferred job runs meanwhile: the groups' detectors and their waiting jobs agree
        with self._deferred.held() as pending:
            self._collect_deferred(self.clock())
            return self._snapshot_groups(keys, partition, pending)

    def _snapshot_groups(self, keys: Set[bytes], partition: Hashable,
                         pending: list[DeferredTask]) -> dict[str, Any]:
        groups = self.groups_of(keys)
        index: dict[int, int] = {}
        shared: dict[int, Any] = {}
        buffers = [
            [spec.length_s, spec.lateness_s, buf.take_groups(groups, index, shared)]
            for spec, buf in self._buffers.items()
        ]
        return {
            "version": SNAPSHOT_VERSION,
            "role": "groups",
            "codec": _CODEC,
            "events": _pack(list(shared.values())),
            "buffers": buffers,
            "repeat_ids": self._repeat_ids.state(groups),
            "join": None if self._join is None else self._join.packed(_compress, groups),
            "detectors": [
                [fam, list(g), self._detector_states((fam, g), dets)]
                for (fam, g), dets in self._instances.items() if g in groups
            ],
            "revisions": [[list(g), st, r] for (g, st), r in self._revisions.items()
                          if g in groups],
            "watermark": [] if partition is None else self._watermark.sources_of(partition),
            "partition": partition,
            # the groups' deferred work travels with them: finished signals not yet
            # returned, and the jobs still waiting
            "deferred": {
                "ready": [s for s in self._ready if (s.app, s.model, s.model_version) in groups],
                "pending": [[t.family, list(t.group), t.index, t.job, t.end]
                            for t in pending if t.group in groups],
            },
        }

    def drop_groups(self, keys: Set[bytes], partition: Hashable = None) -> int:
        """Forget the groups whose routing keys are ``keys`` (their partition went to
        another worker, which continues them from a :meth:`snapshot_groups`), and
        the sources ``(partition, ...)``; how many groups."""
        groups = self.groups_of(keys)
        if partition is not None:
            for src, _ in self._watermark.sources_of(partition):
                self._watermark.forget(src)
        if self._deferred is not None:
            with self._deferred.held():
                self._collect_deferred(self.clock())
                self._deferred.discard(lambda t: t.group in groups)
            self._ready = [s for s in self._ready
                           if (s.app, s.model, s.model_version) not in groups]
        for buf in self._buffers.values():
            buf.drop_groups(groups)
        if self._join is not None:
            self._join.drop_groups(groups)
        self._instances = {k: v for k, v in self._instances.items() if k[1] not in groups}
        self._saved_states = {k: v for k, v in self._saved_states.items() if k[1] not in groups}
        self._revisions = {k: v for k, v in self._revisions.items() if k[0] not in groups}
        for g in groups:
            self._taken_over.pop(g, None)
        return len(groups)

    @_gc_paused()
    def merge(self, state: Mapping[str, Any]) -> None:
        """Take over the groups of a :meth:`snapshot_groups` state (from an engine of
        the same configuration); they must not be held here already."""
        if state.get("version") != SNAPSHOT_VERSION or state.get("role") != "groups":
            raise ValueError(f"not a group state of version {SNAPSHOT_VERSION}: "
                             f"version {state.get('version')!r}, role {state.get('role')!r}")
        codec = state.get("codec", "none")
        events = _unpack(state["events"], codec)
        by_spec = {(s.length_s, s.lateness_s): b for s, b in self._buffers.items()}
        for length, lateness, buf_state in state["buffers"]:
            buf = by_spec.get((float(length), float(lateness)))
            if buf is None:
                raise ValueError(f"group state has a {length} s window this engine does not")
            buf.merge_groups(buf_state, events, hold=bool(state.get("watermark")))
        self._repeat_ids.merge(state.get("repeat_ids"))  # absent from older states
        if self._join is not None and state["join"] is not None:
            self._join.merge_groups(_unpack(state["join"], codec))
        for fam, g, det_states in state["detectors"]:
            if fam not in self.detectors:
                continue
            dets = list(self.detectors[fam]())
            for det, st in zip(dets, det_states, strict=True):
                det.restore(st)
            self._instances[(fam, _group(g))] = dets
            self._saved_states.pop((fam, _group(g)), None)
        self._revisions.update(
            {(_group(g), int(st)): int(r) for g, st, r in state["revisions"]})
        self._take_over_deferred(state.get("deferred") or {})
        now = self.clock()
        for src, ts in state.get("watermark", ()):
            self._watermark.observe(src, int(ts), now)
        partition = state.get("partition")
        if partition is not None and state.get("watermark"):
            for _length, _lateness, buf_state in state["buffers"]:
                for g in buf_state.get("groups", ()):
                    self._taken_over[_group(g)] = partition

    def _take_over_deferred(self, deferred: Mapping[str, Any]) -> None:
        """The finished signals and waiting jobs of a snapshot (whole or a partition's)."""
        self._ready += list(deferred.get("ready", []))
        for fam, g, idx, job, end in deferred.get("pending", []):
            group = _group(g)
            det = self._detectors_for(fam, group)[idx]
            task = DeferredTask(fam, group, idx, self._names[fam][idx], det, job, end)
            if self._deferred is not None:
                self._deferred.submit(task, replace=False)
            else:  # taken into an engine that does not defer: complete it here
                self._saved_states.pop((fam, group), None)
                self._ready += [s.labelled(app=group[0], model=group[1], model_version=group[2])
                                for s in det.complete(job)]

    @_gc_paused()
    def restore(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`snapshot` into an engine built with the same configuration.

        Reads this version's snapshots and those of version 1 (events and
        join table inline as Python objects)."""
        version = state.get("version")
        if version not in (1, SNAPSHOT_VERSION):
            raise ValueError(
                f"snapshot version {version!r} not supported: this engine reads versions "
                f"1 and {SNAPSHOT_VERSION}"
            )
        if state.get("role", "all") != "all":
            raise ValueError(f"snapshot of a {state['role']!r} engine: partial engines are gone")
        self._watermark.restore(state["watermark"], self.clock())
        by_spec = {(s.length_s, s.lateness_s): b for s, b in self._buffers.items()}
        codec = state.get("codec", "none")
        events = _unpack(state["events"], codec) if version != 1 else None
        self._repeat_ids.clear()  # older snapshots keep them per buffer (``closed_ids``)
        for length, lateness, buf_state in state["buffers"]:
            buf = by_spec.get((float(length), float(lateness)))
            if buf is None:
                raise ValueError(f"snapshot has a {length} s window this engine does not")
            if events is None:
                buf.restore(buf_state)
            else:
                buf.restore_shared(buf_state, events)
        self._repeat_ids.merge(state.get("repeat_ids"))
        join_state = state["join"]
        if self._join is not None and join_state is not None:
            self._join.restore(_unpack(join_state, codec) if version != 1 else join_state)
        if self._deferred is not None:
            self._deferred.clear()
        self._instances = {}
        self._saved_states = {}
        for fam, g, det_states in state["detectors"]:
            dets = list(self.detectors[fam]())
            for det, st in zip(dets, det_states, strict=True):
                det.restore(st)
            self._instances[(fam, _group(g))] = dets
        self._revisions = {(_group(g), int(s)): int(r) for g, s, r in state["revisions"]}
        self._ready = []
        self._take_over_deferred(state.get("deferred") or {})
        c = _Counters()
        for k, v in state["counters"].items():
            if not hasattr(c, k):
                continue  # a counter of an older version (partials_out)
            cur = getattr(c, k)
            if isinstance(cur, dict):
                cur.update(v)
            else:
                setattr(c, k, v)
        self._c = c


_cramjam: Any
try:
    import cramjam as _cramjam

    _CODEC = "zstd"
except ImportError:  # pragma: no cover - a server install has it
    _cramjam = None
    _CODEC = "none"


def _compress(blob: bytes) -> bytes:
    """``blob`` compressed with :data:`_CODEC` (frames of it concatenate into one)."""
    return blob if _cramjam is None else bytes(_cramjam.zstd.compress(blob, level=1))


def _pack(obj: Any) -> bytes:
    """JSON of ``obj``, compressed with :data:`_CODEC`."""
    import orjson

    return _compress(orjson.dumps(obj))


def _unpack(blob: bytes, codec: str) -> Any:
    import orjson

    if codec == "zstd":
        if _cramjam is None:
            raise ValueError("snapshot is zstd-compressed and cramjam is not installed")
        return orjson.loads(bytes(_cramjam.zstd.decompress(blob)))
    if codec != "none":
        raise ValueError(f"snapshot codec {codec!r} not supported")
    return orjson.loads(blob)
