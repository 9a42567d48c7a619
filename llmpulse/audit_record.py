"""Records of local commands (``llmpulse deploy``, ``rollback``, ``retrain``).

A command does not own the store while a stack runs, so it records where the
stack will pick it up:

* a stack runs (``<data-dir>/endpoints.json``) or ``LLMPULSE_KAFKA`` names the
  brokers: the record goes to its topic (``llmpulse.audit`` for an audit
  event, ``llmpulse.deployments`` for a deployment row) with the header
  ``llmpulse-origin: cli``; the stack's agents
  (:func:`llmpulse.streams.admin.register_audit_agent`,
  :func:`llmpulse.streams.deployments.register_command_deployments`) check it
  and store it;
* otherwise: straight into the table (``audit_events``, ``deployments``) of
  the stopped store.

A failure to record is reported on stderr and never fails the command.

>>> from_command([("llmpulse-origin", b"cli")]), from_command({"llmpulse-origin": b"app"})
(True, False)
>>> from_command(None)
False
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmpulse.audit import TOPIC_AUDIT, AuditEvent, AuditLog
from llmpulse.events import TOPIC_DEPLOYMENTS

if TYPE_CHECKING:
    from llmpulse.store import Store

__all__ = ["ORIGIN_HEADER", "command_actor", "from_command", "record_command",
           "record_deployments"]

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


def from_command(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> bool:
    """Whether a message's ``headers`` mark it as sent by a local command."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    return dict(pairs).get(ORIGIN_HEADER) == b"cli"


def _deliver(settings: Any, topic: str, messages: list[tuple[bytes, bytes]],
             offline: Callable[[Store], None], timeout_s: float) -> str:
    """Send ``messages`` (key, value) to ``topic`` of the running stack, or hand the
    stopped store (migrated) to ``offline``; where they went."""
    bootstrap = _bootstrap(settings)
    if bootstrap is not None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                             "message.timeout.ms": int(timeout_s * 1000)})
        for key, value in messages:
            producer.produce(topic, value, key=key, headers=[(ORIGIN_HEADER, b"cli")])
        if producer.flush(timeout_s) != 0:
            raise RuntimeError(f"{topic} at {bootstrap} did not acknowledge")
        return "topic"
    from llmpulse.migrations import migrate
    from llmpulse.store import Store

    store = Store.open(settings.clickhouse_dsn)
    try:
        migrate(store, settings.retention)
        offline(store)
    finally:
        store.close()
    return "store"


def record_command(settings: Any, event: AuditEvent, *, timeout_s: float = 10.0) -> str:
    """Record ``event``; where it went (``topic``, ``store``) or ``""`` if it could not."""

    def offline(store: Store) -> None:
        sink = AuditLog(store)
        sink(event)
        if sink.flush_now() != 1:
            raise RuntimeError("the store did not take the row")

    try:
        value = json.dumps(event.row(), default=str).encode()
        return _deliver(settings, TOPIC_AUDIT, [(event.action.encode(), value)], offline,
                        timeout_s)
    except Exception as exc:
        print(f"llmpulse: warning: the audit record of this {event.action} was not kept: {exc}",
              file=sys.stderr)
        return ""


def record_deployments(settings: Any, rows: list[dict[str, Any]], *,
                       timeout_s: float = 10.0) -> str:
    """Record the ``deployments`` rows of a local deploy, rollback or retrain, so the
    dashboards, Grafana's annotations and the alert agent see them as they see the
    retrain service's; where they went (``topic``, ``store``) or ``""``."""
    if not rows:
        return ""

    def offline(store: Store) -> None:
        if store.insert_rows("deployments", rows) != len(rows):
            raise RuntimeError("the store did not take the rows")

    try:
        messages = [(str(r["model"]).encode(), json.dumps(r, default=str).encode()) for r in rows]
        return _deliver(settings, TOPIC_DEPLOYMENTS, messages, offline, timeout_s)
    except Exception as exc:
        print(f"llmpulse: warning: the deployment record was not kept: {exc}", file=sys.stderr)
        return ""
