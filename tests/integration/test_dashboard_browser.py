"""The embedded dashboard in headless Chromium: every panel loads and shows data.

The page is served by a plain aiohttp server using ``llmpulse.dashboards.web.routes``
over a real chDB store filled by the simulator (no broker needed). Chromium
comes from Debian's ``chromium`` package; the session fixture installs it
when missing and, when it cannot, skips with the reason (fails under
``CI=true``; see :mod:`tests.browser`).
"""

from __future__ import annotations

import asyncio
import html
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from llmpulse.dashboards.links import AlertLinks
from llmpulse.dashboards.panels import DASHBOARDS
from llmpulse.dashboards.web import aiohttp_app
from llmpulse.detectors.base import Signal
from llmpulse.sample_data import fill_store
from llmpulse.store import Store
from llmpulse.streams.alerting import AlertManager
from llmpulse.streams.rules import Rules
from tests.browser import CHROMIUM as _CHROMIUM
from tests.browser import ensure_chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = str(_CHROMIUM)
DURATION = 600.0


@pytest.fixture(scope="session")
def chromium() -> str:
    return ensure_chromium(Path(CHROMIUM))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dash-browser")
    store = Store.open(f"chdb://{tmp}/store")
    start = float(int(time.time()) // 60 * 60 - 2 * 3600)
    try:
        fill_store(store, seed=5, start_ts=start, duration_s=DURATION, rate=5)

        def query(sql: str, params: Any) -> list[dict[str, Any]]:
            return store.query(sql, params, readonly=True)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        holder: dict[str, Any] = {}

        async def serve() -> None:
            from aiohttp import web

            runner = web.AppRunner(aiohttp_app(query))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            holder["runner"] = runner
            ready.set()

        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
        assert ready.wait(30)
        yield {"base": f"http://127.0.0.1:{port}", "start": start, "end": start + DURATION,
               "tmp": tmp, "query": query}
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    finally:
        store.close()


def _chromium(binary: str, tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,2000",
         "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_every_panel_shows_data(chromium: str, served: dict[str, Any], name: str) -> None:
    url = (f"{served['base']}/dashboards/{name}?from={int(served['start'] * 1000)}"
           f"&to={int(served['end'] * 1000)}&refresh=0")
    done = _chromium(chromium, served["tmp"], url, "--dump-dom")
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    sections = re.findall(r'<section class="panel" id="panel-(\d+)".*?</section>', dom, re.S)
    assert len(sections) == len(DASHBOARDS[name].panels), dom[:2000]
    rows = dict(re.findall(r'id="panel-(\d+)".*?<div class="pbody" data-kind="\w+" '
                           r'data-rows="(\d+)"', dom, re.S))
    empty = [p.title for p in DASHBOARDS[name].panels if int(rows.get(str(p.id), "0")) == 0]
    assert not empty, f"panels without data on {name}: {empty}"
    assert "loading…" not in dom
    assert "query failed" not in dom


def test_screenshot_is_a_real_picture(chromium: str, served: dict[str, Any]) -> None:
    url = (f"{served['base']}/dashboards/overview?from={int(served['start'] * 1000)}"
           f"&to={int(served['end'] * 1000)}&refresh=0")
    shot = served["tmp"] / "dash.png"
    done = _chromium(chromium, served["tmp"], url, f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 2000)
    assert len(data) > 50_000  # charts, tables and text, not a blank page


def _alert_link(served: dict[str, Any], signal: str, dimension: str, rule: str) -> str:
    """Replay the store's own signals of one key through the alert state machine and
    return the dashboard link of the alert that fires."""
    rows = served["query"](
        "SELECT toUnixTimestamp64Milli(ts) AS ms, window_s, app, model, model_version, value, n "
        "FROM signals FINAL WHERE signal = {s:String} AND dimension = {d:String} "
        "AND model = 'gpt-4o-mini' ORDER BY ts", {"s": signal, "d": dimension})
    assert rows, f"no {signal} signals in the store"
    rules = Rules.from_yaml(rule)
    am = AlertManager(rules, linker=AlertLinks(served["base"], embedded=True),
                      link_padding_s=60.0)
    fired = [ev for r in rows for ev in am.process(Signal(
        signal, float(r["value"]), n=int(r["n"]), ts=float(r["ms"]) / 1000.0,
        window_s=float(r["window_s"]), app=r["app"], model=r["model"],
        model_version=r["model_version"], dimension=dimension)) if ev.kind == "firing"]
    assert fired, "the rule never fired on the stored signals"
    link: str = fired[0].detail["links"]["dashboard"]
    return link


def _panel(dom: str, pid: int) -> tuple[int, list[str]]:
    """(series drawn, legend names) of one panel in a dumped page."""
    section = re.search(rf'<section class="panel" id="panel-{pid}".*?</section>', dom, re.S)
    assert section, dom[:2000]
    body = section.group(0)
    drawn = re.search(r'data-series="(\d+)"', body)
    assert drawn, body[:2000]
    legend = re.findall(r'<span><i style="background:#\w+"></i>([^<]*)</span>', body)
    return int(drawn.group(1)), [html.unescape(n) for n in legend]


@pytest.mark.parametrize(("signal", "dimension", "pid", "rule", "series"), [
    ("drift.psi", "input_tokens", 1,
     "rules: [{name: drift, signal: drift.psi, op: '>=', threshold: 0, for: 1}]",
     "input_tokens psi"),
    ("latency.p99_ms", "", 6,
     "rules: [{name: slow, signal: latency.p99_ms, op: '>', threshold: 0, for: 1}]",
     "gpt-4o-mini p99_ms"),
])
def test_alert_link_opens_the_panel_with_only_the_alerted_series(
        chromium: str, served: dict[str, Any], signal: str, dimension: str, pid: int,
        rule: str, series: str) -> None:
    link = _alert_link(served, signal, dimension, rule)
    url = urlsplit(link)
    assert url.fragment == f"panel-{pid}"
    done = _chromium(chromium, served["tmp"], link + "&refresh=0" if "#" not in link
                     else link.replace("#", "&refresh=0#", 1), "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    drawn, legend = _panel(done.stdout, pid)
    assert (drawn, legend) == (1, [series]), (link, drawn, legend)
    # the same panel without the alert's filters draws more: the filter did the work
    wide = link.split("?")[0] + "?" + "&".join(
        kv for kv in url.query.split("&") if kv.startswith(("from=", "to="))) + "&refresh=0"
    done = _chromium(chromium, served["tmp"], wide, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _panel(done.stdout, pid)[0] > 1


def _column(dom: str, pid: int, column: str) -> list[str]:
    """The cells of one column of a table panel in a dumped page."""
    section = re.search(rf'<section class="panel" id="panel-{pid}".*?</section>', dom, re.S)
    assert section, dom[:2000]
    heads = [html.unescape(h) for h in re.findall(r"<th>([^<]*)</th>", section.group(0))]
    rows = re.findall(r"<tr>(<td.*?)</tr>", section.group(0), re.S)
    at = heads.index(column)
    return [html.unescape(re.findall(r"<td[^>]*>([^<]*)</td>", r)[at]) for r in rows]


def test_prompt_version_in_the_url_filters_the_page(chromium: str,
                                                    served: dict[str, Any]) -> None:
    rng = f"from={int(served['start'] * 1000)}&to={int(served['end'] * 1000)}&refresh=0"
    pages = {}
    for filt in ("", "&var-prompt_version=v2"):
        done = _chromium(chromium, served["tmp"],
                         f"{served['base']}/dashboards/quality?{rng}{filt}", "--dump-dom")
        assert done.returncode == 0, done.stderr[-2000:]
        assert "query failed" not in done.stdout and "loading…" not in done.stdout
        pages[filt] = done.stdout
    assert re.search(r'<select name="var-prompt_version">.*?<option selected(="")? value="v2">',
                     pages["&var-prompt_version=v2"], re.S)
    for pid in (2, 5):  # the worst answers and the traffic per prompt version
        assert set(_column(pages[""], pid, "prompt_version")) == {"v1", "v2"}, pid
        only = _column(pages["&var-prompt_version=v2"], pid, "prompt_version")
        assert only and set(only) == {"v2"}, pid
    stored = served["query"]("SELECT count() AS n FROM inference_events FINAL "
                             "WHERE prompt_version = 'v2'", {})[0]["n"]
    shown = _column(pages["&var-prompt_version=v2"], 5, "requests")
    assert sum(int(n.replace(",", "")) for n in shown) == stored
