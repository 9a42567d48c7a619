"""Names by which feedback finds an OpenTelemetry-sourced inference.

An inference mapped from a GenAI span has ``request_id`` = its trace id, so
feedback that names the trace id rates the trace's model call (the latest
one the worker saw, when a trace made several). Two more names pick one call:

* ``<trace_id>/<span_id>``: the span of that model call (what an app that
  holds the current span context can send);
* the provider's response id (``gen_ai.response.id``, e.g. ``chatcmpl-...``):
  what an app that only kept the API's answer can send.

:func:`identity_keys` gives an event's extra names. The receiver writes one
``request_index`` row per name (:func:`index_rows`), so the feedback router
finds the inference's group in the store as it does for a ``request_id``;
the feedback join keeps the names next to its ``request_id`` keys.

>>> ev = {"request_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
...       "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "response_id": "chatcmpl-1"}
>>> identity_keys(ev)
('4bf92f3577b34da6a3ce929d0e0e4736/00f067aa0ba902b7', 'chatcmpl-1')
>>> identity_keys({"request_id": "r1"})
()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = ["MAX_RESPONSE_ID", "identity_keys", "index_rows", "span_key"]

MAX_RESPONSE_ID = 256
"""Longer provider response ids are not used as names (no provider sends one)."""


def span_key(trace_id: str, span_id: str) -> str:
    """The name of one span's model call: ``<trace_id>/<span_id>`` (lowercase hex)."""
    return f"{trace_id}/{span_id}"


def identity_keys(event: Mapping[str, Any]) -> tuple[str, ...]:
    """Names besides ``request_id`` under which feedback may name this inference."""
    trace, span = event.get("trace_id"), event.get("span_id")
    if type(trace) is not str or type(span) is not str or not trace or not span:
        return ()
    keys = [span_key(trace, span)]
    rid = event.get("response_id")
    if type(rid) is str and rid and len(rid) <= MAX_RESPONSE_ID and rid != event.get(
            "request_id"):
        keys.append(rid)
    return tuple(keys)


def index_rows(events: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """``request_index`` rows (JSONEachRow lines) for the extra names of ``events``
    (validated inference events, ``ts`` in epoch milliseconds; the rows carry epoch
    seconds, which ClickHouse reads into a ``DateTime64`` as they are).

    >>> ev = {"request_id": "t", "trace_id": "t", "span_id": "s", "app": "a", "model": "m",
    ...       "model_version": "v", "ts": 1_700_000_000_123, "event_id": "e"}
    >>> index_rows([ev])
    [b'{"request_id":"t/s","app":"a","model":"m","model_version":"v","ts":1700000000.123,"event_id":"e","prediction_label":"","segment":{}}']
    """
    out: list[bytes] = []
    for ev in events:
        keys = identity_keys(ev)
        if not keys:
            continue
        row = {"request_id": "", "app": ev["app"], "model": ev["model"],
               "model_version": ev["model_version"], "ts": int(ev["ts"]) / 1000.0,
               "event_id": ev["event_id"], "prediction_label": "", "segment": {}}
        for key in keys:
            row["request_id"] = key
            out.append(orjson.dumps(row))
    return out
