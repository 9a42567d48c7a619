"""Offsets that hold no record: closed by asking the log, not by waiting.

A worker's position in a partition is the offset after the last message it
processed, and its backlog is the partition's end minus that position. Some
offsets never reach a consumer: the commit or abort marker a transactional
producer writes after each transaction, and an offset the embedded broker
takes for a produce it then refuses. After such an offset the position stays
one short of the end until the next record arrives. That gap was a backlog
that never drained:

* no source of the worker counted as idle, so a quiet partition held the
  watermark, and every window, until its next record (45 s with no window
  closed, in a test with a transactional producer);
* a clean stop waited its full stall time for the gap to drain;
* the lag the health signals report stayed at 1.

:class:`GapProbe` asks the broker what the gap holds: it reads the partition
from the position with a consumer of its own, as the worker's consumer reads
it (``read_uncommitted``: aborted records are records, markers are not). When
it reaches the end without meeting a record, nothing is unread there, and the
position moves to the end. When it meets a record, that record is unread
(a batch still under way, or a store outage holding it), and the backlog is
real. No timing decides it: a worker whose ingest is stuck never has its
backlog read as empty.

:class:`GapCloser` runs the probe for the worker's positions, only for a
partition whose position and end have both stayed put for ``settle_s`` (a
partition with traffic moves on by itself), and once per distinct gap.

>>> stuck = Gap("llmpulse.inference", 0, 41, 42)
>>> stuck.size, stuck.key
(1, ('llmpulse.inference', 0))
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from llmpulse.kafka_security import KafkaSecurity

__all__ = ["Gap", "GapCloser", "GapProbe", "fetched_ends"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
"""How long one probe reads before it gives up (unknown: the gap stays a backlog)."""
RETRY_UNKNOWN_S = 10.0
"""How long before a gap whose probe gave no answer is probed again."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``start`` (the position) up to ``end`` (exclusive) of one partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)


class GapProbe:
    """Reads a partition from an offset to learn whether a record lies before an end.

    One aiokafka consumer without a group (it commits nothing and joins nothing),
    started with the first probe."""

    def __init__(self, bootstrap: str, *, security: KafkaSecurity | None = None,
                 timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.bootstrap = bootstrap
        self.security = security or KafkaSecurity()
        self.timeout_s = float(timeout_s)
        self._consumer: Any = None
        self._lock = asyncio.Lock()

    async def _reader(self) -> Any:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                isolation_level="read_uncommitted", fetch_max_wait_ms=100,
                max_partition_fetch_bytes=64 * 1024,
                request_timeout_ms=int(self.timeout_s * 1000) + 1000,
                **self.security.aiokafka_kwargs())
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def empty(self, gap: Gap) -> bool | None:
        """True: no record from ``gap.start`` to ``gap.end``; False: a record is there;
        None: not known in ``timeout_s`` (a broker that does not answer)."""
        if gap.size <= 0:
            return True
        from aiokafka import TopicPartition

        async with self._lock:
            try:
                return await asyncio.wait_for(self._read(TopicPartition(gap.topic, gap.partition),
                                                         gap), self.timeout_s)
            except Exception as exc:  # a timeout, a broker gone: not known
                log.debug("gap %s: not read: %s", gap, exc)
                return None

    async def _read(self, tp: Any, gap: Gap) -> bool | None:
        consumer = await self._reader()
        consumer.assign([tp])
        consumer.seek(tp, gap.start)
        while True:
            got = await consumer.getmany(tp, timeout_ms=200, max_records=1)
            records = got.get(tp) or []
            if records:
                return bool(records[0].offset >= gap.end)
            # markers are skipped, and the position moves past them without a record
            if await consumer.position(tp) >= gap.end:
                return True

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception as exc:  # closing is best effort
                log.debug("gap probe: closing: %s", exc)


Ends = Callable[[], Mapping[tuple[str, int], int]]


def fetched_ends(app: Any, topics: tuple[str, ...]) -> tuple[Ends, Ends]:
    """The end offset of each partition of ``topics`` the Faust ``app``'s consumer
    reads, as its last fetch saw it, and the offsets committed when they were
    assigned (where processing starts)."""

    def assigned() -> list[Any]:
        try:
            return [tp for tp in app.consumer.assignment() if tp.topic in topics]
        except Exception:  # no consumer yet, or its assignment changing
            return []

    def ends() -> dict[tuple[str, int], int]:
        out = {}
        for tp in assigned():
            try:
                high = app.consumer.highwater(tp)
            except Exception:  # revoked since the assignment was read
                continue
            if high is not None:
                out[(tp.topic, tp.partition)] = int(high)
        return out

    def starts() -> dict[tuple[str, int], int]:
        committed = getattr(app.consumer, "_committed_offset", None) or {}
        return {(tp.topic, tp.partition): int(c) for tp in assigned()
                if (c := committed.get(tp)) is not None}

    return ends, starts


class GapCloser:
    """Moves a worker's ``positions`` past gaps the probe finds empty.

    ``positions``: the next offset to process per (topic, partition), which the
    ingest agents write and the backlog checks read; ``ends``: the end offset of each
    partition the worker reads, as last fetched; ``probe``: a :class:`GapProbe` (or
    anything with its ``empty``). Call :meth:`check` from a timer."""

    def __init__(self, positions: MutableMapping[tuple[str, int], int], ends: Ends,
                 probe: Any, *, starts: Ends | None = None, settle_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.positions = positions
        self.ends = ends
        self.starts = starts
        """Where processing starts in a partition nothing was processed of yet (the
        committed offset): a worker restarted after a transaction's marker."""
        self.probe = probe
        self.settle_s = float(settle_s)
        self.clock = clock
        self._seen: dict[tuple[str, int], tuple[int, int, float]] = {}
        self._probed: dict[Gap, tuple[bool | None, float]] = {}
        self.closed = 0
        """Gaps found empty and closed."""
        self.offsets_skipped = 0
        """Offsets moved past (markers, offsets of refused produces)."""
        self.probes = 0

    def due(self) -> list[Gap]:
        """The gaps whose position and end have both stayed put for ``settle_s`` and that
        were not probed yet (or gave no answer ``RETRY_UNKNOWN_S`` ago)."""
        now = self.clock()
        out = []
        ends = self.ends()
        starts = self.starts() if self.starts is not None else {}
        for key, end in ends.items():
            pos = self.positions.get(key, starts.get(key))
            if pos is None or end <= pos:
                self._seen.pop(key, None)
                continue
            seen = self._seen.get(key)
            if seen is None or seen[:2] != (pos, end):
                self._seen[key] = (pos, end, now)
                continue
            if now - seen[2] < self.settle_s:
                continue
            gap = Gap(key[0], key[1], pos, end)
            done = self._probed.get(gap)
            if done is not None and (done[0] is not None or now - done[1] < RETRY_UNKNOWN_S):
                continue
            out.append(gap)
        for key in [k for k in self._seen if k not in ends]:
            del self._seen[key]
        return out

    async def check(self) -> list[Gap]:
        """Probe the gaps that are due; returns those closed."""
        closed = []
        for gap in self.due():
            self.probes += 1
            empty = await self.probe.empty(gap)
            self._probed[gap] = (empty, self.clock())
            if len(self._probed) > 1024:  # old gaps: positions have moved past them
                for old in list(self._probed)[:512]:
                    del self._probed[old]
            if not empty:
                continue
            pos = self.positions.get(gap.key)
            if pos is not None and pos != gap.start:
                continue  # processed on meanwhile (past the gap, which held nothing)
            self.positions[gap.key] = gap.end
            self.closed += 1
            self.offsets_skipped += gap.size
            closed.append(gap)
            log.debug("%s[%d]: offsets %d..%d hold no record: read", gap.topic,
                      gap.partition, gap.start, gap.end - 1)
        return closed

    def as_dict(self) -> dict[str, int]:
        return {"gaps_closed": self.closed, "gap_offsets_skipped": self.offsets_skipped,
                "gap_probes": self.probes}
