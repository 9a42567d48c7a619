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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["BATCH_GRACE_S", "unbroken"]

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
