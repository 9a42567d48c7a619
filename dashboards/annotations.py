"""Grafana annotations for deployments, from the ``llmpulse.deployments`` topic.

Each record the retrain service publishes (one per step: ``training``,
``canary``, ``promoted``, ``rolled_back``, ``rejected``, ...) becomes one
annotation through :class:`~llmpulse.dashboards.publish.Publisher`, so a dashboard
shows when a model changed next to the signals that made it change.
Annotations are idempotent (a replayed record finds its annotation by its
``llmpulse-id`` tag and leaves it alone). A record that is not a deployment
is counted and skipped; Grafana being down is logged and counted, and the
record is not retried: ``llmpulse dashboards publish`` posts every stored
deployment again, once each.

The composition root registers the agent only when Grafana is configured
(:meth:`GrafanaTarget.from_env`).

>>> GrafanaTarget.from_env({}) is None
True
>>> t = GrafanaTarget.from_env({"LLMPULSE_GRAFANA_URL": "http://grafana:3000",
...                             "LLMPULSE_GRAFANA_TOKEN": "glsa_x"})
>>> t
GrafanaTarget(url='http://grafana:3000', token=Secret('***'), basic_auth=None)
>>> deployment_record(b'{"deployment_id": "d1", "model": "m", "version": "2", "stage": "canary",'
...                   b' "ts": 1700000000.5}')["stage"]
'canary'
>>> deployment_record(b'{"model": "m"}')
Traceback (most recent call last):
...
ValueError: not a deployment record: missing deployment_id, stage, ts
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from llmpulse.config import ConfigError
from llmpulse.dashboards.publish import Publisher, PublishError, grafana_client
from llmpulse.events import TOPIC_DEPLOYMENTS
from llmpulse.secret import Secret, scrub

__all__ = ["DeploymentAnnotator", "GrafanaTarget", "deployment_record",
           "register_deployment_annotations"]

log = logging.getLogger(__name__)

ENV_URL = "LLMPULSE_GRAFANA_URL"
ENV_TOKEN = "LLMPULSE_GRAFANA_TOKEN"
ENV_BASIC_AUTH = "LLMPULSE_GRAFANA_BASIC_AUTH"
REQUIRED_FIELDS: tuple[str, ...] = ("deployment_id", "model", "stage", "ts")


@dataclass(frozen=True)
class GrafanaTarget:
    """Where deployment annotations go: a Grafana URL and its credentials."""

    url: str
    token: Secret | None = None
    basic_auth: Secret | None = None
    """``user:password`` instead of a service account token."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GrafanaTarget | None:
        """The target from ``LLMPULSE_GRAFANA_URL`` and ``LLMPULSE_GRAFANA_TOKEN`` (or
        ``LLMPULSE_GRAFANA_BASIC_AUTH``); None when the URL or the credentials are unset
        (the URL alone only links alerts to the dashboards).
        :class:`~llmpulse.config.ConfigError` naming the key for a URL that is not
        http(s)://host[:port][/prefix].

        >>> GrafanaTarget.from_env({"LLMPULSE_GRAFANA_URL": "http://grafana:3000"}) is None
        True
        >>> GrafanaTarget.from_env({"LLMPULSE_GRAFANA_URL": "grafana:3000",
        ...                         "LLMPULSE_GRAFANA_TOKEN": "t"})
        Traceback (most recent call last):
        ...
        llmpulse.config.ConfigError: LLMPULSE_GRAFANA_URL: 'grafana:3000' is not http(s)://host[:port][/prefix]
        """
        url = env.get(ENV_URL, "").strip()
        token = env.get(ENV_TOKEN, "").strip()
        basic = env.get(ENV_BASIC_AUTH, "").strip()
        if not url or not (token or basic):
            return None
        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises for a port that is not a number or out of range
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{ENV_URL}: {url!r} is not http(s)://host[:port][/prefix]")
        if basic and ":" not in basic:
            raise ConfigError(f"{ENV_BASIC_AUTH}: give user:password")
        return cls(url=url, token=Secret(token) if token else None,
                   basic_auth=Secret(basic) if basic else None)

    def publisher(self, timeout_s: float = 10.0) -> Publisher:
        face = grafana_client(self.url, token=self.token.get() if self.token else None,
                              basic_auth=self.basic_auth.get() if self.basic_auth else None,
                              timeout=timeout_s)
        return Publisher(face)


def deployment_record(value: bytes) -> dict[str, Any]:
    """The deployment row in a ``llmpulse.deployments`` message; ValueError if it is not one."""
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise ValueError("not a deployment record: not JSON") from None
    if not isinstance(row, dict):
        raise ValueError(f"not a deployment record: a JSON {type(row).__name__}")
    missing = [k for k in REQUIRED_FIELDS if row.get(k) in (None, "")]
    if missing:
        raise ValueError(f"not a deployment record: missing {', '.join(missing)}")
    for key in ("deployment_id", "model", "stage"):
        if not isinstance(row[key], str):
            raise ValueError(f"not a deployment record: {key} is not a string")
    ts = row["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int | float | str) or (
            isinstance(ts, float) and not math.isfinite(ts)):
        raise ValueError("not a deployment record: ts is not a time")
    return row


class DeploymentAnnotator:
    """Turns deployment records into annotations, one record at a time.

    ``publisher`` is blocking (``grafana_api`` over ``requests``): the agent
    calls :meth:`annotate` in a thread.
    """

    def __init__(self, publisher: Publisher, *, secrets: tuple[Secret | None, ...] = ()) -> None:
        self.publisher = publisher
        self.secrets = secrets
        self.counters: dict[str, int] = {"created": 0, "updated": 0, "unchanged": 0,
                                         "invalid": 0, "failed": 0}

    @classmethod
    def for_target(cls, target: GrafanaTarget) -> DeploymentAnnotator:
        return cls(target.publisher(), secrets=(target.token, target.basic_auth))

    def annotate(self, value: bytes) -> str:
        """Annotate one message; what happened: created, updated, unchanged, invalid, failed."""
        try:
            row = deployment_record(value)
            counts = self.publisher.post_annotations([row])
        except (ValueError, PublishError) as exc:
            log.warning("deployment annotation skipped: %s", exc)
            outcome = "invalid"
        except Exception as exc:  # Grafana unreachable or refusing: the rollout goes on
            log.warning("deployment annotation failed: %s",
                        scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                              self.secrets))
            outcome = "failed"
        else:
            outcome = next(k for k, n in counts.items() if n)
        self.counters[outcome] += 1
        return outcome

    def stats(self) -> dict[str, int]:
        return dict(self.counters)


def register_deployment_annotations(app: Any, annotator: DeploymentAnnotator) -> None:
    """An agent of the Faust ``app`` that annotates each record of ``llmpulse.deployments``."""
    topic = app.topic(TOPIC_DEPLOYMENTS, value_serializer="raw", key_serializer="raw")

    async def deployment_annotations(stream: Any) -> None:
        async for value in stream:
            await asyncio.to_thread(annotator.annotate, bytes(value or b""))

    app.agent(topic, name="llmpulse.deployment_annotations")(deployment_annotations)
