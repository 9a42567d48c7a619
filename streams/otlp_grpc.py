"""OTLP/gRPC: ``TraceService/Export`` and ``LogsService/Export`` beside OTLP/HTTP.

The server (``grpc.aio``, on the stack's event loop) takes the request
message as bytes and hands it to the same code as ``POST /v1/traces`` and
``/v1/logs`` (:class:`~llmpulse.streams.otlp.SpanIngest`,
:func:`~llmpulse.streams.otlp_logs.ingest_logs`): mapping, counters, dead
letters and ``partial_success`` are those of OTLP/HTTP.

Answers (https://opentelemetry.io/docs/specs/otlp/#otlpgrpc), from
:func:`refusal_for` where a call fails:

* OK with an ``Export*ServiceResponse``; ``partial_success`` carries the
  number of spans (log records) rejected and why;
* ``INVALID_ARGUMENT``: not a valid export request (counted, dead-lettered);
* ``RESOURCE_EXHAUSTED``: a request with more spans (log records) than
  ``Limits.max_records_per_request`` (counted), or a message over
  :attr:`ReceiverLimits.max_body_bytes` after decompression: refused and counted by the handler up to
  :data:`OVERSIZE_FACTOR` times the limit, refused by gRPC itself beyond that
  (before it is read; such a call is not counted);
* ``UNAVAILABLE`` with a ``RetryInfo`` (5 s): the broker did not take the data
  within :attr:`ReceiverLimits.timeout_s`, or refused it; exporters retry, and
  event ids and span rows are deterministic, so a retry stores no duplicate;
* ``UNAUTHENTICATED`` / ``PERMISSION_DENIED``: API tokens are configured and
  the ``authorization: Bearer <token>`` metadata is missing or wrong, or names
  a token without the ``ingest`` role (the HTTP API's guard decides);
* ``INTERNAL``: the mapping failed on this request (counted, dead-lettered;
  not retried, as it would fail again).

Refusals are counted under ``otlp.refused`` in ``/api/stats`` by status name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiokafka.errors import KafkaError
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from llmpulse.streams.otlp import ReceiverLimits, SpanIngest, dead_letter_refusals, trace_response
from llmpulse.streams.otlp_logs import ingest_logs, logs_response
from llmpulse.streams.otlp_mapping import OtlpDecodeError, OtlpTooLarge

__all__ = [
    "LOGS_SERVICE",
    "OTLP_GRPC_LOGS_SOURCE",
    "OTLP_GRPC_SOURCE",
    "OVERSIZE_FACTOR",
    "TRACE_SERVICE",
    "Authorize",
    "GrpcRefusal",
    "OtlpGrpcServer",
    "bind_address",
    "refusal_for",
]

log = logging.getLogger(__name__)

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
OTLP_GRPC_SOURCE = "otlp_grpc"
"""The ``topic`` of dead letters refused by ``TraceService/Export``."""
OTLP_GRPC_LOGS_SOURCE = "otlp_grpc_logs"
"""The ``topic`` of dead letters refused by ``LogsService/Export``."""
RETRY_AFTER_S = 5
OVERSIZE_FACTOR = 2
"""gRPC reads messages up to this many times ``max_body_bytes``, so that the handler
counts the oversize ones (as OTLP/HTTP counts its 413s); larger ones gRPC refuses."""

Authorize = Callable[[str | None, str, str], tuple[int, str]]
"""``authorize(authorization, method, peer)``: ``(0, "")`` to let a call through, else
``(401 or 403, why)`` (:meth:`llmpulse.auth.ApiGuard.check_bearer`)."""


@dataclass(frozen=True, slots=True)
class GrpcRefusal:
    """How a failed export call is answered."""

    code: grpc.StatusCode
    message: str
    dead_letter: bool = False
    """Whether the request is dead-lettered (it is bad; a retry would fail the same way)."""
    retry_after_s: int | None = None
    """Sent as ``RetryInfo``: the client should come back (the pipeline is busy)."""


def refusal_for(exc: BaseException) -> GrpcRefusal:
    """The answer to an export call that raised ``exc`` while it was decoded, mapped
    and handed to the broker.

    >>> refusal_for(OtlpDecodeError("malformed OTLP protobuf: truncated")).code.name
    'INVALID_ARGUMENT'
    >>> r = refusal_for(TimeoutError()); r.code.name, r.retry_after_s, r.dead_letter
    ('UNAVAILABLE', 5, False)
    >>> refusal_for(KeyError("trace_id")).code.name, refusal_for(KeyError("x")).dead_letter
    ('INTERNAL', True)
    """
    if isinstance(exc, OtlpTooLarge):
        return GrpcRefusal(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)[:1000])
    if isinstance(exc, OtlpDecodeError):
        return GrpcRefusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:1000], dead_letter=True)
    if isinstance(exc, TimeoutError):
        return GrpcRefusal(grpc.StatusCode.UNAVAILABLE, "the broker or store is slow; retry",
                           retry_after_s=RETRY_AFTER_S)
    if isinstance(exc, (KafkaError, ConnectionError)):
        return GrpcRefusal(grpc.StatusCode.UNAVAILABLE,
                           f"the broker refused the data ({type(exc).__name__}); retry",
                           retry_after_s=RETRY_AFTER_S)
    return GrpcRefusal(grpc.StatusCode.INTERNAL,
                       f"mapping failed: {type(exc).__name__}: {exc}"[:500], dead_letter=True)


def _auth_refusal(status: int, why: str) -> GrpcRefusal:
    """The answer to a call the guard refused (HTTP 401 or 403).

    >>> _auth_refusal(401, "unknown token").code.name, _auth_refusal(403, "role").code.name
    ('UNAUTHENTICATED', 'PERMISSION_DENIED')
    """
    if status == 403:
        return GrpcRefusal(grpc.StatusCode.PERMISSION_DENIED, why)
    return GrpcRefusal(grpc.StatusCode.UNAUTHENTICATED,
                       f"authentication required: {why}; send the metadata "
                       "'authorization: Bearer <token>'")


def retry_metadata(code: grpc.StatusCode, message: str, delay_s: int) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata that asks the client to retry after ``delay_s``: the
    ``google.rpc.Status`` details with a ``RetryInfo`` (the OTLP spec), and the
    ``RetryInfo`` alone under ``google.rpc.retryinfo-bin`` (read by the Python exporter).

    >>> md = dict(retry_metadata(grpc.StatusCode.UNAVAILABLE, "busy", 5))
    >>> info = error_details_pb2.RetryInfo.FromString(md["google.rpc.retryinfo-bin"])
    >>> info.retry_delay.seconds, status_pb2.Status.FromString(md["grpc-status-details-bin"]).code
    (5, 14)
    """
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=delay_s))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()),
            ("google.rpc.retryinfo-bin", info.SerializeToString()))


def bind_address(host: str, port: int) -> str:
    """The address gRPC binds for ``host`` (IPv6 in brackets).

    >>> bind_address("127.0.0.1", 4317), bind_address("::1", 0)
    ('127.0.0.1:4317', '[::1]:0')
    """
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


Take = Callable[[bytes], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Rpc:
    method: str
    source: str
    take: Take
    respond: Callable[[Any], Message]


class OtlpGrpcServer:
    """The OTLP/gRPC receiver of one :class:`SpanIngest`.

    ``feedback_topic`` receives the feedback log records; ``authorize`` (None:
    every call is let through) checks the ``authorization`` metadata.
    """

    def __init__(self, ingest: SpanIngest, *, feedback_topic: str,
                 limits: ReceiverLimits = ReceiverLimits(),
                 authorize: Authorize | None = None) -> None:
        self.ingest = ingest
        self.limits = limits
        self.authorize = authorize
        self.port: int | None = None
        """The bound port once started."""
        self._server: Any = None

        async def take_traces(body: bytes) -> Any:
            return await ingest.ingest(body, "otlp_proto", source=OTLP_GRPC_SOURCE)

        async def take_logs(body: bytes) -> Any:
            return await ingest_logs(ingest, body, "otlp_proto", feedback_topic=feedback_topic,
                                     source=OTLP_GRPC_LOGS_SOURCE)

        self._rpcs = (_Rpc(f"/{TRACE_SERVICE}/Export", OTLP_GRPC_SOURCE, take_traces,
                           trace_response),
                      _Rpc(f"/{LOGS_SERVICE}/Export", OTLP_GRPC_LOGS_SOURCE, take_logs,
                           logs_response))

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """The generic handlers of both services (messages in and out as bytes)."""
        out: list[grpc.GenericRpcHandler] = []
        for rpc in self._rpcs:
            service = rpc.method.split("/")[1]

            async def export(body: bytes, context: Any, rpc: _Rpc = rpc) -> bytes:
                return await self._export(rpc, body, context)

            out.append(grpc.method_handlers_generic_handler(
                service, {"Export": grpc.unary_unary_rpc_method_handler(export)}))
        return out

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port) and return the port; ``OSError``
        when the address cannot be bound."""
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.limits.max_body_bytes * OVERSIZE_FACTOR),
            # a busy fixed port must fail here, not be shared with another server
            ("grpc.so_reuseport", 0),
        ])
        server.add_generic_rpc_handlers(tuple(self.handlers()))
        address = bind_address(host, port)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from None
        if not bound:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server, self.port = server, bound
        return bound

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Refuse new calls and let those in flight finish for up to ``grace_s``."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace_s)

    async def _export(self, rpc: _Rpc, body: bytes, context: Any) -> bytes:
        refusal = self._screen(rpc, body, context)
        if refusal is None:
            try:
                mapped = await asyncio.wait_for(rpc.take(body), self.limits.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                refusal = refusal_for(exc)
                if refusal.code == grpc.StatusCode.INTERNAL:
                    log.exception("%s: mapping failed", rpc.method)
            else:
                return bytes(rpc.respond(mapped).SerializeToString())
            stats = self.ingest.stats
            if refusal.dead_letter:
                refuse = dead_letter_refusals(self.ingest, rpc.source, self.limits.timeout_s)
                await refuse(body, refusal.message, refusal.code.name)
            else:
                stats.refused[refusal.code.name] += 1
        trailing: tuple[tuple[str, bytes], ...] = ()
        if refusal.retry_after_s is not None:
            trailing = retry_metadata(refusal.code, refusal.message, refusal.retry_after_s)
        await context.abort(refusal.code, refusal.message, trailing_metadata=trailing)
        raise AssertionError("unreachable: abort raises")

    def _screen(self, rpc: _Rpc, body: bytes, context: Any) -> GrpcRefusal | None:
        """The refusal of a call before it is read (credentials, size), or None."""
        if self.authorize is not None:
            values = [v for k, v in (context.invocation_metadata() or ())
                      if k == "authorization"]
            # two credentials are one too many: which would be checked is not obvious
            header = values[0] if len(values) == 1 and isinstance(values[0], str) else (
                None if not values else "")
            status, why = self.authorize(header, rpc.method, str(context.peer() or ""))
            if status:
                return _auth_refusal(status, why)
        if len(body) > self.limits.max_body_bytes:
            self.ingest.stats.refused["RESOURCE_EXHAUSTED"] += 1
            return GrpcRefusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"message larger than {self.limits.max_body_bytes} bytes")
        return None
