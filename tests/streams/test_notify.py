"""On-call channels against real local servers: HTTP receivers and an SMTP server."""

from __future__ import annotations

import asyncio
import email
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from llmpulse.detectors.base import Signal
from llmpulse.streams.alerting import AlertEvent, AlertManager
from llmpulse.streams.notify import (
    SIGNATURE_HEADER,
    EmailChannel,
    LogChannel,
    Notifier,
    PagerDutyChannel,
    Retry,
    Secret,
    SlackChannel,
    WebhookChannel,
    build_channels,
    channel_from_config,
)
from llmpulse.streams.rules import Rules

FAST = Retry(attempts=3, backoff_s=0.001, max_backoff_s=0.004)
WEBHOOK_SECRET = "whsec-7f3a9c1e5b"
ROUTING_KEY = "R0UT1NG-KEY-0123456789abcdef"
SLACK_TOKEN_PATH = "/services/T000/B000/XXXXsecretXXXX"
SMTP_PASSWORD = "smtp-pa55-word"

RULES_YAML = """
rules:
  - name: p99
    signal: latency.p99_ms
    op: ">"
    threshold: 4000
    for: 2
    resolve_for: 1
    severity: critical
    runbook: https://runbooks.example.com/p99
    actions: [notify, retrain]
  - name: errors
    signal: errors.rate
    op: ">"
    threshold: 0.05
    severity: warning
  - name: silent
    signal: tokens.output_per_s
    op: "<"
    threshold: 1
    actions: [retrain]
"""


def alert_pair(rule_signal: str = "latency.p99_ms", value: float = 5200.0) -> tuple[AlertEvent, AlertEvent]:
    """A firing and its resolved event from a real AlertManager run."""
    am = AlertManager(Rules.from_yaml(RULES_YAML), dashboard_url="http://dash.example/d/llm")
    base = 1_700_000_000.0
    events: list[AlertEvent] = []
    for i, v in enumerate([value, value * 1.1, 0.0 if rule_signal != "latency.p99_ms" else 800.0]):
        s = Signal(rule_signal, v, n=640, ts=base + 60 * (i + 1), window_s=60.0,
                   app="support", model="gpt-4o-mini", model_version="2024-07-18",
                   detail={"report": "/data/reports/drift-1.html"})
        events += am.process(s)
    firing, resolved = events
    assert (firing.kind, resolved.kind) == ("firing", "resolved")
    return firing, resolved


@dataclass
class Receiver:
    """A local HTTP endpoint that records requests and answers from a script."""

    statuses: list[int] = field(default_factory=list)  # consumed per request; then 200
    default: int = 200
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else self.default
        return web.Response(status=status, text="ok" if status < 300 else "boom")


@pytest.fixture
async def http() -> Any:
    receivers: dict[str, Receiver] = {}
    app = web.Application()

    async def route(request: web.Request) -> web.Response:
        rec = receivers.setdefault(request.path, Receiver())
        return await rec.handle(request)

    app.router.add_post("/{tail:.*}", route)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()

    class Http:
        def url(self, path: str) -> str:
            return str(server.make_url(path))

        def receiver(self, path: str, **kw: Any) -> Receiver:
            receivers[path] = Receiver(**kw)
            return receivers[path]

    yield Http()
    await server.close()


def recorder() -> tuple[list[float], Callable[[float], Any]]:
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)

    return delays, sleep


# -- webhook -------------------------------------------------------------------


async def test_webhook_posts_json_with_a_valid_hmac_signature(http: Any) -> None:
    rec = http.receiver("/hook")
    ch = WebhookChannel(name="hook", url=http.url("/hook"), secret=Secret(WEBHOOK_SECRET),
                        headers=(("X-Team", "ml"),))
    firing, resolved = alert_pair()
    async with Notifier([ch], retry=FAST) as n:
        assert await n.send(firing) == {"hook": True}
        assert await n.send(resolved) == {"hook": True}
    assert len(rec.requests) == 2
    for (_, headers, body), ev in zip(rec.requests, (firing, resolved), strict=True):
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Team"] == "ml"
        doc = json.loads(body)
        assert doc["version"] == 1
        assert doc["kind"] == ev.kind
        assert doc["alert"]["alert_id"] == ev.row["alert_id"]
        assert doc["alert"]["state"] == ev.kind
        assert doc["alert"]["detail"]["values"][0]["value"] == 5200.0
        assert doc["dedup_key"] == ev.dedup_key
        assert doc["rule"] == {"name": "p99", "severity": "critical",
                               "runbook": "https://runbooks.example.com/p99",
                               "actions": ["notify", "retrain"]}
    # a tampered body no longer verifies
    _, headers, body = rec.requests[0]
    forged = body.replace(b"5200", b"5201")
    forged_sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), forged, hashlib.sha256).hexdigest()
    assert forged_sig != headers[SIGNATURE_HEADER]


async def test_unsigned_webhook_has_no_signature_header(http: Any) -> None:
    rec = http.receiver("/plain")
    firing, _ = alert_pair()
    async with Notifier([WebhookChannel(name="plain", url=http.url("/plain"))], retry=FAST) as n:
        await n.send(firing)
    assert SIGNATURE_HEADER not in rec.requests[0][1]


# -- slack -----------------------------------------------------------------------


async def test_slack_blocks_say_what_value_since_and_links(http: Any) -> None:
    rec = http.receiver(SLACK_TOKEN_PATH)
    ch = SlackChannel(name="team", url=Secret(http.url(SLACK_TOKEN_PATH)))
    firing, resolved = alert_pair()
    async with Notifier([ch], retry=FAST) as n:
        await n.send(firing)
        await n.send(resolved)
    msg = json.loads(rec.requests[0][2])
    assert msg["text"].startswith("FIRING [critical] p99: latency.p99_ms = 5720 > 4000")
    header, summary, facts, context = msg["blocks"]
    assert header == {"type": "header",
                      "text": {"type": "plain_text", "text": "FIRING [critical] p99"}}
    assert summary["text"]["text"] == firing.row["summary"]
    texts = [f["text"] for f in facts["fields"]]
    assert texts[0] == "*Value*\n`5720` vs threshold `> 4000`\nlast values: 5200, 5720"
    assert texts[1] == "*Since*\n<!date^1700000000^{date_short_pretty} {time}|2023-11-14T22:13:20Z>"
    assert texts[2] == "*Scope*\nsupport / gpt-4o-mini @ 2024-07-18"
    links = context["elements"][0]["text"]
    assert "<https://runbooks.example.com/p99|runbook>" in links
    assert "|dashboard>" in links and "var-signal=latency.p99_ms" in links
    assert "</data/reports/drift-1.html|report>" in links
    assert all(len(b["text"]["text"]) <= 150 for b in msg["blocks"] if b["type"] == "header")
    done = json.loads(rec.requests[1][2])
    assert done["blocks"][0]["text"]["text"] == "RESOLVED [critical] p99"
    assert "*Resolved*\n2023-11-14T22:16:20Z" in [f["text"] for f in done["blocks"][2]["fields"]]


# -- pagerduty -----------------------------------------------------------------------

PD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["routing_key", "event_action"],
    "properties": {
        "routing_key": {"type": "string", "minLength": 32, "maxLength": 32},
        "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
        "dedup_key": {"type": "string", "maxLength": 255},
        "client": {"type": "string"},
        "payload": {
            "type": "object",
            "required": ["summary", "source", "severity"],
            "properties": {
                "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
                "source": {"type": "string", "minLength": 1},
                "severity": {"enum": ["critical", "error", "warning", "info"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "component": {"type": "string"},
                "group": {"type": "string"},
                "class": {"type": "string"},
                "custom_details": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "links": {
            "type": "array",
            "items": {"type": "object", "required": ["href"],
                      "properties": {"href": {"type": "string"}, "text": {"type": "string"}}},
        },
        "images": {"type": "array"},
    },
    "additionalProperties": False,
}


def validate(doc: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """The subset of JSON Schema the PagerDuty v2 event schema uses."""
    errors: list[str] = []
    kind = schema.get("type")
    types = {"object": dict, "string": str, "array": list}
    if kind and not isinstance(doc, types[kind]):
        return [f"{path}: expected {kind}"]
    if "enum" in schema and doc not in schema["enum"]:
        errors.append(f"{path}: {doc!r} not in {schema['enum']}")
    if isinstance(doc, str):
        if len(doc) < schema.get("minLength", 0) or len(doc) > schema.get("maxLength", 1 << 30):
            errors.append(f"{path}: length {len(doc)}")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(doc.replace("Z", "+00:00"))
            except ValueError:
                errors.append(f"{path}: not a date-time")
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        errors += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in doc]
        for k, v in doc.items():
            if k in props:
                errors += validate(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{k}: not allowed")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    return errors


def test_the_validator_catches_what_pagerduty_rejects() -> None:
    bad = {"routing_key": "short", "event_action": "fire",
           "payload": {"summary": "", "source": "x", "severity": "high", "extra": 1}}
    assert validate(bad, PD_SCHEMA) == [
        "$.routing_key: length 5",
        "$.event_action: 'fire' not in ['trigger', 'acknowledge', 'resolve']",
        "$.payload.summary: length 0",
        "$.payload.severity: 'high' not in ['critical', 'error', 'warning', 'info']",
        "$.payload.extra: not allowed",
    ]


async def test_pagerduty_trigger_and_resolve_share_the_dedup_key(http: Any) -> None:
    rec = http.receiver("/v2/enqueue", default=202)
    key = "0123456789abcdef0123456789abcdef"
    ch = PagerDutyChannel(name="oncall", routing_key=Secret(key), url=http.url("/v2/enqueue"))
    firing, resolved = alert_pair()
    async with Notifier([ch], retry=FAST) as n:
        assert await n.send(firing) == {"oncall": True}
        assert await n.send(resolved) == {"oncall": True}
    trigger, resolve = (json.loads(b) for _, _, b in rec.requests)
    assert validate(trigger, PD_SCHEMA) == []
    assert validate(resolve, PD_SCHEMA) == []
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == firing.dedup_key
    assert trigger["routing_key"] == key
    p = trigger["payload"]
    assert p["severity"] == "critical"
    assert p["source"] == "support/gpt-4o-mini@2024-07-18"
    assert p["timestamp"] == "2023-11-14T22:15:20Z"
    assert p["custom_details"]["threshold"] == "> 4000"
    assert p["custom_details"]["values"] == pytest.approx([5200.0, 5720.0])
    assert {link["text"] for link in trigger["links"]} == {"dashboard", "runbook", "report"}


async def test_pagerduty_dedup_key_is_stable_across_alerts_of_one_key() -> None:
    first, _ = alert_pair()
    again, _ = alert_pair()
    other, _ = alert_pair("errors.rate", 0.2)
    assert first.dedup_key == again.dedup_key != other.dedup_key


# -- e-mail ----------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Any:
    box = Mailbox()
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        ok = auth_data.password == SMTP_PASSWORD.encode()
        return AuthResult(success=ok, handled=False)  # handled=False: the server sends 535

    ctl = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                     auth_require_tls=False)
    ctl.start()
    yield ctl, box, logins
    ctl.stop()


async def test_email_is_received_by_an_smtp_server_with_login(smtp: Any) -> None:
    ctl, box, logins = smtp
    ch = EmailChannel(name="mail", host="127.0.0.1", port=ctl.port, sender="alerts@example.com",
                      to=("oncall@example.com", "ml@example.com"), username="alerts",
                      password=Secret(SMTP_PASSWORD))
    firing, resolved = alert_pair()
    async with Notifier([ch], retry=FAST) as n:
        assert await n.send(firing) == {"mail": True}
        assert await n.send(resolved) == {"mail": True}
    assert logins == [(b"alerts", SMTP_PASSWORD.encode())] * 2
    sender, rcpts, raw = box.messages[0]
    assert sender == "alerts@example.com"
    assert rcpts == ["oncall@example.com", "ml@example.com"]
    msg = email.message_from_bytes(raw)
    assert msg["Subject"].startswith("[llmpulse] FIRING [critical] latency.p99_ms = 5720 > 4000")
    assert msg["X-Llmpulse-Alert"] == firing.row["alert_id"]
    body = msg.get_payload(decode=True).decode()
    assert "value: 5720 (threshold > 4000), last values: 5200, 5720, n = 640" in body
    assert "runbook: https://runbooks.example.com/p99" in body
    assert email.message_from_bytes(box.messages[1][2])["Subject"].startswith("[llmpulse] RESOLVED")


async def test_email_with_a_wrong_password_is_recorded_not_retried(smtp: Any) -> None:
    ctl, box, _ = smtp
    ch = EmailChannel(name="mail", host="127.0.0.1", port=ctl.port, sender="a@example.com",
                      to=("b@example.com",), username="alerts", password=Secret("wrong"))
    delays, sleep = recorder()
    n = Notifier([ch], retry=FAST, sleep=sleep)
    firing, _ = alert_pair()
    assert await n.send(firing) == {"mail": False}
    st = n.stats()["mail"]
    assert (st["sent"], st["failed"], st["retries"]) == (0, 1, 0)
    assert st["last_error"].startswith("SMTP 535")
    assert delays == [] and box.messages == []


# -- retries, failures, dedup, routing ------------------------------------------------


async def test_retries_on_500_then_succeeds_with_exponential_backoff(http: Any) -> None:
    rec = http.receiver("/flaky", statuses=[500, 503])
    delays, sleep = recorder()
    n = Notifier([WebhookChannel(name="flaky", url=http.url("/flaky"))],
                 retry=Retry(attempts=4, backoff_s=0.001, factor=2.0), sleep=sleep)
    firing, _ = alert_pair()
    assert await n.send(firing) == {"flaky": True}
    await n.close()
    assert len(rec.requests) == 3
    assert delays == [0.001, 0.002]
    st = n.stats()["flaky"]
    assert (st["sent"], st["failed"], st["retries"], st["last_error"]) == (1, 0, 2, "")


async def test_a_permanently_failing_channel_is_recorded_and_others_still_get_it(http: Any) -> None:
    down = http.receiver("/down", default=500)
    up = http.receiver("/up")
    refused = f"http://127.0.0.1:{free_port()}/nobody-listens"
    delays, sleep = recorder()
    n = Notifier(
        [WebhookChannel(name="down", url=http.url("/down")),
         WebhookChannel(name="refused", url=refused, timeout_s=2.0),
         WebhookChannel(name="up", url=http.url("/up"))],
        retry=FAST, sleep=sleep, clock=lambda: 42.0,
    )
    firing, _ = alert_pair()
    assert await n.send(firing) == {"down": False, "refused": False, "up": True}
    await n.close()
    assert len(down.requests) == 3 and len(up.requests) == 1
    stats = n.stats()
    assert stats["down"]["failed"] == 1 and stats["down"]["retries"] == 2
    assert stats["down"]["last_error"] == "HTTP 500: boom"
    assert stats["down"]["last_error_at"] == 42.0
    assert stats["refused"]["failed"] == 1
    assert stats["refused"]["last_error"].startswith("ClientConnectorError")
    assert stats["up"]["sent"] == 1 and stats["up"]["failed"] == 0
    assert delays == [0.001, 0.002] * 2


async def test_client_errors_are_not_retried(http: Any) -> None:
    rec = http.receiver("/gone", default=404)
    n = Notifier([WebhookChannel(name="gone", url=http.url("/gone"))], retry=FAST)
    firing, _ = alert_pair()
    assert await n.send(firing) == {"gone": False}
    await n.close()
    assert len(rec.requests) == 1
    assert n.stats()["gone"]["last_error"] == "HTTP 404: boom"


async def test_the_same_alert_state_is_sent_once_per_channel(http: Any) -> None:
    rec = http.receiver("/once")
    n = Notifier([WebhookChannel(name="once", url=http.url("/once"))], retry=FAST)
    firing, resolved = alert_pair()
    results = await asyncio.gather(n.send(firing), n.send(firing))
    assert results == [{"once": True}] * 2
    await n.send(firing)
    await n.send(resolved)
    await n.send(resolved)
    assert [json.loads(b)["kind"] for _, _, b in rec.requests] == ["firing", "resolved"]
    assert n.stats()["once"]["duplicates"] == 3
    # a restarted worker restored from the snapshot does not send again
    m = Notifier([WebhookChannel(name="once", url=http.url("/once"))], retry=FAST)
    m.restore(json.loads(json.dumps(n.snapshot())))
    await m.send(firing)
    await n.close()
    await m.close()
    assert len(rec.requests) == 2 and m.stats()["once"]["duplicates"] == 1


async def test_failed_deliveries_are_sent_again_when_the_event_comes_again(http: Any) -> None:
    rec = http.receiver("/later", statuses=[500, 500, 500])
    n = Notifier([WebhookChannel(name="later", url=http.url("/later"))], retry=FAST)
    firing, _ = alert_pair()
    assert await n.send(firing) == {"later": False}
    assert await n.send(firing) == {"later": True}
    await n.close()
    assert len(rec.requests) == 4


async def test_routing_by_severity_rule_filter_and_actions(http: Any) -> None:
    pd = http.receiver("/pd", default=202)
    hook = http.receiver("/all")
    rules = Rules.from_yaml(RULES_YAML)
    n = Notifier([
        PagerDutyChannel(name="pd", routing_key=Secret("k" * 32), url=http.url("/pd"),
                         min_severity="critical"),
        WebhookChannel(name="all", url=http.url("/all"), rules=("err*", "p99")),
    ], retry=FAST)
    am = AlertManager(rules)
    events = []
    for sig, v in [("errors.rate", 0.2), ("tokens.output_per_s", 0.1)]:
        events += am.process(Signal(sig, v, n=500, ts=1e9, window_s=60, app="a", model="m"))
    assert [e.rule.name for e in events] == ["errors", "silent"]
    assert await n.send(events[0]) == {"all": True}  # warning: not paged
    assert await n.send(events[1]) == {}  # rule without the notify action
    firing, _ = alert_pair()
    assert await n.send(firing) == {"pd": True, "all": True}
    await n.close()
    assert (len(pd.requests), len(hook.requests)) == (1, 2)


async def test_log_channel_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    firing, _ = alert_pair()
    with caplog.at_level(logging.INFO, logger="llmpulse.streams.notify"):
        n = Notifier([LogChannel(name="log")])
        assert await n.send(firing) == {"log": True}
        await n.close()
    assert any(r.getMessage() == f"alert FIRING [critical] p99: {firing.row['summary']}"
               for r in caplog.records)


async def test_send_never_raises_even_on_a_broken_channel() -> None:
    class Broken(LogChannel):
        async def deliver(self, event: Any, session: Any) -> None:
            raise RuntimeError("bug in a channel")

    n = Notifier([Broken(name="broken")], retry=FAST)
    firing, _ = alert_pair()
    assert await n.send(firing) == {"broken": False}
    assert n.stats()["broken"]["last_error"] == "RuntimeError: bug in a channel"
    assert await n.send("not an event") == {}  # type: ignore[arg-type]
    await n.close()


# -- secrets ---------------------------------------------------------------------


async def test_secrets_never_appear_in_reprs_logs_or_errors(
    http: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    slack_url = http.url(SLACK_TOKEN_PATH)
    http.receiver(SLACK_TOKEN_PATH, default=500)
    monkeypatch.setenv("SLACK_URL", slack_url)
    monkeypatch.setenv("PD_KEY", ROUTING_KEY)
    monkeypatch.setenv("HOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    rules = Rules.from_yaml(RULES_YAML.replace("rules:", """
notify:
  team: {type: slack, url: "${SLACK_URL}"}
  oncall: {type: pagerduty, routing_key: "${PD_KEY}", url: "http://127.0.0.1:9/x"}
  hook: {type: webhook, url: "http://127.0.0.1:9/h", secret: "${HOOK_SECRET}"}
  mail: {type: email, host: 127.0.0.1, port: 9, sender: a@b.c, to: x@y.z, username: u,
         password: "${SMTP_PASSWORD}"}
rules:""", 1))
    secrets = [SLACK_TOKEN_PATH, "XXXXsecretXXXX", ROUTING_KEY, WEBHOOK_SECRET, SMTP_PASSWORD]
    with caplog.at_level(logging.DEBUG):
        n = Notifier.from_rules(rules, retry=FAST)
        firing, _ = alert_pair()
        await n.send(firing)
        await n.close()
    channels = build_channels(rules)
    texts = [repr(rules), repr(n), repr(list(rules.channels)), str(rules.channels),
             repr(channels), str(channels),
             json.dumps(n.stats())]
    # the local receiver's own access log prints the request path: not llmpulse's
    texts += [r.getMessage() for r in caplog.records if not r.name.startswith("aiohttp.access")]
    texts += [repr(c) for c in channels] + [f"{c}" for c in channels]
    for text in texts:
        for s in secrets:
            assert s not in text, (s, text[:300])
    assert n.stats()["team"]["last_error"] == "HTTP 500: boom"
    assert n.stats()["team"]["failed"] == 1
    assert "notify team" in caplog.text  # the failure was logged, without the secret
    # but the channels do hold the values
    team = next(c for c in channels if c.name == "team")
    assert isinstance(team, SlackChannel) and team.url.get() == slack_url


def test_a_network_error_quoting_the_url_is_scrubbed() -> None:
    ch = SlackChannel(name="team", url=Secret("https://hooks.slack.com" + SLACK_TOKEN_PATH))
    n = Notifier([ch])
    exc = OSError(f"Cannot connect to https://hooks.slack.com{SLACK_TOKEN_PATH} [refused]")
    assert n._describe(exc) == "OSError: Cannot connect to *** [refused]"
    exc = OSError(f"url='http://10.0.0.1{SLACK_TOKEN_PATH}'")  # behind a proxy rewrite
    assert SLACK_TOKEN_PATH not in n._describe(exc)


def test_channel_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"field 'min_severity': must be one of info, warning, critical, got 'high'"):
        channel_from_config("x", {"type": "webhook", "url": "http://h/", "min_severity": "high"})
    with pytest.raises(ValueError, match=r"field 'routing_kee': unknown for a pagerduty channel \(did you mean 'routing_key'\?\)"):
        channel_from_config("x", {"type": "pagerduty", "routing_kee": "k"})
    with pytest.raises(ValueError, match=r"field 'type': must be one of webhook, slack, pagerduty, email, log, got 'sms'"):
        channel_from_config("x", {"type": "sms"})
    with pytest.raises(ValueError, match=r"field 'url': must be an http\(s\) URL"):
        channel_from_config("x", {"type": "webhook", "url": "ftp://h/"})
    with pytest.raises(ValueError, match=r"field 'to': must be an address or a list of addresses"):
        channel_from_config("x", {"type": "email", "host": "h", "sender": "a@b", "to": ["nobody"]})
