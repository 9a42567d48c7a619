"""Ingest: envelopes in, validated rows and dead letters out. No Faust here.

The agent hands a batch of Kafka messages to :func:`split_batch`; each
message holds one event or many (newline-delimited). Every event is decoded
and validated with the contract's own validator; a good event becomes one
``JSONEachRow`` line for the raw table, a bad one a :class:`DeadLetter`
carrying the original bytes and the reason.

>>> import time
>>> now = int(time.time() * 1000)
>>> good = b'{"event_id":"f1","request_id":"r1","ts":%d,"score":0.5}' % now
>>> batch = split_batch([Message(good + b"\\n{oops", "llmpulse.feedback", 0, 7)], kind="feedback")
>>> batch.count, [d.reason.split(":")[0] for d in batch.dead], batch.dead[0].offset
(1, ['bad JSON'], 7)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmpulse.events import (
    DEFAULT_LIMITS,
    EventError,
    Limits,
    split_envelope,
    validate_feedback,
    validate_inference,
)
from llmpulse.redact import TextPolicy
from llmpulse.streams.otlp_redact import withheld
from llmpulse.subject import hash_user

__all__ = ["DeadLetter", "IngestBatch", "Message", "REDACTED_DEAD_LETTER_BYTES", "redacted_payload", "split_batch",
           "VALIDATORS"]

VALIDATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "inference": validate_inference,
    "feedback": validate_feedback,
}

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    value: bytes
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    payload: bytes
    reason: str
    topic: str
    partition: int
    offset: int

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("reason", self.reason.encode()),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
        ]

    def row(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "reason": self.reason,
            "payload": self.payload.decode("utf-8", "replace"),
        }


@dataclass(slots=True)
class IngestBatch:
    lines: list[bytes] = field(default_factory=list)
    """Validated events as JSONEachRow lines for the ingest entry tables
    (:data:`llmpulse.store.RAW_INGEST`: ``ts`` in epoch milliseconds)."""
    sources: list[Message] = field(default_factory=list)
    """The message each line came from, for dead letters the store rejects."""
    count: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    """The validated events themselves, for agents that compute on them."""
    dead: list[DeadLetter] = field(default_factory=list)
    min_ts_ms: int | None = None


REDACTED_DEAD_LETTER_BYTES = 64 * 1024
"""With redaction, a dead letter longer than this keeps only its size and digest."""


def redacted_payload(raw: bytes, redact: Callable[[str], str]) -> bytes:
    """What a dead letter keeps of a refused event when redaction is on: its text
    redacted, or, when too long to redact, its size and digest.

    >>> from llmpulse.redact import Redactor
    >>> redacted_payload(b'{"prompt": "mail jane@example.com", oops', Redactor())
    b'{"prompt": "mail [EMAIL]", oops'
    >>> redacted_payload(b"x" * 70_000, Redactor())[:62]
    b'withheld by ingest.redact: 70000 bytes, sha256 bca09f4a757d557'
    """
    if len(raw) > REDACTED_DEAD_LETTER_BYTES:
        return withheld(raw, by="ingest.redact")
    return redact(raw.decode("utf-8", "replace")).encode()


log = logging.getLogger(__name__)
_warned = [0.0]


def _log_unexpected(msg: Message) -> None:
    """A check that raised something else than :class:`EventError`: a bug to fix, logged
    with its traceback at most once a minute (a producer may send many such events)."""
    now = time.monotonic()
    if now - _warned[0] >= 60.0:
        _warned[0] = now
        log.exception("an event at %s[%d]@%d broke validation; dead-lettered (more such "
                      "events in the next minute are not logged)", msg.topic, msg.partition,
                      msg.offset)


def split_batch(
    messages: Iterable[Message],
    *,
    kind: str,
    now_ms: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    keep_events: bool = False,
    redact: Callable[[str], str] | None = None,
) -> IngestBatch:
    """Validate every event of every message; see the module docstring. With
    ``redact``, each event's texts are redacted (:class:`~llmpulse.redact.TextPolicy`,
    one budget per event) and stored as redacted, and dead letters keep
    :func:`redacted_payload` instead of the bytes as sent."""
    validate = VALIDATORS[kind]
    policy = TextPolicy(redactor=redact) if redact is not None else None
    inference = kind == "inference"
    loads = orjson.loads
    dumps = orjson.dumps
    out = IngestBatch()
    lines = out.lines
    sources = out.sources
    dead = out.dead
    kept = out.events
    min_ts: int | None = None
    for msg in messages:
        value = msg.value
        if value is None:
            continue
        if len(value) > MAX_MESSAGE_BYTES:
            head = value[:4096] if redact is None else redacted_payload(value, redact)
            dead.append(DeadLetter(head, f"message larger than {MAX_MESSAGE_BYTES} bytes",
                                   msg.topic, msg.partition, msg.offset))
            continue
        for raw in split_envelope(value):
            try:
                ev = loads(raw)
            except orjson.JSONDecodeError as exc:
                dead.append(DeadLetter(raw if redact is None else redacted_payload(raw, redact),
                                       f"bad JSON: {exc}", msg.topic, msg.partition, msg.offset))
                continue
            t = ev.get("ts") if type(ev) is dict else None
            # shim traffic already uses the store's encoding (ts in epoch ms,
            # integer counts): its original bytes go to the store unchanged
            passthrough = type(t) is int and (
                not inference
                or (type(ev.get("input_tokens")) is int and type(ev.get("output_tokens")) is int)
            )
            try:
                ev = validate(ev, now_ms=now_ms, limits=limits)
                if policy is not None:
                    policy.apply(ev)
                    if type(ev.get("user")) is str and ev["user"]:
                        ev["user"] = hash_user(ev["user"])  # as the shim's redact=True does
                    passthrough = False
                # encoded here, where a failure is this event's: orjson reads 1024 levels
                # of nesting but writes about 254, and a raise past the try held the batch
                line = raw if passthrough else dumps(ev)
            except EventError as exc:
                # the reason quotes the value it refused: redacted like the payload
                dead.append(DeadLetter(raw if redact is None else redacted_payload(raw, redact),
                                       str(exc) if redact is None else redact(str(exc)),
                                       msg.topic, msg.partition, msg.offset))
                continue
            except Exception as exc:  # a check that broke on an input it did not foresee:
                # that event goes to the dead letters, never the batch (retried whole,
                # it held the partition forever)
                _log_unexpected(msg)
                reason = f"unexpected {type(exc).__name__} in validation: {exc}"[:500]
                dead.append(DeadLetter(raw if redact is None else redacted_payload(raw, redact),
                                       reason if redact is None else redact(reason),
                                       msg.topic, msg.partition, msg.offset))
                continue
            ts = ev["ts"]
            if min_ts is None or ts < min_ts:
                min_ts = ts
            if keep_events:
                kept.append(ev)
            lines.append(line)
            sources.append(msg)
    out.count = len(lines)
    out.min_ts_ms = min_ts
    return out
