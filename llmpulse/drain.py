"""Draining the embedded broker into the store before a clean stop.

Before it stops, ``llmpulse up`` stores what the broker held when the stop began
(:class:`StopBacklog`). Events sent meanwhile stay in the broker, which keeps its
log on disk or is left running. A fixed time limit lost whatever backlog was left
when it ran out; :func:`drain` instead waits as long as the backlog keeps
shrinking, reports how it goes, and gives up only when no progress was made for
:attr:`DrainPolicy.stall_s` seconds (a stuck store) or when the operator asks for
it (a second Ctrl-C). Giving up loses nothing: the caller then leaves the broker
running for the next start to pick up (:mod:`llmpulse.broker_record`).

A backlog that shrinks, then runs dry:

>>> import asyncio
>>> lags = iter([{"llmpulse.inference": 900}, {"llmpulse.inference": 400},
...              {"llmpulse.inference": 0}, {"llmpulse.inference": 0}])
>>> async def lag():
...     return next(lags)
>>> async def no_sleep(_s):
...     return None
>>> clock = iter(float(t) for t in range(100)).__next__
>>> result = asyncio.run(drain(lag, DrainPolicy(stall_s=5), sleep=no_sleep, clock=clock,
...                            report=lambda msg: None))
>>> result.drained, result.left
(True, {})

A backlog that does not move is given up after ``stall_s`` without progress:

>>> async def stuck():
...     return {"llmpulse.inference": 7}
>>> clock = iter(float(t) for t in range(100)).__next__
>>> result = asyncio.run(drain(stuck, DrainPolicy(stall_s=5), sleep=no_sleep, clock=clock,
...                            report=lambda msg: None))
>>> result.drained, result.left
(False, {'llmpulse.inference': 7})
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["DrainPolicy", "DrainResult", "Ends", "StopBacklog", "drain", "race"]

T = TypeVar("T")

log = logging.getLogger("llmpulse.up")

Lag = Callable[[], Awaitable[dict[str, int]]]


@dataclass(frozen=True)
class Ends:
    """Per partition ``(topic, partition)``: the next offset to process and the end.
    ``fresh``: the ends were asked of the broker (else they are the last fetch's, which
    can be behind)."""

    ends: dict[tuple[str, int], tuple[int, int]]
    fresh: bool = True


class StopBacklog:
    """The backlog a clean stop drains: what the broker held when the stop began, and
    what the worker forwarded from it; not what producers go on sending meanwhile.

    Waiting for no backlog at all never ends while producers send about as fast as the
    worker stores (measured: a worker stopped under 800 events/s waited minutes), and
    the broker keeps what is left for the next start either way (a broker that
    outlives the worker; the embedded one keeps its log on disk, or is left running).

    The first reading with ends asked of the broker fixes a target per partition.
    Once every target is reached, the ends are read again and become the next targets,
    ``rounds`` times in all: an event the worker took in before the stop began is
    forwarded (``llmpulse.grouped``), and a span it took in is mapped to an inference
    event that is forwarded in turn, so three rounds reach the end of the longest
    chain. A partition assigned since the targets were fixed has none yet (it is taken
    at the next round); one revoked no longer counts.

    >>> import asyncio
    >>> readings = iter([
    ...     Ends({("raw", 0): (0, 10), ("grouped", 0): (0, 0)}),     # targets 10 and 0
    ...     Ends({("raw", 0): (10, 25), ("grouped", 0): (3, 10)}),   # reached: 25 and 10
    ...     Ends({("raw", 0): (25, 40), ("grouped", 0): (10, 25)}),  # reached: 40 and 25
    ...     Ends({("raw", 0): (30, 50), ("grouped", 0): (20, 30)}),
    ...     Ends({("raw", 0): (40, 60), ("grouped", 0): (25, 40)}),  # the third reached
    ...     Ends({("raw", 0): (60, 70), ("grouped", 0): (40, 60)}),  # events sent since
    ... ])
    >>> async def partitions():
    ...     return next(readings)
    >>> backlog = StopBacklog(partitions, rounds=3)
    >>> [asyncio.run(backlog()) for _ in range(6)]
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'raw': 10, 'grouped': 0}, {'raw': 15, 'grouped': 7}, {'raw': 15, 'grouped': 15},
     {'raw': 10, 'grouped': 5}, {'raw': 0, 'grouped': 0}, {'raw': 0, 'grouped': 0}]
    """

    def __init__(self, partitions: Callable[[], Awaitable[Ends]], *, rounds: int = 3) -> None:
        if rounds < 1:
            raise ValueError(f"StopBacklog: rounds must be >= 1, got {rounds!r}")
        self.partitions = partitions
        self.rounds = rounds
        self.round = 0
        """Rounds whose targets were fixed so far."""
        self.targets: dict[tuple[str, int], int] = {}

    async def __call__(self) -> dict[str, int]:
        reading = await self.partitions()
        if self.round == 0 and not reading.fresh:  # no target from a stale end
            return _by_topic({tp: end - pos for tp, (pos, end) in reading.ends.items()})
        if self.round == 0:
            self._fix(reading)
        left = self._left(reading)
        if not any(left.values()) and self.round < self.rounds and reading.fresh:
            self._fix(reading)
            left = self._left(reading)
        return _by_topic(left)

    def _fix(self, reading: Ends) -> None:
        self.targets = {tp: end for tp, (_pos, end) in reading.ends.items()}
        self.round += 1

    def _left(self, reading: Ends) -> dict[tuple[str, int], int]:
        return {tp: max(0, self.targets[tp] - pos) for tp, (pos, _end) in reading.ends.items()
                if tp in self.targets}


def _by_topic(left: dict[tuple[str, int], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (topic, _partition), n in left.items():
        out[topic] = out.get(topic, 0) + max(0, n)
    return out


@dataclass(frozen=True)
class DrainPolicy:
    """How long to wait for the backlog.

    ``stall_s``: give up after this many seconds in which the backlog neither
    shrank nor reached a new low; ``report_s``: how often to report what is left;
    ``settle_s``: once the backlog is empty, wait this long and look again
    (the batch in hand is stored and acknowledged within one batch interval).
    """

    stall_s: float = 60.0
    report_s: float = 2.0
    settle_s: float = 0.5
    poll_s: float = 0.2

    def __post_init__(self) -> None:
        for name in ("stall_s", "report_s", "settle_s", "poll_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"DrainPolicy.{name}: must be >= 0 seconds, got {value!r}")


@dataclass(frozen=True)
class DrainResult:
    """``drained``: nothing was left; ``left``: the backlog per topic when it ended."""

    drained: bool
    left: dict[str, int] = field(default_factory=dict)
    waited_s: float = 0.0
    reason: str = ""


async def drain(
    lag: Lag,
    policy: DrainPolicy = DrainPolicy(),  # noqa: B008 - frozen, shared safely
    *,
    abort: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    report: Callable[[str], None] = log.info,
) -> DrainResult:
    """Wait until ``lag()`` reports no backlog, as long as it keeps shrinking."""
    start = clock()
    best: int | None = None
    best_at = start
    previous = 0
    reported_at = start
    reported_total: int | None = None
    last_left: dict[str, int] | None = None
    while True:
        now = clock()
        answered, read = await race(lag(), abort)
        if not answered or read is None:  # the backlog's read waits on a broker gone
            return DrainResult(False, last_left or {}, clock() - start,
                               "stopped at the operator's request")
        left = {t: n for t, n in read.items() if n > 0}
        last_left = left
        total = sum(left.values())
        if total == 0:
            await sleep(policy.settle_s)
            answered, read = await race(lag(), abort)
            if not answered or read is None:
                return DrainResult(False, {}, clock() - start, "stopped at the operator's request")
            left = {t: n for t, n in read.items() if n > 0}
            if not left:
                return DrainResult(True, {}, clock() - start, "drained")
            continue
        if best is None or total < best:
            best, best_at = total, now
        elif total < previous:
            best_at = now  # still shrinking (the first reading can be low: offsets not yet known)
        previous = total
        if abort is not None and abort.is_set():
            return DrainResult(False, left, now - start, "stopped at the operator's request")
        if now - best_at > policy.stall_s:
            return DrainResult(False, left, now - start,
                               f"no progress for {policy.stall_s:g} s")
        if reported_total is None or now - reported_at >= policy.report_s:
            rate = ""
            if reported_total is not None and now > reported_at:
                rate = f", {max(0.0, (reported_total - total) / (now - reported_at)):,.0f}/s"
            report(f"draining: {total:,} events not yet stored ({_per_topic(left)}{rate}); "
                   f"Ctrl-C again stops now and keeps them in the broker")
            reported_at, reported_total = now, total
        await sleep(policy.poll_s)


async def race(aw: Awaitable[T], abort: asyncio.Event | None, timeout_s: float | None = None,
               ) -> tuple[bool, T | None]:
    """``(True, result)`` of ``aw``, or ``(False, None)`` as soon as ``abort`` is set or
    ``timeout_s`` has passed (``aw`` is then cancelled; ``abort`` already set: at once).
    Stopping must not wait on a broker that is gone: one read of the backlog asks it for
    a flush and offsets with timeouts of their own, which took minutes with the broker
    killed, while a second Ctrl-C did nothing.

    >>> async def demo():
    ...     stop = asyncio.Event(); stop.set()
    ...     return (await race(asyncio.sleep(0, "x"), None), await race(asyncio.sleep(9), stop),
    ...             await race(asyncio.sleep(9), None, timeout_s=0.01))
    >>> asyncio.run(demo())
    ((True, 'x'), (False, None), (False, None))
    """
    task = asyncio.ensure_future(aw)
    if abort is not None and abort.is_set():
        task.cancel()
        return False, None
    waiter = asyncio.ensure_future(abort.wait()) if abort is not None else None
    try:
        await asyncio.wait({task} | ({waiter} if waiter is not None else set()),
                           timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if waiter is not None:
            waiter.cancel()
    if task.done():
        return True, task.result()  # its exception, if any, is the caller's
    task.cancel()
    return False, None


def _per_topic(left: dict[str, int]) -> str:
    return ", ".join(f"{t}: {n:,}" for t, n in sorted(left.items()))
