"""Where an alert links to: the panel that shows its signal, filtered to the alert.

The composition root builds one :class:`AlertLinks` (Grafana's base URL from
the rules file's ``links.dashboard``, or llmpulse's own server for the
embedded dashboards) and hands it to the alert state machine as a plain
callable, so the stream code never imports this folder.

The link opens the panel of :func:`~dashboards.panels.panel_for_signal` over
the alert's window, with the dashboards' own template variables (``app``,
``model``, ``version``, ``signal``, ``dimension``) set to the alert's key:
the panel then shows only the series that broke the rule.

>>> key = {"rule": "feature-drift", "signal": "drift.psi", "app": "support", "model": "gpt",
...        "model_version": "3", "dimension": "input_tokens"}
>>> print(AlertLinks("http://grafana:3000/").dashboard(key, 1_700_000_000, 1_700_003_600))
http://grafana:3000/d/llmpulse-drift/llm-apps-drift?orgId=1&from=1700000000000&to=1700003600000&viewPanel=1&var-app=support&var-model=gpt&var-version=3&var-signal=drift.psi&var-dimension=input_tokens
>>> print(AlertLinks("http://127.0.0.1:8080/dashboards", embedded=True)(
...     {**key, "signal": "latency.p99_ms", "dimension": ""}, 1_700_000_000, 1_700_003_600))
http://127.0.0.1:8080/dashboards/overview?from=1700000000000&to=1700003600000&var-app=support&var-model=gpt&var-version=3&var-signal=latency.p99_ms#panel-6
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from dashboards.grafana import panel_url
from dashboards.panels import DASHBOARDS, panel_for_signal

__all__ = ["ALERT_KEY_VARIABLES", "AlertLinks"]

ALERT_KEY_VARIABLES: tuple[tuple[str, str], ...] = (
    ("app", "app"),
    ("model", "model"),
    ("version", "model_version"),
    ("signal", "signal"),
    ("dimension", "dimension"),
)
"""(dashboard template variable, alert key field) pairs a link sets."""


def _base(url: str, *, embedded: bool, key: str) -> str:
    """The site root of ``url``: a Grafana ``/d/<uid>/...`` or ``/dashboards`` tail is dropped."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key}: must be an http(s) URL, got {url!r}")
    segments = [s for s in parts.path.split("/") if s]
    tail = "dashboards" if embedded else "d"
    if tail in segments:
        segments = segments[: segments.index(tail)]
    path = "/" + "/".join(segments) if segments else ""
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True, slots=True)
class AlertLinks:
    """Builds the dashboard link of an alert.

    ``base`` is Grafana's URL (``http://grafana:3000``; a dashboard URL under
    it is accepted and cut back to the site) or, with ``embedded=True``, the
    llmpulse HTTP server (``http://127.0.0.1:8080``).
    """

    base: str
    embedded: bool = False

    def __post_init__(self) -> None:
        key = "http server" if self.embedded else "links.dashboard"
        object.__setattr__(self, "base", _base(self.base, embedded=self.embedded, key=key))

    def dashboard(self, key: Mapping[str, str], start: float, end: float) -> str:
        """The panel showing ``key["signal"]`` over ``[start, end]`` (epoch s), filtered to the key."""
        name, pid = panel_for_signal(key.get("signal", ""), key.get("dimension", ""))
        d = DASHBOARDS[name]
        declared = {v.name for v in d.variables}
        variables = {var: key[field] for var, field in ALERT_KEY_VARIABLES
                     if var in declared and key.get(field)}
        return panel_url(self.base, d, pid, start, end, variables, embedded=self.embedded)

    __call__ = dashboard
