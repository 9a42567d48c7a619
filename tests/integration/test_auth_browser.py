"""Sign-in and cross-origin defences of a real ``llmpulse up``, in headless Chromium.

1. With API tokens: a fresh browser gets 401 on the dashboards; opening the
   one-time URL ``up`` printed lands on a dashboard whose panels all load
   with the session cookie.
2. With no tokens on loopback (authentication off, the most exposed case): a
   page served from another local port, i.e. another origin of the same
   site, tries a "simple" text/plain fetch, a JSON fetch, a form POST, a
   read and an ``<img>`` GET against the stack. It reads nothing, and the
   stack's log shows each one refused by the guard, before any handler.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from llmpulse.dashboards.panels import DASHBOARDS
from tests.conftest import StackProcess, stack_env
from tests.integration.test_auth_stack import cli
from tests.integration.test_dashboard_browser import _chromium, chromium

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["chromium"]  # the fixture, imported from the dashboards browser test


def _browse(binary: str, profile_root: Path, url: str, *extra: str) -> Any:
    """Chromium with its own profile under ``profile_root`` (no cookie from another run)."""
    profile_root.mkdir(parents=True, exist_ok=True)
    return _chromium(binary, profile_root, url, *extra)


def _stack(root: Path, *, tokens: bool) -> tuple[StackProcess, dict[str, str]]:
    data = root / "data"
    data.mkdir()
    env = stack_env(data)
    if tokens:
        made = cli(env, "token", "create", "--name", "ops", "--role", "admin", cwd=root)
        assert made.returncode == 0, made.stderr
    sp = StackProcess(data, env)
    sp.start(timeout=180)
    return sp, env


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    sp, _ = _stack(tmp_path_factory.mktemp("browser-secured"), tokens=True)
    try:
        yield sp
    finally:
        sp.stop()


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    sp, _ = _stack(tmp_path_factory.mktemp("browser-open"), tokens=False)
    try:
        yield sp
    finally:
        sp.stop()


def test_dashboards_load_after_the_one_time_login_url(chromium: str, secured: StackProcess,
                                                      tmp_path: Path) -> None:
    base = secured.endpoints["http"]
    assert secured.log_path is not None
    m = re.search(r"(http://\S+/login\?code=[A-Za-z0-9_\-]+)", secured.log_path.read_text())
    assert m, secured.log()
    target = "/dashboards/overview?from=now-1h&to=now&refresh=0"

    refused = _browse(chromium, tmp_path / "anon", f"{base}{target}", "--dump-dom")
    assert refused.returncode == 0, refused.stderr[-2000:]
    assert "authentication required" in refused.stdout and 'class="panel"' not in refused.stdout

    url = f"{m.group(1)}&next={quote(target, safe='')}"
    done = _browse(chromium, tmp_path / "user", url, "--dump-dom",
                     "--virtual-time-budget=20000")
    dom = done.stdout
    assert done.returncode == 0, done.stderr[-2000:]
    sections = re.findall(r'<section class="panel" id="panel-(\d+)".*?</section>', dom, re.S)
    assert len(sections) == len(DASHBOARDS["overview"].panels), dom[:3000]
    loaded = re.findall(r'id="panel-(\d+)".*?<div class="pbody" data-kind="\w+"', dom, re.S)
    assert len(loaded) == len(sections), dom[:3000]
    assert "loading…" not in dom and "authentication required" not in dom
    assert "code=" not in dom  # the code never lands in the page

    second = _browse(chromium, tmp_path / "other", m.group(1), "--dump-dom",
                       "--virtual-time-budget=10000")
    assert "sign-in refused" in second.stdout, second.stdout[:2000]  # one time only


_EVIL = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="f" method="POST" action="STACK/api/query" enctype="text/plain" target="sink">
<input name='{"sql": "SELECT 1 AS form_post", "pad": "' value='"}'></form>
<img src="STACK/api/query?sql=SELECT%201%20AS%20img_get">
<script>
function note(k, v) {
  var p = document.createElement("p"); p.id = "r-" + k; p.textContent = k + "=" + v;
  document.body.appendChild(p);
}
function attempt(k, promise) {
  promise.then(function (r) {
    return r.text().then(function (t) { note(k, r.type + " " + r.status + " " + t); });
  }).catch(function (e) { note(k, "blocked " + e.name); });
}
attempt("simple", fetch("STACK/api/query", {method: "POST", mode: "no-cors",
  credentials: "include", headers: {"Content-Type": "text/plain"},
  body: JSON.stringify({sql: "SELECT 1 AS simple_post"})}));
attempt("json", fetch("STACK/api/query", {method: "POST", credentials: "include",
  headers: {"Content-Type": "application/json"},
  body: JSON.stringify({sql: "SELECT 1 AS json_post"})}));
attempt("read", fetch("STACK/api/stats", {credentials: "include"}));
document.getElementById("f").submit();
</script></body></html>"""


@pytest.fixture
def evil_site(open_stack: StackProcess) -> Iterator[str]:
    """An aiohttp server on another port serving the attacking page."""
    from aiohttp import web

    page = _EVIL.replace("STACK", open_stack.endpoints["http"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        async def index(request: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", index)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        holder["runner"] = runner

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(30)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_another_origin_cannot_query_even_with_auth_off(chromium: str, open_stack: StackProcess,
                                                        evil_site: str, tmp_path: Path) -> None:
    assert open_stack.log_path is not None
    before = len(open_stack.log_path.read_text())
    done = _browse(chromium, tmp_path / "victim", evil_site, "--dump-dom",
                     "--virtual-time-budget=15000")
    assert done.returncode == 0, done.stderr[-2000:]
    results = dict(re.findall(r'<p id="r-(\w+)">\w+=([^<]*)</p>', done.stdout))
    assert set(results) == {"simple", "json", "read"}, done.stdout[:3000]
    assert results["simple"].startswith("opaque 0")  # nothing readable
    assert results["json"].startswith("blocked") and results["read"].startswith("blocked")
    assert "rows" not in done.stdout
    log = open_stack.log_path.read_text()[before:]
    refused = re.findall(r"refused (\w+) (/\S+) from \S+: (.*)", log)
    kinds = {(m, p) for m, p, _ in refused}
    assert ("POST", "/api/query") in kinds, log  # the simple fetch and the form post
    assert sum(1 for m, p, _ in refused if (m, p) == ("POST", "/api/query")) >= 2, log
    assert ("OPTIONS", "/api/query") in kinds, log  # the JSON fetch stops at its preflight
    assert ("GET", "/api/stats") in kinds, log
    assert ("GET", "/api/query") in kinds, log  # the <img>: no Origin, but Sec-Fetch-Site
    assert all(why.startswith(("Origin", "Sec-Fetch-Site")) for _, _, why in refused), refused
    # the stack itself still answers its own origin with auth off
    ok = cli(open_stack.env, "status", cwd=open_stack.data_dir.parent)
    assert ok.returncode == 0 and "llmpulse ok" in ok.stdout
