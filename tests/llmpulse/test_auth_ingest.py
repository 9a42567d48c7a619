"""The ``ingest`` role and the OTLP path through the request guard, on a real aiohttp server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmpulse.auth import (
    INGEST,
    ROLES,
    ApiGuard,
    AuthError,
    Principal,
    TokenTable,
    create_token,
    load_tokens,
    route_role,
)

PROTO = {"Content-Type": "application/x-protobuf"}


class Client:
    def __init__(self, client: TestClient, tokens: dict[str, str], seen: list[str]) -> None:
        self.c, self.tokens, self.seen = client, tokens, seen

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


async def _client(guard: ApiGuard, seen: list[str]) -> TestClient:
    async def ok(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path} {request.content_type}")
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[guard.middleware()])
    for path in ("/v1/traces", "/api/query"):
        app.router.add_post(path, ok)
        app.router.add_get(path, ok)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Client]:
    path = tmp_path / "tokens.json"
    tokens = {role: create_token(path, f"t-{role}", role) for role in ROLES}
    seen: list[str] = []
    client = await _client(ApiGuard(TokenTable.from_file(path), loopback=True), seen)
    yield Client(client, tokens, seen)
    await client.close()


def test_ingest_is_a_role_of_its_own(tmp_path: Path) -> None:
    assert INGEST in ROLES and route_role("/v1/traces") == INGEST
    assert Principal("a", "ingest").allows("ingest")
    assert not Principal("a", "ingest").allows("read")
    assert not Principal("a", "ingest").allows("admin")
    assert not Principal("a", "read").allows("ingest")
    assert Principal("a", "admin").allows("ingest")
    path = tmp_path / "tokens.json"
    create_token(path, "otel", "ingest")
    assert [r.role for r in load_tokens(path)] == ["ingest"]
    with pytest.raises(AuthError, match="--role"):
        create_token(path, "x", "write")


async def test_only_ingest_and_admin_tokens_post_spans(guarded: Client) -> None:
    c = guarded.c
    assert (await c.post("/v1/traces", data=b"\n\0", headers=PROTO)).status == 401
    r = await c.post("/v1/traces", data=b"\n\0", headers={**PROTO, **guarded.bearer("read")})
    assert r.status == 403
    for role in ("ingest", "admin"):
        r = await c.post("/v1/traces", data=b"\n\0", headers={**PROTO, **guarded.bearer(role)})
        assert r.status == 200, role
    # an ingest token reads nothing
    r = await c.post("/api/query", json={"sql": "SELECT 1"}, headers=guarded.bearer("ingest"))
    assert r.status == 403
    assert guarded.seen == ["POST /v1/traces application/x-protobuf"] * 2


async def test_v1_traces_leaves_the_body_type_to_its_handler_but_keeps_the_other_defences(
        guarded: Client) -> None:
    c, h = guarded.c, guarded.bearer("ingest")
    # the receiver answers any other type 415 itself (and dead-letters it)
    r = await c.post("/v1/traces", data=b"x", headers={**h, "Content-Type": "text/plain"})
    assert r.status == 200 and guarded.seen == ["POST /v1/traces text/plain"]
    # without a credential the handler never sees the body, whatever its type
    r = await c.post("/v1/traces", data=b"x", headers={"Content-Type": "text/plain"})
    assert r.status == 401
    # other routes still take JSON only
    r = await c.post("/api/query", data=b"\n\0", headers={**PROTO, **guarded.bearer("admin")})
    assert r.status == 415
    # cross-origin and cross-site requests are refused before the handler
    for extra in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                  {"Sec-Fetch-Site": "same-site"}, {"Host": "rebound.example"}):
        r = await c.post("/v1/traces", data=b"\n\0", headers={**PROTO, **h, **extra})
        assert r.status == 403, extra
    r = await c.options("/v1/traces", headers={"Origin": "http://evil.example",
                                               "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": "content-type"})
    assert r.status == 403 and not [k for k in r.headers if k.lower().startswith("access-control")]
    assert len(guarded.seen) == 1


async def test_no_tokens_on_loopback_still_refuses_cross_origin_spans(tmp_path: Path) -> None:
    seen: list[str] = []
    client = await _client(ApiGuard(TokenTable(), loopback=True), seen)
    try:
        assert (await client.post("/v1/traces", data=b"\n\0", headers=PROTO)).status == 200
        r = await client.post("/v1/traces", data=b"\n\0",
                              headers={**PROTO, "Origin": "http://localhost:1"})
        assert r.status == 403
        assert seen == ["POST /v1/traces application/x-protobuf"]
    finally:
        await client.close()
