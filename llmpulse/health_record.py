"""Health reports of llmpulse's own side services, on the ``llmpulse.health`` topic.

A service that runs beside the pipeline (the LLM judge, ``llmpulse judge``)
cannot write to the store, so it reports what it counted on a topic, every
``judge.health_every_s`` seconds: how many answers it graded and how many it
could not grade and why, in the interval since its last report, plus a few
gauges (spend over the last hour, grades in flight). The worker turns each
report into ``llmpulse.judge_*`` signals (:mod:`llmpulse.streams.service_health`),
which the health dashboard shows and rules can page on.

A report is one JSON object a message; everything in it is checked before it
is used, because anything can write to a topic:

>>> r = ServiceHealth("judge", "host-1:42", ts=1_700_000_000.0, interval_s=30.0,
...                   counts={"judged": 12, "timeout": 2}, gauges={"spent_usd_last_hour": 0.01})
>>> ServiceHealth.from_json(r.to_json()) == r
True
>>> ServiceHealth.from_json(b'{"service": "judge", "instance": "h", "ts": 1, "interval_s": 30,'
...                         b' "counts": {"timeout": -3}, "gauges": {}}')
Traceback (most recent call last):
...
llmpulse.health_record.HealthRecordError: counts.timeout: must be a finite number >= 0, got -3
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "JUDGE_COUNTS",
    "JUDGE_FAILURES",
    "JUDGE_GAUGES",
    "SERVICES",
    "TOPIC_HEALTH",
    "HealthRecordError",
    "ServiceHealth",
]

TOPIC_HEALTH = "llmpulse.health"

JUDGE_FAILURES: tuple[str, ...] = (
    "timeout", "error", "malformed", "rate_limited", "over_budget", "queue_full")
"""Why an answer sampled for grading was not graded (``llmpulse.judge_failures`` dimension)."""
JUDGE_COUNTS: tuple[str, ...] = ("seen", "sampled", "judged", *JUDGE_FAILURES)
JUDGE_GAUGES: tuple[str, ...] = ("spent_usd_last_hour", "in_flight", "judge_seconds")

SERVICES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "judge": (JUDGE_COUNTS, JUDGE_GAUGES),
}
"""Service name -> (the counts and the gauges it may report)."""

MAX_BYTES = 16_384
_INSTANCE = re.compile(r"^[\w.:@/-]{1,200}$")


class HealthRecordError(ValueError):
    """A health report that is not usable; the message names the field."""


def _values(raw: Any, allowed: tuple[str, ...], name: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise HealthRecordError(f"{name}: must be an object, got {type(raw).__name__}")
    out: dict[str, float] = {}
    for k, v in raw.items():
        if k not in allowed:
            raise HealthRecordError(f"{name}.{str(k)[:40]}: unknown; known: {', '.join(allowed)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise HealthRecordError(f"{name}.{k}: must be a finite number >= 0, got {v!r}")
        out[k] = float(v)
    return out


@dataclass(frozen=True, slots=True)
class ServiceHealth:
    """One report: counts over the last ``interval_s`` seconds, gauges now."""

    service: str
    instance: str
    ts: float
    interval_s: float
    counts: Mapping[str, float] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise HealthRecordError(f"service: must be one of {', '.join(SERVICES)}, "
                                    f"got {str(self.service)[:40]!r}")
        if not isinstance(self.instance, str) or not _INSTANCE.match(self.instance):
            raise HealthRecordError("instance: must be 1..200 letters, digits or . : @ / - _")
        for name in ("ts", "interval_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise HealthRecordError(f"{name}: must be a finite number >= 0, got {v!r}")
        counts, gauges = SERVICES[self.service]
        object.__setattr__(self, "counts", _values(self.counts, counts, "counts"))
        object.__setattr__(self, "gauges", _values(self.gauges, gauges, "gauges"))
        object.__setattr__(self, "ts", float(self.ts))
        object.__setattr__(self, "interval_s", float(self.interval_s))

    def to_json(self) -> bytes:
        return json.dumps({"service": self.service, "instance": self.instance, "ts": self.ts,
                           "interval_s": self.interval_s, "counts": dict(self.counts),
                           "gauges": dict(self.gauges)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ServiceHealth:
        if len(data) > MAX_BYTES:
            raise HealthRecordError(f"report: larger than {MAX_BYTES} bytes")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise HealthRecordError("report: not JSON") from None
        if not isinstance(obj, dict):
            raise HealthRecordError("report: must be a JSON object")
        unknown = set(obj) - {"service", "instance", "ts", "interval_s", "counts", "gauges"}
        if unknown:
            raise HealthRecordError(f"{sorted(unknown)[0][:40]}: unknown field")
        for name in ("service", "instance", "ts", "interval_s"):
            if name not in obj:
                raise HealthRecordError(f"{name}: required")
        return cls(obj["service"], obj["instance"], obj["ts"], obj["interval_s"],
                   obj.get("counts", {}), obj.get("gauges", {}))
