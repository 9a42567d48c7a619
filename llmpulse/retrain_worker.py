"""``python -m llmpulse.retrain_worker``: the retraining service as its own process.

Consumes ``llmpulse.retrain`` (consumer group ``llmpulse-retrain``) and runs
each request through :class:`~llmpulse.retrain.service.RetrainService` (dataset from
the store, training, gates, canary, promote or roll back), writing the
``deployments`` rows to the store and to ``llmpulse.deployments``. Stream
workers then run with ``LLMPULSE_RETRAIN=0`` so a request is retrained once;
their alert agents read the outcome back from ``llmpulse.deployments``.

Configuration is the stack's (:func:`llmpulse.config.load_settings`):
``LLMPULSE_KAFKA`` and ``LLMPULSE_CLICKHOUSE`` are required, the registry is
``<LLMPULSE_DATA_DIR>/registry``. ``LLMPULSE_RETRAIN_PORT`` turns the HTTP
pages on (``/serve/stats`` among them); without it the worker serves no HTTP.
``LLMPULSE_SERVE_URL`` names a running model server (``python -m
llmpulse.retrain.serving``), driven through :class:`~llmpulse.retrain.worker.RemoteServer`.

Exit codes: 0 after SIGINT/SIGTERM, 2 for a configuration error, 1 when the
store or broker cannot be reached at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

from llmpulse.config import Settings

__all__ = ["main", "run"]

log = logging.getLogger("llmpulse.retrain.worker")


async def run(settings: Settings, *, web_port: int | None, serve_url: str | None,
              stop: asyncio.Event | None = None) -> int:
    """Open the store, start the app, wait for SIGINT/SIGTERM (or ``stop``), stop cleanly."""
    from llmpulse.broker import BrokerError, create_topics
    from llmpulse.events import TOPICS
    from llmpulse.retrain.worker import RemoteServer
    from llmpulse.store import Store, StoreError
    from llmpulse.worker import RetrainWorker, build_retrain_worker

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
    worker: RetrainWorker | None = None
    try:
        assert settings.kafka is not None  # main() requires LLMPULSE_KAFKA
        try:
            # idempotent; the broker may refuse to auto-create topics
            await asyncio.to_thread(create_topics, settings.kafka,
                                    {t: settings.ingest.partitions for t in TOPICS},
                                    security=settings.kafka_security)
        except BrokerError as exc:
            print(f"llmpulse retrain: {exc}", file=sys.stderr)
            return 1
        worker = build_retrain_worker(settings, store, bootstrap=settings.kafka,
                                      web_port=web_port)
        if serve_url:
            worker.retrain.server = RemoteServer(serve_url)
        await worker.app.start()
        log.info("retrain worker up: kafka %s, store %s, registry %s, serving %s",
                 settings.kafka, settings.clickhouse_dsn, settings.data_dir / "registry",
                 serve_url or "registry only")
        await stop.wait()
        log.info("retrain worker stopping")
        return 0
    finally:
        if worker is not None:
            try:
                await asyncio.wait_for(worker.app.stop(), timeout=20)
            except Exception as exc:  # the store must still close
                log.warning("retrain worker stop: %s", exc)
        await asyncio.to_thread(store.close)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of ``python -m llmpulse.retrain_worker``; returns the exit code."""
    from llmpulse.config import ConfigError, load_settings
    from llmpulse.retrain.worker import missing_keys

    env = os.environ if env is None else env
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    missing = missing_keys(env)
    if missing:
        print(f"llmpulse retrain: {missing[0]} is required (the retrain worker runs against a "
              "Kafka cluster and a ClickHouse server)", file=sys.stderr)
        return 2
    port = ""
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
