"""On-call channels: generic webhook, Slack, PagerDuty Events v2, e-mail, log.

A channel is its configuration (a frozen dataclass, secrets held as
:class:`~llmpulse.secret.Secret`) plus one coroutine,
``deliver(event, session)``, that sends one alert event once and raises
:class:`DeliveryError` (or any network error) when it did not arrive.
Retries, dedup and bookkeeping belong to :class:`~llmpulse.streams.notify.Notifier`.

* ``webhook``: ``POST`` of a JSON body; with a ``secret``, the header
  ``X-Llmpulse-Signature: sha256=<hex HMAC-SHA256 of the exact body>``.
* ``slack``: an incoming-webhook message with blocks (what, value against
  threshold, since when, scope, links). The URL is the credential.
* ``pagerduty``: Events API v2, ``trigger`` on firing and ``resolve`` on
  resolved, both with the same ``dedup_key`` derived from the alert key.
* ``email``: plain text over SMTP (stdlib ``smtplib`` in a thread), optional
  STARTTLS and login.
* ``log``: one log line per event, for demos and dry runs.

Channels come from the ``notify`` section of the rules file (kept there as
:class:`~llmpulse.streams.rules.ChannelSpec` values: the rule model imports no network
code) through :func:`build_channels`, which validates every field with
:func:`channel_from_config` and names the file and channel on an error:

>>> ch = channel_from_config("oncall", {"type": "pagerduty", "routing_key": "R0UT1NGKEY",
...                                     "min_severity": "critical"})
>>> ch
PagerDutyChannel(name='oncall', min_severity='critical', rules=(), timeout_s=10.0, routing_key=Secret('***'), url='https://events.pagerduty.com/v2/enqueue')
>>> channel_from_config("x", {"type": "slack"})
Traceback (most recent call last):
...
ValueError: field 'url': required for a slack channel
"""

from __future__ import annotations

import abc
import asyncio
import difflib
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from email.message import EmailMessage
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from llmpulse.secret import Secret
from llmpulse.streams.notify.format import alert_view, fmt_number, iso_time, text_message
from llmpulse.streams.rules import SEVERITIES, Rules, RulesError

if TYPE_CHECKING:
    from llmpulse.streams.alerting import AlertEvent

__all__ = [
    "CHANNEL_TYPES",
    "Channel",
    "DeliveryError",
    "EmailChannel",
    "LogChannel",
    "PAGERDUTY_EVENTS_URL",
    "PagerDutyChannel",
    "SEVERITIES",
    "SIGNATURE_HEADER",
    "SlackChannel",
    "WebhookChannel",
    "build_channels",
    "channel_from_config",
    "sign",
]

log = logging.getLogger(__name__)

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SIGNATURE_HEADER = "X-Llmpulse-Signature"
_PD_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
_JSON = {"Content-Type": "application/json"}


class DeliveryError(Exception):
    """A channel did not take the message; ``retryable`` says whether trying
    again may help (5xx, 429, network) or not (4xx: fix the configuration)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def sign(body: bytes, secret: str) -> str:
    """The ``X-Llmpulse-Signature`` value of a body.

    >>> sign(b'{"a":1}', "s3cret")
    'sha256=5910e62016ef5034272c926c27071992a465c2335cecf41851bda071577f4f6d'
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Channel(abc.ABC):
    """Where alert events go. ``min_severity`` and ``rules`` (globs on rule
    names, empty = all) filter what this channel receives."""

    name: str
    min_severity: str = "info"
    rules: tuple[str, ...] = ()
    timeout_s: float = 10.0

    kind: ClassVar[str] = ""

    def accepts(self, event: AlertEvent) -> bool:
        sev = event.row["severity"]
        if SEVERITIES.index(sev) < SEVERITIES.index(self.min_severity):
            return False
        wanted = getattr(event.rule, "channels", ())
        if wanted and self.name not in wanted:
            return False
        return not self.rules or any(fnmatchcase(event.row["rule"], p) for p in self.rules)

    def secrets(self) -> list[Secret]:
        return [getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Secret)]

    @abc.abstractmethod
    async def deliver(self, event: AlertEvent, session: aiohttp.ClientSession) -> None:
        """Send ``event`` once; raise when it did not arrive."""


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    ok: Sequence[int] = (200, 201, 202, 204),
) -> None:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(url, data=body, headers=dict(headers), timeout=timeout) as resp:
        if resp.status in ok:
            return
        text = (await resp.text(errors="replace"))[:200].strip()
        raise DeliveryError(
            f"HTTP {resp.status}" + (f": {text}" if text else ""),
            retryable=resp.status >= 500 or resp.status in (408, 429),
        )


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str).encode()


@dataclass(frozen=True, kw_only=True)
class WebhookChannel(Channel):
    """``POST`` the alert as JSON, signed with HMAC-SHA256 when ``secret`` is set.

    The body is ``{"version": 1, "kind", "dedup_key", "alert": <alerts row,
    detail as an object>, "rule": {...}}``; receivers verify
    ``X-Llmpulse-Signature`` against :func:`sign` of the raw body.
    """

    url: str
    secret: Secret | None = None
    headers: tuple[tuple[str, str], ...] = ()

    kind: ClassVar[str] = "webhook"

    def body(self, event: AlertEvent) -> bytes:
        row = dict(event.row)
        row["detail"] = json.loads(row.get("detail") or "{}")
        rule = event.rule
        return _dumps({
            "version": 1,
            "kind": event.kind,
            "dedup_key": row["detail"].get("dedup_key", row["alert_id"]),
            "alert": row,
            "rule": {
                "name": rule.name,
                "severity": rule.severity,
                "runbook": rule.runbook,
                "actions": list(rule.actions),
            },
        })

    async def deliver(self, event: AlertEvent, session: aiohttp.ClientSession) -> None:
        body = self.body(event)
        headers = {**_JSON, **dict(self.headers)}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(body, self.secret.get())
        await _post(session, self.url, body, headers, self.timeout_s)


@dataclass(frozen=True, kw_only=True)
class SlackChannel(Channel):
    """Slack incoming webhook: a fallback ``text`` and Block Kit ``blocks``."""

    url: Secret

    kind: ClassVar[str] = "slack"

    def message(self, event: AlertEvent) -> dict[str, Any]:
        v = alert_view(event)
        firing = v["kind"] == "firing"
        title = f"{'FIRING' if firing else 'RESOLVED'} [{v['severity']}] {v['rule']}"
        since = int(v["started_at"])
        when = f"<!date^{since}^{{date_short_pretty}} {{time}}|{iso_time(v['started_at'])}>"
        scope = v["scope"] + (f" `{v['dimension']}`" if v["dimension"] else "")
        value = f"`{fmt_number(v['value'])}` vs threshold `{v['op']} {fmt_number(v['threshold'])}`"
        if v["values"]:
            value += "\nlast values: " + ", ".join(fmt_number(x) for x in v["values"])
        fields_ = [
            {"type": "mrkdwn", "text": f"*Value*\n{value}"},
            {"type": "mrkdwn", "text": f"*Since*\n{when}"},
            {"type": "mrkdwn", "text": f"*Scope*\n{scope}"},
            {"type": "mrkdwn", "text": f"*Signal*\n`{v['signal']}` (n = {v['n']})"},
        ]
        if not firing and v["resolved_at"] is not None:
            fields_.append({"type": "mrkdwn", "text": f"*Resolved*\n{iso_time(v['resolved_at'])}"})
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": v["summary"][:3000]}},
            {"type": "section", "fields": fields_},
        ]
        if v["links"]:
            links = " | ".join(f"<{href}|{name}>" for name, href in sorted(v["links"].items()))
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": links}]})
        return {"text": f"{title}: {v['summary']}", "blocks": blocks}

    async def deliver(self, event: AlertEvent, session: aiohttp.ClientSession) -> None:
        await _post(session, self.url.get(), _dumps(self.message(event)), _JSON, self.timeout_s)


@dataclass(frozen=True, kw_only=True)
class PagerDutyChannel(Channel):
    """PagerDuty Events API v2: ``trigger`` then ``resolve`` with one ``dedup_key``."""

    routing_key: Secret
    url: str = PAGERDUTY_EVENTS_URL

    kind: ClassVar[str] = "pagerduty"

    def event(self, event: AlertEvent) -> dict[str, Any]:
        v = alert_view(event)
        base: dict[str, Any] = {
            "routing_key": self.routing_key.get(),
            "dedup_key": v["dedup_key"],
        }
        if v["kind"] == "resolved":
            return {**base, "event_action": "resolve"}
        links = [{"href": href, "text": name} for name, href in sorted(v["links"].items())]
        return {
            **base,
            "event_action": "trigger",
            "client": "llmpulse",
            "payload": {
                "summary": v["summary"][:1024],
                "source": f"{v['app']}/{v['model']}@{v['model_version']}",
                "severity": _PD_SEVERITY[v["severity"]],
                "timestamp": iso_time(v["updated_at"]),
                "component": v["model"],
                "group": v["app"],
                "class": v["signal"],
                "custom_details": {
                    "rule": v["rule"],
                    "alert_id": v["alert_id"],
                    "signal": v["signal"],
                    "dimension": v["dimension"],
                    "value": v["value"],
                    "threshold": f"{v['op']} {fmt_number(v['threshold'])}",
                    "values": v["values"],
                    "n": v["n"],
                    "window": v["window"],
                    "started_at": iso_time(v["started_at"]),
                },
            },
            "links": links,
        }

    async def deliver(self, event: AlertEvent, session: aiohttp.ClientSession) -> None:
        await _post(session, self.url, _dumps(self.event(event)), _JSON, self.timeout_s)


@dataclass(frozen=True, kw_only=True)
class EmailChannel(Channel):
    """Plain-text e-mail over SMTP; ``starttls`` and login (``username`` +
    ``password``) optional."""

    host: str
    sender: str
    to: tuple[str, ...]
    port: int = 25
    starttls: bool = False
    username: str = ""
    password: Secret | None = None
    subject_prefix: str = "[llmpulse]"

    kind: ClassVar[str] = "email"

    def message(self, event: AlertEvent) -> EmailMessage:
        v = alert_view(event)
        msg = EmailMessage()
        msg["Subject"] = (
            f"{self.subject_prefix} {v['kind'].upper()} [{v['severity']}] {v['summary']}"
        )[:250]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["X-Llmpulse-Alert"] = v["alert_id"]
        msg.set_content(text_message(v) + "\n")
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username and self.password:
                smtp.login(self.username, self.password.get())
            smtp.send_message(msg)

    async def deliver(self, event: AlertEvent, session: aiohttp.ClientSession) -> None:
        msg = self.message(event)
        try:
            await asyncio.to_thread(self._send_blocking, msg)
        except smtplib.SMTPResponseException as exc:
            # 4xx replies are transient in SMTP; 5xx are permanent
            raise DeliveryError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", retryable=exc.smtp_code < 500
            ) from None


@dataclass(frozen=True, kw_only=True)
class LogChannel(Channel):
    """Writes each alert event as one log line (demos, dry runs)."""

    level: str = "WARNING"

    kind: ClassVar[str] = "log"

    async def deliver(self, event: AlertEvent, session: aiohttp.ClientSession) -> None:
        v = alert_view(event)
        log.log(
            logging.getLevelName(self.level),
            "alert %s [%s] %s: %s",
            v["kind"].upper(), v["severity"], v["rule"], v["summary"],
        )


CHANNEL_TYPES: dict[str, type[Channel]] = {
    c.kind: c for c in (WebhookChannel, SlackChannel, PagerDutyChannel, EmailChannel, LogChannel)
}

def channel_from_config(name: str, spec: Mapping[str, Any]) -> Channel:
    """A channel from one entry of the ``notify`` section (values already
    interpolated). Raises ``ValueError("field '<f>': ...")`` on a bad field."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"must be a mapping of fields, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in CHANNEL_TYPES:
        raise ValueError(f"field 'type': must be one of {', '.join(CHANNEL_TYPES)}, got {kind!r}")
    cls = CHANNEL_TYPES[kind]
    allowed = {f.name for f in fields(cls)} - {"name"}
    kw: dict[str, Any] = {"name": name}
    for key, value in spec.items():
        if key == "type":
            continue
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"field {key!r}: unknown for a {kind} channel{hint}")
        kw[key] = _field(kind, key, value)
    for f in fields(cls):
        if f.name not in kw and f.default is MISSING and f.default_factory is MISSING:
            raise ValueError(f"field {f.name!r}: required for a {kind} channel")
    return cls(**kw)


def build_channels(rules: Rules) -> tuple[Channel, ...]:
    """The channels of a rules file's ``notify`` section, each field validated.

    >>> rules = Rules.from_yaml("notify:\\n  pd: {type: pagerduty}\\n", source="r.yaml")
    >>> build_channels(rules)
    Traceback (most recent call last):
    ...
    llmpulse.streams.rules.RulesError: r.yaml: notify channel 'pd': field 'routing_key': required for a pagerduty channel
    """
    out = []
    for spec in rules.channels:
        try:
            out.append(channel_from_config(spec.name, spec.settings))
        except ValueError as exc:
            raise RulesError(f"{rules.source}: notify channel {spec.name!r}: {exc}") from None
    return tuple(out)


def _field(kind: str, key: str, value: Any) -> Any:
    def bad(expect: str) -> ValueError:
        return ValueError(f"field {key!r}: must be {expect}, got {value!r}")

    if key in ("secret", "routing_key", "password") or (key == "url" and kind == "slack"):
        if not isinstance(value, str) or not value:
            raise ValueError(f"field {key!r}: must be a non-empty string")
        if key == "url" and not value.startswith(("http://", "https://")):
            raise ValueError(f"field {key!r}: must be an http(s) URL")
        return Secret(value)
    if key == "url":
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise bad("an http(s) URL")
        return value
    if key == "min_severity":
        if value not in SEVERITIES:
            raise bad(f"one of {', '.join(SEVERITIES)}")
        return value
    if key == "rules":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise bad("a list of rule-name globs")
        return tuple(value)
    if key == "timeout_s":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise bad("a number of seconds > 0")
        return float(value)
    if key == "headers":
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise bad("a mapping of header names to strings")
        return tuple((str(k), v) for k, v in value.items())
    if key == "to":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and "@" in v for v in value):
            raise bad("an address or a list of addresses")
        return tuple(value)
    if key == "port":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise bad("a port number")
        return value
    if key == "starttls":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "level":
        if not isinstance(value, str) or not isinstance(logging.getLevelName(value.upper()), int):
            raise bad("a log level name")
        return value.upper()
    if not isinstance(value, str) or not value:
        raise bad("a non-empty string")
    return value
