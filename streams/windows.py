"""Event-time tumbling windows per (app, model, model_version), with a watermark.

A window is ``[start, start + length)`` in event time, aligned on the epoch
(``start = ts - ts % length``), so every worker cuts the same windows. Each
detector family has its own length and allowed lateness
(:data:`DEFAULT_WINDOWS`): 10 s windows with 5 s lateness for latency,
errors, tokens and cost, where a signal is worth having quickly; 60 s with
30 s for drift, bias, hallucination and feedback quality, whose tests need
hundreds of events per window.

**Watermark.** :class:`Watermark` keeps the largest event time seen per
*source* (a Kafka partition) and the wall time it last heard from it. The
watermark is the smallest of those maxima over the sources heard from in
the last ``idle_s`` seconds, so a slow partition holds windows open (its
events are not late), while a partition that has gone quiet (no traffic,
or revoked) stops holding them after ``idle_s``. When every source is idle,
event time is extrapolated by the wall time elapsed since the last event,
so the last windows of a stream that stops still close. The watermark never
goes back.

**Sources not heard from yet.** The minimum counts only the sources seen, so
when a stream starts (or a replay floods event time) the partitions fetched
first would push the watermark past the events of one fetched later, which
would then be late. The reader therefore names the partitions it *awaits*:
those it has read nothing from yet but that may hold events (end offset
unknown or past zero), and the exact sources it forwarded events to and the
engine has not taken in yet. :class:`AwaitedSources` keeps them (a partition
is the pattern ``(partition, None)`` or ``(None, source partition)``) until a
matching source delivers, or until it has been awaited for ``idle_s`` without
a backlog, the idleness rule of the other sources; while one is awaited the
watermark holds at its current value (``hold``). A partition whose end offset
is known to be at its read position is never awaited, so the first windows
wait only as long as the slowest partition's first fetch.

**Closing.** A window closes when ``watermark - lateness >= end``. An event
whose window has already closed is *late*: it is dropped from that family's
windows and counted per group (:attr:`TumblingWindows.late`). Late events
are not re-emitted: the lateness is the budget for disorder, and holding
every closed window's events for re-emission would multiply memory by the
horizon. (Feedback is different: it is expected late and is handled by the
join, which re-emits the windows it changes.)

Events are dicts as ingest validates them (``ts`` in epoch milliseconds).
They are appended to one list per (group, window); a closed window's events
are sorted by (ts, event_id), so what a detector sees does not depend on
how partitions interleaved on the way in. The stream is at-least-once (a
worker that crashes before committing its offsets reads some events again),
so a closed window keeps one event per ``event_id``: the copies are dropped
and counted (:attr:`TumblingWindows.duplicates`).

**Repeats.** A copy can also arrive after its window closed: a partition whose
ingest moved to another worker (a rebalance, a worker paused past its session
timeout) is read again from its last committed offset and forwarded again, at
new offsets of ``llmpulse.grouped``, so no offset tells it apart. A closed
window therefore keeps the ``event_id`` hashes of its events for a while
(``repeat_horizon_s`` of event time past its end): an event for a closed
window whose id is among them was in that window, and is dropped as a
*repeat* (:attr:`TumblingWindows.repeats`), not counted late. Past the
horizon, or without an ``event_id``, it counts as late. The hashes are kept
per span of event time in a :class:`~llmpulse.streams.repeats.RepeatIds`, which
the buffers of an engine share: each id is kept once however many window
lengths closed it.

>>> spec = WindowSpec(10.0, 5.0)
>>> wm = Watermark(idle_s=30.0)
>>> win = TumblingWindows(spec)
>>> g = ("app", "model", "1")
>>> for ts in (1_000, 4_000, 12_000, 16_000):
...     _ = win.add(g, {"ts": ts, "event_id": str(ts)})
...     wm.observe(0, ts, now=100.0)
>>> [(grp, start, len(evs)) for grp, start, evs in win.close(wm.current(100.0) - spec.lateness_ms)]
[(('app', 'model', '1'), 0, 2)]
>>> win.add(g, {"ts": 9_000, "event_id": "late"}), win.late
(False, {('app', 'model', '1'): 1})
>>> win.add(g, {"ts": 4_000, "event_id": "4000"}), win.repeats, win.late
(False, 1, {('app', 'model', '1'): 1})
"""

from __future__ import annotations

import base64
from collections.abc import Hashable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from llmpulse.detectors.base import parse_ts
from llmpulse.streams.repeats import RepeatIds

__all__ = [
    "DEFAULT_WINDOWS",
    "AwaitedSources",
    "Group",
    "TumblingWindows",
    "Watermark",
    "WindowSpec",
    "event_ms",
    "group_of",
    "matches",
]

Group = tuple[str, str, str]
"""(app, model, model_version): the routing key of signals."""


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Length and allowed lateness of a family's windows, in seconds.

    >>> WindowSpec(60, 30).length_ms, WindowSpec(60, 30).start_of(1_700_000_059_999)
    (60000, 1700000040000)
    """

    length_s: float
    lateness_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.length_s > 0 or self.length_ms != self.length_s * 1000:
            raise ValueError(f"length_s: need a positive whole number of ms, got {self.length_s!r}")
        if not self.lateness_s >= 0:
            raise ValueError(f"lateness_s: need >= 0, got {self.lateness_s!r}")

    @property
    def length_ms(self) -> int:
        return int(round(self.length_s * 1000))

    @property
    def lateness_ms(self) -> int:
        return int(round(self.lateness_s * 1000))

    def start_of(self, ts_ms: int) -> int:
        """Start (ms) of the window holding event time ``ts_ms``."""
        return ts_ms - ts_ms % self.length_ms


DEFAULT_WINDOWS: Mapping[str, WindowSpec] = MappingProxyType(
    {
        "latency": WindowSpec(10.0, 5.0),
        "drift": WindowSpec(60.0, 30.0),
        "bias": WindowSpec(60.0, 30.0),
        "hallucination": WindowSpec(60.0, 30.0),
        "quality": WindowSpec(60.0, 30.0),
    }
)
"""Window length and lateness per detector family (see the module docstring)."""


def event_ms(event: Mapping[str, Any]) -> int:
    """Event time in epoch ms: validated events carry int ms; RFC 3339 text is parsed.

    >>> event_ms({"ts": 1_700_000_000_123}), event_ms({"ts": "2023-11-14T22:13:20Z"})
    (1700000000123, 1700000000000)
    """
    ts = event["ts"]
    if type(ts) is int:
        return ts
    return int(round(parse_ts(ts) * 1000))


def group_of(event: Mapping[str, Any]) -> Group:
    """The (app, model, model_version) of an inference event."""
    return (str(event["app"]), str(event["model"]), str(event["model_version"]))


class Watermark:
    """Min over active sources of the max event time seen (ms); see the module docstring.

    >>> wm = Watermark(idle_s=10.0)
    >>> wm.observe("p0", 50_000, now=0.0); wm.observe("p1", 20_000, now=0.0)
    >>> wm.current(now=5.0)        # p1 is behind: it holds the watermark
    20000
    >>> wm.current(now=12.0)       # both idle: extrapolate the furthest by wall time
    62000
    >>> wm = Watermark(idle_s=10.0)
    >>> wm.observe("p0", 50_000, now=0.0); wm.observe("p1", 20_000, now=0.0)
    >>> wm.current(now=60.0, backlog=True)  # quiet because unread, not idle: wait
    20000
    >>> wm.observe("p1", 70_000, now=61.0)
    >>> wm.current(now=61.0, backlog=True, hold=True)  # a partition not heard from yet
    20000
    >>> wm.current(now=61.0, backlog=True)
    50000

    Silence alone does not make a source idle: the reader says whether its
    partitions have a backlog (``backlog``, from the consumer's lag), and a
    source with unread events behind it holds the watermark however long the
    engine was busy. Overload then delays windows instead of turning the
    backlog into late events.

    ``max_lead_s``: an event time further than that ahead of the wall time it
    was received at counts as that far ahead only (``clamped`` counts them).
    One event from a client whose clock is an hour fast otherwise took the
    watermark an hour ahead once its source went idle, and every event of
    that hour was late; now it waits in its window until the clock gets there:

    >>> wm = Watermark(idle_s=10.0, max_lead_s=5.0)
    >>> wm.observe("p0", 3_600_000, now=0.0); wm.current(now=20.0), wm.clamped
    (25000, 1)
    """

    def __init__(self, idle_s: float = 30.0, max_lead_s: float | None = None) -> None:
        self.idle_s = float(idle_s)
        self.max_lead_s = max_lead_s
        self.clamped = 0
        self._max: dict[Hashable, int] = {}
        self._seen: dict[Hashable, float] = {}
        self._value: int | None = None

    def observe(self, source: Hashable, ts_ms: int, now: float) -> None:
        """Note an event time from ``source`` received at wall time ``now``."""
        if self.max_lead_s is not None:
            cap = int((now + self.max_lead_s) * 1000)
            if ts_ms > cap:
                ts_ms = cap
                self.clamped += 1
        prev = self._max.get(source)
        if prev is None or ts_ms > prev:
            self._max[source] = ts_ms
        self._seen[source] = now

    def current(self, now: float, *, backlog: bool = False, hold: bool = False) -> int | None:
        """The watermark (ms) at wall time ``now``; ``None`` before any event.
        With ``backlog`` (events not read yet), no source counts as idle; with
        ``hold`` (a source awaited, :class:`AwaitedSources`), it does not move."""
        if not self._max or hold:
            return self._value
        active = [m for s, m in self._max.items()
                  if backlog or now - self._seen[s] < self.idle_s]
        if active:
            value = min(active)
        else:
            value = max(
                m + int(max(0.0, now - self._seen[s]) * 1000) for s, m in self._max.items()
            )
        if self._value is None or value > self._value:
            self._value = value
        return self._value

    @property
    def value(self) -> int | None:
        """The watermark last computed by :meth:`current` (reading it moves nothing)."""
        return self._value

    def sources_view(self, now: float) -> list[list[Any]]:
        """``[source, max event time (ms), seconds since heard from]`` per source (stats).

        >>> wm = Watermark(); wm.observe((1, 0), 5, now=2.0); wm.sources_view(now=3.5)
        [['(1, 0)', 5, 1.5]]
        """
        return [[str(s), m, round(now - self._seen[s], 3)] for s, m in self._max.items()]

    def partitions_behind(self, now: float, *, backlog: bool = False) -> dict[Hashable, int]:
        """Per partition (the first item of ``(partition, ...)`` sources), the smallest
        maximum of its active sources, where that is behind the watermark (ms): a
        partition taken over from an older state, whose windows must wait for it."""
        value = self._value
        if value is None:
            return {}
        out: dict[Hashable, int] = {}
        for s, m in self._max.items():
            if m < value and isinstance(s, tuple) and s and (
                    backlog or now - self._seen[s] < self.idle_s):
                p = s[0]
                if m < out.get(p, value):
                    out[p] = m
        return out

    def sources_of(self, partition: Hashable) -> list[tuple[Hashable, int]]:
        """(source, max event time) of the sources ``(partition, ...)``.

        >>> wm = Watermark(); wm.observe((1, 0), 5, now=0.0); wm.observe((2, 0), 7, now=0.0)
        >>> wm.sources_of(1)
        [((1, 0), 5)]
        """
        return [(s, m) for s, m in self._max.items()
                if isinstance(s, tuple) and s and s[0] == partition]

    def forget(self, source: Hashable) -> None:
        """Stop waiting for ``source`` (its partition was revoked)."""
        self._max.pop(source, None)
        self._seen.pop(source, None)

    def snapshot(self) -> dict[str, Any]:
        # Wall times are not kept: after a restart every source counts as
        # heard from at the first observation, so none closes windows early.
        return {
            "idle_s": self.idle_s,
            "max": [[s, m] for s, m in self._max.items()],
            "value": self._value,
        }

    def restore(self, state: Mapping[str, Any], now: float) -> None:
        self.idle_s = float(state["idle_s"])
        self._max = {_hashable(s): int(m) for s, m in state["max"]}
        self._seen = dict.fromkeys(self._max, now)
        self._value = None if state["value"] is None else int(state["value"])


def matches(pattern: Hashable, source: Hashable) -> bool:
    """Whether ``source`` is one of ``pattern``'s: the same, or a tuple as long
    whose items are the pattern's where the pattern's are not ``None``.

    >>> matches((1, None), (1, 0)), matches((None, 0), (2, 0)), matches((1, None), (2, 0))
    (True, True, False)
    """
    if pattern == source:
        return True
    if not (isinstance(pattern, tuple) and isinstance(source, tuple)
            and len(pattern) == len(source)):
        return False
    return all(p is None or p == s for p, s in zip(pattern, source, strict=True))


class AwaitedSources:
    """The partitions (source patterns, see :func:`matches`) a reader awaits a first
    delivery from, and for how long: see the module docstring.

    :meth:`waiting` is given, at each poll, what the reader awaits now and the
    sources the engine has taken events from; it returns the patterns that hold
    the watermark. A pattern holds from the first poll that names it until a
    delivered source matches it, until a poll names it no more (the reader
    found it read to its end), or once it has been named for ``idle_s`` without
    a backlog; released, it stays so while polls keep naming it.

    >>> aw = AwaitedSources(idle_s=30.0)
    >>> aw.waiting([(0, None), (1, None)], delivered={(0, 0)}, now=0.0)
    [(1, None)]
    >>> aw.waiting([(1, None)], delivered={(0, 0)}, now=40.0, backlog=True)
    [(1, None)]
    >>> aw.waiting([(1, None)], delivered={(0, 0)}, now=40.0)  # silent 30 s, no backlog
    []
    >>> aw.waiting([(1, None)], delivered={(0, 0)}, now=41.0)
    []
    """

    def __init__(self, idle_s: float = 30.0) -> None:
        self.idle_s = float(idle_s)
        self._since: dict[Hashable, float] = {}  # when each awaited pattern was first named
        self._released: set[Hashable] = set()

    def waiting(self, awaited: Iterable[Hashable], delivered: Set[Hashable], now: float, *,
                backlog: bool = False) -> list[Hashable]:
        named = set(awaited)
        self._since = {p: t for p, t in self._since.items() if p in named}
        self._released &= named
        out = []
        for p in sorted(named - self._released, key=repr):
            if p in delivered or any(matches(p, s) for s in delivered):
                self._since.pop(p, None)
                continue
            since = self._since.setdefault(p, now)
            if not backlog and now - since >= self.idle_s:
                self._released.add(p)
                del self._since[p]
                continue
            out.append(p)
        return out


def _hashable(x: Any) -> Hashable:
    return tuple(_hashable(v) for v in x) if isinstance(x, list) else x


class TumblingWindows:
    """Open windows of one :class:`WindowSpec`: event lists per (group, start ms).

    ``closed_through`` is the close threshold (ms) last applied: windows
    ending at or before it are closed, and events for them are late.
    ``duplicates`` counts events dropped from closed windows because an
    event with the same ``event_id`` (and time) was already in the window;
    ``repeats`` events for a closed window that held them already (see the
    module docstring: ids are kept ``repeat_horizon_s`` of event time), in
    ``repeat_ids`` when given (shared with the engine's other buffers, which
    saves and restores it), else in a set of this buffer's own.
    """

    def __init__(self, spec: WindowSpec, repeat_horizon_s: float = 600.0,
                 repeat_ids: RepeatIds | None = None) -> None:
        self.spec = spec
        self._length = spec.length_ms
        self._open: dict[tuple[Group, int], list[dict[str, Any]]] = {}
        self.closed_through: int = -(2**62)
        self.late: dict[Group, int] = {}
        self.duplicates = 0
        self.repeats = 0
        self.repeat_horizon_ms = int(round(repeat_horizon_s * 1000))
        # event_id hashes of the windows closed within the horizon
        self._own_ids = repeat_ids is None
        self._ids = RepeatIds(self._length) if repeat_ids is None else repeat_ids
        self._slot = self._ids.register(self.repeat_cutoff())
        # close thresholds of groups taken over from another engine (a partition
        # handed off) that are past this one's: their windows ending there closed
        # on the other engine, so events for them are late here too
        self._floors: dict[Group, int] = {}
        # close thresholds of groups held behind this one's: their partition was
        # taken over from a state older than this engine's watermark, and its
        # windows close by the watermark of that partition's own sources
        self._held: dict[Group, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def add(self, group: Group, event: dict[str, Any], ts_ms: int | None = None) -> bool:
        """Append ``event`` to its window; False (and counted) if that window closed."""
        if ts_ms is None:
            ts_ms = event_ms(event)
        length = self._length
        start = ts_ms - ts_ms % length
        if start + length <= self._limit(group):
            self._dropped(group, ts_ms, event)
            return False
        key = (group, start)
        bucket = self._open.get(key)
        if bucket is None:
            self._open[key] = [event]
        else:
            bucket.append(event)
        return True

    def add_many(self, items: Sequence[tuple[Group, dict[str, Any], int]]) -> list[int]:
        """:meth:`add` for each (group, event, ts ms); the positions of the late ones."""
        length = self._length
        closed = self.closed_through
        open_ = self._open
        per_group = bool(self._floors or self._held)
        limit = self._limit
        late: list[int] = []
        for i, (group, event, ts_ms) in enumerate(items):
            start = ts_ms - ts_ms % length
            if start + length <= (limit(group) if per_group else closed):
                if not self._dropped(group, ts_ms, event):
                    late.append(i)
            else:
                key = (group, start)
                bucket = open_.get(key)
                if bucket is None:
                    open_[key] = [event]
                else:
                    bucket.append(event)
        return late

    def _dropped(self, group: Group, ts_ms: int, event: Mapping[str, Any]) -> bool:
        """Count an event for a closed window: a repeat (True) when a closed window
        held its ``event_id``, else late."""
        eid = event.get("event_id")
        if eid and self._ids.holds(group, str(eid), ts_ms):
            self.repeats += 1
            return True
        self.late[group] = self.late.get(group, 0) + 1
        return False

    def repeat_cutoff(self) -> int:
        """The earliest event time (ms) of a closed window whose ids are kept: the
        first window start at most ``repeat_horizon_s`` before ``closed_through``
        less a window.

        >>> TumblingWindows(WindowSpec(10), repeat_horizon_s=20).repeat_cutoff() < 0
        True
        """
        length = self._length
        return -((self.repeat_horizon_ms + length - self.closed_through) // length) * length

    def _limit(self, group: Group) -> int:
        """The close threshold applied to ``group``'s windows."""
        held = self._held.get(group)
        limit = self.closed_through if held is None else held
        floor = self._floors.get(group)
        return limit if floor is None or floor < limit else floor

    def close(self, threshold_ms: int | None, caps: Mapping[Group, int] | None = None
              ) -> list[tuple[Group, int, list[dict[str, Any]]]]:
        """Remove and return the windows ending at or before ``threshold_ms``,
        oldest first, each with its events sorted by (ts, event_id) and
        without repeated events (same ``event_id``). ``caps``: groups whose
        windows close at most that far (a partition behind, taken over)."""
        if threshold_ms is None:
            return []
        before = self.closed_through
        if threshold_ms > self.closed_through:
            self.closed_through = threshold_ms
            if self._floors:
                self._floors = {g: f for g, f in self._floors.items() if f > threshold_ms}
        caps = caps or {}
        held = {}
        for g, cap in caps.items():
            limit = min(cap, self.closed_through)
            previous = self._held.get(g, before)
            held[g] = max(limit, previous)
        self._held = {g: v for g, v in held.items() if v < self.closed_through}
        length = self.spec.length_ms
        limits = self._held
        due = sorted(
            (k for k in self._open if k[1] + length <= limits.get(k[0], threshold_ms)),
            key=lambda k: (k[1], k[0]),
        )
        out = []
        for g, start in due:
            events, dropped = _ordered(self._open.pop((g, start)))
            self.duplicates += dropped
            out.append((g, start, events))
        if out:
            self._ids.add_windows([(g, events) for g, _, events in out])
        if due or threshold_ms > before:
            self._ids.keep_from(self._slot, self.repeat_cutoff())
            self._ids.prune()
        return out

    def forget(self, request_ids: Set[str]) -> int:
        """Drop the events of ``request_ids`` from the open windows (an erasure);
        how many were dropped."""
        gone = 0
        for key in list(self._open):
            evs = self._open[key]
            kept = [e for e in evs if e.get("request_id") not in request_ids]
            if len(kept) != len(evs):
                gone += len(evs) - len(kept)
                if kept:
                    self._open[key] = kept
                else:
                    del self._open[key]
        return gone

    def close_all(self) -> list[tuple[Group, int, list[dict[str, Any]]]]:
        """Close every open window (shutdown, end of a replay)."""
        if not self._open:
            return []
        last = max(start for _, start in self._open) + self.spec.length_ms
        return self.close(last)

    def snapshot(self) -> dict[str, Any]:
        return {
            "open": [[list(g), start, events] for (g, start), events in self._open.items()],
            "closed_through": self.closed_through,
            "late": [[list(g), n] for g, n in self.late.items()],
            "duplicates": self.duplicates,
            "repeats": self.repeats,
            **self._ids_state(None, text=True),  # base64 text: a snapshot stays JSON-able
        }

    def _ids_state(self, groups: Set[Group] | None, *, text: bool = False) -> dict[str, Any]:
        """The ids of closed windows when this buffer keeps its own (a shared set
        is saved by its engine)."""
        return {"repeat_ids": self._ids.state(groups, text=text)} if self._own_ids else {}

    def _load_ids(self, state: Mapping[str, Any]) -> None:
        """Add the ids of a state: this buffer's own, or the per-window sets older
        snapshots kept (``closed_ids``: group, window start, base64 of the sorted hashes)."""
        length = self._length
        for g, start, text in state.get("closed_ids") or ():
            self._ids.add_hashes(_group(g), int(start), length,
                                 np.frombuffer(base64.b64decode(text), dtype="<u8").astype(np.uint64))
        self._ids.merge(state.get("repeat_ids"))

    def snapshot_shared(self, index: dict[int, int], events: dict[int, Any]) -> dict[str, Any]:
        """:meth:`snapshot` with each window's events as positions in a list
        shared by several buffers (which hold the same event objects): ``index``
        maps ``id(event)`` to its position, ``events`` ``id(event)`` to the
        event, both in position order; events not in them yet are appended."""
        return {
            "open": self._open_shared(None, index, events),
            "closed_through": self.closed_through,
            "late": [[list(g), n] for g, n in self.late.items()],
            "duplicates": self.duplicates,
            "floors": [[list(g), f] for g, f in self._floors.items()],
            "repeats": self.repeats,
            **self._ids_state(None),
        }

    def _open_shared(self, groups: Set[Group] | None, index: dict[int, int],
                     events: dict[int, Any]) -> list[Any]:
        """The open windows (of ``groups``, or all) as ``[group, start, positions]``,
        their events added to the shared ``index``/``events``."""
        open_ = []
        for (g, start), evs in self._open.items():
            if groups is None or g in groups:
                ids = list(map(id, evs))
                events.update(zip(ids, evs, strict=True))
                open_.append([list(g), start, [index.setdefault(i, len(index)) for i in ids]])
        return open_

    def groups(self) -> set[Group]:
        """The groups with an open window, a late count, a floor or a recently
        closed window here."""
        return ({g for g, _ in self._open} | set(self.late) | set(self._floors)
                | self._ids.groups())

    def take_groups(self, groups: Set[Group], index: dict[int, int],
                    events: dict[int, Any]) -> dict[str, Any]:
        """:meth:`snapshot_shared` of ``groups`` only (a partition's share), with
        the close threshold they had here."""
        return {
            "open": self._open_shared(groups, index, events),
            "closed_through": self.closed_through,
            "floors": [[list(g), f] for g, f in self._floors.items() if g in groups],
            "late": [[list(g), n] for g, n in self.late.items() if g in groups],
            "groups": [list(g) for g in sorted(groups)],
            **self._ids_state(groups),
        }

    def drop_groups(self, groups: Set[Group]) -> None:
        """Forget ``groups``: open windows, late counts, floors (a revoked partition)."""
        self._open = {k: v for k, v in self._open.items() if k[0] not in groups}
        self.late = {g: n for g, n in self.late.items() if g not in groups}
        self._floors = {g: f for g, f in self._floors.items() if g not in groups}
        self._held = {g: f for g, f in self._held.items() if g not in groups}
        self._ids.drop(groups)

    def merge_groups(self, state: Mapping[str, Any], events: list[dict[str, Any]], *,
                     hold: bool = False) -> None:
        """Add a :meth:`take_groups` state from another engine. Its groups' windows
        that closed there stay closed here (a floor per group when that threshold is
        past this buffer's). With ``hold``, a group whose threshold there is behind
        this buffer's keeps it, so its windows stay open for the replay of its
        partition, until :meth:`close` is given no cap for it (its partition
        caught up); without, they close at the next :meth:`close`."""
        get = events.__getitem__
        for g, start, pos in state["open"]:
            self._open.setdefault((_group(g), int(start)), []).extend(map(get, pos))
        theirs = int(state["closed_through"])
        floors = {_group(g): int(f) for g, f in state.get("floors", ())}
        for g in state.get("groups", ()):
            grp = _group(g)
            floor = max(theirs, floors.get(grp, theirs))
            if floor > self.closed_through and floor > self._floors.get(grp, floor - 1):
                self._floors[grp] = floor
            elif floor < self.closed_through and hold:
                # this buffer is further on: the group keeps its own threshold until
                # its partition's sources catch up (``caps`` of :meth:`close`)
                self._held[grp] = min(floor, self._held.get(grp, floor))
        for g, n in state["late"]:
            grp = _group(g)
            self.late[grp] = self.late.get(grp, 0) + int(n)
        self._load_ids(state)

    def restore_shared(self, state: Mapping[str, Any], events: list[dict[str, Any]]) -> None:
        """Load a :meth:`snapshot_shared` state; ``events`` in position order."""
        get = events.__getitem__
        self.restore({**state, "open": []})
        self._open = {(_group(g), int(start)): list(map(get, pos)) for g, start, pos in state["open"]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._open = {(_group(g), int(start)): list(evs) for g, start, evs in state["open"]}
        self.closed_through = int(state["closed_through"])
        self._ids.keep_from(self._slot, self.repeat_cutoff())
        self.late = {_group(g): int(n) for g, n in state["late"]}
        self.duplicates = int(state.get("duplicates", 0))
        self._floors = {_group(g): int(f) for g, f in state.get("floors", ())}
        self.repeats = int(state.get("repeats", 0))
        if self._own_ids:
            self._ids.clear()
        self._load_ids(state)


def _group(g: Any) -> Group:
    a, m, v = g
    return (str(a), str(m), str(v))


def _ordered(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """``events`` sorted by (ts, event_id) without repeats of an event, and
    how many repeats were dropped. A repeat has the ``event_id`` (not empty)
    and time of the event before it in that order.

    >>> evs = [{"ts": 2, "event_id": "b"}, {"ts": 1, "event_id": "a"}, {"ts": 2, "event_id": "b"},
    ...        {"ts": 1}, {"ts": 1}]
    >>> _ordered(evs)
    ([{'ts': 1}, {'ts': 1}, {'ts': 1, 'event_id': 'a'}, {'ts': 2, 'event_id': 'b'}], 1)
    """
    keys = list(map(_order_key, events))
    order = sorted(range(len(events)), key=keys.__getitem__)  # stable, as list.sort
    if len(set(keys)) == len(keys):  # nothing repeated
        return [events[i] for i in order], 0
    out: list[dict[str, Any]] = []
    prev: tuple[int, str] | None = None
    for i in order:
        key = keys[i]
        if key == prev and key[1]:
            continue
        prev = key
        out.append(events[i])
    return out, len(events) - len(out)


def _order_key(e: Mapping[str, Any]) -> tuple[int, str]:
    ts = e["ts"]
    return (ts if type(ts) is int else event_ms(e), str(e.get("event_id", "")))
