"""The ``event_id`` hashes of closed windows, kept to tell a copy from a late event.

A copy of an event can reach the engine after the window that held it closed
(ingest reads a partition again after a rebalance and forwards it at new
offsets, see :mod:`llmpulse.streams.windows`). :class:`RepeatIds` keeps a 64-bit
hash of the ``event_id`` of every event of a closed window, per group and
*span* of event time, while some window length may still receive a copy of it
(``repeat_horizon_s`` past the window's end).

**One set per engine.** Every window length sees the same events, so the
engine's buffers share one :class:`RepeatIds`: each adds the ids of the windows
it closes (an id already there costs nothing more), and an id is pruned once
the window holding it is past the horizon in *every* length (the smallest
:meth:`~llmpulse.streams.windows.TumblingWindows.repeat_cutoff` of the buffers
that share it). The span is the greatest common divisor of the window lengths,
so a window covers whole spans and an id is kept no longer than its longest
window needs. Buckets are pruned oldest first (a heap by end time), so a poll
costs what expires, not what is kept.

**State.** :meth:`state` is the keys (group, span start, span length, count)
and one ``bytes`` of the hashes, for engine snapshots and the states handed to
another worker, which are pickled: little-endian uint64, or (``codec``
``delta-zstd``, when cramjam is installed) each hash less the one before it,
the bytes of those regrouped by significance and zstd-compressed. The hashes
are random but sorted, so the differences' high bytes are mostly zero: a fifth
smaller, for a few milliseconds. :meth:`merge` also reads the hashes as base64
text (a JSON-able state) and, through :meth:`add_hashes`, the per-window sets
older snapshots kept per window length.

>>> ids = RepeatIds(span_ms=5_000)
>>> g = ("app", "m", "1")
>>> ids.add(g, [{"event_id": "a", "ts": 1_000}, {"event_id": "b", "ts": 6_000}])
>>> ids.holds(g, "a", 1_000), ids.holds(g, "a", 6_000), ids.holds(g, "b", 6_000), len(ids)
(True, False, True, 2)
>>> again = RepeatIds(span_ms=5_000); again.merge(ids.state({g}))
>>> again.holds(g, "b", 6_000)
True
>>> ids.prune(5_000), ids.holds(g, "a", 1_000), ids.holds(g, "b", 6_000)
(1, False, True)
"""

from __future__ import annotations

import base64
import bisect
import heapq
from collections.abc import Mapping, Sequence, Set
from typing import Any

import numpy as np

from llmpulse.detectors.base import parse_ts

_cramjam: Any
try:
    import cramjam as _cramjam
except ImportError:  # pragma: no cover - a server install has it
    _cramjam = None

__all__ = ["RepeatIds"]

_Group = tuple[str, str, str]
_Key = tuple[_Group, int, int]  # (group, start ms, span ms)
_LE = np.dtype("<u8")


class RepeatIds:
    """Sorted ``event_id`` hashes per (group, start, span): see the module docstring.

    ``span_ms``: the event time each new bucket covers. Buffers that share the set
    :meth:`register` and keep their cutoff up to date (:meth:`keep_from`), and
    :meth:`prune` without an argument keeps what the furthest behind of them still
    needs. The set holds no reference to them (a discarded engine is freed at once,
    not by a later garbage collection).
    """

    def __init__(self, span_ms: int) -> None:
        if not span_ms > 0:
            raise ValueError(f"span_ms: need a positive number of ms, got {span_ms!r}")
        self.span_ms = int(span_ms)
        self._ids: dict[_Key, np.ndarray] = {}
        self._spans: dict[int, int] = {}  # span -> how many buckets have it
        self._ends: list[tuple[int, _Group, int, int]] = []  # heap: (end, group, start, span)
        self._cutoffs: list[int] = []

    def __len__(self) -> int:
        return sum(len(v) for v in self._ids.values())

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._ids.values())

    def register(self, cutoff: int) -> int:
        """A buffer sharing the set, with the earliest event time (ms) whose ids it may
        still need; its slot for :meth:`keep_from`."""
        self._cutoffs.append(int(cutoff))
        return len(self._cutoffs) - 1

    def keep_from(self, slot: int, cutoff: int) -> None:
        """The buffer of ``slot`` needs ids from ``cutoff`` (ms) on."""
        self._cutoffs[slot] = int(cutoff)

    def groups(self) -> set[_Group]:
        return {g for g, _, _ in self._ids}

    def holds(self, group: _Group, event_id: str, ts_ms: int) -> bool:
        """Whether the id of an event of ``group`` at ``ts_ms`` was in a closed window."""
        h: np.uint64 | None = None
        for span in self._spans:
            ids = self._ids.get((group, ts_ms - ts_ms % span, span))
            if ids is None:
                continue
            if h is None:
                h = _id_hash(event_id)
            i = int(np.searchsorted(ids, h))
            if i < len(ids) and ids[i] == h:
                return True
        return False

    def add(self, group: _Group, events: Sequence[Mapping[str, Any]]) -> None:
        """Keep the ids of ``events`` of ``group``: a closed window's, sorted by time."""
        self.add_windows([(group, events)])

    def add_windows(self, windows: Sequence[tuple[_Group, Sequence[Mapping[str, Any]]]]) -> None:
        """:meth:`add` for several closed windows, their ids hashed in one go (a
        poll closes many small windows when there are many groups, and hashing
        costs mostly per call)."""
        span = self.span_ms
        ids: list[str] = []
        pieces: list[tuple[_Key, int, int]] = []
        for group, events in windows:
            i, n = 0, len(events)
            while i < n:
                ts = _ms(events[i])
                start = ts - ts % span
                # the window's events in this span: all of them when the window is one span
                j = n if _ms(events[-1]) < start + span else bisect.bisect_left(
                    events, start + span, lo=i, key=_ms)
                lo = len(ids)
                ids += [str(eid) for e in events[i:j] if (eid := e.get("event_id"))]
                pieces.append(((group, start, span), lo, len(ids)))
                i = j
        if not ids:
            return
        hashes = _raw_hashes(ids)  # each id's hash depends on that id alone
        for key, lo, hi in pieces:
            self._put(key, np.unique(hashes[lo:hi]))

    def add_hashes(self, group: _Group, start: int, span: int, hashes: np.ndarray) -> None:
        """Keep sorted distinct ``hashes`` of the events of ``group`` in
        ``[start, start + span)`` (a window of an older snapshot)."""
        self._put((group, int(start), int(span)), hashes)

    def _put(self, key: _Key, hashes: np.ndarray) -> None:
        if not len(hashes):
            return
        mine = self._ids.get(key)
        if mine is None:
            self._ids[key] = hashes
            g, start, span = key
            self._spans[span] = self._spans.get(span, 0) + 1
            heapq.heappush(self._ends, (start + span, g, start, span))
        elif len(hashes) > len(mine) or not np.isin(hashes, mine, assume_unique=True).all():
            self._ids[key] = np.union1d(mine, hashes)

    def prune(self, cutoff: int | None = None) -> int:
        """Forget the buckets that end at or before ``cutoff`` (ms; default: the
        smallest cutoff of the registered buffers); how many. Oldest first: the
        cost is that of what goes."""
        if cutoff is None:
            if not self._cutoffs:
                return 0
            cutoff = min(self._cutoffs)
        ends = self._ends
        gone = 0
        while ends and ends[0][0] <= cutoff:
            _, g, start, span = heapq.heappop(ends)
            if self._ids.pop((g, start, span), None) is not None:
                self._forget_span(span)
                gone += 1
        return gone

    def _forget_span(self, span: int) -> None:
        n = self._spans[span] - 1
        if n:
            self._spans[span] = n
        else:
            del self._spans[span]

    def drop(self, groups: Set[_Group]) -> None:
        """Forget ``groups`` (their partition went to another worker)."""
        for key in [k for k in self._ids if k[0] in groups]:
            del self._ids[key]
            self._forget_span(key[2])
        self._ends = [e for e in self._ends if e[1] not in groups]
        heapq.heapify(self._ends)

    def clear(self) -> None:
        self._ids = {}
        self._spans = {}
        self._ends = []

    def state(self, groups: Set[_Group] | None = None, *, text: bool = False) -> dict[str, Any]:
        """The ids (of ``groups``, or all): ``keys`` ``[group, start, span, count]`` and
        ``hashes``, the counts' hashes one after another in ``codec`` (see the module
        docstring; base64 text with ``text``, for a JSON-able state)."""
        items = [(k, v) for k, v in self._ids.items() if groups is None or k[0] in groups]
        hashes = (np.concatenate([v for _, v in items]) if items
                  else np.empty(0, dtype=np.uint64))
        codec, blob = _encode(hashes)
        return {
            "span_ms": self.span_ms,
            "codec": codec,
            "keys": [[list(g), start, span, len(v)] for (g, start, span), v in items],
            "hashes": base64.b64encode(blob).decode("ascii") if text else blob,
        }

    def merge(self, state: Mapping[str, Any] | None) -> None:
        """Add the ids of a :meth:`state` (``None``: nothing, an older snapshot)."""
        if not state:
            return
        raw = state["hashes"]
        if isinstance(raw, str):
            raw = base64.b64decode(raw)
        blob = _decode(state.get("codec", "raw"), bytes(raw))
        pos = 0
        for g, start, span, n in state["keys"]:
            n = int(n)
            if n < 0 or pos + n > len(blob) or int(span) <= 0:
                raise ValueError(f"repeat_ids: key {[g, start, span, n]!r} does not fit "
                                 f"{len(blob)} hashes")
            self._put((_group(g), int(start), int(span)), blob[pos:pos + n].copy())
            pos += n
        if pos != len(blob):
            raise ValueError(f"repeat_ids: {len(blob) - pos} hashes not named by a key")


def _encode(hashes: np.ndarray) -> tuple[str, bytes]:
    """``hashes`` as bytes in the codec at hand (see the module docstring).

    >>> h = np.array([5, 9, 2**64 - 1, 3], dtype=np.uint64)
    >>> _decode(*_encode(h)).tolist() == h.tolist() == _decode("raw", h.astype("<u8").tobytes()).tolist()
    True
    """
    if _cramjam is None or not len(hashes):
        return "raw", hashes.astype(_LE, copy=False).tobytes()
    deltas = np.diff(hashes, prepend=np.uint64(0)).astype(_LE, copy=False)  # modulo 2**64
    planes = deltas.view(np.uint8).reshape(-1, 8).T.tobytes()  # byte k of every delta, k = 0..7
    return "delta-zstd", bytes(_cramjam.zstd.compress(planes, level=1))


def _decode(codec: str, blob: bytes) -> np.ndarray:
    """The uint64 hashes of an :func:`_encode`."""
    if codec == "raw":
        return np.frombuffer(blob, dtype=_LE).astype(np.uint64)
    if codec != "delta-zstd":
        raise ValueError(f"repeat_ids: codec {codec!r} not supported")
    if _cramjam is None:
        raise ValueError("repeat_ids: the hashes are zstd-compressed and cramjam is not installed")
    planes = np.frombuffer(bytes(_cramjam.zstd.decompress(blob)), dtype=np.uint8)
    if len(planes) % 8:
        raise ValueError(f"repeat_ids: {len(planes)} bytes of hashes, not a multiple of 8")
    deltas = planes.reshape(8, -1).T.copy().view(_LE).reshape(-1)
    return np.cumsum(deltas, dtype=np.uint64)  # modulo 2**64


def _group(g: Any) -> _Group:
    a, m, v = g
    return (str(a), str(m), str(v))


def _ms(event: Mapping[str, Any]) -> int:
    ts = event["ts"]
    return ts if type(ts) is int else int(round(parse_ts(ts) * 1000))


def _id_hash(event_id: str) -> np.uint64:
    """A 64-bit hash of an ``event_id``, the same in every process (unlike ``hash``)."""
    return np.uint64(_raw_hashes([event_id])[0])


_POW: np.ndarray = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> np.ndarray:
    """``P ** k`` modulo 2**64 for k < ``n`` (grown as longer ids come)."""
    global _POW
    if len(_POW) < n:
        size = max(n, 2 * len(_POW), 64)
        factors = np.full(size, 0x100000001B3, dtype=np.uint64)
        factors[0] = 1
        _POW = np.cumprod(factors, dtype=np.uint64)  # wraps around: modulo 2**64
    return _POW[:n]


def id_hashes(events: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The sorted, distinct 64-bit hashes of the events' ids (events without one
    cannot be told apart from a copy and are left out).

    >>> id_hashes([{"event_id": "a"}, {"event_id": "a"}, {}]).shape
    (1,)
    >>> len(id_hashes([{"event_id": f"e{i}"} for i in range(10_000)]))
    10000
    >>> int(_id_hash("e1")) in id_hashes([{"event_id": "x"}, {"event_id": "e1"}]).tolist()
    True
    """
    return np.unique(_raw_hashes([str(eid) for e in events if (eid := e.get("event_id"))]))


def _raw_hashes(ids: list[str]) -> np.ndarray:
    """The 64-bit hash of each id, in order: a polynomial hash of the UTF-8 bytes
    mixed by splitmix64's finaliser, all ids at once in numpy. A collision could
    only count a late event as a repeat (it is dropped either way)."""
    if not ids:
        return np.empty(0, dtype=np.uint64)
    text = "\0".join(ids)
    if text.count("\0") != len(ids) - 1:
        # one terminator per id: a NUL inside an id is hashed as \x01 (a collision, see above)
        text = "\0".join(i.replace("\0", "\x01") for i in ids)
    blob = np.frombuffer(text.encode("utf-8", "surrogatepass") + b"\0", dtype=np.uint8)
    ends = np.flatnonzero(blob == 0)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    offsets = np.arange(len(blob)) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        h = np.add.reduceat((blob.astype(np.uint64) + np.uint64(1)) * _powers(int(lengths.max()))[offsets],
                            starts)
        h += np.uint64(0x9E3779B97F4A7C15)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h
