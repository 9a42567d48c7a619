"""Audit trail: who did what, and when, on the admin surface of llmpulse.

An :class:`AuditEvent` is one record: a deploy, a rollback, a retrain request,
a rule reload, an erase, a use of an admin token, a failed authentication.
Producers call an :data:`AuditSink` (any callable taking an event); the stack
wires one that stores the record in the ``audit_events`` table and sends it on
the ``llmpulse.audit`` topic. A sink must never raise into the caller and must
never block an event loop for long.

Records never carry a secret: ``actor`` is a token's *name*, not the token.

>>> ev = AuditEvent("erase", actor="ops", outcome="ok", target="user:42", ts=0.0)
>>> ev.row()["action"], ev.row()["outcome"], ev.row()["ts"]
('erase', 'ok', 0.0)
>>> discard(ev) is None
True
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACTIONS", "OUTCOMES", "TOPIC_AUDIT", "AuditEvent", "AuditLog", "AuditSink", "discard"]

_log = logging.getLogger(__name__)

TOPIC_AUDIT = "llmpulse.audit"

ACTIONS = (
    "deploy",
    "rollback",
    "retrain",
    "rule_reload",
    "erase",
    "admin_access",
    "auth_failed",
    "login",
)
"""Actions the audit trail records (``admin_access`` = an admin token used on an
admin endpoint; ``auth_failed`` = a missing, unknown or under-privileged credential)."""

OUTCOMES = ("ok", "denied", "error")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit record."""

    action: str
    actor: str = "anonymous"
    """Who: a token's name, ``cli`` for a local command, ``anonymous`` when unknown."""
    outcome: str = "ok"
    target: str = ""
    """What it acted on: a model version, ``request:<id>``, ``user:<id>``, a path."""
    remote: str = ""
    """Where it came from: the peer address of an HTTP request, ``local`` for the CLI."""
    detail: Mapping[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, obj: Any, *, now: float | None = None) -> AuditEvent:
        """An event from decoded JSON sent by another process (hostile: every field
        checked; ``ValueError`` naming the field).

        >>> AuditEvent.from_json({"action": "deploy", "actor": "cli:ann", "ts": 1.0}).actor
        'cli:ann'
        >>> AuditEvent.from_json({"action": "drop_tables"})
        Traceback (most recent call last):
        ...
        ValueError: action: must be one of deploy, rollback, retrain, rule_reload, erase, admin_access, auth_failed, login
        """
        if not isinstance(obj, Mapping):
            raise ValueError("event: must be a JSON object")
        if obj.get("action") not in ACTIONS:
            raise ValueError(f"action: must be one of {', '.join(ACTIONS)}")
        if obj.get("outcome", "ok") not in OUTCOMES:
            raise ValueError(f"outcome: must be one of {', '.join(OUTCOMES)}")
        for name in ("actor", "target", "remote"):
            v = obj.get(name, "")
            if not isinstance(v, str) or len(v) > 512:
                raise ValueError(f"{name}: must be a string of at most 512 characters")
        detail = obj.get("detail") or {}
        if isinstance(detail, str):
            try:
                detail = json.loads(detail)
            except ValueError:
                raise ValueError("detail: must be a JSON object") from None
        if not isinstance(detail, Mapping) or len(json.dumps(detail, default=str)) > 16384:
            raise ValueError("detail: must be a JSON object of at most 16 kB")
        ts = obj.get("ts", time.time() if now is None else now)
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts < 1e11:
            raise ValueError("ts: must be epoch seconds")
        return cls(str(obj["action"]), actor=obj.get("actor") or "anonymous",
                   outcome=obj.get("outcome", "ok"), target=obj.get("target", ""),
                   remote=obj.get("remote", ""), detail=dict(detail), ts=float(ts))

    def row(self) -> dict[str, Any]:
        """The ``audit_events`` row (``ts`` in epoch seconds)."""
        return {
            "ts": self.ts,
            "action": self.action,
            "actor": self.actor,
            "outcome": self.outcome,
            "target": self.target,
            "remote": self.remote,
            "detail": dict(self.detail),
        }


AuditSink = Callable[[AuditEvent], None]
"""Where audit events go; the stack wires the store and the topic."""


def discard(event: AuditEvent) -> None:
    """The sink when none is wired (unit tests, tools without a store)."""
    return None


class AuditLog:
    """The stack's audit sink: rows into ``audit_events``, messages on ``llmpulse.audit``.

    Calling it only queues the event (thread-safe, never raises, never blocks);
    :meth:`run`, a task on the event loop, stores queued events in a thread
    and produces them through ``produce(key, value)`` once :meth:`bind` gave
    one. When the queue holds ``max_pending`` events the newest is dropped and
    counted (:attr:`dropped`); a store outage keeps the batch and retries.

    >>> import tempfile
    >>> from llmpulse.store import Store
    >>> store = Store.open(f"chdb://{tempfile.mkdtemp()}/store")
    >>> log = AuditLog(store)
    >>> log(AuditEvent("rollback", actor="cli", target="intent-router"))
    >>> log.flush_now()
    1
    >>> store.query("SELECT action, actor, target FROM audit_events")
    [{'action': 'rollback', 'actor': 'cli', 'target': 'intent-router'}]
    >>> store.close()
    """

    def __init__(self, store: Any, *, max_pending: int = 10_000, retry_s: float = 1.0) -> None:
        import collections
        import threading

        self.store = store
        self.max_pending = int(max_pending)
        self.retry_s = float(retry_s)
        self.produce: Callable[[bytes, bytes], Awaitable[Any]] | None = None
        self.stored = 0
        self.produced = 0
        self.dropped = 0
        self.errors = 0
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._loop: Any = None
        self._wake: Any = None

    def bind(self, produce: Callable[[bytes, bytes], Awaitable[Any]]) -> None:
        """Where events are produced (the stack passes its ``llmpulse.audit`` topic)."""
        self.produce = produce

    def __call__(self, event: AuditEvent) -> None:
        try:
            row = event.row()
            row["detail"] = json.dumps(row["detail"], sort_keys=True, default=str)
            with self._lock:
                if len(self._queue) >= self.max_pending:
                    self.dropped += 1
                    return
                self._queue.append(row)
            loop, wake = self._loop, self._wake
            if loop is not None and wake is not None and not loop.is_closed():
                loop.call_soon_threadsafe(wake.set)
        except Exception:  # an audit failure must not fail the audited action
            self.errors += 1
            _log.exception("audit event %r not queued", getattr(event, "action", "?"))

    def _take(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = list(self._queue)
            self._queue.clear()
        return rows

    def _requeue(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            room = max(0, self.max_pending - len(self._queue))
            self.dropped += max(0, len(rows) - room)
            self._queue.extendleft(reversed(rows[:room]))

    def flush_now(self) -> int:
        """Store what is queued, blocking (for tools without an event loop); rows stored."""
        rows = self._take()
        if not rows:
            return 0
        try:
            self.store.insert_rows("audit_events", rows)
        except Exception:
            self.errors += 1
            self._requeue(rows)
            _log.exception("audit events not stored")
            return 0
        self.stored += len(rows)
        return len(rows)

    async def drain(self) -> int:
        """Store and produce what is queued; the rows stored."""
        rows = self._take()
        if not rows:
            return 0
        try:
            await asyncio.to_thread(self.store.insert_rows, "audit_events", rows)
        except Exception as exc:
            self.errors += 1
            self._requeue(rows)
            _log.warning("audit events not stored yet (%d queued): %s", len(rows), exc)
            return 0
        self.stored += len(rows)
        if self.produce is not None:
            for row in rows:
                try:
                    await self.produce(str(row["action"]).encode(),
                                       json.dumps(row, default=str).encode())
                    self.produced += 1
                except Exception as exc:
                    self.errors += 1
                    _log.warning("audit event not produced to %s: %s", TOPIC_AUDIT, exc)
        return len(rows)

    async def run(self) -> None:
        """Drain whenever an event is queued, until cancelled (then drain once more)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not await self.drain() and self._queue:
                    await asyncio.sleep(self.retry_s)
                    self._wake.set()
        finally:
            self._loop = None

    def stats(self) -> dict[str, int]:
        return {"queued": len(self._queue), "stored": self.stored, "produced": self.produced,
                "dropped": self.dropped, "errors": self.errors}
