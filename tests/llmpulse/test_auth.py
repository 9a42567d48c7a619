"""API tokens, sessions and the request guard on a real aiohttp server (no stack needed)."""

from __future__ import annotations

import hmac
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmpulse import auth
from llmpulse.audit import AuditEvent
from llmpulse.auth import (
    ApiGuard,
    AuthError,
    OneTimeCodes,
    Principal,
    Sessions,
    TokenRecord,
    TokenTable,
    client_token,
    create_token,
    hash_token,
    is_loopback_host,
    load_tokens,
    revoke_token,
    tokens_path,
)


def test_tokens_file_holds_hashes_only_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    ci = create_token(path, "ci", "admin", now=1.0)
    viewer = create_token(path, "viewer", "read", now=2.0)
    text = path.read_text()
    assert ci not in text and viewer not in text
    assert hash_token(ci) in text and hash_token(viewer) in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [(r.name, r.role) for r in load_tokens(path)] == [("ci", "admin"), ("viewer", "read")]
    with pytest.raises(AuthError, match="--name: a token named 'ci' exists"):
        create_token(path, "ci", "read")
    with pytest.raises(AuthError, match="--role"):
        create_token(path, "x", "root")
    assert revoke_token(path, "ci") and not revoke_token(path, "ci")
    assert [r.name for r in load_tokens(path)] == ["viewer"]


@pytest.mark.parametrize(("content", "key"), [
    ("{not json", "not valid JSON"),
    ('{"tokens": {}}', "tokens: must be an object"),
    ('{"tokens": [{"name": "a", "role": "root", "sha256": "' + "0" * 64 + '"}]}', "tokens[0].role"),
    ('{"tokens": [{"name": "a", "role": "read", "sha256": "lp_secret"}]}', "tokens[0].sha256"),
    ('{"tokens": [{"name": "a b", "role": "read", "sha256": "' + "0" * 64 + '"}]}',
     "tokens[0].name"),
    ('{"tokens": [{"name": "a", "role": "read", "sha256": "' + "0" * 64 + '", "token": "x"}]}',
     "tokens[0].token: unknown key"),
    ('{"tokens": [' + ",".join(['{"name": "a", "role": "read", "sha256": "' + "0" * 64 + '"}'] * 2)
     + "]}", "name 'a' appears twice"),
])
def test_bad_tokens_file_names_the_file_and_key(tmp_path: Path, content: str, key: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(AuthError) as err:
        load_tokens(path)
    assert str(err.value).startswith(str(path)) and key in str(err.value)


def test_tokens_path_prefers_the_environment(tmp_path: Path) -> None:
    assert tokens_path(tmp_path, {}) == tmp_path / "tokens.json"
    assert tokens_path(tmp_path, {"LLMPULSE_TOKENS_FILE": "/etc/lp.json"}) == Path("/etc/lp.json")


def test_lookup_compares_every_hash_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    good = auth.new_token()
    records = [TokenRecord(f"t{i}", "read", hash_token(auth.new_token())) for i in range(3)]
    table = TokenTable([TokenRecord("good", "admin", hash_token(good)), *records])
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    wrong = good[:-1] + ("A" if good[-1] != "A" else "B")  # same length, one character off
    assert len(wrong) == len(good) and table.lookup(wrong) is None
    assert len(seen) == 4 and {b for _, b in seen} == {r.sha256.encode() for r in table.records}
    seen.clear()
    found = table.lookup(good)
    assert found is not None and found.name == "good"
    assert len(seen) == 4  # no early exit on the first (matching) record


def test_a_changed_file_is_reloaded_and_a_broken_one_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = create_token(path, "ci", "read")
    table = TokenTable.from_file(path)
    assert table.lookup(token) is not None
    revoke_token(path, "ci")
    create_token(path, "other", "read")
    table.refresh()
    assert table.lookup(token) is None and table.configured
    path.write_text("{broken")
    table.refresh()
    assert table.broken and table.configured and table.records == ()


def test_codes_are_single_use_and_expire_sessions_expire() -> None:
    now = [1000.0]
    codes = OneTimeCodes(ttl_s=600, clock=lambda: now[0])
    sessions = Sessions(ttl_s=3600, clock=lambda: now[0])
    code = codes.issue(Principal("up", "read"))
    p = codes.redeem(code)
    assert p is not None and codes.redeem(code) is None
    late = codes.issue(Principal("up", "read"))
    now[0] += 601
    assert codes.redeem(late) is None
    sid = sessions.create(p)
    got = sessions.get(sid)
    assert got is not None and (got.name, got.role, got.via) == ("up", "read", "session")
    now[0] += 3601
    assert sessions.get(sid) is None


def test_loopback_is_decided_on_addresses() -> None:
    assert is_loopback_host("localhost")  # resolved, every address is loopback
    assert is_loopback_host("[::1]") and is_loopback_host("127.0.0.2")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("192.168.1.10")


def test_client_token_from_env_or_file(tmp_path: Path) -> None:
    assert client_token({}) is None
    tok = client_token({"LLMPULSE_TOKEN": "lp_abc"})
    assert tok is not None and tok.get() == "lp_abc" and "lp_abc" not in repr(tok)
    f = tmp_path / "tok"
    f.write_text("lp_fromfile\n")
    tok = client_token({"LLMPULSE_TOKEN_FILE": str(f)})
    assert tok is not None and tok.get() == "lp_fromfile"
    with pytest.raises(AuthError, match="LLMPULSE_TOKEN_FILE"):
        client_token({"LLMPULSE_TOKEN_FILE": str(tmp_path / "missing")})


# -- the middleware on a real aiohttp server ---------------------------------------------------


class Guarded:
    def __init__(self, client: TestClient, guard: ApiGuard, events: list[AuditEvent],
                 read: str, admin: str) -> None:
        self.client, self.guard, self.events, self.read, self.admin = (
            client, guard, events, read, admin)

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


async def _app_client(guard: ApiGuard) -> TestClient:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[guard.middleware()])
    for path in ("/api/query", "/api/admin/erase", "/health", "/dashboards/x"):
        app.router.add_get(path, ok)
        app.router.add_post(path, ok)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Guarded]:
    path = tmp_path / "tokens.json"
    read = create_token(path, "viewer", "read")
    admin = create_token(path, "ops", "admin")
    events: list[AuditEvent] = []
    guard = ApiGuard(TokenTable.from_file(path), loopback=True, audit=events.append)
    client = await _app_client(guard)
    yield Guarded(client, guard, events, read, admin)
    await client.close()


async def test_roles_and_audit(guarded: Guarded) -> None:
    c, g = guarded.client, guarded
    assert (await c.get("/api/query")).status == 401
    r = await c.get("/api/query", headers=g.bearer("lp_" + "x" * 43))
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await c.get("/api/query", headers={"Authorization": "Basic abc"})).status == 401
    assert (await c.get("/api/query", headers=g.bearer(g.read))).status == 200
    assert (await c.get("/dashboards/x", headers=g.bearer(g.read))).status == 200
    assert (await c.get("/api/admin/erase", headers=g.bearer(g.read))).status == 403
    assert (await c.post("/api/admin/erase", json={}, headers=g.bearer(g.admin))).status == 200
    assert (await c.get("/api/query", headers=g.bearer(g.admin))).status == 200
    assert (await c.get("/health")).status == 200  # probes carry no token
    actions = [(e.action, e.actor, e.outcome) for e in g.events]
    assert actions == [("auth_failed", "anonymous", "denied")] * 3 + [
        ("auth_failed", "viewer", "denied"), ("admin_access", "ops", "ok")]
    dumped = json.dumps([e.row() for e in g.events])
    assert g.read not in dumped and g.admin not in dumped and "x" * 43 not in dumped


async def test_browser_defences(guarded: Guarded) -> None:
    c, h = guarded.client, guarded.bearer(guarded.read)
    own = str(c.make_url("")).rstrip("/")
    assert (await c.post("/api/query", data='{"sql": "SELECT 1"}',
                         headers={**h, "Content-Type": "text/plain"})).status == 415
    assert (await c.post("/api/query", data=b"", headers=h)).status == 415
    assert (await c.get("/api/query", headers={**h, "Origin": "http://evil.example"})).status == 403
    assert (await c.get("/api/query", headers={**h, "Origin": "null"})).status == 403
    assert (await c.get("/api/query", headers={**h, "Origin": own})).status == 200
    for site in ("cross-site", "same-site"):
        r = await c.get("/api/query", headers={**h, "Sec-Fetch-Site": site,
                                               "Sec-Fetch-Dest": "image", "Sec-Fetch-Mode": "no-cors"})
        assert r.status == 403, site
    nav = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert (await c.get("/dashboards/x", headers={**h, **nav})).status == 200  # a link in an alert
    assert (await c.post("/api/query", json={}, headers={**h, **nav})).status == 403
    assert (await c.get("/api/query", headers={**h, "Host": "rebound.example"})).status == 403
    port = c.make_url("").port
    for host in (f"evil.example@localhost:{port}", f"127.0.0.1:{port}#evil.example",
                 f"127.0.0.1:{port}/evil.example", f"127.0.0.1:{port}?x.evil.example"):
        assert (await c.get("/api/query", headers={**h, "Host": host})).status == 400, host
    r = await c.get("/api/query", headers={**h, "Sec-Fetch-Site": "Cross-Site"})
    assert r.status == 403  # the value in any letter case
    r = await c.options("/api/query", headers={"Origin": "http://evil.example",
                                               "Access-Control-Request-Method": "POST"})
    assert r.status == 403 and not [k for k in r.headers if k.lower().startswith("access-control")]
    r = await c.get("/api/query", headers=h)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    r = await c.get("/nowhere", headers=h)
    assert r.status == 404 and r.headers["X-Content-Type-Options"] == "nosniff"


async def test_no_tokens_on_loopback_keeps_the_browser_defences(tmp_path: Path) -> None:
    events: list[AuditEvent] = []
    guard = ApiGuard(TokenTable.from_file(tmp_path / "none.json"), loopback=True,
                     audit=events.append)
    assert not guard.required and guard.login_url("http://127.0.0.1:1") is None
    client = await _app_client(guard)
    try:
        assert (await client.get("/api/query")).status == 200
        assert (await client.post("/api/admin/erase", json={})).status == 200
        assert (await client.post("/api/query", data="{}",
                                  headers={"Content-Type": "text/plain"})).status == 415
        assert (await client.get("/api/query", headers={"Origin": "http://evil.example"})).status == 403
        assert (await client.get("/api/query", headers={"Sec-Fetch-Site": "cross-site"})).status == 403
    finally:
        await client.close()
    assert [(e.action, e.actor) for e in events] == [("admin_access", "anonymous")]
    assert ApiGuard(TokenTable(), loopback=False).required  # a public bind never runs open


async def test_sign_in_is_one_time_and_sets_a_strict_cookie(guarded: Guarded) -> None:
    c, g = guarded.client, guarded
    url = g.guard.login_url(str(c.make_url("")))
    assert url is not None
    code = url.split("code=", 1)[1]
    page = await c.get(f"/login?code={code}")
    assert page.status == 200 and "set-cookie" not in {k.lower() for k in page.headers}
    assert code not in await page.text()  # the page reads it from its own URL
    assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
    r = await c.post("/login", json={"code": code, "next": "//evil.example/x"})
    assert r.status == 200 and (await r.json())["next"] == "/dashboards"
    cookie = r.headers["Set-Cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attrs and "SameSite=Strict" in cookie
    assert "secure" not in attrs  # plain http here; over https the cookie is Secure
    assert (await c.get("/api/query")).status == 200  # the cookie jar sends the session
    assert (await c.get("/api/admin/erase")).status == 403  # the link grants read only
    again = await c.post("/login", json={"code": code})
    assert again.status == 401
    assert [e.action for e in g.events if e.action == "login"] == ["login", "login"]
    assert [e.outcome for e in g.events if e.action == "login"] == ["ok", "denied"]
    r = await c.post("/logout", json={})
    assert r.status == 200
    c.session.cookie_jar.clear()
    assert (await c.get("/api/query")).status == 401


async def test_a_token_mints_a_sign_in_link_for_itself(guarded: Guarded) -> None:
    c, g = guarded.client, guarded
    r = await c.post("/api/login-code", json={}, headers=g.bearer(g.admin))
    url = (await r.json())["url"]
    code = url.split("code=", 1)[1]
    r = await c.post("/login", json={"code": code})
    assert (await r.json())["role"] == "admin"
    assert (await c.get("/api/admin/erase")).status == 200
    assert ("admin_access", "ops") in [(e.action, e.actor) for e in g.events]


async def test_revoking_a_token_ends_its_sessions_and_unredeemed_codes(
        guarded: Guarded, tmp_path: Path) -> None:
    """A session signed in with a token, a code minted from that session, and a code
    minted with the token and not yet redeemed: all refused once the token is revoked.
    Before, the session went on for its 8 hours, admin included, and minted codes for
    new sessions. A session from another token, or from up's own link, is untouched."""
    c, g = guarded.client, guarded

    async def sign_in(minted_with: dict[str, str]) -> str:
        r = await c.post("/api/login-code", json={}, headers=minted_with)
        return str((await r.json())["url"]).split("code=", 1)[1]

    assert (await c.post("/login", json={"code": await sign_in(g.bearer(g.admin))})).status == 200
    assert (await c.post("/api/admin/erase", json={})).status == 200  # the session, admin
    chained = await sign_in({})  # minted by the session itself
    unredeemed = await sign_in(g.bearer(g.admin))
    assert revoke_token(tmp_path / "tokens.json", "ops")
    assert (await c.post("/api/admin/erase", json={})).status == 401
    assert (await c.get("/api/query")).status == 401  # the session is gone
    for code in (chained, unredeemed):
        assert (await c.post("/login", json={"code": code})).status == 401
    reasons = [e.detail.get("reason") for e in g.events if e.outcome == "denied"]
    assert "the token this session was signed in with was revoked" in reasons
    # the other token's session and up's own link still sign in
    c.session.cookie_jar.clear()
    assert (await c.post("/login", json={"code": await sign_in(g.bearer(g.read))})).status == 200
    assert (await c.get("/api/query")).status == 200
    up_link = g.guard.login_url(str(c.make_url("")))
    assert up_link is not None
    assert (await c.post("/login", json={"code": up_link.split("code=", 1)[1]})).status == 200


def test_guard_from_settings_names_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text('{"tokens": [{"name": "a"}]}')
    with pytest.raises(AuthError, match=r"tokens\.json: tokens\[0\]\.role"):
        ApiGuard.from_settings(tmp_path, "127.0.0.1", env={})


def test_exports() -> None:
    for name in auth.__all__:
        assert getattr(auth, name) is not None, name
    _: Any = Guarded


async def test_behind_a_tls_proxy_the_cookie_is_secure_and_https_is_own(guarded: Guarded) -> None:
    c, g = guarded.client, guarded
    url = g.guard.login_url(str(c.make_url("")))
    assert url is not None
    own_https = str(c.make_url("")).rstrip("/").replace("http://", "https://")
    r = await c.post("/login", json={"code": url.split("code=", 1)[1]},
                     headers={"X-Forwarded-Proto": "https", "Origin": own_https})
    assert r.status == 200
    assert "secure" in {a.strip().lower() for a in r.headers["Set-Cookie"].split(";")}
    plain = await c.get("/api/query", headers={"Origin": own_https, **g.bearer(g.read)})
    assert plain.status == 403  # without the proxy's header, https is another origin


async def test_a_person_opening_a_page_without_a_session_is_told_how_to_sign_in(
        guarded: Guarded) -> None:
    nav = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    r = await guarded.client.get("/dashboards/x", headers=nav)
    assert r.status == 401 and r.content_type == "text/html"
    assert "llmpulse token login" in await r.text()
    api = await guarded.client.get("/dashboards/x")
    assert api.status == 401 and api.content_type == "application/json"


def test_the_principal_key_is_made_in_a_worker_thread_too(monkeypatch) -> None:
    # aiohttp's key looked for a module-level frame up the stack: a thread's has none,
    # and every request of a server run in a thread failed with UnboundLocalError
    import threading

    import llmpulse.auth as auth

    monkeypatch.setattr(auth, "_KEY", [])
    made: list[object] = []
    t = threading.Thread(target=lambda: made.append(auth._principal_key()))
    t.start()
    t.join()
    assert len(made) == 1 and "llmpulse.principal" in repr(made[0])
    assert auth._principal_key() is made[0]
