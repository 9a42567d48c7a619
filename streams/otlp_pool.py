"""OTLP export requests prepared in worker processes, off the receiver's event loop.

Decoding and mapping a span costs ~40 us of Python (protobuf parse, attribute
reads, the contract's validator, JSON encoding); on the worker's event loop,
which also serves the ingest agents, the HTTP API and the store's parsing,
that held OTLP at ~5.5k spans/s. :class:`MappingPool` runs
:func:`~llmpulse.streams.otlp_prepare.prepare` in child processes (spawned,
never forked: the worker holds threads and an embedded database): the
request body goes in as bytes and the ready-to-produce messages come back as
bytes, so the event loop only copies them.

A pool that is closed, or whose child died, does not lose a request: it is
prepared in this process instead (and a dead pool is replaced for the next).

>>> import asyncio
>>> pool = MappingPool(processes=0)  # 0: in this process
>>> asyncio.run(pool.prepare(b"", "otlp_proto")).total
0
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import multiprocessing as mp
import os
from collections.abc import Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from llmpulse.events import DEFAULT_LIMITS, Limits
from llmpulse.streams.otlp_prepare import PreparedRequest, prepare
from llmpulse.streams.otlp_redact import redactor

__all__ = ["MIN_POOL_BYTES", "PROCESS_NAME", "MappingPool", "auto_processes"]

log = logging.getLogger(__name__)


MIN_POOL_BYTES = 16 << 10
"""Bodies smaller than this (about 30 GenAI spans with content) are mapped in the caller."""
PROCESS_NAME = "llmpulse-otlp"
"""The name of the children (``ps``/``top`` ``comm``; benchmarks count their CPU by it)."""


def auto_processes(cpus: int | None = None) -> int:
    """Mapping processes for a machine of ``cpus`` cores (None: this one): those beyond
    the two that the worker's event loop and the broker keep busy, at most 2. On a
    2-core machine a child only adds the trip to it (measured: no more spans stored).

    >>> [auto_processes(n) for n in (1, 2, 3, 4, 16)]
    [0, 0, 1, 2, 2]
    """
    n = os.cpu_count() if cpus is None else cpus
    return max(0, min(2, (n or 1) - 2))


def _name_process() -> None:
    try:  # Linux; elsewhere the children keep the interpreter's name
        with open("/proc/self/comm", "w") as f:
            f.write(PROCESS_NAME)
    except OSError:
        pass


def _warm() -> int:
    """Run in each child once: the imports and first allocations happen before load."""
    prepare(b"", "otlp_proto")
    return 0


class MappingPool:
    """Prepares export requests (:func:`prepare`) in ``processes`` child processes
    (0: in the calling thread, as before there was a pool; -1: :func:`auto_processes`).

    The children start with the first request; until they have imported what
    they need, requests are prepared in the caller (a receiver answers within
    its timeout even on a machine slow to start a process). Bodies under
    ``min_bytes`` are prepared in the caller too: for a few spans the trip to a
    child (about 1 ms of CPU on both sides, measured with 10-span requests)
    costs more than the mapping it saves."""

    def __init__(self, *, processes: int = 2, limits: Limits = DEFAULT_LIMITS,
                 partitions: int | None = None, min_bytes: int = MIN_POOL_BYTES,
                 redact_regions: tuple[str, ...] | None = None) -> None:
        if processes < -1:
            raise ValueError(f"otlp.map_processes: must be >= 0, or -1 for automatic, got "
                             f"{processes!r}")
        self.processes = auto_processes() if processes == -1 else processes
        self.limits = limits
        self.partitions = partitions
        self.min_bytes = min_bytes
        self.redact_regions = redact_regions
        """Redact personal data with these phone regions (None: off; see
        :mod:`llmpulse.streams.otlp_redact`)."""
        if redact_regions is not None:
            redactor(redact_regions)  # fails here, at start, without the extra
        self.fallbacks = 0
        """Requests prepared in this process because the pool was closed or broken."""
        self._executor: Executor | None = None
        self._warming: list[Future[int]] = []
        self._closed = False

    def _pool(self) -> Executor | None:
        """The executor once its children are ready, else None (prepare here)."""
        if self._closed or self.processes == 0:
            return None
        if self._executor is None:
            ex = ProcessPoolExecutor(self.processes, mp_context=mp.get_context("spawn"),
                                     initializer=_name_process)
            self._warming = [ex.submit(_warm) for _ in range(self.processes)]
            self._executor = ex
        if self._warming:
            if not all(f.done() for f in self._warming):
                return None
            failed = next((f.exception() for f in self._warming if f.exception()), None)
            self._warming = []
            if failed is not None:  # the children cannot start: stay in this process
                log.error("OTLP mapping processes failed to start (%s); mapping on the "
                          "event loop", failed)
                self.processes = 0
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
                return None
        return self._executor

    @property
    def ready(self) -> bool:
        """Whether requests go to the children now."""
        return self._executor is not None and not self._warming

    def start(self, *, wait: bool = False) -> None:
        """Start the children now rather than with the first request (``wait``: until
        they are ready)."""
        self._pool()
        if wait:
            concurrent.futures.wait(self._warming)
            self._pool()

    async def prepare(self, body: bytes, encoding: str, *,
                      known_documents: Mapping[str, list[str]] | None = None,
                      ) -> PreparedRequest:
        """:func:`prepare` of ``body`` with this pool's limits, partitions and redaction."""
        call = functools.partial(prepare, body, encoding, limits=self.limits,
                                 partitions=self.partitions, redact_regions=self.redact_regions,
                                 known_documents=dict(known_documents) if known_documents
                                 else None)
        ex = self._pool() if len(body) >= self.min_bytes else None
        if ex is None:
            return call()
        try:
            return await asyncio.get_running_loop().run_in_executor(ex, call)
        except BrokenProcessPool:
            log.warning("OTLP mapping process died; replacing the pool")
            if self._executor is ex:
                self._executor = None
                ex.shutdown(wait=False, cancel_futures=True)
        except RuntimeError:
            if not self._closed:  # raised by the mapping itself
                raise
            # closed between the check and the submit
        self.fallbacks += 1
        return call()

    def close(self) -> None:
        """Stop the children (requests after this are prepared in the caller)."""
        self._closed = True
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
