"""An alert of a real ``llmpulse up`` links to its panel, filtered to the alert.

Two models send traffic through the shim; a rule pages on every window's p95
latency, so both models fire. The alert row the worker stored carries a
dashboard link; headless Chromium opens it and the linked panel draws the
alerted model's p95 line only (the same panel without the link's filters
draws every model and percentile). The runbook link opens the runbook of the
latency family.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from llmpulse.harness import wait_for
from tests.conftest import StackProcess
from tests.integration.test_dashboard_browser import _chromium, _panel, chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["chromium"]  # the fixture, imported from the dashboards browser test

RULES = """
rules:
  - name: p95-any
    signal: latency.p95_ms
    op: ">"
    threshold: 0
    for: 1
    resolve_for: 100
    min_n: 1
    severity: warning
"""


def _send(sp: StackProcess, app: str) -> None:
    from llmpulse.monitor import Monitor

    now_ms = int(time.time() * 1000)
    for model, base in (("alpha", 300.0), ("beta", 900.0)):
        with Monitor(app=app, bootstrap=sp.endpoints["kafka"], model=model,
                     model_version="1") as mon:
            for i in range(600):  # one minute of traffic, ten per second, ending now
                mon.inference(ts=now_ms - 60_000 + i * 100, latency_ms=base + i % 50,
                              status="ok", input_tokens=10, output_tokens=20)
            assert mon.flush(30)


def _alert(sp: StackProcess, app: str, model: str, timeout: float = 150.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sp.sql("SELECT alert_id, model, detail FROM alerts FINAL "
                      f"WHERE app = '{app}' AND model = '{model}' ORDER BY started_at LIMIT 1")
        if rows:
            return rows[0]
        time.sleep(1.0)
    raise AssertionError(f"no alert for {app}/{model} in {timeout} s: {sp.log()}")


def _stored_signal(sp: StackProcess, app: str, model: str, signal: str, start_ms: int,
                   end_ms: int, timeout: float = 150.0) -> int:
    """Wait until ``model``'s ``signal`` rows in [start_ms, end_ms] are stored; their count.

    The worker closes each model's windows on its own, so one model's alert
    says nothing of another model's signals: pages drawn before they are
    stored would lack that model's lines.
    """
    sql = (f"SELECT count() AS n FROM signals FINAL WHERE app = '{app}' AND model = '{model}' "
           f"AND signal = '{signal}' AND ts >= fromUnixTimestamp64Milli(toInt64({start_ms})) "
           f"AND ts <= fromUnixTimestamp64Milli(toInt64({end_ms}))")
    try:
        return wait_for(lambda: int(sp.sql(sql)[0]["n"]), timeout,
                        f"{signal} of {app}/{model} stored", every=1.0)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {sp.log()}") from None


def test_stack_alert_link_opens_the_panel_with_only_the_alerted_series(
        chromium: str, stack_factory: Any, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    sp = stack_factory(LLMPULSE_RULES=str(rules)).start(timeout=180)
    app = f"links-{uuid.uuid4().hex[:6]}"
    _send(sp, app)
    row = _alert(sp, app, "alpha")
    links = json.loads(row["detail"])["links"]
    link = links["dashboard"]
    u = urlsplit(link)
    assert f"{u.scheme}://{u.netloc}" == sp.endpoints["http"]
    assert (u.path, u.fragment) == ("/dashboards/overview", "panel-6")
    q = parse_qs(u.query)
    assert (q["var-app"], q["var-model"], q["var-version"], q["var-signal"]) == (
        [app], ["alpha"], ["1"], ["latency.p95_ms"])
    start_ms, end_ms = int(q["from"][0]), int(q["to"][0])
    # the alert is raised after the signals it was computed from are stored; checked anyway
    _stored_signal(sp, app, "alpha", "latency.p95_ms", start_ms, end_ms)
    profile = tmp_path / "browser"
    profile.mkdir()
    done = _chromium(chromium, profile, link.replace("#", "&refresh=0#", 1), "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _panel(done.stdout, 6) == (1, ["alpha p95_ms"]), link
    # beta's windows close independently of alpha's: wait for its rows before the wide page
    _stored_signal(sp, app, "beta", "latency.p95_ms", start_ms, end_ms)
    span = f"from={start_ms}&to={end_ms}"
    rows = sp.get(f"/dashboards/overview/panel/6.json?{span}")["rows"]
    series = {r["series"] for r in rows}
    assert {"alpha p95_ms", "beta p95_ms"} <= series, series
    wide = f"{sp.endpoints['http']}/dashboards/overview?{span}&refresh=0"
    done = _chromium(chromium, profile, wide, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    drawn, legend = _panel(done.stdout, 6)
    # the page draws every series the panel's rows hold (more if windows closed in between)
    assert drawn >= 4 and series <= set(legend), (series, legend)
    # the runbook link opens the latency runbook on the same server
    runbook = urlsplit(links["runbook"])
    assert runbook.fragment == "latency"
    done = _chromium(chromium, profile, links["runbook"], "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r'<section class="runbook" id="latency">', done.stdout)
