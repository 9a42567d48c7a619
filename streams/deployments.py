"""Retrain outcomes read back from ``llmpulse.deployments``.

The alert agent asks for at most one retrain per model at a time
(:class:`~llmpulse.streams.retrain_trigger.RetrainTrigger`); the retrain service,
in this process or in its own worker, answers on ``llmpulse.deployments``
with one row per step. A row whose stage ends a retrain (promoted, rolled
back, rejected by the gates, skipped, failed) clears the model's pending
request, so the next alert on that model may ask again. The streams do not
import the retrain service: the topic is the whole interface.

A local ``llmpulse deploy``, ``rollback`` or ``retrain`` run while the stack
is up sends its rows here too (header ``llmpulse-origin: cli``,
:mod:`llmpulse.audit_record`); :func:`register_command_deployments` checks
each with :func:`deployment_row` and stores it, so a manual rollback at 3 a.m.
shows on the dashboards like an automatic one.

>>> completes(b'{"model": "intent-router", "stage": "canary"}')
>>> completes(b'{"model": "intent-router", "stage": "promoted", "version": "2"}')
'intent-router'
>>> completes(b'not json'), completes(b'["promoted"]'), completes(b'{"stage": "failed"}')
(None, None, None)
>>> deployment_row(b'{"deployment_id": "d1", "model": "m", "version": "2", "previous_version": "1",'
...                b' "trigger": "manual", "stage": "rolled_back", "metrics": "{}", "ts": 1.7e9}')["stage"]
'rolled_back'
>>> deployment_row(b'{"deployment_id": "d1", "model": "m", "stage": "promoted", "ts": 1e9}')
Traceback (most recent call last):
...
ValueError: deployment row: missing metrics, previous_version, trigger, version
"""

from __future__ import annotations

import logging
import math
from typing import Any

import faust
import orjson

from llmpulse.events import TOPIC_DEPLOYMENTS
from llmpulse.streams.command_records import register_command_records
from llmpulse.streams.retrain_trigger import RetrainTrigger
from llmpulse.streams.sink import RawSink
from llmpulse.streams.whole import BatchOutcomes

__all__ = ["FINAL_STAGES", "completes", "deployment_row", "register_command_deployments",
           "register_retrain_completion"]

log = logging.getLogger(__name__)

FINAL_STAGES: frozenset[str] = frozenset(
    {"promoted", "rolled_back", "rejected", "skipped", "failed"})
"""Stages of a ``deployments`` row after which the retrain of its model is over."""


def completes(value: bytes) -> str | None:
    """The model whose retrain the deployment record ``value`` ends, if any."""
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    model, stage = row.get("model"), row.get("stage")
    if not isinstance(model, str) or not model or stage not in FINAL_STAGES:
        return None
    return model


def register_retrain_completion(app: faust.App, trigger: RetrainTrigger) -> None:
    """An agent on ``llmpulse.deployments`` that completes ``trigger``'s pending requests."""
    topic = app.topic(TOPIC_DEPLOYMENTS, value_serializer="raw", key_serializer="raw")

    async def retrain_outcomes(stream: Any) -> None:
        async for value in stream:
            model = completes(bytes(value)) if isinstance(value, bytes | bytearray) else None
            if model is not None and trigger.complete(model):
                log.info("retrain of %s is over: its alerts may ask for another", model)

    app.agent(topic, name="llmpulse.retrain_outcomes")(retrain_outcomes)


_TEXT_COLUMNS: dict[str, int] = {"deployment_id": 200, "model": 200, "version": 100,
                                 "previous_version": 100, "trigger": 200, "stage": 50,
                                 "metrics": 65536}
"""The ``deployments`` table's text columns and the longest value each takes."""


def deployment_row(value: bytes) -> dict[str, Any]:
    """The ``deployments`` row in a message from a local command; ValueError naming the
    first thing wrong (a foreign producer can write to the topic)."""
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ValueError("deployment row: not JSON") from None
    if not isinstance(row, dict):
        raise ValueError(f"deployment row: a JSON {type(row).__name__}, not an object")
    want = set(_TEXT_COLUMNS) | {"ts"}
    if missing := sorted(want - set(row)):
        raise ValueError(f"deployment row: missing {', '.join(missing)}")
    if extra := sorted(set(row) - want):
        raise ValueError(f"deployment row: unknown {', '.join(extra)}")
    for key, longest in _TEXT_COLUMNS.items():
        v = row[key]
        if not isinstance(v, str) or len(v) > longest:
            raise ValueError(f"deployment row: {key} must be text of at most {longest} characters")
    for key in ("deployment_id", "model", "stage"):
        if not row[key]:
            raise ValueError(f"deployment row: {key} is empty")
    try:
        metrics = orjson.loads(row["metrics"])
    except orjson.JSONDecodeError:
        metrics = None
    if not isinstance(metrics, dict):
        raise ValueError("deployment row: metrics must be a JSON object in text")
    ts = row["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts) \
            or not 0 <= ts < 2**32:
        raise ValueError("deployment row: ts must be epoch seconds")
    return row


def register_command_deployments(app: faust.App, sink: RawSink,
                                 outcomes: BatchOutcomes | None = None) -> None:
    """Store the ``deployments`` rows local commands send on ``llmpulse.deployments``
    (:mod:`llmpulse.streams.command_records`)."""
    register_command_records(app, TOPIC_DEPLOYMENTS, agent="llmpulse.command_deployments",
                             table="deployments", parse=deployment_row, sink=sink,
                             outcomes=outcomes)
