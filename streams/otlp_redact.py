"""Personal data redacted at the OTLP receiver (``otlp.redact``).

An app instrumented with OpenTelemetry runs none of llmpulse's code, so the
client shim's ``redact=True`` cannot act there: the receiver is the first place
llmpulse controls. With ``otlp.redact`` on, the same
:class:`~llmpulse.redact.Redactor` runs over what a span or log record carries
before anything is produced to Kafka or stored:

* an inference event's ``prompt``, ``response``, ``context`` passages and
  ``error_type``;
* a ``spans`` row's ``name``, ``error_type``, tool and agent names, response
  id, and every attribute it keeps, key and value (long values are redacted
  whole, then cut to the row's length: a value cut first could leave the
  start of a card number or an address);
* a feedback event's ``comment``, ``reference`` and ``label``;
* the reasons of dead letters, which may quote a refused value;
* a span or log record refused as a whole is dead-lettered without its
  attributes, events, links and body: its ids, redacted name and times, and the
  reason; a body refused whole (malformed, too large, of another type) is
  dead-lettered as its size and SHA-256 only (:func:`withheld`).

Retrieved documents wait in the receiver's memory as sent until the model
call of their trace is mapped (then its ``context`` is redacted); they are
never produced or stored as they came.

>>> from llmpulse.events import DEFAULT_LIMITS
>>> r = redactor(())
>>> ev = {"prompt": "I am jane@example.com", "response": "ok", "context": ["call +44 20 7946 0958"]}
>>> redact_event(ev, r)
{'prompt': 'I am [EMAIL]', 'response': 'ok', 'context': ['call [PHONE]']}
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from llmpulse.pii import shared_budget
from llmpulse.redact import TEXT_FIELDS, Redactor, redact_short

__all__ = ["Redact", "bare_log_record", "bare_span", "redact_event", "redact_row", "redact_span",
           "redactor", "withheld"]

Redact = Callable[[str], str]

_ROW_TEXT = ("name", "error_type", "tool_name", "agent_name", "response_id")


@functools.cache
def redactor(regions: tuple[str, ...]) -> Redactor:
    """The redactor for these phone regions (empty: its defaults), one per process.
    Fails with the install line when the ``redact`` extra is missing."""
    return Redactor(regions=regions) if regions else Redactor()


def redact_span(row: dict[str, Any], ev: dict[str, Any] | None, redact: Redact) -> None:
    """A span's ``spans`` row and, for a model call, its inference event, redacted in
    place, all of their texts sharing one budget of the redactor's checks
    (:func:`~llmpulse.pii.shared_budget`): a span built to be slow to check costs the
    receiver one budget, however many attributes it spreads itself over."""
    with shared_budget():
        redact_row(row, redact)
        if ev is not None:
            redact_event(ev, redact)


def redact_event(ev: dict[str, Any], redact: Redact) -> dict[str, Any]:
    """``ev`` with its free text redacted in place (and returned); its texts share one
    budget of the redactor's checks."""
    with shared_budget():
        return _redact_event(ev, redact)


def _redact_event(ev: dict[str, Any], redact: Redact) -> dict[str, Any]:
    for key in TEXT_FIELDS:
        value = ev.get(key)
        if type(value) is str and value:
            ev[key] = redact(value)
    ctx = ev.get("context")
    if type(ctx) is list:
        ev["context"] = [redact(p) if type(p) is str else p for p in ctx]
    redact_short(ev, redact)
    return ev


def redact_row(row: dict[str, Any], redact: Redact) -> dict[str, Any]:
    """A ``spans`` row with its texts and attributes redacted in place (and returned).

    >>> redact_row({"name": "lookup jane@example.com", "tool_name": "mail jane@example.com",
    ...             "attributes": {"user": "+1 415 555 2671", "to jane@example.com": "x"}},
    ...            redactor(()))
    {'name': 'lookup [EMAIL]', 'tool_name': 'mail [EMAIL]', 'attributes': {'user': '[PHONE]', 'to [EMAIL]': 'x'}}
    """
    for key in _ROW_TEXT:
        value = row.get(key)
        if type(value) is str and value:
            row[key] = redact(value)
    attrs = row.get("attributes")
    if attrs:
        row["attributes"] = {redact(k): redact(v) for k, v in attrs.items()}
    return row


def bare_span(span: Span, redact: Redact) -> bytes:
    """``span`` without what may carry personal data (attributes, events, links, the
    status message) and with its name redacted: what a refused span leaves in the
    dead letters."""
    bare = Span()
    bare.CopyFrom(span)
    bare.name = redact(span.name)
    for name in ("attributes", "events", "links"):
        bare.ClearField(name)
    bare.status.message = ""
    return bare.SerializeToString()


def bare_log_record(rec: LogRecord) -> bytes:
    """``rec`` without its body and attributes (see :func:`bare_span`)."""
    bare = LogRecord()
    bare.CopyFrom(rec)
    bare.ClearField("body")
    bare.ClearField("attributes")
    return bare.SerializeToString()


def withheld(payload: bytes, by: str = "otlp.redact") -> bytes:
    """What a dead letter keeps of a body refused whole when nothing in it can be
    read to redact: its size and digest, to match it against the sender's copy.

    >>> withheld(b"jane@example.com")
    b'withheld by otlp.redact: 16 bytes, sha256 8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d'
    """
    digest = hashlib.sha256(payload).hexdigest()
    return f"withheld by {by}: {len(payload)} bytes, sha256 {digest}".encode()
