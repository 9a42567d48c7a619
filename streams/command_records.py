"""Rows that local commands send through the broker, stored by the worker.

A local ``llmpulse deploy``, ``rollback``, ``retrain`` or ``erase`` run while the
stack is up sends its ``deployments`` rows and audit events on a topic, with the
header ``llmpulse-origin: cli`` (:mod:`llmpulse.audit_record`); what the stack
produced itself is already stored and is skipped. Each record is checked by a
parser (a foreign producer can write to the topic): a malformed one, or one the
store refuses, is logged and dropped, and the agent goes on (parsing is pure, so
a record that fails it is dropped whatever the error: trying it again would stop
the topic behind it). A store outage is
waited out batch by batch, and a batch not stored at a stop is read again at the
next start (:func:`~llmpulse.streams.whole.take_whole`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from llmpulse.audit_record import from_command
from llmpulse.streams.sink import RawSink
from llmpulse.streams.whole import BatchOutcomes, take_whole

__all__ = ["register_command_records"]

log = logging.getLogger(__name__)


def register_command_records(app: Any, topic_name: str, *, agent: str, table: str,
                             parse: Callable[[bytes], Mapping[str, Any]], sink: RawSink,
                             outcomes: BatchOutcomes | None = None) -> None:
    """An agent named ``agent`` on ``topic_name`` of the Faust app ``app`` that stores
    the records local commands send into ``table``; ``parse`` makes a record's row
    (``ValueError`` or ``TypeError`` for a malformed one)."""
    topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")

    async def store_batch(events: Sequence[Any]) -> None:
        lines: list[bytes] = []
        for event in events:
            if not from_command(event.message.headers):
                continue
            try:
                lines.append(orjson.dumps(parse(bytes(event.value or b""))))
            except Exception as exc:  # parsing is pure: a record it fails on always fails,
                # so it is dropped, never tried again (that would stop the topic behind it)
                log.warning("dropping a malformed record from %s: %s: %s", topic_name,
                            type(exc).__name__, exc)
        for _, reason in await sink.write(table, lines):
            log.warning("a record from %s was not stored: %s", topic_name, reason)

    async def store_records(stream: Any) -> None:
        await take_whole(stream, store_batch, max_=100, within=0.5,
                         should_stop=lambda: bool(app.should_stop), outcomes=outcomes,
                         what=f"{topic_name} batch")

    store_records.__name__ = store_records.__qualname__ = agent.rsplit(".", 1)[-1]
    app.agent(topic, name=agent)(store_records)
