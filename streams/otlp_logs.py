"""OTLP/HTTP logs in: feedback sent as an OpenTelemetry log record (event).

``POST /v1/logs`` takes an ``ExportLogsServiceRequest`` (protobuf or JSON,
gzip accepted, the same limits and answers as ``/v1/traces``). A log record
is feedback when its event name (``LogRecord.event_name``, or the older
``event.name`` attribute) is:

* ``llmpulse.feedback``: attributes ``llmpulse.feedback.score`` (-1..1),
  ``.label``, ``.hallucination``, ``.comment``, ``.source``, ``.reference``;
* ``gen_ai.evaluation.result`` (the GenAI conventions' evaluation event):
  ``gen_ai.evaluation.score.value`` becomes the score (it must be in -1..1),
  ``gen_ai.evaluation.score.label`` the label,
  ``gen_ai.evaluation.explanation`` the comment.

The request it rates: ``llmpulse.feedback.request_id`` when given, else the
provider's response id (``gen_ai.response.id``), else the record's own span
context: ``<trace_id>/<span_id>`` (emit the record inside the model call's
span) or the trace id (:mod:`llmpulse.streams.otlp_identity`). ``service.name`` gives
``app``. Each becomes a ``feedback/v1`` event, checked by the contract's
validator, sent to ``llmpulse.feedback`` (stored and joined like the
shim's); a record that breaks the contract is rejected with the reason
(``partial_success``, dead letter). Other log records are counted, not kept.

>>> from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
>>> req = ExportLogsServiceRequest()
>>> rl = req.resource_logs.add()
>>> rl.resource.attributes.add(key="service.name").value.string_value = "support"
>>> rec = rl.scope_logs.add().log_records.add(event_name="llmpulse.feedback",
...     time_unix_nano=1_700_000_000_000_000_000, trace_id=bytes(range(1, 17)),
...     span_id=bytes(range(1, 9)))
>>> rec.attributes.add(key="llmpulse.feedback.score").value.double_value = -1.0
>>> out = map_logs(req, now_ms=1_700_000_000_000)
>>> ev = out.feedback[0]
>>> ev["request_id"], ev["score"], ev["app"], out.other
('0102030405060708090a0b0c0d0e0f10/0102030405060708', -1.0, 'support', 0)
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from llmpulse.events import DEFAULT_LIMITS, EventError, Limits, validate_feedback
from llmpulse.streams.ingest import DeadLetter
from llmpulse.streams.otlp import (
    ReceiverLimits,
    SpanIngest,
    dead_letter_refusals,
    envelopes,
    handle_post,
)
from llmpulse.streams.otlp_identity import span_key
from llmpulse.streams.otlp_mapping import attributes, decode_request
from llmpulse.streams.otlp_redact import bare_log_record, redact_event, redactor

__all__ = ["FEEDBACK_EVENTS", "MappedLogs", "attach_otlp_logs", "decode_logs", "ingest_logs",
           "logs_response", "map_logs"]

log = logging.getLogger(__name__)

FEEDBACK_EVENTS = ("llmpulse.feedback", "gen_ai.evaluation.result")
"""Event names of the log records read as feedback."""
OTLP_LOGS_SOURCE = "otlp_http_logs"
"""The ``topic`` of dead letters refused by ``/v1/logs``."""

_PREFIX = "llmpulse.feedback."
_FIELDS = ("score", "label", "hallucination", "comment", "source", "reference")
_EVAL = {"gen_ai.evaluation.score.value": "score", "gen_ai.evaluation.score.label": "label",
         "gen_ai.evaluation.explanation": "comment"}
_NAMESPACE = uuid.UUID("0e4c7a0e-52a4-4c1b-9c57-3f3c1f0d2a61")


@dataclass
class MappedLogs:
    """What one logs export request became."""

    feedback: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[str, bytes]] = field(default_factory=list)
    """(reason, the record's bytes) of feedback records the contract refused."""
    other: int = 0
    """Log records that are not feedback (counted, not kept)."""


def decode_logs(body: bytes, encoding: str, *, max_records: int | None = None,
                ) -> ExportLogsServiceRequest:
    """Parse ``body`` (``otlp_proto`` or ``otlp_json``, hex ids); :class:`OtlpDecodeError`
    when bad, :class:`OtlpTooLarge` when it holds more than ``max_records`` records.

    >>> decode_logs(b'{"resourceLogs": []}', "otlp_json").resource_logs
    []
    >>> decode_logs(b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}',
    ...             "otlp_json")
    Traceback (most recent call last):
    ...
    llmpulse.streams.otlp_mapping.OtlpDecodeError: malformed OTLP JSON: resourceLogs[0].scopeLogs[0].logRecords[0].traceId: not hex: 'zz'
    """
    return decode_request(body, encoding, ExportLogsServiceRequest(), LOGS_PATH,
                          max_records=max_records, what="log records")


LOGS_PATH = (("resourceLogs", "resource_logs"), ("scopeLogs", "scope_logs"),
             ("logRecords", "log_records"))
"""Where the records sit in an OTLP/JSON logs body (camelCase and snake_case)."""


def _event_name(rec: LogRecord, attrs: Mapping[str, Any]) -> str:
    name = rec.event_name or attrs.get("event.name")
    return name if type(name) is str else ""


def _feedback(rec: LogRecord, attrs: Mapping[str, Any], name: str, app: str,
              ) -> dict[str, Any]:
    ev: dict[str, Any] = {}
    if name == "gen_ai.evaluation.result":
        for key, target in _EVAL.items():
            if attrs.get(key) is not None:
                ev[target] = attrs[key]
    for f in _FIELDS:
        if attrs.get(_PREFIX + f) is not None:
            ev[f] = attrs[_PREFIX + f]
    trace = rec.trace_id.hex() if any(rec.trace_id) else ""
    span = rec.span_id.hex() if any(rec.span_id) else ""
    named = attrs.get(_PREFIX + "request_id") or attrs.get("gen_ai.response.id")
    if named is not None:
        ev["request_id"] = named
    elif trace and span:
        ev["request_id"] = span_key(trace, span)
    elif trace:
        ev["request_id"] = trace
    t_ns = rec.time_unix_nano or rec.observed_time_unix_nano
    if t_ns:
        ev["ts"] = t_ns // 1_000_000
    ev["app"] = app
    digest = hashlib.sha256(rec.SerializeToString(deterministic=True)).hexdigest()
    ev["event_id"] = str(uuid.uuid5(_NAMESPACE, f"{app}:{digest}"))
    return ev


def map_logs(req: ExportLogsServiceRequest, *, now_ms: int | None = None,
             limits: Limits = DEFAULT_LIMITS,
             redact: Callable[[str], str] | None = None) -> MappedLogs:
    """The feedback events of an export request (see the module docstring); with
    ``redact``, comments, references and labels are redacted and a refused record is dead-lettered without
    its body and attributes."""
    out = MappedLogs()
    for rl in req.resource_logs:
        res = attributes(rl.resource.attributes)
        app = res.get("service.name")
        app = app if type(app) is str and app else "unknown_service"
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                attrs = attributes(rec.attributes)
                name = _event_name(rec, attrs)
                if name not in FEEDBACK_EVENTS:
                    out.other += 1
                    continue
                ev = _feedback(rec, attrs, name, app)
                if redact is not None:
                    redact_event(ev, redact)
                if "ts" not in ev:  # neither time set: the time it arrived
                    ev["ts"] = now_ms if now_ms is not None else time.time_ns() // 1_000_000
                try:
                    if "request_id" not in ev:
                        raise EventError("request_id", "the record names no request: set "
                                         "llmpulse.feedback.request_id or gen_ai.response.id, "
                                         "or emit it inside the model call's span")
                    validate_feedback(ev, now_ms=now_ms, limits=limits)
                except EventError as exc:
                    payload = bare_log_record(rec) if redact is not None else \
                        rec.SerializeToString()
                    out.rejected.append((str(exc), payload[:4096]))
                    continue
                out.feedback.append(ev)
    return out


def logs_response(mapped: MappedLogs) -> ExportLogsServiceResponse:
    """The answer to a logs export: ``partial_success`` counts the rejected records and
    names up to five reasons (both transports)."""
    resp = ExportLogsServiceResponse()
    if mapped.rejected:
        resp.partial_success.rejected_log_records = len(mapped.rejected)
        reasons = sorted({r for r, _ in mapped.rejected})
        resp.partial_success.error_message = (
            f"{len(mapped.rejected)} log record(s) rejected: " + "; ".join(reasons[:5]))[:1000]
    return resp


async def ingest_logs(ingest: SpanIngest, body: bytes, encoding: str, *, feedback_topic: str,
                      source: str) -> MappedLogs:
    """Decode and map a logs export request, send its feedback to ``feedback_topic`` and
    dead-letter the rejected records under ``source`` (both transports);
    :class:`OtlpDecodeError` when ``body`` is no export request."""
    regions = ingest.pool.redact_regions
    req = decode_logs(body, encoding, max_records=ingest.limits.max_records_per_request)
    mapped = map_logs(req, limits=ingest.limits,
                      redact=None if regions is None else redactor(regions))
    acks = []
    for key, value, part in envelopes(mapped.feedback, partitions=ingest.partitions):
        acks.append(await ingest.send(feedback_topic, value, key, None, part))
    dead = [DeadLetter(payload, f"log record: {reason}", source, 0,
                       ingest.next_offset()) for reason, payload in mapped.rejected]
    await ingest.dead_letter(dead, acks)
    for a in acks:
        await a
    ingest.stats.log_feedback += len(mapped.feedback)
    ingest.stats.rejected_log_records += len(mapped.rejected)
    return mapped


def _response(web: Any, encoding: str, mapped: MappedLogs) -> Any:
    resp = logs_response(mapped)
    if encoding == "otlp_json":
        return web.bytes(json_format.MessageToJson(resp, indent=None).encode(),
                         content_type="application/json")
    return web.bytes(resp.SerializeToString(), content_type="application/x-protobuf")


def attach_otlp_logs(app: Any, ingest: SpanIngest, *, feedback_topic: str,
                     limits: ReceiverLimits = ReceiverLimits()) -> None:
    """Register ``POST /v1/logs`` on a Faust app: feedback records go to ``feedback_topic``;
    refusals and rejections are counted and dead-lettered through ``ingest`` (under
    ``otlp.refused`` / ``otlp.rejected_log_records`` in ``/api/stats``)."""
    import faust

    refuse = dead_letter_refusals(ingest, OTLP_LOGS_SOURCE, limits.timeout_s)

    async def take(body: bytes, encoding: str) -> MappedLogs:
        return await ingest_logs(ingest, body, encoding, feedback_topic=feedback_topic,
                                 source=OTLP_LOGS_SOURCE)

    @app.page("/v1/logs")
    class LogsView(faust.web.View):
        """OTLP/HTTP logs: feedback records (see the module docstring)."""

        async def post(self, request: Any) -> Any:
            return await handle_post(self, request, limits=limits, refuse=refuse, take=take,
                                     stats=ingest.stats, respond=_response)
