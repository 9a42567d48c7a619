"""The event contract: ``inference/v1`` and ``feedback/v1``, and envelopes.

One function per schema validates a decoded event and returns it normalised
(``ts`` as integer epoch milliseconds, ``schema`` set). Both the client shim
(before sending) and the ingest agent (after receiving) use them, so an app
sees at the call the same error the pipeline would dead-letter.

Errors are :class:`EventError` (a ``ValueError``) naming the field:

>>> validate_inference({"event_id": "e1", "request_id": "r1", "ts": 1_700_000_000_000,
...     "app": "a", "model": "m", "model_version": "1", "latency_ms": -3,
...     "status": "ok", "input_tokens": 1, "output_tokens": 2}, now_ms=1_700_000_000_000)
Traceback (most recent call last):
...
llmpulse.events.EventError: latency_ms: must be >= 0, got -3

A Kafka message holds one event or many, newline-delimited (an *envelope*):

>>> [line for line in split_envelope(b'{"a":1}\\n{"a":2}\\n')]
[b'{"a":1}', b'{"a":2}']
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "EventError",
    "FEEDBACK_SCHEMA",
    "FEEDBACK_SOURCES",
    "INFERENCE_SCHEMA",
    "Limits",
    "TOPIC_ALERTS",
    "TOPIC_DEADLETTER",
    "TOPIC_DEPLOYMENTS",
    "TOPIC_FEEDBACK",
    "TOPIC_GROUPED",
    "TOPIC_INFERENCE",
    "TOPIC_RETRAIN",
    "TOPIC_SIGNALS",
    "TOPICS",
    "split_envelope",
    "validate_feedback",
    "validate_inference",
]

INFERENCE_SCHEMA = "inference/v1"
FEEDBACK_SCHEMA = "feedback/v1"

TOPIC_INFERENCE = "llmpulse.inference"
TOPIC_FEEDBACK = "llmpulse.feedback"
TOPIC_DEADLETTER = "llmpulse.deadletter"
TOPIC_SIGNALS = "llmpulse.signals"
TOPIC_ALERTS = "llmpulse.alerts"
TOPIC_RETRAIN = "llmpulse.retrain"
TOPIC_DEPLOYMENTS = "llmpulse.deployments"
TOPIC_GROUPED = "llmpulse.grouped"
"""Internal: validated events re-keyed by (app, model, model_version), so every
event of a group reaches the one worker that windows it."""
TOPICS: tuple[str, ...] = (
    TOPIC_INFERENCE,
    TOPIC_FEEDBACK,
    TOPIC_DEADLETTER,
    TOPIC_SIGNALS,
    TOPIC_ALERTS,
    TOPIC_RETRAIN,
    TOPIC_DEPLOYMENTS,
    TOPIC_GROUPED,
)

STATUSES = frozenset({"ok", "error", "timeout"})
FEEDBACK_SOURCES = frozenset({"user", "reviewer", "judge", "golden"})

MAX_TAG_CHARS = 200
"""Longest ``prompt_version``, ``experiment`` or ``variant``: they are dimensions
(group keys, dashboard filters), not text."""

MAX_ID_CHARS = 256
"""Longest ``event_id``, ``request_id``, ``app``, ``model`` or ``model_version``:
ids and group keys, printable characters only."""


INFERENCE_FIELDS = frozenset({
    "event_id", "request_id", "ts", "app", "model", "model_version", "latency_ms", "ttft_ms",
    "status", "error_type", "input_tokens", "output_tokens", "cost_usd", "prompt", "response",
    "context", "token_logprobs", "prediction", "segment", "features", "user", "trace_id",
    "span_id", "parent_span_id", "prompt_version", "experiment", "variant", "ingested_at",
    "schema",
})
"""The fields of ``inference/v1`` (the columns of ``inference_events``, and ``schema``)."""
FEEDBACK_FIELDS = frozenset({
    "event_id", "request_id", "ts", "app", "score", "label", "hallucination", "comment", "user",
    "reference", "source", "judge", "ingested_at", "schema",
})
"""The fields of ``feedback/v1`` (the columns of ``feedback_events``, and ``schema``)."""


def _exact_names(ev: Mapping[str, Any], fields: frozenset[str]) -> None:
    """Refuse a key that names a field in another letter case: the store matches JSON keys
    to columns regardless of case, so ``"PROMPT"`` was stored as the prompt without
    being checked or redacted. Other unknown keys stay allowed (the store skips them)."""
    for k in ev:
        if k not in fields and type(k) is str and k.lower() in fields:
            raise EventError(k, f"field names are lowercase: write {k.lower()!r}")


MIN_LOGPROB = -1000.0
"""Lowest token log-probability accepted (e to the -1000 is already nothing; -1e300
stored as -inf in the Float32 column)."""


class EventError(ValueError):
    """An event breaks the contract; ``field`` names where."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """What counts as an absurd value. Defaults suit production traffic."""

    max_past_s: float = 30 * 86400.0
    """Events older than this (by event time) are rejected: a clock years off."""
    max_future_s: float = 3600.0
    """Events further in the future than this are rejected."""
    max_latency_ms: float = 24 * 3600 * 1000.0
    max_tokens: int = 10_000_000
    max_text_bytes: int = 256 * 1024
    """Longest prompt, response or context passage accepted (UTF-8 bytes)."""
    max_context_passages: int = 256
    max_logprobs: int = 100_000
    max_records_per_request: int = 20_000
    """Most spans (or log records) in one OTLP export request; a larger one is refused
    whole (413) before it is mapped. SDK exporters send 512 at most by default and the
    Collector's batch processor 8,192 (set its ``send_batch_max_size`` if it may merge
    more): 140,000 minimal spans in one 8 MB body held the receiver's event loop 2.7 s."""


DEFAULT_LIMITS = Limits()


def split_envelope(payload: bytes) -> Iterator[bytes]:
    """The events of one Kafka message: a single JSON object or NDJSON lines."""
    if b"\n" not in payload:
        stripped = payload.strip()
        if stripped:
            yield stripped
        return
    for line in payload.split(b"\n"):
        line = line.strip()
        if line:
            yield line


# -- field checks -----------------------------------------------------------
# Plain functions over dict lookups: validation runs on the app's thread for
# every event, so it stays branch-light and allocation-free.


def _req_str(ev: Mapping[str, Any], name: str) -> str:
    try:
        v = ev[name]
    except KeyError:
        raise EventError(name, "required field is missing") from None
    if type(v) is not str:
        raise EventError(name, f"must be a string, got {type(v).__name__}")
    if not v:
        raise EventError(name, "must not be empty")
    _id_text(name, v)
    return v


def _id_text(name: str, v: str) -> None:
    """An id or a group key: short, and no control or invisible format characters (a
    newline, a NUL or a zero-width space would make a group no one can type)."""
    if len(v) > MAX_ID_CHARS:
        raise EventError(name, f"longer than {MAX_ID_CHARS} characters")
    if not v.isprintable():
        bad = next(c for c in v if not c.isprintable())
        raise EventError(name, f"must be printable text, has U+{ord(bad):04X}")


def _opt_str(ev: Mapping[str, Any], name: str, limits: Limits) -> None:
    v = ev.get(name)
    if v is None:
        return
    if type(v) is not str:
        raise EventError(name, f"must be a string, got {type(v).__name__}")
    if len(v) > limits.max_text_bytes // 4 and len(v.encode()) > limits.max_text_bytes:
        raise EventError(name, f"text longer than {limits.max_text_bytes} bytes")


MAX_USER_CHARS = 256


def _user(ev: Mapping[str, Any], limits: Limits) -> None:
    """``user``: who the event is about (the subject of an erasure), a short string."""
    v = ev.get("user")
    if v is None:
        return
    if type(v) is not str:
        raise EventError("user", f"must be a string, got {type(v).__name__}")
    if len(v) > MAX_USER_CHARS:
        raise EventError("user", f"longer than {MAX_USER_CHARS} characters")


def _number(ev: Mapping[str, Any], name: str, required: bool, hi: float) -> None:
    v = ev.get(name)
    if v is None:
        if required:
            raise EventError(name, "required field is missing")
        return
    t = type(v)
    if t is not int and t is not float:
        raise EventError(name, f"must be a number, got {t.__name__}")
    if not (v >= 0):  # also rejects NaN
        raise EventError(name, f"must be >= 0, got {v!r}")
    if v > hi:
        raise EventError(name, f"absurd value {v!r} (limit {hi:g})")


def _count(ev: dict[str, Any], name: str, limits: Limits) -> None:
    v = ev.get(name)
    if v is None:
        raise EventError(name, "required field is missing")
    if type(v) is not int:
        if type(v) is float and v.is_integer():
            # JSON writers in some languages emit 12.0; the store wants 12
            ev[name] = v = int(v)
        else:
            raise EventError(name, f"must be an integer, got {type(v).__name__}")
    if v < 0:
        raise EventError(name, f"must be >= 0, got {v}")
    if v > limits.max_tokens:
        raise EventError(name, f"absurd value {v} (limit {limits.max_tokens})")


def _ts_ms(ev: Mapping[str, Any], now_ms: int | None, limits: Limits) -> int:
    try:
        v = ev["ts"]
    except KeyError:
        raise EventError("ts", "required field is missing") from None
    t = type(v)
    if t is int or t is float:
        ms = int(v)
    elif t is str:
        text = v[:-1] + "+00:00" if v.endswith("Z") else v
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise EventError("ts", f"not RFC 3339 nor epoch ms: {v!r}") from None
        if dt.tzinfo is None:
            raise EventError("ts", f"RFC 3339 time needs a UTC offset: {v!r}")
        ms = int(dt.timestamp() * 1000)
    else:
        raise EventError("ts", f"must be RFC 3339 text or epoch ms, got {t.__name__}")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ms < now - limits.max_past_s * 1000:
        raise EventError("ts", f"{v!r} is more than {limits.max_past_s / 86400:g} days in the past")
    if ms > now + limits.max_future_s * 1000:
        raise EventError("ts", f"{v!r} is more than {limits.max_future_s:g} s in the future")
    return ms


def _tag(ev: Mapping[str, Any], name: str) -> None:
    v = ev.get(name)
    if v is None:
        return
    if type(v) is not str:
        raise EventError(name, f"must be a string, got {type(v).__name__}")
    if not v:
        raise EventError(name, "must not be empty (leave the field out)")
    if len(v) > MAX_TAG_CHARS:
        raise EventError(name, f"longer than {MAX_TAG_CHARS} characters")
    if not v.isprintable():
        raise EventError(name, "must be printable text")


def _str_map(ev: Mapping[str, Any], name: str) -> None:
    v = ev.get(name)
    if v is None:
        return
    if type(v) is not dict:
        raise EventError(name, f"must be an object of string values, got {type(v).__name__}")
    for k, x in v.items():
        if type(x) is not str:
            raise EventError(f"{name}.{k}", f"must be a string, got {type(x).__name__}")
        # each key and value becomes a dimension (``language=de``) and a filter
        if len(k) > MAX_TAG_CHARS or not k.isprintable():
            raise EventError(f"{name}.{k[:40]!r}", f"a key is at most {MAX_TAG_CHARS} printable "
                             "characters")
        if not x.isprintable():
            raise EventError(f"{name}.{k}", "must be printable text")


def _num_map(ev: Mapping[str, Any], name: str) -> None:
    v = ev.get(name)
    if v is None:
        return
    if type(v) is not dict:
        raise EventError(name, f"must be an object of numbers, got {type(v).__name__}")
    for k, x in v.items():
        t = type(x)
        if t is not float and t is not int:
            raise EventError(f"{name}.{k}", f"must be a number, got {t.__name__}")
        if x != x:
            raise EventError(f"{name}.{k}", "must not be NaN")


def _opt_hex(ev: Mapping[str, Any], name: str, nbytes: int) -> None:
    """OTel ids: lowercase hex of ``nbytes`` bytes (trace 16, span 8), as OTLP/JSON writes them."""
    v = ev.get(name)
    if v is None:
        return
    if type(v) is not str:
        raise EventError(name, f"must be a hex string, got {type(v).__name__}")
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raise EventError(name, f"must be hex, got {v[:40]!r}") from None
    if len(raw) != nbytes or v != raw.hex():
        raise EventError(name, f"must be {2 * nbytes} lowercase hex digits, got {v[:40]!r}")
    if not any(raw):  # W3C trace context: all zero is the invalid id, never a real one
        raise EventError(name, "must not be all zero (OpenTelemetry's invalid id)")


def validate_inference(
    ev: dict[str, Any], *, now_ms: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Check an ``inference/v1`` event in place and return it normalised.

    >>> ev = validate_inference({"event_id": "e1", "request_id": "r1",
    ...     "ts": "2023-11-14T22:13:20Z", "app": "support", "model": "m",
    ...     "model_version": "3", "latency_ms": 812.5, "status": "ok",
    ...     "input_tokens": 120, "output_tokens": 40}, now_ms=1_700_000_000_000)
    >>> ev["ts"], ev["schema"]
    (1700000000000, 'inference/v1')
    """
    if type(ev) is not dict:
        raise EventError("event", f"must be a JSON object, got {type(ev).__name__}")
    _exact_names(ev, INFERENCE_FIELDS)
    _req_str(ev, "event_id")
    _req_str(ev, "request_id")
    _req_str(ev, "app")
    _req_str(ev, "model")
    _req_str(ev, "model_version")
    ev["ts"] = _ts_ms(ev, now_ms, limits)
    _number(ev, "latency_ms", True, limits.max_latency_ms)
    _number(ev, "ttft_ms", False, limits.max_latency_ms)
    status = ev.get("status")
    if type(status) is not str or status not in STATUSES:
        if status is None:
            raise EventError("status", "required field is missing")
        raise EventError("status", f"must be one of ok|error|timeout, got {status!r}")
    _count(ev, "input_tokens", limits)
    _count(ev, "output_tokens", limits)
    if "cost_usd" in ev:
        _number(ev, "cost_usd", False, 1e6)
    if "error_type" in ev:
        _opt_str(ev, "error_type", limits)
    if "prompt" in ev:
        _opt_str(ev, "prompt", limits)
    if "response" in ev:
        _opt_str(ev, "response", limits)
    if "user" in ev:
        _user(ev, limits)
    ctx = ev.get("context")
    if ctx is not None:
        if type(ctx) is not list:
            raise EventError("context", f"must be a list of strings, got {type(ctx).__name__}")
        if len(ctx) > limits.max_context_passages:
            raise EventError("context", f"more than {limits.max_context_passages} passages")
        for i, p in enumerate(ctx):
            if type(p) is not str:
                raise EventError(f"context[{i}]", f"must be a string, got {type(p).__name__}")
            if len(p) > limits.max_text_bytes // 4 and len(p.encode()) > limits.max_text_bytes:
                raise EventError(f"context[{i}]", f"text longer than {limits.max_text_bytes} bytes")
    lp = ev.get("token_logprobs")
    if lp is not None:
        if type(lp) is not list:
            raise EventError("token_logprobs", "must be a list of numbers")
        if len(lp) > limits.max_logprobs:
            raise EventError("token_logprobs", f"more than {limits.max_logprobs} values")
        for x in lp:
            t = type(x)
            if (t is not float and t is not int) or not (MIN_LOGPROB <= x <= 0):
                raise EventError("token_logprobs",
                                 f"log-probabilities must be numbers in {MIN_LOGPROB:g}..0, got {x!r}")
    pred = ev.get("prediction")
    if pred is not None:
        if type(pred) is not dict:
            raise EventError("prediction", 'must be {"label": str, "score": float}')
        if type(pred.get("label")) is not str:
            raise EventError("prediction.label", "must be a string")
        sc = pred.get("score")
        if sc is not None and (type(sc) not in (int, float) or not (0 <= sc <= 1)):
            raise EventError("prediction.score", f"must be a number in 0..1, got {sc!r}")
    _str_map(ev, "segment")
    _num_map(ev, "features")
    _opt_hex(ev, "trace_id", 16)
    _opt_hex(ev, "span_id", 8)
    _opt_hex(ev, "parent_span_id", 8)
    _tag(ev, "prompt_version")
    _tag(ev, "experiment")
    _tag(ev, "variant")
    if "variant" in ev and "experiment" not in ev:
        raise EventError("variant", "needs an experiment: a variant of what?")
    ev["schema"] = INFERENCE_SCHEMA
    return ev


def validate_feedback(
    ev: dict[str, Any], *, now_ms: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Check a ``feedback/v1`` event in place and return it normalised.

    >>> validate_feedback({"event_id": "f1", "request_id": "r1", "ts": 1_700_000_000_000,
    ...     "score": 2}, now_ms=1_700_000_000_000)
    Traceback (most recent call last):
    ...
    llmpulse.events.EventError: score: must be a number in -1..1, got 2
    """
    if type(ev) is not dict:
        raise EventError("event", f"must be a JSON object, got {type(ev).__name__}")
    _exact_names(ev, FEEDBACK_FIELDS)
    _req_str(ev, "event_id")
    _req_str(ev, "request_id")
    ev["ts"] = _ts_ms(ev, now_ms, limits)
    sc = ev.get("score")
    if sc is not None and (type(sc) not in (int, float) or not (-1 <= sc <= 1)):
        raise EventError("score", f"must be a number in -1..1, got {sc!r}")
    if "label" in ev and ev["label"] is not None and type(ev["label"]) is not str:
        raise EventError("label", f"must be a string, got {type(ev['label']).__name__}")
    h = ev.get("hallucination")
    if h is not None and type(h) is not bool:
        raise EventError("hallucination", f"must be true or false, got {h!r}")
    if "comment" in ev:
        _opt_str(ev, "comment", limits)
    app = ev.get("app")
    if app is not None:
        if type(app) is not str:
            raise EventError("app", f"must be a string, got {type(app).__name__}")
        _id_text("app", app)
    if "user" in ev:
        _user(ev, limits)
    if "reference" in ev:
        _opt_str(ev, "reference", limits)
    judge = ev.get("judge")
    if judge is not None:
        _num_map(ev, "judge")
        for k, x in judge.items():
            if not 0 <= x <= 1:
                raise EventError(f"judge.{k}", f"must be a number in 0..1, got {x!r}")
    src = ev.get("source")
    if src is not None and (type(src) is not str or src not in FEEDBACK_SOURCES):
        raise EventError("source", f"must be one of user|reviewer|judge|golden, got {src!r}")
    ev["schema"] = FEEDBACK_SCHEMA
    return ev
