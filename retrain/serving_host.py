"""The model server inside the stack: started in the background, pages under ``/serve``.

With serving on (``LLMPULSE_SERVING=1``) the stack serves the current version
of ``intent-router``: it is loaded (the reference version is bootstrapped
first when the registry has none) while the stack is already up, and its
predictions are monitored as ``inference/v1`` events on the stack's broker.
``/serve/predict``, ``/serve/health`` and ``/serve/stats`` answer 503 or the
status until it serves.

The server follows the registry (:meth:`ServingHost.follow`, every
:data:`FOLLOW_S`): a ``llmpulse deploy`` or ``llmpulse rollback`` run from a
shell changes only the registry, and before this the stack went on serving
the old version while the registry, the ``deployments`` rows and the
dashboards named the new one. While a retrain runs, the retrain service drives
the server itself and the follower waits.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from llmpulse.retrain.reference import REFERENCE_MODEL
from llmpulse.retrain.registry import ModelRegistry, ModelVersion, sha256_file
from llmpulse.retrain.serving import LoadedModel, ModelServer

__all__ = ["FOLLOW_S", "ServedService", "ServingHost"]

log = logging.getLogger(__name__)

FOLLOW_S = 2.0
"""How often the stack's model server compares what it serves with the registry."""


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
        self._refused: set[tuple[str, str]] = set()  # (version, sha256) that failed to load
        self.followed = 0
        """Changes made in the registry by others (``llmpulse deploy``/``rollback``) served."""

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

    async def follow(self) -> str | None:
        """Serve what the registry says, if another process changed it: its current
        version, and its canary (at the share it was started with) or none. Returns what
        changed (None: nothing). A version whose artifact fails its sha256 or does not
        load is logged once and left out; the version serving goes on."""
        svc = self.service
        server = svc.server
        if server is None or svc.busy or self._lock.locked():
            return None
        async with self._lock:
            current, canary, share = await asyncio.to_thread(self._wanted)
            done = []
            if (current is not None and current.version != server.active.version
                    and await self._load(current, server.swap, current.artifact,
                                         current.version)):
                done.append(f"version {current.version} now serves")
            served = server.canary.version if server.canary is not None else None
            want = canary.version if canary is not None else None
            if want != served:
                if canary is None:
                    await server.set_canary(None)
                    done.append(f"canary {served} withdrawn")
                elif await self._load(canary, server.set_canary, canary.artifact,
                                      canary.version, share):
                    done.append(f"version {canary.version} serves {share:.0%} as a canary")
            if not done:
                return None
            self.followed += 1
            what = "; ".join(done)
            log.info("%s: following the registry: %s", REFERENCE_MODEL, what)
            return what

    def _wanted(self) -> tuple[ModelVersion | None, ModelVersion | None, float]:
        reg = self.service.registry
        current = reg.current(REFERENCE_MODEL)
        canary = reg.canary(REFERENCE_MODEL)
        share = 0.0
        if canary is not None:
            for d in reversed(reg.deployments(REFERENCE_MODEL)):
                if d.stage == "canary" and d.version == canary.version:
                    try:  # a registry file edited by hand: no share, no canary
                        share = float(d.metrics.get("share") or 0.0)
                    except (TypeError, ValueError):
                        share = 0.0
                    break
            if not 0.0 < share < 1.0:  # not a share a server can route: no canary
                canary = None
        return current, canary, share

    async def _load(self, mv: ModelVersion, action: Any, *args: Any) -> bool:
        key = (mv.version, mv.sha256)
        if key in self._refused:
            return False
        try:
            digest = await asyncio.to_thread(sha256_file, mv.artifact)
            if digest != mv.sha256:
                raise ValueError(f"the artifact's sha256 is {digest[:12]}..., the registry "
                                 f"holds {mv.sha256[:12]}...")
            await action(*args)
            return True
        except Exception as exc:
            self._refused.add(key)
            log.error("%s: the registry names version %s, which was not loaded (%s: %s); "
                      "the server keeps serving what it served", REFERENCE_MODEL, mv.version,
                      type(exc).__name__, exc)
            return False

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
