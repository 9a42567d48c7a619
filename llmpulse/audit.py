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

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ACTIONS", "OUTCOMES", "TOPIC_AUDIT", "AuditEvent", "AuditSink", "discard"]

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
