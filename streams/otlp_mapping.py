"""OpenTelemetry traces in, llmpulse inference events and span rows out. No Faust here.

:func:`decode_traces` turns an OTLP ``ExportTraceServiceRequest`` (protobuf,
or the OTLP/JSON mapping with hex ids) into the protobuf message;
:func:`map_request` maps every span. A span that is a GenAI model call
(``gen_ai.operation.name`` ``chat`` / ``text_completion`` /
``generate_content`` / ``embeddings``, or an older span that names a GenAI
system or model) becomes one ``inference/v1`` event, checked by the
contract's own validator; every span (GenAI or not) becomes one row of the
``spans`` table. A span whose event breaks the contract is rejected with the
reason (the receiver answers it as ``partial_success`` and dead-letters it).
The mapping, row by row, is the table in ``docs/otlp.md``.

>>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
>>> req = ExportTraceServiceRequest()
>>> rs = req.resource_spans.add()
>>> rs.resource.attributes.add(key="service.name").value.string_value = "support"
>>> span = rs.scope_spans.add().spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)),
...     name="chat gpt-4o", start_time_unix_nano=1_700_000_000_000_000_000,
...     end_time_unix_nano=1_700_000_000_250_000_000)
>>> for k, v in [("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "gpt-4o")]:
...     span.attributes.add(key=k).value.string_value = v
>>> span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 12
>>> out = map_request(req, now_ms=1_700_000_000_000)
>>> ev = out.events[0]
>>> ev["app"], ev["model"], ev["latency_ms"], ev["input_tokens"], ev["status"], ev["span_id"]
('support', 'gpt-4o', 250.0, 12, 'ok', '0102030405060708')
>>> out.genai, out.other, out.spans[0]["step"]
(1, 0, 'llm')
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from llmpulse.events import DEFAULT_LIMITS, MAX_TAG_CHARS, EventError, Limits, validate_inference
from llmpulse.streams.otlp_redact import bare_span, redact_span

__all__ = [
    "ENCODINGS",
    "MappedRequest",
    "OtlpDecodeError",
    "OtlpTooLarge",
    "RejectedSpan",
    "decode_traces",
    "map_request",
]

ENCODINGS = ("otlp_proto", "otlp_json")
"""The encodings of the OTel Collector's Kafka exporter that llmpulse reads."""

MODEL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings",
                              "completion"})
"""``gen_ai.operation.name`` values that are calls to a model: inference events."""
TOOL_OPERATIONS = frozenset({"execute_tool"})
AGENT_OPERATIONS = frozenset({"invoke_agent", "create_agent"})
RETRIEVAL_OPERATIONS = frozenset({"retrieval", "retrieve"})

_KIND_NAMES = {int(v): str(n) for n, v in Span.SpanKind.items()}
_EVENT_NAMESPACE = uuid.UUID("5b0e6a52-2f9c-4d7e-9a54-4f7c0b1f2d11")
_NAMESPACE_BYTES = _EVENT_NAMESPACE.bytes
_DOCUMENT_KEY = "retrieval.documents.0.document.content"
"""OpenInference numbers a retrieval's documents from 0: a span without this has none."""
_MAX_ROW_ATTRS = 64
_MAX_ROW_VALUE = 1024
_CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "gen_ai.input.messages",
                     "gen_ai.output.messages", "gen_ai.system_instructions",
                     "retrieval.documents.", "gen_ai.tool.call.arguments",
                     "gen_ai.tool.call.result")
"""Attributes that hold content: mapped to prompt/response/context, kept out of the
spans row's ``attributes`` (they can be large and carry personal data)."""


class OtlpDecodeError(ValueError):
    """The body is not an OTLP ``ExportTraceServiceRequest`` in the given encoding."""


class OtlpTooLarge(OtlpDecodeError):
    """The request holds more records than ``Limits.max_records_per_request`` (HTTP 413)."""


@dataclass(frozen=True, slots=True)
class RejectedSpan:
    """A span whose event breaks the contract: where it came from and why."""

    trace_id: str
    span_id: str
    reason: str
    payload: bytes
    """The event as mapped (JSON), for the dead letter."""


@dataclass(slots=True)
class MappedRequest:
    """What one export request maps to."""

    events: list[dict[str, Any]] = field(default_factory=list)
    """Validated ``inference/v1`` events (``ts`` in epoch ms)."""
    spans: list[dict[str, Any]] = field(default_factory=list)
    """Rows of the ``spans`` table (``ts`` / ``end_ts`` in epoch seconds)."""
    rejected: list[RejectedSpan] = field(default_factory=list)
    genai: int = 0
    """GenAI model-call spans accepted as events."""
    other: int = 0
    """Spans that are not model calls (tools, agents, retrievals, HTTP, ...)."""
    documents: dict[str, list[str]] = field(default_factory=dict)
    """Retrieved documents found in this request, by trace id (hex)."""

    @property
    def total(self) -> int:
        return self.genai + self.other + len(self.rejected)


# -- decoding --------------------------------------------------------------------------------


def decode_traces(body: bytes, encoding: str, *, max_spans: int | None = None,
                  ) -> ExportTraceServiceRequest:
    """Parse ``body`` (``otlp_proto`` or ``otlp_json``); :class:`OtlpDecodeError` when bad,
    :class:`OtlpTooLarge` when it holds more than ``max_spans`` spans.

    >>> decode_traces(b'{"resourceSpans": []}', "otlp_json").resource_spans
    []
    >>> decode_traces(b"\\xff\\xff", "otlp_proto")
    Traceback (most recent call last):
    ...
    llmpulse.streams.otlp_mapping.OtlpDecodeError: malformed protobuf: ...
    >>> decode_traces(b'{"resourceSpans": [{"scopeSpans": [{"spans": [{}, {}]}]}]}',
    ...               "otlp_json", max_spans=1)
    Traceback (most recent call last):
    ...
    llmpulse.streams.otlp_mapping.OtlpTooLarge: 2 spans in one request; at most 1 ...
    """
    return decode_request(body, encoding, ExportTraceServiceRequest(), TRACE_PATH,
                          links="links", max_records=max_spans, what="spans")


M = TypeVar("M", bound=Message)

TRACE_PATH = (("resourceSpans", "resource_spans"), ("scopeSpans", "scope_spans"),
              ("spans", "spans"))
"""Where the spans sit in an OTLP/JSON traces body (camelCase and snake_case)."""


def decode_request(body: bytes, encoding: str, req: M, path: Sequence[tuple[str, str]], *,
                   links: str | None = None, max_records: int | None = None,
                   what: str = "records") -> M:
    """Parse an OTLP export request ``body`` into ``req`` (an empty message of its type):
    protobuf, or OTLP/JSON whose records (found along ``path``, with their ``links``
    list if given) carry hex trace and span ids; :class:`OtlpDecodeError` when bad,
    :class:`OtlpTooLarge` when it holds more than ``max_records`` records (counted
    before the JSON is converted, the slow part)."""
    if encoding == "otlp_proto":
        try:
            req.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise OtlpDecodeError(f"malformed protobuf: {_first_line(exc)}") from None
        if max_records is not None:
            outer, inner, leaf = (snake for _, snake in path)
            _check_count(sum(len(getattr(s, leaf)) for r in getattr(req, outer)
                             for s in getattr(r, inner)), max_records, what)
        return req
    if encoding != "otlp_json":
        raise OtlpDecodeError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OtlpDecodeError(f"malformed JSON: {exc}") from None
    if type(doc) is not dict:
        raise OtlpDecodeError(f"malformed JSON: the body must be an object with {path[0][0]}")
    try:
        n = _hex_ids_to_base64(doc, path, links)
    except (ValueError, TypeError, RecursionError) as exc:
        raise OtlpDecodeError(f"malformed OTLP JSON: {_first_line(exc)}") from None
    if max_records is not None:
        _check_count(n, max_records, what)
    try:
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise OtlpDecodeError(f"malformed OTLP JSON: {_first_line(exc)}") from None
    return req


def _check_count(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise OtlpTooLarge(f"{n} {what} in one request; at most {limit} are accepted: "
                           f"export smaller batches")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


_ID_KEYS = (("traceId", "trace_id"), ("spanId", "span_id"), ("parentSpanId", "parent_span_id"))


def _hex_ids_to_base64(doc: dict[str, Any], path: Sequence[tuple[str, str]],
                       links: str | None) -> int:
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON mapping wants base64.
    Returns the number of records."""
    count = 0

    def fix(obj: Any, where: str) -> None:
        if type(obj) is not dict:
            return
        for camel, snake in _ID_KEYS:
            for key in (camel, snake):
                v = obj.get(key)
                if v is None:
                    continue
                if type(v) is not str:
                    raise ValueError(f"{where}.{key}: must be a hex string")
                try:
                    raw = bytes.fromhex(v)
                except ValueError:
                    raise ValueError(f"{where}.{key}: not hex: {v[:40]!r}") from None
                obj[key] = base64.b64encode(raw).decode("ascii")

    def walk(obj: Any, level: int, where: str) -> None:
        nonlocal count
        camel, snake = path[level]
        for i, item in enumerate(_list(obj, camel, snake, where)):
            count += level + 1 == len(path)
            here = f"{where + '.' if where else ''}{camel}[{i}]"
            if level + 1 < len(path):
                walk(item, level + 1, here)
                continue
            fix(item, here)
            if links is not None:
                for n, link in enumerate(_list(item, links, links, here)):
                    fix(link, f"{here}.{links}[{n}]")

    walk(doc, 0, "")
    return count


def _list(obj: Any, camel: str, snake: str, where: str) -> list[Any]:
    if type(obj) is not dict:
        raise ValueError(f"{where or 'body'}: must be an object")
    v = obj.get(camel, obj.get(snake))
    if v is None:
        return []
    if type(v) is not list:
        raise ValueError(f"{where}.{camel}: must be a list")
    return v


# -- attribute values ------------------------------------------------------------------------


def any_value(v: AnyValue) -> Any:
    """An ``AnyValue`` as plain Python (bytes as base64 text)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return getattr(v, kind)


_SCALAR_KINDS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def attributes(kvs: Iterable[KeyValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:  # scalars read directly: this runs for every attribute of every span
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = getattr(v, kind) if kind in _SCALAR_KINDS else any_value(v)
    return out


def _first(attrs: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        v = attrs.get(k)
        if v is not None and v != "":
            return v
    return None


def _int(v: Any) -> int | None:
    if type(v) is int:
        return v
    if type(v) is float and v.is_integer():
        return int(v)
    if type(v) is str:
        try:
            return int(v)
        except ValueError:
            return None
    return None


# -- message content -------------------------------------------------------------------------


def _json_or_text(v: Any) -> Any:
    """Content attributes hold JSON text (current conventions) or plain text (older ones)."""
    if type(v) is str:
        s = v.strip()
        if s[:1] in ("[", "{"):
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError:
                return v
    return v


def _part_text(part: Any) -> list[str]:
    if type(part) is str:
        return [part]
    if type(part) is not dict:
        return []
    if part.get("type", "text") == "text":
        c = part.get("content", part.get("text"))
        if type(c) is str:
            return [c]
    return []


def message_text(value: Any) -> list[str]:
    """The text parts of GenAI messages (JSON message parts, or older shapes).

    >>> message_text('[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]')
    ['hi']
    >>> message_text([{"type": "text", "content": "be brief"}]), message_text("plain")
    (['be brief'], ['plain'])
    >>> message_text('[{"role": "user", "content": "older shape"}]')
    ['older shape']
    """
    value = _json_or_text(value)
    if type(value) is str:
        return [value] if value else []
    if type(value) is dict:
        value = [value]
    if type(value) is not list:
        return []
    out: list[str] = []
    for m in value:
        if type(m) is not dict:
            out += _part_text(m)
            continue
        parts = m.get("parts")
        if type(parts) is list:
            for p in parts:
                out += _part_text(p)
        elif "type" in m:  # a bare part (system instructions)
            out += _part_text(m)
        else:
            c = m.get("content")
            if type(c) is str:
                out.append(c)
            elif type(c) is list:
                for p in c:
                    out += _part_text(p)
            msg = m.get("message")  # older gen_ai.choice event body
            if type(msg) is dict and type(msg.get("content")) is str:
                out.append(msg["content"])
    return [t for t in out if t]


def _indexed(attrs: Mapping[str, Any], prefix: str, leaf: str) -> list[str]:
    """``<prefix>.N.<leaf>`` values in N order (``gen_ai.prompt.0.content`` ...)."""
    found: list[tuple[int, str]] = []
    for k, v in attrs.items():
        if not k.startswith(prefix) or not k.endswith("." + leaf) or type(v) is not str:
            continue
        n = k[len(prefix): -len(leaf) - 1]
        if n.isdigit():
            found.append((int(n), v))
    return [v for _, v in sorted(found)]


def _openinference_documents(attrs: Mapping[str, Any]) -> list[str]:
    return _indexed(attrs, "retrieval.documents.", "document.content")


def _older_content(attrs: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """``gen_ai.prompt.N.content``, ``gen_ai.completion.N.content`` and
    ``gen_ai.completion.N.finish_reason`` in N order, in one pass over the attributes.

    >>> _older_content({"gen_ai.completion.1.content": "b", "gen_ai.prompt.0.content": "p",
    ...                 "gen_ai.completion.0.content": "a", "gen_ai.completion.0.role": "-",
    ...                 "gen_ai.completion.0.finish_reason": "stop"})
    (['p'], ['a', 'b'], ['stop'])
    """
    prompt: list[tuple[int, str]] = []
    completion: list[tuple[int, str]] = []
    finish: list[tuple[int, str]] = []
    for k, v in attrs.items():
        if not k.startswith("gen_ai.") or type(v) is not str:
            continue
        if k.startswith("gen_ai.prompt."):
            n, _, leaf = k[14:].partition(".")
            if leaf == "content" and n.isdigit():
                prompt.append((int(n), v))
        elif k.startswith("gen_ai.completion."):
            n, _, leaf = k[18:].partition(".")
            if n.isdigit():
                if leaf == "content":
                    completion.append((int(n), v))
                elif leaf == "finish_reason":
                    finish.append((int(n), v))
    return ([v for _, v in sorted(prompt)], [v for _, v in sorted(completion)],
            [v for _, v in sorted(finish)])


# -- one span --------------------------------------------------------------------------------


def _step(op: str | None, attrs: Mapping[str, Any], genai: bool) -> str:
    if genai:
        return "llm"
    if op in TOOL_OPERATIONS or "gen_ai.tool.name" in attrs:
        return "tool"
    if op in AGENT_OPERATIONS or "gen_ai.agent.name" in attrs:
        return "agent"
    if (op in RETRIEVAL_OPERATIONS or "retrieval.documents.0.document.content" in attrs
            or attrs.get("openinference.span.kind") == "RETRIEVER"
            or "db.vector.query.top_k" in attrs or "vector_db.vendor" in attrs):
        return "retrieval"
    return "other"


def _is_model_call(op: str | None, attrs: Mapping[str, Any]) -> bool:
    if op is not None:
        return op in MODEL_OPERATIONS
    # older instrumentations: no operation name, but a GenAI system / model / request type
    return any(k in attrs for k in ("gen_ai.system", "gen_ai.provider.name",
                                    "gen_ai.request.model", "gen_ai.response.model",
                                    "llm.request.type"))


def _status(span: Span, error_type: str | None) -> str:
    if span.status.code != Status.STATUS_CODE_ERROR and not error_type:
        return "ok"
    name = (error_type or "").rsplit(".", 1)[-1].lower()
    return "timeout" if "timeout" in name else "error"


def _exception_type(span: Span) -> str | None:
    for e in span.events:
        if e.name == "exception":
            t = attributes(e.attributes).get("exception.type")
            if type(t) is str and t:
                return t
    return None


def _event_content(span: Span) -> tuple[list[str], list[str]]:
    """Prompt and completion text carried by span events (older conventions)."""
    prompt: list[str] = []
    completion: list[str] = []
    for e in span.events:
        name = e.name
        if not name.startswith("gen_ai."):
            continue
        a = attributes(e.attributes)
        if name == "gen_ai.content.prompt":
            prompt += message_text(a.get("gen_ai.prompt"))
        elif name == "gen_ai.content.completion":
            completion += message_text(a.get("gen_ai.completion"))
        elif name in ("gen_ai.system.message", "gen_ai.user.message", "gen_ai.tool.message"):
            prompt += message_text(a.get("content"))
        elif name in ("gen_ai.assistant.message", "gen_ai.choice"):
            completion += message_text(a.get("content", a.get("message")))
    return prompt, completion


_CUT_MARGIN = 256
"""Characters kept past a row's length limits until it is redacted: what straddles the
cut is redacted whole, then cut (:func:`cut_row`)."""


def _row_attributes(attrs: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in attrs.items():
        if k.startswith(_CONTENT_PREFIXES) or len(out) >= _MAX_ROW_ATTRS:
            continue
        text = v if type(v) is str else orjson.dumps(v).decode()
        out[k[:200 + _CUT_MARGIN]] = text[:_MAX_ROW_VALUE + _CUT_MARGIN]
    return out


def cut_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``spans`` row's name, scope and attributes cut to their lengths (in place), once
    redacted.

    >>> cut_row({"name": "n" * 900, "scope": "s", "attributes": {"k": "v" * 2000}})["name"][-3:]
    'nnn'
    """
    row["name"] = row["name"][:500]
    row["scope"] = row["scope"][:200]
    attrs = row["attributes"]
    if any(len(k) > 200 or len(v) > _MAX_ROW_VALUE for k, v in attrs.items()):
        row["attributes"] = {k[:200]: v[:_MAX_ROW_VALUE] for k, v in attrs.items()}
    return row


def _str(v: Any) -> str:
    return v if type(v) is str else ("" if v is None else orjson.dumps(v).decode())


PROMPT_VERSION_ATTRS = ("llmpulse.prompt_version", "traceloop.prompt.version",
                        "langfuse.observation.prompt.version")
"""Where a prompt version is read, first found wins (OpenLLMetry, Langfuse after ours)."""
PROMPT_NAME_ATTRS = ("traceloop.prompt.key", "langfuse.observation.prompt.name")
"""A prompt name put before an instrumentation's version: ``support-answer:3``."""


_TAG_ATTRS = frozenset((*PROMPT_VERSION_ATTRS, *PROMPT_NAME_ATTRS, "llmpulse.experiment",
                        "llmpulse.variant", "feature_flag.key"))
"""The attributes :func:`_tags` reads first (a variant alone is no tag)."""


def _tag_value(v: Any) -> str | None:
    """A tag as the event contract takes it (1..200 characters), else None."""
    if type(v) is int:
        v = str(v)
    return v if type(v) is str and 0 < len(v) <= MAX_TAG_CHARS else None


def _tags(attrs: Mapping[str, Any]) -> dict[str, str]:
    """``prompt_version``, ``experiment`` and ``variant`` from span attributes.

    Our own ``llmpulse.*`` attributes first; else a managed prompt's version
    (OpenLLMetry ``traceloop.prompt.*``, Langfuse ``langfuse.observation.prompt.*``);
    else an OpenTelemetry feature flag (``feature_flag.key`` and
    ``feature_flag.result.variant``, older ``feature_flag.variant``) as the
    experiment and its variant. A value that is not a string (or an integer
    version) of 1..200 characters is left out; a variant without an experiment too.

    >>> _tags({"traceloop.prompt.key": "support-answer", "traceloop.prompt.version": 3,
    ...        "feature_flag.key": "tone", "feature_flag.result.variant": "friendly"})
    {'prompt_version': 'support-answer:3', 'experiment': 'tone', 'variant': 'friendly'}
    """
    if _TAG_ATTRS.isdisjoint(attrs):  # most spans carry none: one pass over their keys
        return {}
    out: dict[str, str] = {}
    own = _tag_value(attrs.get("llmpulse.prompt_version"))
    if own is not None:
        out["prompt_version"] = own
    else:
        version = _tag_value(_first(attrs, *PROMPT_VERSION_ATTRS[1:]))
        name = _tag_value(_first(attrs, *PROMPT_NAME_ATTRS))
        if version is not None:
            tagged = f"{name}:{version}" if name is not None else version
            out["prompt_version"] = tagged if len(tagged) <= MAX_TAG_CHARS else version
    experiment = _tag_value(attrs.get("llmpulse.experiment"))
    variant = _tag_value(attrs.get("llmpulse.variant"))
    if experiment is None:
        experiment = _tag_value(attrs.get("feature_flag.key"))
        variant = _tag_value(_first(attrs, "feature_flag.result.variant", "feature_flag.variant"))
        if variant is None:
            experiment = None  # a flag without a variant is no experiment arm
    if experiment is not None:
        out["experiment"] = experiment
        if variant is not None:
            out["variant"] = variant
    return out


def event_uuid(trace_id: str, span_id: str) -> str:
    """The event id of a model-call span: ``uuid5`` of ``<trace_id>:<span_id>`` in
    llmpulse's namespace, built without :class:`uuid.UUID` (it runs once per span).

    >>> event_uuid("ab" * 16, "cd" * 8) == str(uuid.uuid5(_EVENT_NAMESPACE, "ab" * 16 + ":"
    ...                                                    + "cd" * 8))
    True
    """
    b = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{trace_id}:{span_id}".encode()).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def map_span(span: Span, app: str, scope: str, context: list[str] | None = None,
             attrs: dict[str, Any] | None = None,
             ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The inference event (None for a span that is no model call) and the spans row
    (``attrs``: the span's attributes, when the caller has read them already)."""
    if attrs is None:
        attrs = attributes(span.attributes)
    trace_id = span.trace_id.hex()
    span_id = span.span_id.hex()
    parent = span.parent_span_id.hex()
    op_v = attrs.get("gen_ai.operation.name", attrs.get("llm.request.type"))
    op = op_v if type(op_v) is str and op_v else None
    genai = _is_model_call(op, attrs)
    error_type = _first(attrs, "error.type")
    if error_type is None and span.status.code == Status.STATUS_CODE_ERROR:
        error_type = _exception_type(span)
    error_type = None if error_type is None else _str(error_type)
    status = _status(span, error_type)
    provider = _str(_first(attrs, "gen_ai.provider.name", "gen_ai.system"))
    req_model = _str(_first(attrs, "gen_ai.request.model", "llm.request.model"))
    resp_model = _str(_first(attrs, "gen_ai.response.model", "llm.response.model"))
    input_tokens = _int(_first(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                               "llm.usage.input_tokens", "llm.usage.prompt_tokens"))
    output_tokens = _int(_first(attrs, "gen_ai.usage.output_tokens",
                                "gen_ai.usage.completion_tokens", "llm.usage.output_tokens",
                                "llm.usage.completion_tokens"))
    finish = attrs.get("gen_ai.response.finish_reasons")
    finish_reasons = [x for x in finish if type(x) is str] if type(finish) is list else (
        [finish] if type(finish) is str else [])
    start_ns = span.start_time_unix_nano
    end_ns = span.end_time_unix_nano
    latency_ms = (end_ns - start_ns) / 1e6
    step = _step(op, attrs, genai)
    row: dict[str, Any] = {
        "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent,
        "ts": start_ns / 1e9, "end_ts": end_ns / 1e9, "duration_ms": latency_ms,
        "app": app, "name": span.name[:500 + _CUT_MARGIN],
        "kind": _KIND_NAMES.get(span.kind, str(span.kind)),
        "scope": scope[:200 + _CUT_MARGIN], "step": step, "operation": op or "",
        "provider": provider, "model": resp_model or req_model,
        "tool_name": _str(attrs.get("gen_ai.tool.name")),
        "agent_name": _str(attrs.get("gen_ai.agent.name")),
        "status": status, "error_type": error_type or "",
        "input_tokens": max(0, input_tokens or 0), "output_tokens": max(0, output_tokens or 0),
        "finish_reasons": finish_reasons,
        "response_id": _str(attrs.get("gen_ai.response.id")),
        "event_id": "",
        "attributes": _row_attributes(attrs),
    }
    if not genai:
        return None, row
    system = message_text(attrs.get("gen_ai.system_instructions"))
    prompt = system + message_text(attrs.get("gen_ai.input.messages"))
    response = message_text(attrs.get("gen_ai.output.messages"))
    if not (prompt and response and finish_reasons):
        older_prompt, older_response, older_finish = _older_content(attrs)
        prompt = prompt or older_prompt
        response = response or older_response
        if not finish_reasons:
            row["finish_reasons"] = older_finish
    if span.events and not (prompt and response):
        ev_prompt, ev_completion = _event_content(span)
        prompt = prompt or ev_prompt
        response = response or ev_completion
    event_id = event_uuid(trace_id, span_id)
    row["event_id"] = event_id
    ev: dict[str, Any] = {
        "event_id": event_id,
        "request_id": trace_id,
        "ts": end_ns // 1_000_000,
        "app": app,
        "model": req_model or resp_model or "unknown",
        "model_version": resp_model or req_model or "unknown",
        "latency_ms": latency_ms,
        "status": status,
        "input_tokens": input_tokens if input_tokens is not None else 0,
        "output_tokens": output_tokens if output_tokens is not None else 0,
        "trace_id": trace_id,
        "span_id": span_id,
    }
    if parent:
        ev["parent_span_id"] = parent
    if error_type:
        ev["error_type"] = error_type
    if prompt:
        ev["prompt"] = "\n".join(prompt)
    if response:
        ev["response"] = "\n".join(response)
    if context:
        ev["context"] = context
    ev.update(_tags(attrs))  # prompt version and A/B arm, when the span carries them
    return ev, row


def _span_error(span: Span) -> str | None:
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return "trace_id: must be 16 bytes, not all zero"
    if len(span.span_id) != 8 or not any(span.span_id):
        return "span_id: must be 8 bytes, not all zero"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id: must be 8 bytes or empty"
    if span.end_time_unix_nano == 0 or span.start_time_unix_nano == 0:
        return "span: start and end times are required"
    if span.end_time_unix_nano < span.start_time_unix_nano:
        return "span: its end time is before its start time"
    return None


def _span_time_error(span: Span, now: int, limits: Limits) -> str | None:
    """Every span's time within the bounds of an event's (non-model spans too: they feed
    the agent step signals, and a row the store cannot take was lost unseen)."""
    end_ms = span.end_time_unix_nano // 1_000_000
    if end_ms < now - limits.max_past_s * 1000:
        return f"span: ends more than {limits.max_past_s / 86400:g} days in the past"
    if end_ms > now + limits.max_future_s * 1000:
        return f"span: ends more than {limits.max_future_s:g} s in the future"
    return None


def map_request(req: ExportTraceServiceRequest, *, now_ms: int | None = None,
                limits: Limits = DEFAULT_LIMITS,
                known_documents: Mapping[str, list[str]] | None = None,
                redact: Callable[[str], str] | None = None) -> MappedRequest:
    """Map every span of an export request (see the module docstring).

    A model call's ``context`` is the documents retrieved in its trace: by
    retrieval spans of this request, or earlier ones (``known_documents``,
    by trace id; an exporter that sends each span alone splits a trace).
    With ``redact``, every text the events and rows carry goes through it
    (:mod:`llmpulse.streams.otlp_redact`), and a refused span's dead letter holds
    no attributes.
    """
    out = MappedRequest()
    docs = out.documents
    if now_ms is None:  # one clock reading for the request, not one per span
        now_ms = int(time.time() * 1000)
    # every span's attributes read once; the documents of the request's retrievals
    # first, since a model call may come before its retrieval in the request
    read: list[tuple[str, str, list[tuple[Span, dict[str, Any]]]]] = []
    for rs in req.resource_spans:
        res = attributes(rs.resource.attributes)
        app = _str(res.get("service.name")) or "unknown_service"
        for ss in rs.scope_spans:
            spans = [(span, attributes(span.attributes)) for span in ss.spans]
            read.append((app, ss.scope.name, spans))
            for span, attrs in spans:
                if _DOCUMENT_KEY in attrs:
                    d = _openinference_documents(attrs)
                    if d:
                        docs.setdefault(span.trace_id.hex(), []).extend(d)
    for app, scope, spans in read:
        for span, attrs in spans:
            why = _span_error(span) or _span_time_error(span, now_ms, limits)
            if why is not None:
                payload = bare_span(span, redact) if redact is not None else \
                    span.SerializeToString()
                out.rejected.append(RejectedSpan(span.trace_id.hex(), span.span_id.hex(), why,
                                                 payload[:4096]))
                continue
            tid = span.trace_id.hex()
            ctx = docs.get(tid) or (known_documents.get(tid) if known_documents else None)
            ev, row = map_span(span, app, scope,
                               ctx[: limits.max_context_passages] if ctx else None, attrs)
            if redact is not None:
                redact_span(row, ev, redact)
            cut_row(row)
            if ev is None:
                out.other += 1
                out.spans.append(row)
                continue
            try:
                validate_inference(ev, now_ms=now_ms, limits=limits)
            except EventError as exc:
                out.rejected.append(RejectedSpan(row["trace_id"], row["span_id"], str(exc),
                                                 orjson.dumps(ev)[:65536]))
                continue
            out.genai += 1
            out.events.append(ev)
            out.spans.append(row)
    return out
