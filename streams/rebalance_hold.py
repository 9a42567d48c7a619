"""Silence across a rebalance is not idleness.

The engine's watermark follows (grouped partition, inference partition) sources
and stops waiting for one that has been silent for ``idle_s`` while the reader
sees no backlog (:class:`~llmpulse.streams.windows.Watermark`). The reader sees
only its own partitions' backlog. A rebalance moves inference partitions: the
events of an ``llmpulse.inference`` partition that went from one worker to
another reach the grouped partitions again only once the new owner has joined,
read from the partition's committed offset and forwarded. Meanwhile its
sources are silent in the engine of every worker that kept their grouped
partitions, and nothing there shows a backlog. Once that silence reached
``idle_s`` (counted from the old owner's last forward, so a slow rebalance plus
a slow start of the new owner), the watermark went on with the other sources,
and the moved partition's first forwards were late for windows of groups that
had not moved at all (a scale test on the three-broker cluster, 1 run in 5: about
1,000 late events and 28 of 600 windows missing around a third worker's join).

:class:`RebalanceHold` says when the window polls must count as having a
backlog: from the revocation that starts a rebalance (Kafka's eager protocol
revokes every partition) to the assignment that ends it, and for ``idle_s``
after that assignment. A source's silence thus counts from the last
assignment on, as it counts from the start after a restart. The cost: a
source that really went quiet holds windows up to ``idle_s`` longer when a
rebalance came in between.

>>> now = [0.0]
>>> hold = RebalanceHold(30.0, clock=lambda: now[0])
>>> hold.holds()                       # no rebalance yet
False
>>> hold.revoked(); now[0] = 100.0     # a rebalance that takes 100 s
>>> hold.holds()
True
>>> hold.assigned(); now[0] = 129.0
>>> hold.holds()
True
>>> now[0] = 130.0
>>> hold.holds()
False
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RebalanceHold"]


class RebalanceHold:
    """Whether a rebalance is in progress or ended less than ``idle_s`` ago (see the
    module docstring); ``clock``: seconds, monotonic."""

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = float(idle_s)
        self._clock = clock
        self._rebalancing = False
        self._assigned_at: float | None = None

    def revoked(self) -> None:
        """A rebalance started (partitions revoked)."""
        self._rebalancing = True

    def assigned(self) -> None:
        """A rebalance ended (partitions assigned, maybe none)."""
        self._rebalancing = False
        self._assigned_at = self._clock()

    def holds(self) -> bool:
        if self._rebalancing:
            return True
        return self._assigned_at is not None and self._clock() - self._assigned_at < self.idle_s
