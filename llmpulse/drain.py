"""Draining the embedded broker into the store before a clean stop.

The embedded broker keeps topics in memory, so ``llmpulse up`` stops it only
once the worker has stored everything it holds. A fixed time limit lost
whatever backlog was left when it ran out; :func:`drain` instead waits as
long as the backlog keeps shrinking, reports how it goes, and gives up only
when no progress was made for :attr:`DrainPolicy.stall_s` seconds (a stuck
store, or producers writing as fast as the worker stores) or when the
operator asks for it (a second Ctrl-C). Giving up loses nothing: the caller
then leaves the broker running for the next start to pick up
(:mod:`llmpulse.broker_record`).

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

__all__ = ["DrainPolicy", "DrainResult", "drain"]

log = logging.getLogger("llmpulse.up")

Lag = Callable[[], Awaitable[dict[str, int]]]


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
    while True:
        now = clock()
        left = {t: n for t, n in (await lag()).items() if n > 0}
        total = sum(left.values())
        if total == 0:
            await sleep(policy.settle_s)
            left = {t: n for t, n in (await lag()).items() if n > 0}
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


def _per_topic(left: dict[str, int]) -> str:
    return ", ".join(f"{t}: {n:,}" for t, n in sorted(left.items()))
