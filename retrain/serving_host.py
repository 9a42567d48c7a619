"""The model server inside the stack: started in the background, pages under ``/serve``.

With serving on (``LLMPULSE_SERVING=1``) the stack serves the current version
of ``intent-router``: it is loaded (the reference version is bootstrapped
first when the registry has none) while the stack is already up, and its
predictions are monitored as ``inference/v1`` events on the stack's broker.
``/serve/predict``, ``/serve/health`` and ``/serve/stats`` answer 503 or the
status until it serves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from llmpulse.retrain.reference import REFERENCE_MODEL
from llmpulse.retrain.registry import ModelRegistry, ModelVersion
from llmpulse.retrain.serving import LoadedModel, ModelServer

__all__ = ["ServedService", "ServingHost"]

log = logging.getLogger(__name__)


class ServedService(Protocol):
    """What the host needs of :class:`llmpulse.retrain.service.RetrainService`."""

    registry: ModelRegistry
    server: ModelServer | None
    busy: bool
    counters: dict[str, int]

    async def bootstrap(self, model: str) -> ModelVersion: ...


class ServingHost:
    """The model server inside the stack: started in the background, pages under ``/serve``."""

    def __init__(self, service: ServedService, app: Any, settings: Any, *, enabled: bool) -> None:
        self.service = service
        self.app = app
        self.settings = settings
        self.enabled = enabled
        self.status = "off" if not enabled else "starting"
        self.monitor: Any = None
        self._lock = asyncio.Lock()

    def bootstrap_servers(self) -> str:
        """The stack's Kafka bootstrap servers, as the Faust app was configured."""
        broker = str(self.app.conf.broker[0]) if isinstance(self.app.conf.broker, list) else str(self.app.conf.broker)
        return broker.replace("kafka://", "").rstrip("/")

    async def start(self) -> Any:
        """Serve the current version (bootstrapping it if needed); returns the server."""

        async with self._lock:
            return await self._start()

    async def _start(self) -> Any:
        svc = self.service
        if svc.server is not None:
            return svc.server
        try:
            self.status = "starting"
            current = await asyncio.to_thread(svc.registry.current, REFERENCE_MODEL)
            if current is None:
                self.status = "bootstrapping"
                current = await svc.bootstrap(REFERENCE_MODEL)
            loaded = await asyncio.to_thread(LoadedModel, current.artifact, current.version)
            await asyncio.to_thread(loaded.warm_up)
            try:
                from llmpulse.monitor import Monitor

                self.monitor = Monitor(app="llmpulse-serving", bootstrap=self.bootstrap_servers(),
                                       strict=False, security=self.settings.kafka_security)
            except Exception as exc:
                log.warning("served predictions are not monitored: %s", exc)
            server = ModelServer(loaded, name=REFERENCE_MODEL, monitor=self.monitor)
            await server.start()
            svc.server = server
            self.status = "serving"
            log.info("serving %s version %s on %s", REFERENCE_MODEL, loaded.version, loaded.provider)
            return server
        except Exception:
            self.status = "failed"
            log.exception("model serving did not start")
            raise

    async def stop(self) -> None:
        server, self.service.server = self.service.server, None
        if server is not None:
            await server.close()
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.close)
            self.monitor = None

    def register_pages(self) -> None:
        import faust

        host = self

        def unavailable(view: Any) -> Any:
            return view.json({"error": f"model serving is {host.status}",
                              "hint": "set LLMPULSE_SERVING=1 to serve intent-router"}, status=503)

        @self.app.page("/serve/predict")
        class Predict(faust.web.View):
            async def post(self, request: Any) -> Any:
                server = host.service.server
                if server is None:
                    return unavailable(self)
                return await server._http_predict(request)

        @self.app.page("/serve/health")
        class Health(faust.web.View):
            async def get(self, request: Any) -> Any:
                server = host.service.server
                if server is None:
                    return self.json({"status": host.status})
                return await server._http_health(request)

        @self.app.page("/serve/stats")
        class Stats(faust.web.View):
            async def get(self, request: Any) -> Any:
                svc = host.service
                body: dict[str, Any] = {"serving": host.status,
                                        "retrain": {"busy": svc.busy, "outcomes": dict(svc.counters)}}
                if svc.server is not None:
                    body["server"] = svc.server.stats()
                return self.json(body)
