"""``python -m retrain.worker``: the retraining service as its own process.

Consumes ``llmpulse.retrain`` (consumer group ``llmpulse-retrain``) and runs
each request through :class:`~retrain.service.RetrainService` (dataset from
the store, training, gates, canary, promote or roll back), writing the
``deployments`` rows to the store and to ``llmpulse.deployments``. Stream
workers then run with ``LLMPULSE_RETRAIN=0`` so a request is retrained once.

Configuration is the stack's (:func:`llmpulse.config.load_settings`):
``LLMPULSE_KAFKA`` and ``LLMPULSE_CLICKHOUSE`` are required, the registry is
``<LLMPULSE_DATA_DIR>/registry``. ``LLMPULSE_RETRAIN_PORT`` turns the HTTP
pages on (``/serve/stats`` among them); without it the worker serves no HTTP.
``LLMPULSE_SERVE_URL`` names a running model server (``python -m
retrain.serving``): canaries are loaded into it, promoted in it or removed
from it through its ``/admin`` endpoints (:class:`RemoteServer`); without it
a release only updates the registry, which a restarted server reads.

Exit codes: 0 after SIGINT/SIGTERM, 2 for a configuration error, 1 when the
store or broker cannot be reached at start.

>>> missing_keys({"LLMPULSE_CLICKHOUSE": "http://ch:8123"})
['LLMPULSE_KAFKA']
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["APP_ID", "RemoteServer", "build_worker_app", "main", "missing_keys", "run"]

log = logging.getLogger("llmpulse.retrain.worker")

APP_ID = "llmpulse-retrain"
REQUIRED: tuple[str, ...] = ("LLMPULSE_KAFKA", "LLMPULSE_CLICKHOUSE")


def missing_keys(env: Mapping[str, str]) -> list[str]:
    """The required environment keys that are unset or empty.

    >>> missing_keys({})
    ['LLMPULSE_KAFKA', 'LLMPULSE_CLICKHOUSE']
    """
    return [k for k in REQUIRED if not str(env.get(k, "")).strip()]


class RemoteServer:
    """The part of :class:`~retrain.serving.ModelServer` a release drives, over HTTP.

    ``set_canary`` and ``promote_canary`` call ``/admin/canary`` and
    ``/admin/promote`` of the server at ``url``; artifact paths must be the
    same in both processes (the shared registry volume). A failed call
    raises, so the release is recorded as ``failed`` rather than believed.

    >>> RemoteServer("http://serving:8700/").url
    'http://serving:8700'
    """

    def __init__(self, url: str, *, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    async def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        import aiohttp

        from llmpulse.auth import auth_headers, client_token

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        headers = auth_headers(client_token())
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.post(self.url + path, json=dict(body), headers=headers) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{self.url}{path}: HTTP {resp.status}: {data}")
            return data

    async def set_canary(self, model: Any, version: str | None = None, share: float = 0.1) -> None:
        if model is None or share == 0.0:
            await self._post("/admin/canary", {"share": 0.0})
        else:
            await self._post("/admin/canary", {"path": str(model), "version": str(version),
                                               "share": float(share)})

    async def promote_canary(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._post("/admin/promote", {})
        return result


def build_worker_app(settings: Any, store: Any, *, bootstrap: str, web_port: int | None) -> Any:
    """The Faust app of the retrain worker (broker settings as :func:`streams.app.build_app`).

    Returns the app with ``llmpulse_retrain`` (the service) and
    ``llmpulse_sink`` attached; ``web_port=None`` disables HTTP.
    """
    from retrain.service import attach_retrain
    from streams.app import new_faust_app, store_sink

    datadir = settings.data_dir / "retrain-worker"
    datadir.mkdir(parents=True, exist_ok=True)
    app = new_faust_app(APP_ID, settings, bootstrap=bootstrap, datadir=datadir,
                        web_port=web_port)
    sink = store_sink(app, store, settings)
    attach_retrain(app, settings, store, sink)
    return app


async def run(settings: Any, *, web_port: int | None, serve_url: str | None,
              stop: asyncio.Event | None = None) -> int:
    """Open the store, start the app, wait for SIGINT/SIGTERM (or ``stop``), stop cleanly."""
    from llmpulse.broker import BrokerError, create_topics
    from llmpulse.events import TOPICS
    from llmpulse.store import Store, StoreError

    try:
        store = await asyncio.to_thread(Store.open, settings.clickhouse_dsn,
                                          credentials=settings.clickhouse_auth)
    except StoreError as exc:
        print(f"llmpulse retrain: {exc}", file=sys.stderr)
        return 1
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = None
    try:
        try:
            # idempotent; the broker may refuse to auto-create topics
            await asyncio.to_thread(create_topics, settings.kafka,
                                    {t: settings.ingest.partitions for t in TOPICS},
                                    security=settings.kafka_security)
        except BrokerError as exc:
            print(f"llmpulse retrain: {exc}", file=sys.stderr)
            return 1
        app = build_worker_app(settings, store, bootstrap=settings.kafka, web_port=web_port)
        if serve_url:
            app.llmpulse_retrain.server = RemoteServer(serve_url)
        await app.start()
        log.info("retrain worker up: kafka %s, store %s, registry %s, serving %s",
                 settings.kafka, settings.clickhouse_dsn, settings.data_dir / "registry",
                 serve_url or "registry only")
        await stop.wait()
        log.info("retrain worker stopping")
        return 0
    finally:
        if app is not None:
            try:
                await asyncio.wait_for(app.stop(), timeout=20)
            except Exception as exc:  # the store must still close
                log.warning("retrain worker stop: %s", exc)
        await asyncio.to_thread(store.close)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``python -m retrain.worker``; returns the exit code."""
    from llmpulse.config import ConfigError, load_settings

    env = os.environ if env is None else env
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    missing = missing_keys(env)
    if missing:
        print(f"llmpulse retrain: {missing[0]} is required (the retrain worker runs against a "
              "Kafka cluster and a ClickHouse server)", file=sys.stderr)
        return 2
    try:
        settings = load_settings(env=env)
        port = env.get("LLMPULSE_RETRAIN_PORT", "").strip()
        web_port = int(port) if port else None
        if web_port is not None and not 0 < web_port < 65536:
            raise ValueError(port)
    except ConfigError as exc:
        print(f"llmpulse retrain: {exc}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"llmpulse retrain: LLMPULSE_RETRAIN_PORT: {port!r} is not a port", file=sys.stderr)
        return 2
    return asyncio.run(run(settings, web_port=web_port,
                           serve_url=env.get("LLMPULSE_SERVE_URL", "").strip() or None))


if __name__ == "__main__":
    sys.exit(main())
