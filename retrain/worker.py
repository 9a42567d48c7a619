"""What the retrain worker process needs from the retrain side.

The process itself (``python -m llmpulse.retrain_worker``) is assembled in
the top layer (:mod:`llmpulse.retrain_worker`): it consumes
``llmpulse.retrain`` and runs each request through
:class:`~llmpulse.retrain.service.RetrainService`. Here: the settings it cannot run
without (:func:`missing_keys`) and :class:`RemoteServer`, the model server it
drives over HTTP when ``LLMPULSE_SERVE_URL`` names one (canaries are loaded
into it, promoted in it or removed from it through its ``/admin``
endpoints); without one a release only updates the registry, which a
restarted server reads.

>>> missing_keys({"LLMPULSE_CLICKHOUSE": "http://ch:8123"})
['LLMPULSE_KAFKA']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["REQUIRED", "RemoteServer", "missing_keys"]

REQUIRED: tuple[str, ...] = ("LLMPULSE_KAFKA", "LLMPULSE_CLICKHOUSE")


def missing_keys(env: Mapping[str, str]) -> list[str]:
    """The required environment keys that are unset or empty.

    >>> missing_keys({})
    ['LLMPULSE_KAFKA', 'LLMPULSE_CLICKHOUSE']
    """
    return [k for k in REQUIRED if not str(env.get(k, "")).strip()]


class RemoteServer:
    """The part of :class:`~llmpulse.retrain.serving.ModelServer` a release drives, over HTTP.

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
