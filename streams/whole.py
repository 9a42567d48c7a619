"""A batch taken from a stream runs to its end, even when the agent is stopped.

Faust stops an agent by cancelling its task, wherever it is. ``take_events``
acks the batch it handed out when the agent leaves it, cancelled or not, and
the consumer's last commit then takes those offsets. An ingest batch cut after
its events were stored and before they were forwarded to ``llmpulse.grouped``
was committed half done: measured, a worker stopped cleanly eight times under
700 events/s stored 1,635 events that never reached the signal engines (whole
batches, each taken in just after the engine stopped); the one rolling-restart
run whose windows lacked the stopped worker's last events was most likely this.

:func:`unbroken` runs one batch's work as a task of its own and, when the agent
is cancelled meanwhile, waits for it (at most ``grace_s``) before letting the
cancellation through. Only then does the stream ack, so the commit covers work
that is done.

>>> import asyncio
>>> async def demo():
...     done = []
...     async def batch():
...         await asyncio.sleep(0.05)
...         done.append("stored")
...         await asyncio.sleep(0.05)
...         done.append("forwarded")
...     async def agent():
...         await unbroken(batch())
...     task = asyncio.ensure_future(agent())
...     await asyncio.sleep(0.06)
...     task.cancel()  # as Faust stops an agent: between the two steps
...     try:
...         await task
...     except asyncio.CancelledError:
...         done.append("cancelled")
...     return done
>>> asyncio.run(demo())
['stored', 'forwarded', 'cancelled']

:func:`take_whole` is the loop every ingest agent runs on top of it: a batch
whose work fails is retried, whole, with capped backoff, for as long as the app
runs (the store collapses rows stored twice, and the signal engines drop an
event they already hold); a batch that is not done when the agent stops (a
failure at the stop, a store outage, a batch cut short) is held back: each
message keeps a reference the stream's ack does not release, so the consumer's
commit stops before it and the next owner of the partition reads it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["BATCH_GRACE_S", "BatchOutcomes", "hold_back", "settle", "take_whole", "unbroken"]

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_GRACE_S = 15.0
"""How long a stopping agent waits for the batch in hand: inside the 20 s the stack
gives the Faust app to stop (``llmpulse.stack``), after which the store closes."""


async def unbroken(work: Awaitable[T], *, grace_s: float = BATCH_GRACE_S,
                   what: str = "batch") -> T:
    """``work``'s result; if the calling task is cancelled first, ``work`` still runs
    to its end (up to ``grace_s`` more seconds, then it is cancelled too and logged),
    and the cancellation is raised after it. A second cancellation while waiting
    cancels ``work`` at once."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            try:
                done, _ = await asyncio.wait({task}, timeout=grace_s)
            except asyncio.CancelledError:
                task.cancel()
                raise
            if not done:
                task.cancel()
                log.warning("stopping: the %s in hand did not finish within %g s and was "
                            "cut short; the stream acks it all the same, so what it had not "
                            "done yet (forwarding to the signal engines) is lost", what, grace_s)
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("stopping: the %s in hand failed", what, exc_info=task.exception())
        raise


@dataclass
class BatchOutcomes:
    """What became of an agent's batches: ``retried`` counts failed attempts that
    were tried again, ``held_back`` the messages left out of the commit at a stop."""

    retried: int = 0
    held_back: int = 0
    last_error: str = ""


def hold_back(events: Sequence[Any]) -> None:
    """Keep ``events`` out of the consumer's commit: each message gets one more
    reference, so the stream's ack leaves it unacknowledged and the committed offset
    of its partition stays before it (Faust commits acked offsets up to the first gap;
    :func:`settle`'s example shows the references)."""
    for ev in events:
        ev.message.incref()


async def settle(events: Sequence[Any], work: Callable[[Sequence[Any]], Awaitable[None]], *,
                 should_stop: Callable[[], bool], outcomes: BatchOutcomes | None = None,
                 what: str = "batch", retry_max_s: float = 5.0, grace_s: float = BATCH_GRACE_S,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> bool:
    """Run ``work(events)`` until it succeeds; True when it did. A failure is logged
    and tried again after a backoff (0.1 s doubling up to ``retry_max_s``) while
    ``should_stop()`` is false; once it is true the batch is given up. A batch given
    up, cut short or cancelled is held back (:func:`hold_back`) before this returns
    or raises, so the stream's ack does not commit it. A stop in the middle of a
    successful attempt waits for it (:func:`unbroken`).

    >>> import asyncio
    >>> class Msg:
    ...     refcount = 1
    ...     def incref(self, n=1):
    ...         self.refcount += n
    >>> class Ev:
    ...     def __init__(self):
    ...         self.message = Msg()
    >>> async def nap(s):
    ...     pass
    >>> tries = []
    >>> async def flaky(evs):
    ...     tries.append(len(evs))
    ...     if len(tries) < 3:
    ...         raise ConnectionError("forward refused")
    >>> evs, out = [Ev(), Ev()], BatchOutcomes()
    >>> asyncio.run(settle(evs, flaky, should_stop=lambda: False, outcomes=out, sleep=nap))
    True
    >>> tries, out.retried, [e.message.refcount for e in evs]
    ([2, 2, 2], 2, [1, 1])
    >>> async def broken(evs):
    ...     raise ConnectionError("forward refused")
    >>> asyncio.run(settle(evs, broken, should_stop=lambda: True, outcomes=out, sleep=nap))
    False
    >>> out.held_back, [e.message.refcount for e in evs]
    (2, [2, 2])
    """
    outcomes = outcomes if outcomes is not None else BatchOutcomes()
    done = False

    async def attempts() -> None:
        nonlocal done
        delay = 0.1
        warned = 0.0
        while True:
            try:
                await work(events)
            except Exception as exc:
                outcomes.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if should_stop():
                    log.error("stopping: the %s in hand failed (%s); its %d message(s) are "
                              "held back from the commit and read again at the next start",
                              what, outcomes.last_error, len(events))
                    return
                outcomes.retried += 1
                now = time.monotonic()
                if now - warned > 10:
                    warned = now
                    log.warning("the %s failed; trying it again, whole, every <= %g s until "
                                "it succeeds", what, retry_max_s, exc_info=exc)
                await sleep(delay)
                delay = min(delay * 2, retry_max_s)
            else:
                done = True
                return

    try:
        await unbroken(attempts(), grace_s=grace_s, what=what)
    finally:
        if not done:
            hold_back(events)
            outcomes.held_back += len(events)
    return done


async def take_whole(stream: Any, work: Callable[[Sequence[Any]], Awaitable[None]], *,
                     max_: int, within: float, should_stop: Callable[[], bool],
                     outcomes: BatchOutcomes | None = None, what: str = "batch",
                     retry_max_s: float = 5.0) -> None:
    """An agent's body: ``stream``'s batches (``take_events(max_, within)``), each run
    by :func:`settle`; the stream acks a batch once it is done or held back. Once a
    batch is held back, every later one is too (without its work): an acked batch
    after a held one would leave the commit to Faust's handling of a gap, which
    commits past one at the head of a partition never committed before."""
    outcomes = outcomes if outcomes is not None else BatchOutcomes()
    holding = False
    async for events in stream.take_events(max_, within=within):
        batch = list(events)
        if holding:  # after a batch held back, the stop holds back what follows it too
            hold_back(batch)
            outcomes.held_back += len(batch)
            continue
        holding = not await settle(batch, work, should_stop=should_stop, outcomes=outcomes,
                                   what=what, retry_max_s=retry_max_s)
