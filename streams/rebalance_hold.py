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

The hold need not last ``idle_s`` once the group has forwarded what the moved
partitions held (:mod:`llmpulse.streams.catch_up`, read by the worker): :meth:`end`
ends the hold that follows one assignment, and only that one.

>>> hold.revoked(); hold.assigned(); now[0] = 134.0
>>> first = hold.assignment
>>> hold.revoked(); hold.assigned()    # another rebalance came meanwhile
>>> hold.end(first), hold.holds()
(False, True)
>>> hold.end(hold.assignment), hold.holds(), hold.ended_early
(True, False, 1)

Nor need it end at ``idle_s`` while the group is known to be behind (a new owner slow
to start or to forward, within its session): :meth:`behind` keeps it until
:meth:`end`, or ``max_s`` after the assignment at the most.

>>> hold = RebalanceHold(30.0, clock=lambda: now[0], max_s=300.0)
>>> now[0] = 1000.0; hold.revoked(); hold.assigned(); now[0] = 1010.0
>>> hold.behind(hold.assignment); now[0] = 1045.0
>>> hold.holds(), hold.lagging()
(True, True)
>>> hold.end(hold.assignment), hold.holds(), hold.ended_late
(True, False, 1)
>>> hold.revoked(); hold.assigned(); hold.behind(hold.assignment); now[0] = 1345.0
>>> hold.holds()   # max_s: the group is stuck, the windows go on without it
False

**A pause is a rebalance this worker did not see.** A worker that did not run for
longer than its session timeout (SIGSTOP, a host or VM frozen, an event loop blocked)
missed its heartbeats: the group has moved or is moving its partitions. When it runs
again its sources have been silent for as long as it was stopped, and the high water
marks it knows are those of its last fetches, from before the pause, so nothing shows
the events that arrived meanwhile. Until the group tells it its partitions went
elsewhere (a heartbeat later), its timer would close windows by wall time as if every
source were idle, and write partial rows over their new owners' (a stale writer).
A timer of the event loop calls :meth:`beat` twice a second: a gap longer than
``pause_s`` (the session timeout) starts a hold, as an assignment does, so the silence
counts from the moment it runs again. A busy engine does not count (its thread is not
the loop's). A window poll that runs before that beat, or whose engine call comes
after a pause inside it, sees :meth:`stalled` and waits too.

>>> hold = RebalanceHold(30.0, clock=lambda: now[0], pause_s=6.0)
>>> now[0] = 200.0; hold.beat()
False
>>> now[0] = 200.5; hold.beat(), hold.holds()   # on time
(False, False)
>>> now[0] = 240.5; hold.stalled(), hold.holds()   # stopped 40 s: a poll now must wait
(True, True)
>>> hold.beat(), hold.holds(), hold.pauses
(True, True, 1)
>>> for t in range(241, 271):   # running again, beating twice a second
...     for half in (0.0, 0.5):
...         now[0] = t + half; _ = hold.beat()
>>> hold.holds(), hold.pauses
(False, 1)

A hold a pause started is not ended early: the paused worker cannot tell whether
its partitions are still its own until the group has told it.

>>> now[0] = 300.0; _ = hold.beat(); hold.assignment is None
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["RebalanceHold"]


class RebalanceHold:
    """Whether a rebalance is in progress or ended less than ``idle_s`` ago (see the
    module docstring); ``clock``: seconds, monotonic. A hold the group is known to be
    behind on (:meth:`behind`) lasts up to ``max_s`` after the assignment."""

    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic,
                 pause_s: float = math.inf, max_s: float | None = None) -> None:
        self.idle_s = float(idle_s)
        self.pause_s = float(pause_s)
        self.max_s = self.idle_s if max_s is None else max(self.idle_s, float(max_s))
        self._clock = clock
        self._rebalancing = False
        self._assigned_at: float | None = None
        self._last_beat: float | None = None
        self._assignments = 0
        self._paused_since_assignment = False
        self._behind: int | None = None  # the assignment the group is known to be behind on
        self.pauses = 0
        """Gaps longer than ``pause_s`` between beats."""
        self.ended_early = 0
        """Holds ended before ``idle_s`` by :meth:`end` (the group caught up)."""
        self.ended_late = 0
        """Holds ended past ``idle_s`` by :meth:`end`: the group was :meth:`behind` until then."""

    def revoked(self) -> None:
        """A rebalance started (partitions revoked)."""
        self._rebalancing = True

    def assigned(self) -> None:
        """A rebalance ended (partitions assigned, maybe none)."""
        self._rebalancing = False
        self._assigned_at = self._clock()
        self._assignments += 1
        self._paused_since_assignment = False

    @property
    def assignment(self) -> int | None:
        """Which assignment the hold in force follows (a count), when nothing else holds:
        no rebalance in progress, no pause since (a worker that did not run cannot tell
        whether its partitions are still its own). ``None`` otherwise, or when nothing holds."""
        if self._rebalancing or self._paused_since_assignment or not self.holds():
            return None
        return self._assignments

    def end(self, assignment: int) -> bool:
        """End the hold that follows ``assignment`` (:attr:`assignment`), before
        ``idle_s`` or past it: the moved partitions are known to be forwarded
        (:mod:`llmpulse.streams.catch_up`). Whether it ended (not when another
        rebalance or a pause came since)."""
        if assignment != self.assignment:
            return False
        assert self._assigned_at is not None  # a hold that follows an assignment
        if self._clock() - self._assigned_at < self.idle_s:
            self.ended_early += 1
        else:
            self.ended_late += 1
        self._assigned_at = None
        self._behind = None
        return True

    def behind(self, assignment: int) -> None:
        """The group is known to be behind on what the moved partitions held at
        ``assignment``: the hold lasts until :meth:`end`, up to ``max_s`` after the
        assignment, not only ``idle_s`` (a new owner slow to forward)."""
        if assignment == self.assignment:
            self._behind = assignment

    def lagging(self) -> bool:
        """Whether the hold in force lasts past ``idle_s`` only because the group is
        behind (:meth:`behind`)."""
        if self._rebalancing or self._assigned_at is None or self._behind != self._assignments:
            return False
        return self.idle_s <= self._clock() - self._assigned_at < self.max_s

    def beat(self) -> bool:
        """The event loop ran: whether it had not for more than ``pause_s`` (then a
        hold starts, as at an assignment)."""
        now = self._clock()
        last, self._last_beat = self._last_beat, now
        if last is None or now - last <= self.pause_s:
            return False
        self.pauses += 1
        self._paused_since_assignment = True
        self._behind = None
        self._assigned_at = now if self._assigned_at is None else max(self._assigned_at, now)
        return True

    def stalled(self) -> bool:
        """Whether the last beat is more than ``pause_s`` old (a pause the next beat
        will find; read from any thread)."""
        last = self._last_beat
        return last is not None and self._clock() - last > self.pause_s

    def holds(self) -> bool:
        """Whether windows wait: a rebalance in progress or less than ``idle_s`` past
        (``max_s`` when the group is known to be :meth:`behind`), or a pause not yet
        beaten (:meth:`stalled`)."""
        if self._rebalancing or self.stalled():
            return True
        if self._assigned_at is None:
            return False
        return self._clock() - self._assigned_at < self.idle_s or self.lagging()
