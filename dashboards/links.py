"""Where an alert links to: the panel that shows its signal, filtered to the alert.

The composition root builds one :class:`AlertLinks` (Grafana's base URL from
the rules file's ``links.dashboard``, or llmpulse's own server for the
embedded dashboards) and hands it to the alert state machine as a plain
callable, so the stream code never imports this folder.

Besides the panel, :meth:`AlertLinks.runbook` gives the shipped runbook of
the signal's family and :meth:`AlertLinks.report` the URL under which the
server serves a drift report file.

The link opens the panel of :func:`~llmpulse.dashboards.panels.panel_for_signal` over
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
>>> links = AlertLinks("http://grafana:3000", server="http://10.0.0.5:8080")
>>> links.runbook("drift.psi"), links.report("/data/reports/20231114T221420Z-drift.psi-x.html")
('http://10.0.0.5:8080/dashboards/runbooks#feature-drift', 'http://10.0.0.5:8080/dashboards/reports/20231114T221420Z-drift.psi-x.html')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from urllib.parse import quote, urlsplit, urlunsplit

from llmpulse.dashboards.grafana import panel_url
from llmpulse.dashboards.panels import DASHBOARDS, panel_for_signal
from llmpulse.dashboards.runbooks import runbook_for

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


def _shows(sql: str, signal: str) -> bool:
    """Whether a panel's query selects ``signal`` by name or by its family's prefix.

    >>> _shows("WHERE signal IN ('latency.p50_ms', 'latency.p99_ms')", "latency.p99_ms")
    True
    >>> _shows("WHERE signal IN ('latency.p50_ms', 'latency.p99_ms')", "latency.change")
    False
    >>> _shows("WHERE signal LIKE 'drift.%'", "drift.psi")
    True
    """
    family = signal.partition(".")[0]
    return f"'{signal}'" in sql or f"signal LIKE '{family}.%'" in sql


@dataclass(frozen=True, slots=True)
class AlertLinks:
    """Builds the dashboard link of an alert.

    ``base`` is Grafana's URL (``http://grafana:3000``; a dashboard URL under
    it is accepted and cut back to the site) or, with ``embedded=True``, the
    llmpulse HTTP server (``http://127.0.0.1:8080``).
    """

    base: str
    embedded: bool = False
    server: str = ""
    """llmpulse's own HTTP server, which serves the runbooks and drift reports
    (default: ``base`` when ``embedded``; empty: no such links)."""

    def __post_init__(self) -> None:
        key = "http server" if self.embedded else "links.dashboard"
        object.__setattr__(self, "base", _base(self.base, embedded=self.embedded, key=key))
        server = self.server or (self.base if self.embedded else "")
        if server:
            server = _base(server, embedded=True, key="http server")
        object.__setattr__(self, "server", server)

    def runbook(self, signal: str, dimension: str = "") -> str | None:
        """The shipped runbook of the signal's family (for a rule with no ``runbook:``)."""
        if not self.server:
            return None
        return f"{self.server}/dashboards/runbooks#{runbook_for(signal, dimension).anchor}"

    def report(self, path: str) -> str:
        """The URL of a drift report file that the server serves (its path when none)."""
        p = PurePath(path)
        if not self.server or p.parent.name != "reports" or p.suffix != ".html":
            return path
        name = p.name
        return f"{self.server}/dashboards/reports/{quote(name)}"

    def dashboard(self, key: Mapping[str, str], start: float, end: float) -> str:
        """The panel showing ``key["signal"]`` over ``[start, end]`` (epoch s), filtered to the key."""
        name, pid = panel_for_signal(key.get("signal", ""), key.get("dimension", ""))
        d = DASHBOARDS[name]
        declared = {v.name for v in d.variables}
        if not _shows(d.panel(pid).sql, key.get("signal", "")):
            declared.discard("signal")  # e.g. latency.change opens the percentiles unfiltered
        variables = {var: key[field] for var, field in ALERT_KEY_VARIABLES
                     if var in declared and key.get(field)}
        return panel_url(self.base, d, pid, start, end, variables, embedded=self.embedded)

    __call__ = dashboard
