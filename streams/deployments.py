"""Retrain outcomes read back from ``llmpulse.deployments``.

The alert agent asks for at most one retrain per model at a time
(:class:`~llmpulse.streams.retrain_trigger.RetrainTrigger`); the retrain service,
in this process or in its own worker, answers on ``llmpulse.deployments``
with one row per step. A row whose stage ends a retrain (promoted, rolled
back, rejected by the gates, skipped, failed) clears the model's pending
request, so the next alert on that model may ask again. The streams do not
import the retrain service: the topic is the whole interface.

>>> completes(b'{"model": "intent-router", "stage": "canary"}')
>>> completes(b'{"model": "intent-router", "stage": "promoted", "version": "2"}')
'intent-router'
>>> completes(b'not json'), completes(b'["promoted"]'), completes(b'{"stage": "failed"}')
(None, None, None)
"""

from __future__ import annotations

import logging
from typing import Any

import faust
import orjson

from llmpulse.events import TOPIC_DEPLOYMENTS
from llmpulse.streams.retrain_trigger import RetrainTrigger

__all__ = ["FINAL_STAGES", "completes", "register_retrain_completion"]

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
