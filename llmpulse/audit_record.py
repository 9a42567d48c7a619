"""Audit records of local commands (``llmpulse deploy``, ``rollback``, ``retrain``).

A command does not own the store while a stack runs, so it records where the
stack will pick it up:

* a stack runs (``<data-dir>/endpoints.json``) or ``LLMPULSE_KAFKA`` names the
  brokers: the event goes to the ``llmpulse.audit`` topic with the header
  ``llmpulse-origin: cli``; the stack's audit agent
  (:func:`llmpulse.streams.admin.register_audit_agent`) checks it and stores it;
* otherwise: straight into the ``audit_events`` table of the stopped store.

A failure to record is reported on stderr and never fails the command.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Any

from llmpulse.audit import TOPIC_AUDIT, AuditEvent

__all__ = ["ORIGIN_HEADER", "command_actor", "record_command"]

log = logging.getLogger(__name__)

ORIGIN_HEADER = "llmpulse-origin"


def command_actor() -> str:
    """``cli:<login name>`` of whoever runs the command."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _bootstrap(settings: Any) -> str | None:
    try:
        ep = json.loads((Path(settings.data_dir) / "endpoints.json").read_text())
        if isinstance(ep, dict) and isinstance(ep.get("kafka"), str):
            return str(ep["kafka"])
    except (OSError, ValueError):
        pass
    kafka = getattr(settings, "kafka", None)
    return str(kafka) if kafka else None


def record_command(settings: Any, event: AuditEvent, *, timeout_s: float = 10.0) -> str:
    """Record ``event``; where it went (``topic``, ``store``) or ``""`` if it could not."""
    try:
        bootstrap = _bootstrap(settings)
        if bootstrap is not None:
            from confluent_kafka import Producer

            producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                 "message.timeout.ms": int(timeout_s * 1000)})
            row = event.row()
            producer.produce(TOPIC_AUDIT, json.dumps(row, default=str).encode(),
                             key=event.action.encode(), headers=[(ORIGIN_HEADER, b"cli")])
            if producer.flush(timeout_s) != 0:
                raise RuntimeError(f"{TOPIC_AUDIT} at {bootstrap} did not acknowledge")
            return "topic"
        from llmpulse.audit import AuditLog
        from llmpulse.migrations import migrate
        from llmpulse.store import Store

        store = Store.open(settings.clickhouse_dsn)
        try:
            migrate(store, settings.retention)
            sink = AuditLog(store)
            sink(event)
            if sink.flush_now() != 1:
                raise RuntimeError("the store did not take the row")
        finally:
            store.close()
        return "store"
    except Exception as exc:
        print(f"llmpulse: warning: the audit record of this {event.action} was not kept: {exc}",
              file=sys.stderr)
        return ""
