"""Admin routes of the stack's HTTP API (under ``/api/admin/``): erasure.

``POST /api/admin/erase`` takes a JSON object, ``{"request_ids": [...]}``,
``{"user": "..."}`` or ``{"app": "...", "before": "2024-01-01T00:00:00Z"}``
(optional ``wait_s``, how long to wait for replaced store parts to go, 0..600),
runs :func:`llmpulse.erase.erase` in a thread (one erasure at a time) and
answers with the report. Every call, refused or not, goes to the audit trail.
Authentication is the job of the middleware that guards ``/api/admin/``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust
import orjson

from llmpulse.audit import TOPIC_AUDIT, AuditEvent, AuditSink
from llmpulse.auth import principal_of
from llmpulse.config import Settings
from llmpulse.erase import ErasureError, ErasureRequest, erase, report_counts
from llmpulse.store import Store
from llmpulse.streams.sink import RawSink
from llmpulse.streams.whole import BatchOutcomes, take_whole

__all__ = ["register_audit_agent", "register_erase"]

log = logging.getLogger(__name__)


def _actor(request: Any) -> str:
    """The name of the token or session the API guard let through."""
    principal = principal_of(request)
    return principal.name if principal is not None else "anonymous"


def _remote(request: Any) -> str:
    try:
        return str(request.remote or "")
    except Exception:
        return ""


def register_erase(app: faust.App, store: Store, settings: Settings, audit: AuditSink,
                   forget: Callable[[set[str]], Awaitable[int]] | None = None) -> None:
    """Mount ``POST /api/admin/erase`` on ``app``; ``forget`` drops the erased
    requests from the signal engine's memory and saved state."""
    lock = asyncio.Lock()

    @app.page("/api/admin/erase")
    class EraseView(faust.web.View):
        async def post(self, request: Any) -> Any:
            actor, remote = _actor(request), _remote(request)
            try:
                body = await request.json()
            except Exception:
                return self.json({"error": "body must be JSON"}, status=400)
            try:
                if not isinstance(body, dict):
                    raise ErasureError("body: must be a JSON object")
                body = dict(body)
                wait_s = body.pop("wait_s", 60.0)
                if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) \
                        or not 0 <= wait_s <= 600:
                    raise ErasureError("wait_s: must be a number of seconds in 0..600")
                req = ErasureRequest.from_json(body)
            except ErasureError as exc:
                audit(AuditEvent("erase", actor=actor, outcome="denied", remote=remote,
                                 detail={"error": str(exc)}))
                return self.json({"error": str(exc)}, status=400)
            async with lock:
                try:
                    report = await asyncio.to_thread(
                        erase, store, req, data_dir=settings.data_dir, wait_s=float(wait_s))
                    if forget is not None and report.request_ids:
                        report.engine_records = await forget(set(report.request_ids))
                except Exception as exc:
                    log.exception("erasure failed")
                    audit(AuditEvent("erase", actor=actor, outcome="error", target=req.target(),
                                     remote=remote, detail={"error": str(exc).splitlines()[0]}))
                    return self.json({"error": f"erasure failed: {str(exc).splitlines()[0]}"},
                                     status=500)
            audit(AuditEvent("erase", actor=actor, target=req.target(), remote=remote,
                             detail=report_counts(report)))
            return self.json(report.to_json())


def register_audit_agent(app: faust.App, sink: RawSink,
                         outcomes: BatchOutcomes | None = None) -> None:
    """Store the audit events local commands send on ``llmpulse.audit``
    (header ``llmpulse-origin: cli``; :mod:`llmpulse.audit_record`). Events the
    stack produced itself are already stored and are skipped; a malformed one, or
    one the store refuses, is logged and dropped. A store outage is waited out,
    batch by batch, and a batch not stored at a stop is read again at the next
    start (:func:`~llmpulse.streams.whole.take_whole`): an audit trail that drops
    what arrives while the store is down is no trail."""
    from llmpulse.audit_record import from_command

    topic = app.topic(TOPIC_AUDIT, value_serializer="raw", key_serializer="raw")

    async def store_batch(events: Sequence[Any]) -> None:
        lines: list[bytes] = []
        for event in events:
            if not from_command(event.message.headers):
                continue
            try:
                ev = AuditEvent.from_json(orjson.loads(event.value))
            except (ValueError, orjson.JSONDecodeError) as exc:
                log.warning("dropping a malformed audit event from %s: %s", TOPIC_AUDIT, exc)
                continue
            row = ev.row()
            row["detail"] = orjson.dumps(row["detail"]).decode()
            row["remote"] = row["remote"] or "kafka"
            lines.append(orjson.dumps(row))
        for _, reason in await sink.write("audit_events", lines):
            log.warning("audit event from %s not stored: %s", TOPIC_AUDIT, reason)

    async def audit_agent(stream: Any) -> None:
        await take_whole(stream, store_batch, max_=100, within=0.5,
                         should_stop=lambda: bool(app.should_stop), outcomes=outcomes,
                         what=f"{TOPIC_AUDIT} batch")

    audit_agent.__name__ = audit_agent.__qualname__ = "audit"
    app.agent(topic, name="llmpulse.audit")(audit_agent)
