"""A webhook endpoint for the alerting benchmarks: it keeps every page it receives."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

__all__ = ["WebhookReceiver"]


class WebhookReceiver:
    """An aiohttp endpoint on loopback, in its own thread, that keeps every
    POSTed JSON body with the wall time it arrived.

    >>> import json, urllib.request
    >>> with WebhookReceiver() as hook:
    ...     body = json.dumps({"kind": "firing", "alert": {"app": "a", "alert_id": "x"}})
    ...     req = urllib.request.Request(hook.url, data=body.encode(), method="POST")
    ...     urllib.request.urlopen(req, timeout=10).read()
    ...     [b["alert"]["alert_id"] for _, b in hook.pages("a")], hook.pages("b")
    b'ok'
    (['x'], [])
    """

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="webhook", daemon=True)
        self._runner: Any = None

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("webhook receiver did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        from aiohttp import web

        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            at = time.time()
            with self._lock:
                self.received.append((at, json.loads(body)))
            return web.Response(text="ok")

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hook", hook)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    def pages(self, app: str) -> list[tuple[float, dict[str, Any]]]:
        """``(received_at, body)`` of the pages about ``app``, in arrival order."""
        with self._lock:
            return [(t, b) for t, b in self.received if b.get("alert", {}).get("app") == app]
