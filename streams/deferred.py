"""Costly detector work off the window close: one thread, jobs in order.

A :class:`~llmpulse.detectors.base.Deferrable` detector (embedding drift)
prepares a bounded job when its window closes, cheaply; the job is completed
here, on a thread of its own, while the engine goes on closing the other
families' windows. The engine collects finished jobs' signals with
:meth:`DeferredRunner.take` on its next poll. Jobs complete in the order they
were submitted, so a detector sees its windows in order (its reference is
built from the first ones). The costly parts (ONNX inference, the
tokenizer, numpy) release the interpreter lock, so the closing thread keeps
running while a job computes.

A detector that falls behind tests its newest window: with ``latest_only``, a
job replaces the waiting (not yet started) job of the same detector and the
replaced window is counted (``skipped``), so the work waiting per detector
stays one window and its signals stay as fresh as its cost allows.

The queue is bounded (``max_pending``): when the costly family cannot keep up,
a new job is dropped and counted (``dropped``) rather than letting memory and
the delay grow without end. The thread exists only while there are jobs.

>>> import threading
>>> from llmpulse.detectors.base import Deferrable, Detector, Signal
>>> class Doubler(Detector, Deferrable):
...     def prepare(self, batch): return batch
...     def complete(self, job): return [Signal("x.double", 2.0 * job, n=1, ts=0.0, window_s=1.0)]
...     def update(self, batch): return self.complete(self.prepare(batch))
>>> runner = DeferredRunner(max_pending=2)
>>> [runner.submit(DeferredTask("f", ("a", "m", "1"), 0, "f.Doubler", Doubler(), v, 0.0))
...  for v in (1.0, 2.0)]
[True, True]
>>> runner.wait()
True
>>> [(t.job, [s.value for s in sigs]) for t, sigs, secs, err in runner.take()]
[(1.0, [2.0]), (2.0, [4.0])]
>>> runner.stats()["completed"], runner.stats()["pending"]
(2, 0)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from llmpulse.detectors.base import Signal

__all__ = ["DeferredRunner", "DeferredTask"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeferredTask:
    """A prepared job and where its signals go: family, group, the detector's
    index in its family, its counter name, the detector, the job, window end (s)."""

    family: str
    group: tuple[str, str, str]
    index: int
    name: str
    detector: Any
    job: Any
    end: float


Result = tuple[DeferredTask, list[Signal], float, bool]
"""(task, signals, seconds it took, whether it raised)."""


class DeferredRunner:
    """Completes :class:`DeferredTask` jobs in submission order on one thread."""

    def __init__(self, *, max_pending: int = 256, latest_only: bool = False) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending: need >= 1, got {max_pending!r}")
        self.max_pending = int(max_pending)
        self.latest_only = bool(latest_only)
        self._cond = threading.Condition()
        self._queue: deque[DeferredTask] = deque()
        self._done: list[Result] = []
        self._running: DeferredTask | None = None
        self._thread: threading.Thread | None = None
        self._held = 0
        self.submitted = 0
        self.completed = 0
        self.dropped = 0
        self.skipped = 0

    def submit(self, task: DeferredTask, *, replace: bool = True) -> bool:
        """Queue ``task``; False (and counted) when ``max_pending`` jobs already wait.
        With ``latest_only`` and ``replace``, it takes the place of the waiting job
        of the same detector, if there is one."""
        with self._cond:
            if self.latest_only and replace:
                for i, waiting in enumerate(self._queue):
                    if waiting.detector is task.detector:
                        self._queue[i] = task
                        self.skipped += 1
                        self.submitted += 1
                        return True
            if len(self._queue) >= self.max_pending:
                self.dropped += 1
                log.warning("deferred detectors: %d jobs waiting, dropping %s of %s window "
                            "ending %s", len(self._queue), task.name, task.group, task.end)
                return False
            self._queue.append(task)
            self.submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="llmpulse-deferred",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return True

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._held and self._queue:
                    self._cond.wait()
                if not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                task = self._running = self._queue.popleft()
            t0 = time.perf_counter()
            failed = False
            signals: list[Signal] = []
            try:
                signals = list(task.detector.complete(task.job))
            except Exception:
                log.exception("deferred detectors: %s failed on %s window ending %s",
                              task.name, task.group, task.end)
                failed = True
            with self._cond:
                self._done.append((task, signals, time.perf_counter() - t0, failed))
                self._running = None
                self.completed += 1
                self._cond.notify_all()

    def take(self) -> list[Result]:
        """The jobs finished since the last call, in submission order."""
        with self._cond:
            out, self._done = self._done, []
        return out

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued job is done (a flush); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._running is None,
                                       timeout)

    @contextmanager
    def held(self) -> Iterator[list[DeferredTask]]:
        """No job runs inside this block (the one running is let finish first):
        the detectors' state and the waiting jobs, yielded, stay as they are."""
        with self._cond:
            self._held += 1
            self._cond.wait_for(lambda: self._running is None)
            pending = list(self._queue)
        try:
            yield pending
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def discard(self, drop: Callable[[DeferredTask], bool]) -> int:
        """Remove the waiting jobs and finished results ``drop`` picks (their groups
        moved to another engine); how many jobs. Call inside :meth:`held`, so none
        of them is running."""
        with self._cond:
            before = len(self._queue)
            self._queue = deque(t for t in self._queue if not drop(t))
            self._done = [r for r in self._done if not drop(r[0])]
            return before - len(self._queue)

    def rewrite(self, change: Callable[[DeferredTask], DeferredTask | None]) -> None:
        """Replace each waiting job by ``change(job)``, or drop it when that is None (an
        erasure). Call inside :meth:`held`, so none of them is running."""
        with self._cond:
            out: deque[DeferredTask] = deque()
            for task in self._queue:
                new = change(task)
                if new is not None:
                    out.append(new)
            self._queue = out

    def clear(self) -> None:
        """Drop the waiting jobs and finished results (a restore replaces the state)."""
        with self.held(), self._cond:
            self._queue.clear()
            self._done = []

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"pending": len(self._queue) + (self._running is not None),
                    "submitted": self.submitted, "completed": self.completed,
                    "skipped": self.skipped, "dropped": self.dropped}
