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
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import orjson

from llmpulse.audit import TOPIC_AUDIT, AuditEvent, AuditSink
from llmpulse.auth import principal_of
from llmpulse.config import Settings
from llmpulse.erase import ErasureError, ErasureRequest, erase, report_counts
from llmpulse.store import Store
from llmpulse.streams.command_records import register_command_records
from llmpulse.streams.sink import RawSink
from llmpulse.streams.whole import BatchOutcomes

__all__ = ["audit_row", "register_audit_agent", "register_erase"]

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


def audit_row(value: bytes) -> dict[str, Any]:
    """The ``audit_events`` row of an audit event a local command sent (``ValueError``
    if it is not one)."""
    try:
        ev = AuditEvent.from_json(orjson.loads(value))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"audit event: not JSON: {exc}") from None
    row = ev.row()
    row["detail"] = orjson.dumps(row["detail"]).decode()
    row["remote"] = row["remote"] or "kafka"
    return row


def register_audit_agent(app: faust.App, sink: RawSink,
                         outcomes: BatchOutcomes | None = None) -> None:
    """Store the audit events local commands send on ``llmpulse.audit``
    (:mod:`llmpulse.streams.command_records`): an audit trail that dropped what
    arrives while the store is down would be no trail."""
    register_command_records(app, TOPIC_AUDIT, agent="llmpulse.audit", table="audit_events",
                             parse=audit_row, sink=sink, outcomes=outcomes)
