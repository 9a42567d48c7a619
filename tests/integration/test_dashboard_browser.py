"""The embedded dashboard in headless Chromium: every panel loads and shows data.

The page is served by a plain aiohttp server using ``dashboards.web.routes``
over a real chDB store filled by the simulator (no broker needed). Chromium
comes from Debian's ``chromium`` package; the session fixture installs it
when missing and skips with the reason when it cannot.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards.panels import DASHBOARDS
from dashboards.web import aiohttp_app
from llmpulse.sample_data import fill_store
from llmpulse.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
DURATION = 600.0


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        try:
            subprocess.run("apt-get update -q && apt-get install -y -q chromium", shell=True,
                           check=True, capture_output=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            out = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"chromium is not installed and apt-get could not install it: {exc} "
                        f"{out.decode(errors='replace')[-300:]}")
    if not Path(CHROMIUM).exists():
        pytest.skip("apt-get ran but /usr/bin/chromium is still missing")
    return CHROMIUM


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
               "tmp": tmp}
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
