"""What an on-call message says, built once from an alert event for every channel.

:func:`alert_view` flattens an :class:`~llmpulse.streams.alerting.AlertEvent` (its
``alerts`` row, the JSON ``detail`` and the rule) into the facts every
channel shows: what broke, the value against the threshold, since when,
where (app, model, version, dimension) and the links (dashboard panel,
runbook, drift report). :func:`text_message` is the plain-text rendering
used by e-mail and logs.

>>> view = {"kind": "firing", "severity": "critical", "rule": "p99-latency",
...         "summary": "latency.p99_ms = 5200 > 4000 on support/gpt@1",
...         "value": 5200.0, "op": ">", "threshold": 4000.0, "started_at": 1700000000.0,
...         "resolved_at": None, "scope": "support / gpt @ 1", "dimension": "",
...         "values": [4800.0, 5200.0], "n": 950,
...         "links": {"runbook": "https://runbooks.example/p99"}}
>>> print(text_message(view))
[FIRING critical] p99-latency
latency.p99_ms = 5200 > 4000 on support/gpt@1
value: 5200 (threshold > 4000), last values: 4800, 5200, n = 950
since: 2023-11-14T22:13:20Z
scope: support / gpt @ 1
runbook: https://runbooks.example/p99
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmpulse.streams.alerting import AlertEvent

__all__ = ["alert_view", "fmt_number", "iso_time", "text_message"]


def iso_time(ts: float | None) -> str:
    """Epoch seconds as RFC 3339 UTC text (``Z``, milliseconds when not whole).

    >>> iso_time(1700000000.0), iso_time(1700000000.25)
    ('2023-11-14T22:13:20Z', '2023-11-14T22:13:20.250Z')
    """
    if ts is None:
        return ""
    dt = datetime.fromtimestamp(float(ts), tz=UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_number(x: float | None) -> str:
    """Four significant digits, no exponent for everyday magnitudes.

    >>> fmt_number(5231.7), fmt_number(0.012345), fmt_number(None)
    ('5232', '0.01235', '')
    """
    if x is None:
        return ""
    return f"{float(x):.4g}"


def alert_view(event: AlertEvent) -> dict[str, Any]:
    """The facts of one alert event as a flat mapping (see the module example)."""
    row = event.row
    detail = row.get("detail") or "{}"
    d: dict[str, Any] = json.loads(detail) if isinstance(detail, str) else dict(detail)
    scope = f"{row['app']} / {row['model']} @ {row['model_version']}"
    links = {k: v for k, v in (d.get("links") or {}).items() if v}
    return {
        "kind": event.kind,
        "alert_id": row["alert_id"],
        "dedup_key": d.get("dedup_key", row["alert_id"]),
        "rule": row["rule"],
        "severity": row["severity"],
        "summary": row["summary"],
        "signal": row["signal"],
        "dimension": row["dimension"],
        "app": row["app"],
        "model": row["model"],
        "model_version": row["model_version"],
        "scope": scope,
        "value": row["value"],
        "threshold": row["threshold"],
        "op": d.get("op", ""),
        "started_at": row["started_at"],
        "updated_at": row["updated_at"],
        "resolved_at": row.get("resolved_at"),
        "values": [v["value"] for v in d.get("values", [])],
        "n": d.get("n"),
        "window": d.get("window"),
        "links": links,
    }


def text_message(view: dict[str, Any]) -> str:
    """Plain-text rendering: a title line, then one fact per line."""
    head = f"[{view['kind'].upper()} {view['severity']}] {view['rule']}"
    values = ", ".join(fmt_number(v) for v in view.get("values") or [])
    line = f"value: {fmt_number(view['value'])} (threshold {view['op']} {fmt_number(view['threshold'])})"
    if values:
        line += f", last values: {values}"
    if view.get("n") is not None:
        line += f", n = {view['n']}"
    lines = [head, view["summary"], line, f"since: {iso_time(view['started_at'])}"]
    if view.get("resolved_at") is not None:
        lines.append(f"resolved: {iso_time(view['resolved_at'])}")
    scope = view["scope"] + (f" [{view['dimension']}]" if view.get("dimension") else "")
    lines.append(f"scope: {scope}")
    for name, href in sorted(view.get("links", {}).items()):
        lines.append(f"{name}: {href}")
    return "\n".join(lines)
