"""Side services' health reports (``llmpulse.health``) as health signals.

The LLM judge runs in a process of its own and reports, every
``judge.health_every_s``, what it did since its last report
(:class:`~llmpulse.health_record.ServiceHealth`). The worker turns each report
into signals with ``app = llmpulse`` that go where the worker's own health
signals go (the ``signals`` table, ``llmpulse.signals``, the rules), so the
health dashboard shows a judge that fails, is slow, is rate-limited or is over
budget, and a rule can page on it:

=============================  ==================  =========================================
signal                         dimension           value
=============================  ==================  =========================================
``llmpulse.judge_graded``      ``judge``           answers graded in the interval
``llmpulse.judge_failures``    the reason          sampled answers not graded, per reason:
                                                   ``timeout``, ``error``, ``malformed``,
                                                   ``rate_limited`` (HTTP 429),
                                                   ``over_budget``, ``queue_full``
``llmpulse.judge_latency_s``   ``judge``           mean seconds per judge call
``llmpulse.judge_spend_usd``   ``judge``           spend over the last hour
=============================  ==================  =========================================

A report that does not pass :meth:`ServiceHealth.from_json` is counted and
dropped; nothing in it can stop the worker.

>>> from llmpulse.health_record import ServiceHealth
>>> rec = ServiceHealth("judge", "h:1", ts=1_700_000_030.0, interval_s=30.0,
...                     counts={"sampled": 10, "judged": 6, "timeout": 1, "rate_limited": 3},
...                     gauges={"judge_seconds": 12.0, "spent_usd_last_hour": 0.25})
>>> [(s.signal, s.dimension, s.value) for s in health_signals(rec) if s.value]
... # doctest: +NORMALIZE_WHITESPACE
[('llmpulse.judge_graded', 'judge', 6.0), ('llmpulse.judge_failures', 'timeout', 1.0),
 ('llmpulse.judge_failures', 'rate_limited', 3.0), ('llmpulse.judge_latency_s', 'judge', 1.2),
 ('llmpulse.judge_spend_usd', 'judge', 0.25)]
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from llmpulse.detectors.base import Signal
from llmpulse.health_record import JUDGE_FAILURES, TOPIC_HEALTH, HealthRecordError, ServiceHealth

__all__ = ["JUDGE_SIGNALS", "HealthReports", "health_signals", "register_service_health"]

log = logging.getLogger(__name__)

JUDGE_SIGNALS: tuple[str, ...] = (
    "llmpulse.judge_graded", "llmpulse.judge_failures", "llmpulse.judge_latency_s",
    "llmpulse.judge_spend_usd",
)

_CALLS = ("judged", "timeout", "error", "malformed", "rate_limited")
"""Outcomes that waited on the judge (the others were refused before a call)."""


def health_signals(rec: ServiceHealth) -> list[Signal]:
    """The signals of one judge report (see the module docstring)."""
    c, g = rec.counts, rec.gauges
    n = int(c.get("sampled", 0))

    def sig(name: str, value: float, dimension: str = "judge", count: int = n) -> Signal:
        return Signal(signal=name, value=float(value), n=count, dimension=dimension, ts=rec.ts,
                      window_s=rec.interval_s, app="llmpulse",
                      detail={"service": rec.service, "instance": rec.instance})

    out = [sig("llmpulse.judge_graded", c.get("judged", 0.0))]
    out += [sig("llmpulse.judge_failures", c.get(kind, 0.0), kind) for kind in JUDGE_FAILURES]
    calls = int(sum(c.get(k, 0.0) for k in _CALLS))
    if calls and "judge_seconds" in g:
        out.append(sig("llmpulse.judge_latency_s", g["judge_seconds"] / calls, count=calls))
    if "spent_usd_last_hour" in g:
        out.append(sig("llmpulse.judge_spend_usd", g["spent_usd_last_hour"]))
    return out


class HealthReports:
    """Reports in, signals out: the agent's logic without Faust (the tests drive it).

    ``emit`` is the signal agents' ``emit`` (store, topic, rules).
    """

    def __init__(self, emit: Callable[[list[Signal]], Awaitable[None]]) -> None:
        self.emit = emit
        self.counts = {"reports": 0, "rejected": 0}

    async def handle(self, value: bytes) -> list[Signal]:
        try:
            rec = ServiceHealth.from_json(value)
        except HealthRecordError as exc:
            self.counts["rejected"] += 1
            log.warning("dropping a health report from %s: %s", TOPIC_HEALTH, exc)
            return []
        self.counts["reports"] += 1
        signals = health_signals(rec)
        await self.emit(signals)
        return signals


def register_service_health(app: Any, emit: Callable[[list[Signal]], Awaitable[None]]) -> HealthReports:
    """An agent of ``app`` (a Faust app) that turns ``llmpulse.health`` reports into signals."""
    reports = HealthReports(emit)
    topic = app.topic(TOPIC_HEALTH, value_serializer="raw", key_serializer="raw")

    async def service_health(stream: Any) -> None:
        async for event in stream.events():
            value = event.value
            try:
                await reports.handle(value if isinstance(value, bytes) else bytes(value or b""))
            except Exception:  # storing failed: the next report carries on
                log.exception("health report from %s not stored", TOPIC_HEALTH)

    service_health.__name__ = service_health.__qualname__ = "service_health"
    app.agent(topic, name="llmpulse.service_health")(service_health)
    return reports
