"""The OTLP receiver's own reading of request bodies: gzip inflated within the limit,
broken or unsupported encodings refused, on a server that does not inflate bodies
itself (as ``new_faust_app`` configures it)."""

from __future__ import annotations

import gzip
import zlib

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmpulse.streams.otlp import BodyError, _read_body

LIMIT = 1 << 20


async def _client() -> TestClient:
    async def read(request: web.Request) -> web.Response:
        try:
            body = await _read_body(request, LIMIT)
        except BodyError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if body is None:
            return web.json_response({"error": "too large"}, status=413)
        return web.json_response({"n": len(body), "head": body[:16].decode("latin-1")})

    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_post("/v1/traces", read)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


def _bomb(mib: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(c.compress(b"\0" * (1 << 20)) for _ in range(mib)) + c.flush()


@pytest.mark.parametrize(("body", "headers", "status", "expect"), [
    (b"plain body", {}, 200, {"n": 10, "head": "plain body"}),
    (gzip.compress(b"x" * 1000), {"Content-Encoding": "gzip"}, 200, {"n": 1000}),
    (gzip.compress(b"y" * 10), {"Content-Encoding": " GZIP "}, 200, {"n": 10}),
    (gzip.compress(b"z" * 10), {"Content-Encoding": "x-gzip"}, 200, {"n": 10}),
    # exactly the limit, and one byte past it once inflated
    (gzip.compress(b"\0" * LIMIT), {"Content-Encoding": "gzip"}, 200, {"n": LIMIT}),
    (gzip.compress(b"\0" * (LIMIT + 1)), {"Content-Encoding": "gzip"}, 413, None),
    # 256 MiB of zeros in 250 KB: inflated no further than the limit
    (_bomb(256), {"Content-Encoding": "gzip"}, 413, None),
    # taken for an empty body before
    (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400, "gzip stream"),
    (gzip.compress(b"")[:10], {"Content-Encoding": "gzip"}, 400, "cut short"),
    (gzip.compress(b"spans" * 100)[:-8], {"Content-Encoding": "gzip"}, 400, "cut short"),
    (gzip.compress(b"a") + b"junk", {"Content-Encoding": "gzip"}, 400, "after the end"),
    (zlib.compress(b"deflated"), {"Content-Encoding": "deflate"}, 400, "not supported"),
    (b"x", {"Content-Encoding": "br"}, 400, "not supported"),
])
async def test_bodies(body: bytes, headers: dict[str, str], status: int, expect: object) -> None:
    client = await _client()
    try:
        r = await client.post("/v1/traces", data=body, headers=headers)
        answer = await r.json()
        assert r.status == status, answer
        if isinstance(expect, dict):
            assert expect.items() <= answer.items()
        elif isinstance(expect, str):
            assert expect in answer["error"]
    finally:
        await client.close()


def test_the_workers_web_server_leaves_bodies_to_the_routes(tmp_path) -> None:
    from llmpulse.config import load_settings
    from llmpulse.streams.app import new_faust_app

    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path)}, path=None)
    app = new_faust_app("t", settings, bootstrap="127.0.0.1:1", datadir=tmp_path / "w",
                        web_port=18080)
    assert app.conf.web_application_options["handler_args"] == {"auto_decompress": False}
