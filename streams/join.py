"""Feedback joined onto its inference by ``request_id``, with a horizon.

Feedback arrives seconds to days after the inference it rates. The join is
an in-memory table keyed by ``request_id`` that holds, for every inference of
the last ``horizon_s`` seconds of event time (default 1 h), the compact part
that feedback-based signals need: group, event time, event id, status,
predicted label and segment attributes. Records are indexed by their window
of the ``quality`` family (60 s by default), so a whole window is evicted at
once when it falls behind ``watermark - horizon``.

What happens to a feedback event:

* its inference is in the table: the feedback is attached (several feedback
  events for one request merge field by field, the latest value wins; a
  judge's grade, ``source=judge``, lands in ``judge_*`` fields of its own,
  so a person's score and the judge's score of one answer both stay). If
  that inference's window has already closed, the window is marked *dirty*
  and :meth:`FeedbackJoin.redo` returns it, so the engine recomputes
  the window's feedback signals and emits them again with the same ``ts``:
  the ``signals`` table is a ``ReplacingMergeTree`` keyed by (app, model,
  model_version, signal, dimension, ts), so the new value replaces the old.
* its inference is not (yet) in the table: the feedback waits, because the
  two topics are consumed independently and the feedback may simply be
  ahead. It waits until the inference watermark minus the lateness passes
  the feedback's own event time (an inference always precedes its feedback,
  so by then it should have been seen), then it is counted as
  ``feedback_unmatched``: its inference was older than the horizon, or never
  arrived. At most ``max_pending`` feedback events wait; beyond that the
  oldest are counted unmatched.

Partitioning: the client keys both topics' envelopes by a bucket of
``request_id`` with the same partitioner and the topics have the same
partition count, so an inference and its feedback land on the same partition
*number* of the two topics. A worker is assigned the same partition numbers
of both (co-partitioning), so the join is local: no shuffle, and the table
holds only the requests of that worker's partitions.

Memory is about 0.5 kB per record (measured; see docs/signals.md), i.e.
horizon x inference rate x 0.5 kB: 1 h at 200 requests/s is about 360 MB.
Lower ``horizon_s`` for busier workers, or add workers. Saves keep each
window's records packed as well (:meth:`FeedbackJoin.packed`; about 45 bytes
a record compressed), so that a save packs only the windows that changed.

>>> from llmpulse.streams.windows import WindowSpec
>>> join = FeedbackJoin(WindowSpec(60, 30), horizon_s=3600)
>>> g = ("support", "router", "1")
>>> join.add_inference(g, {"ts": 1_000, "event_id": "e1", "request_id": "r1",
...                        "status": "ok", "prediction": {"label": "billing"}})
>>> join.add_feedback({"request_id": "r1", "ts": 5_000, "label": "refund"})
True
>>> join.due(watermark_ms=95_000)      # window [0, 60 s) closes at 60 + 30 s
[(('support', 'router', '1'), 0)]
>>> [e["feedback"] for e in join.events(g, 0)]
[{'label': 'refund'}]
>>> join.add_feedback({"request_id": "r1", "ts": 70_000, "score": -1.0})
True
>>> join.due(watermark_ms=96_000), join.redo()    # a closed window got feedback: again
([], [(('support', 'router', '1'), 0)])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

from llmpulse.streams.otlp_identity import identity_keys
from llmpulse.streams.windows import Group, WindowSpec, _group, event_ms

__all__ = ["ARM_FIELDS", "FEEDBACK_FIELDS", "JUDGE_FIELDS", "FeedbackJoin", "TAG_FIELDS"]

FEEDBACK_FIELDS: tuple[str, ...] = ("score", "label", "hallucination", "reference", "source")
"""Fields of ``feedback/v1`` the signals use; others (comment) are not kept."""

MAX_RESPONSE_CHARS = 8192
"""Responses are kept up to this length for reference metrics (bounds the cache)."""

JUDGE_SCORES: frozenset[str] = frozenset(
    {"groundedness", "relevance", "correctness", "groundedness_free"})
"""Keys of a judge feedback's ``judge`` map kept by the join (as ``judge_<key>``)."""

JUDGE_FIELDS: tuple[str, ...] = ("score", "hallucination")
"""Fields of a ``source=judge`` feedback kept as ``judge_<field>``, apart from people's."""

TAG_FIELDS: tuple[str, ...] = ("prompt_version", "experiment", "variant")
"""Inference fields kept on a record as they are (prompt versions and A/B)."""

ARM_FIELDS: tuple[str, ...] = ("latency_ms", "cost_usd")
"""Kept too for inferences in an experiment: the A/B comparison's per-request measures."""


class _Record:
    """The compact part of an inference that feedback signals need."""

    __slots__ = (
        "event_id", "extra", "feedback", "group", "label", "request_id", "segment", "status", "ts",
    )

    def __init__(
        self,
        event_id: str,
        request_id: str,
        ts: int,
        group: Group,
        status: str | None,
        label: str | None,
        segment: Mapping[str, str] | None,
        feedback: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.event_id = event_id
        self.request_id = request_id
        self.ts = ts
        self.group = group
        self.status = status
        self.label = label
        self.segment = segment
        self.feedback = feedback
        self.extra = extra

    def as_event(self) -> dict[str, Any]:
        app, model, version = self.group
        ev: dict[str, Any] = {
            "ts": self.ts,
            "event_id": self.event_id,
            "request_id": self.request_id,
            "app": app,
            "model": model,
            "model_version": version,
            "status": self.status,
            "segment": self.segment,
            "feedback": self.feedback,
        }
        if self.label is not None:
            ev["prediction"] = {"label": self.label}
        if self.extra:
            ev.update(self.extra)
        return ev

    def to_list(self) -> list[Any]:
        return [
            self.event_id, self.request_id, self.ts, list(self.group), self.status,
            self.label, None if self.segment is None else dict(self.segment), self.feedback,
            self.extra,
        ]

    def row(self) -> tuple[Any, ...]:
        """:meth:`to_list` for immediate serialisation: shares the live segment and
        feedback mappings (cheaper to build; serialise before the record changes)."""
        return (self.event_id, self.request_id, self.ts, self.group, self.status, self.label,
                self.segment, self.feedback, self.extra)

    @classmethod
    def from_list(cls, row: list[Any]) -> _Record:
        eid, rid, ts, g, status, label, segment, feedback = row[:8]
        extra = row[8] if len(row) > 8 else None  # snapshots before prompt versions had 8
        return cls(eid, rid, int(ts), _group(g), status, label, segment, feedback, extra)


def _extra(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """Prompt version and experiment tags, and the arm measures of an experiment's request."""
    if "prompt_version" not in event and "experiment" not in event:
        return None
    out = {k: event[k] for k in TAG_FIELDS if event.get(k) is not None}
    if "experiment" in out:
        out.update((k, event[k]) for k in ARM_FIELDS if event.get(k) is not None)
    return out


def _feedback_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a feedback event contributes to its request's merged feedback.

    A judge's grade (``source=judge``) goes to ``judge_*`` fields only, so it
    never replaces what a user or reviewer said about the same answer, and the
    user signals (``quality.feedback_score``, ``hallucination.flagged_rate``,
    the A/B tests) read people only:

    >>> _feedback_fields({"source": "judge", "score": 0.5, "hallucination": False,
    ...                   "judge": {"groundedness": 0.9}, "comment": "fine"})
    {'judge_score': 0.5, 'judge_hallucination': False, 'judge_groundedness': 0.9}
    >>> _feedback_fields({"source": "user", "score": -1.0, "judge": {"groundedness": 0.9}})
    {'score': -1.0, 'source': 'user'}
    """
    if event.get("source") != "judge":
        return {k: event[k] for k in FEEDBACK_FIELDS if event.get(k) is not None}
    out = {f"judge_{k}": event[k] for k in JUDGE_FIELDS if event.get(k) is not None}
    judge = event.get("judge")
    if judge:  # a judge's scores, flat: feedback.judge_<name> columns
        out.update((f"judge_{k}", v) for k, v in judge.items() if k in JUDGE_SCORES)
    return out


class FeedbackJoin:
    """Inference records by ``request_id`` for ``horizon_s``; see the module docstring.

    The engine calls :meth:`add_inference` for every inference,
    :meth:`add_feedback` for every feedback event, :meth:`due` with the
    watermark and, less often, :meth:`redo`; for each (group, window start)
    they return, :meth:`events`
    gives the window's inferences that carry feedback, as event dicts with a
    ``feedback`` mapping that :class:`~llmpulse.detectors.base.Batch` turns into
    ``feedback.*`` columns.

    Records also keep ``prompt_version``/``experiment``/``variant``; an
    inference in an experiment keeps its latency and cost as well and counts
    as a window member even without feedback, so the A/B comparison sees
    every request of both arms. Responses are kept in a bounded cache
    (``max_responses``, oldest out first) for feedback that brings a
    ``reference``; a reference whose response has left the cache is counted
    as ``reference_without_response``.
    """

    def __init__(
        self,
        window: WindowSpec,
        horizon_s: float = 3600.0,
        *,
        max_pending: int = 100_000,
        max_responses: int = 20_000,
    ) -> None:
        if horizon_s < window.length_s + window.lateness_s:
            raise ValueError(
                f"horizon_s: must cover a window and its lateness "
                f"({window.length_s + window.lateness_s} s), got {horizon_s}"
            )
        self.window = window
        self.horizon_s = float(horizon_s)
        self.max_pending = int(max_pending)
        self.max_responses = int(max_responses)
        self._responses: dict[str, str] = {}
        self._by_request: dict[str, _Record] = {}
        self._windows: dict[tuple[Group, int], list[_Record]] = {}
        # each window's records as a compressed JSON fragment, kept until the window
        # changes (:meth:`packed`); every change to a window's records drops its frame
        self._frames: dict[tuple[Group, int], bytes] = {}
        self._pending: dict[str, tuple[dict[str, Any], int]] = {}
        # OTel-sourced records by span and response id (streams/otlp_identity.py)
        self._aliases: OrderedDict[str, _Record] = OrderedDict()
        self._dirty: set[tuple[Group, int]] = set()
        self.closed_through: int = -(2**62)
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "inference_records",
                "feedback_in",
                "feedback_joined",
                "feedback_after_close",
                "feedback_unmatched",
                "feedback_other_app",
                "records_expired",
                "windows_reemitted",
                "reference_without_response",
            ),
            0,
        )

    # -- input --------------------------------------------------------------

    def add_inference(self, group: Group, event: Mapping[str, Any], ts_ms: int | None = None) -> None:
        """Keep the compact record of an inference (late ones too: their
        feedback still counts)."""
        rid = event.get("request_id")
        if not rid:
            return
        if ts_ms is None:
            ts_ms = event_ms(event)
        old = self._by_request.get(rid)
        if old is not None and old.event_id == event.get("event_id"):
            return  # a replayed inference: keep the record and its feedback
        pred = event.get("prediction")
        label = pred.get("label") if pred else None
        rec = _Record(
            str(event.get("event_id", "")), rid, ts_ms, group, event.get("status"),
            None if label is None else str(label), event.get("segment"), None, _extra(event),
        )
        self._keep_response(rid, event)
        start = ts_ms - ts_ms % self.window.length_ms
        key = (group, start)
        self._frames.pop(key, None)
        bucket = self._windows.get(key)
        if bucket is None:
            self._windows[key] = [rec]
        else:
            bucket.append(rec)
        self._by_request[rid] = rec
        self.counts["inference_records"] += 1
        waiting = self._pending.pop(rid, None)
        if waiting is not None:
            self._attach(rec, waiting[0])
        if "span_id" in event:
            self._alias(rec, event)

    def add_inferences(self, items: Sequence[tuple[Group, Mapping[str, Any], int]]) -> None:
        """:meth:`add_inference` for each (group, event, ts ms)."""
        length = self.window.length_ms
        by_request = self._by_request
        windows = self._windows
        frames = self._frames
        pending = self._pending
        keep = self.max_responses > 0
        added = 0
        for group, event, ts_ms in items:
            rid = event.get("request_id")
            if not rid:
                continue
            eid = event.get("event_id")
            old = by_request.get(rid)
            if old is not None and old.event_id == eid:
                continue  # a replayed inference: keep the record and its feedback
            if type(eid) is not str:
                eid = str(event.get("event_id", ""))
            pred = event.get("prediction")
            label = pred.get("label") if pred else None
            rec = _Record(
                eid, rid, ts_ms, group, event.get("status"),
                None if label is None else str(label), event.get("segment"), None,
                _extra(event) if ("prompt_version" in event or "experiment" in event) else None,
            )
            if keep and event.get("response"):
                self._keep_response(rid, event)
            key = (group, ts_ms - ts_ms % length)
            if frames:
                frames.pop(key, None)
            bucket = windows.get(key)
            if bucket is None:
                windows[key] = [rec]
            else:
                bucket.append(rec)
            by_request[rid] = rec
            added += 1
            if pending:
                waiting = pending.pop(rid, None)
                if waiting is not None:
                    self._attach(rec, waiting[0])
            if "span_id" in event:
                self._alias(rec, event)
        self.counts["inference_records"] += added

    def _alias(self, rec: _Record, event: Mapping[str, Any]) -> None:
        """Index ``rec`` by its span and response id too (at most ``max_pending`` names,
        oldest out first; a restart forgets them, and feedback by trace id still joins)."""
        for key in identity_keys(event):
            self._aliases.pop(key, None)
            self._aliases[key] = rec
            waiting = self._pending.pop(key, None)
            if waiting is not None:
                self._attach(rec, waiting[0])
        while len(self._aliases) > self.max_pending:
            self._aliases.popitem(last=False)

    def _aliased(self, key: str) -> _Record | None:
        rec = self._aliases.get(key)
        if rec is not None and self._by_request.get(rec.request_id) is not rec:
            # expired or replaced: a record still in its window keeps its name
            start = rec.ts - rec.ts % self.window.length_ms
            if rec not in self._windows.get((rec.group, start), ()):
                del self._aliases[key]
                return None
        return rec

    def _keep_response(self, rid: str, event: Mapping[str, Any]) -> None:
        text = event.get("response")
        if not text or self.max_responses <= 0:
            return
        cache = self._responses
        cache.pop(rid, None)
        cache[rid] = text[:MAX_RESPONSE_CHARS]
        while len(cache) > self.max_responses:
            del cache[next(iter(cache))]

    def add_feedback(self, event: Mapping[str, Any]) -> bool:
        """Attach feedback to its inference; False if it has to wait for it."""
        self.counts["feedback_in"] += 1
        fields = _feedback_fields(event)
        rid = str(event.get("request_id", ""))
        rec = self._by_request.get(rid) or self._aliased(rid)
        app = event.get("app")
        if rec is not None and app and app != rec.group[0]:
            # the feedback names another app than the inference this request id found
            # (two apps reuse request ids): it is stored, but rates no other app's answer
            self.counts["feedback_other_app"] += 1
            return False
        if rec is not None:
            self._attach(rec, fields)
            return True
        if rid in self._pending:
            merged, ts = self._pending.pop(rid)
            self._pending[rid] = ({**merged, **fields}, max(ts, event_ms(event)))
            return False
        self._pending[rid] = (fields, event_ms(event))
        while len(self._pending) > self.max_pending:
            self._pending.pop(next(iter(self._pending)))
            self.counts["feedback_unmatched"] += 1
        return False

    def _attach(self, rec: _Record, fields: dict[str, Any]) -> None:
        self.counts["feedback_joined"] += 1
        rec.feedback = {**rec.feedback, **fields} if rec.feedback else dict(fields)
        start = rec.ts - rec.ts % self.window.length_ms
        self._frames.pop((rec.group, start), None)
        if start + self.window.length_ms <= self.closed_through:
            self.counts["feedback_after_close"] += 1
            self._dirty.add((rec.group, start))

    # -- output -------------------------------------------------------------

    def due(self, watermark_ms: int | None) -> list[tuple[Group, int]]:
        """Windows that close at ``watermark_ms`` and hold feedback, oldest
        first. Also expires records past the horizon and feedback that
        waited in vain."""
        if watermark_ms is None:
            return []
        threshold = watermark_ms - self.window.lateness_ms
        length = self.window.length_ms
        out = []
        if threshold > self.closed_through:
            before = self.closed_through
            for key, recs in self._windows.items():
                end = key[1] + length
                if before < end <= threshold and any(r.feedback or _in_experiment(r) for r in recs):
                    out.append(key)
            self.closed_through = threshold
            self._dirty.difference_update(out)
        self._expire(watermark_ms, threshold)
        return sorted(out, key=lambda k: (k[1], k[0]))

    def redo(self) -> list[tuple[Group, int]]:
        """Closed windows that received feedback since the last call, oldest
        first: their feedback signals are to be computed and emitted again."""
        out = sorted(self._dirty, key=lambda k: (k[1], k[0]))
        self._dirty = set()
        self.counts["windows_reemitted"] += len(out)
        return out

    def flush(self) -> list[tuple[Group, int]]:
        """Close every window (shutdown, end of a replay)."""
        if not self._windows:
            return self.due(self.closed_through + self.window.lateness_ms)
        last = max(start for _, start in self._windows) + self.window.length_ms
        return self.due(max(last, self.closed_through) + self.window.lateness_ms)

    def events(self, group: Group, start: int) -> list[dict[str, Any]]:
        """The window's inferences that received feedback, oldest first."""
        recs = [r for r in self._windows.get((group, start), ()) if r.feedback or _in_experiment(r)]
        recs.sort(key=lambda r: (r.ts, r.event_id))
        out = [r.as_event() for r in recs]
        for ev, rec in zip(out, recs, strict=True):
            if rec.feedback and rec.feedback.get("reference"):
                text = self._responses.get(rec.request_id)
                if text is None:
                    self.counts["reference_without_response"] += 1
                else:
                    ev["response"] = text
        return out

    def forget(self, request_ids: Set[str]) -> int:
        """Drop the records and waiting feedback of ``request_ids`` (an erasure);
        how many were dropped."""
        gone = 0
        self._frames.clear()  # rare: every frame is built again
        for rid in request_ids:
            rec = self._by_request.pop(rid, None)
            if rec is not None:
                key = (rec.group, rec.ts - rec.ts % self.window.length_ms)
                recs = self._windows.get(key)
                if recs is not None:
                    recs[:] = [r for r in recs if r.request_id != rid]
                gone += 1
            if self._pending.pop(rid, None) is not None:
                gone += 1
            self._responses.pop(rid, None)  # the answer kept for a late reference
        for recs in self._windows.values():  # records replaced under the same request id
            if any(r.request_id in request_ids for r in recs):
                before = len(recs)
                recs[:] = [r for r in recs if r.request_id not in request_ids]
                gone += before - len(recs)
        return gone

    def _expire(self, watermark_ms: int, threshold: int) -> None:
        cutoff = watermark_ms - int(round(self.horizon_s * 1000))
        length = self.window.length_ms
        for key in [k for k in self._windows if k[1] + length <= cutoff]:
            self._frames.pop(key, None)
            for rec in self._windows.pop(key):
                if self._by_request.get(rec.request_id) is rec:
                    del self._by_request[rec.request_id]
                    self._responses.pop(rec.request_id, None)
                self.counts["records_expired"] += 1
            self._dirty.discard(key)
        if self._pending:
            gone = [rid for rid, (_, ts) in self._pending.items() if ts <= threshold]
            for rid in gone:
                del self._pending[rid]
            self.counts["feedback_unmatched"] += len(gone)

    # -- observability and persistence -------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters plus the table's current size."""
        return {
            **self.counts,
            "records": len(self._by_request),
            "windows": len(self._windows),
            "feedback_pending": len(self._pending),
            "responses_kept": len(self._responses),
        }

    def snapshot(self) -> dict[str, Any]:
        """Records, waiting feedback, dirty windows and counters (JSON-able)."""
        state = self._snapshot_meta()
        state["records"] = [r.to_list() for recs in self._windows.values() for r in recs]
        return state

    def snapshot_rows(self) -> dict[str, Any]:
        """:meth:`snapshot` for immediate serialisation: the same JSON, with
        records as tuples that share the live segment and feedback mappings
        (cheaper to build; serialise before the join changes). Saves write
        :meth:`packed`, which must read back as this (tests compare the two)."""
        state = self._snapshot_meta()
        state["records"] = [
            r.row() for recs in self._windows.values() for r in recs
        ]
        return state

    def packed(self, compress: Callable[[bytes], bytes],
               groups: Set[Group] | None = None) -> bytes:
        """:meth:`snapshot_rows` (``groups`` None) or :meth:`take_groups` as JSON
        compressed by ``compress``, built without going over every record: each
        window's records are a compressed fragment kept until the window changes
        (a record added, feedback attached, an erasure, the window dropped), and
        the fragments are joined as they are (zstd reads concatenated frames as one).
        A save then costs what changed since the last one, not the whole horizon
        of records. Responses of a group's share are those of the requests whose
        latest record is in ``groups``.

        >>> from llmpulse.streams.windows import WindowSpec
        >>> import orjson
        >>> join = FeedbackJoin(WindowSpec(60, 30), horizon_s=3600)
        >>> g = ("support", "router", "1")
        >>> for i in range(3):
        ...     join.add_inference(g, {"ts": 1_000 + 70_000 * i, "event_id": f"e{i}",
        ...                            "request_id": f"r{i}", "status": "ok"})
        >>> rows = orjson.loads(join.packed(lambda b: b))["records"]
        >>> rows == orjson.loads(orjson.dumps(join.snapshot_rows()))["records"], len(rows)
        (True, 3)
        >>> _ = join.add_feedback({"request_id": "r1", "ts": 80_000, "score": 1.0})
        >>> [r[7] for r in orjson.loads(join.packed(lambda b: b))["records"]]
        [None, {'score': 1.0}, None]
        """
        import orjson

        if groups is None:
            meta = self._snapshot_meta()
            keys = list(self._windows)
        else:
            keys = [k for k in self._windows if k[0] in groups]
            by_request = self._by_request
            meta = {
                "dirty": [[list(g), st] for g, st in sorted(self._dirty) if g in groups],
                "closed_through": self.closed_through,
                "responses": [(rid, t) for rid, t in self._responses.items()
                              if (rec := by_request.get(rid)) is not None and rec.group in groups],
            }
        head = orjson.dumps(meta)
        parts = [compress(head[:-1] + b',"records":[')]
        comma = compress(b",")
        frames = self._frames
        first = True
        for key in keys:
            frame = frames.get(key)
            if frame is None:
                rows = [r.row() for r in self._windows[key]]
                frame = frames[key] = compress(orjson.dumps(rows)[1:-1]) if rows else b""
            if not frame:
                continue
            if not first:
                parts.append(comma)
            parts.append(frame)
            first = False
        parts.append(compress(b"]}"))
        return b"".join(parts)

    def _snapshot_meta(self) -> dict[str, Any]:
        return {
            "pending": [[rid, f, ts] for rid, (f, ts) in self._pending.items()],
            "dirty": [[list(g), s] for g, s in sorted(self._dirty)],
            "closed_through": self.closed_through,
            "counts": dict(self.counts),
            "responses": list(self._responses.items()),
        }

    def groups(self) -> set[Group]:
        """The groups with records here."""
        return {g for g, _ in self._windows}

    def take_groups(self, groups: Set[Group]) -> dict[str, Any]:
        """The records of ``groups`` with their kept responses, their windows
        awaiting a re-emission and the close threshold (a partition's share; see
        :meth:`merge_groups`). Waiting feedback names no group and stays."""
        records = [r.row() for key, recs in self._windows.items() if key[0] in groups
                   for r in recs]
        rids = {row[1] for row in records}
        return {
            "records": records,
            "dirty": [[list(g), st] for g, st in sorted(self._dirty) if g in groups],
            "closed_through": self.closed_through,
            "responses": [(rid, t) for rid, t in self._responses.items() if rid in rids],
        }

    def drop_groups(self, groups: Set[Group]) -> None:
        """Forget the records of ``groups`` (a revoked partition)."""
        for key in [k for k in self._windows if k[0] in groups]:
            self._frames.pop(key, None)
            for rec in self._windows.pop(key):
                if self._by_request.get(rec.request_id) is rec:
                    del self._by_request[rec.request_id]
                    self._responses.pop(rec.request_id, None)
        self._dirty = {k for k in self._dirty if k[0] not in groups}
        for alias in [a for a, rec in self._aliases.items() if rec.group in groups]:
            del self._aliases[alias]

    def merge_groups(self, state: Mapping[str, Any]) -> None:
        """Add a :meth:`take_groups` state from another engine. Its windows that
        closed there but not by this table's threshold close here in due course;
        those this threshold has passed and the other had not are emitted at the
        next :meth:`redo`, so none is skipped."""
        length = self.window.length_ms
        theirs = int(state["closed_through"])
        for row in state["records"]:
            rec = _Record.from_list(list(row))
            key = (rec.group, rec.ts - rec.ts % length)
            self._frames.pop(key, None)
            self._windows.setdefault(key, []).append(rec)
            self._by_request[rec.request_id] = rec
            if theirs < key[1] + length <= self.closed_through and (
                    rec.feedback or _in_experiment(rec)):
                self._dirty.add(key)
        self._dirty.update((_group(g), int(st)) for g, st in state["dirty"])
        self._responses.update((str(rid), str(t)) for rid, t in state["responses"])

    def restore(self, state: Mapping[str, Any]) -> None:
        self._by_request = {}
        self._windows = {}
        self._frames = {}
        length = self.window.length_ms
        for row in state["records"]:
            rec = _Record.from_list(row)
            self._windows.setdefault((rec.group, rec.ts - rec.ts % length), []).append(rec)
            self._by_request[rec.request_id] = rec
        self._pending = {rid: (dict(f), int(ts)) for rid, f, ts in state["pending"]}
        self._dirty = {(_group(g), int(s)) for g, s in state["dirty"]}
        self.closed_through = int(state["closed_through"])
        self.counts.update(state["counts"])
        self._responses = {str(rid): str(text) for rid, text in state.get("responses", ())}


def _in_experiment(rec: _Record) -> bool:
    return rec.extra is not None and "experiment" in rec.extra
