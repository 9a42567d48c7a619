"""Authentication and browser defences of a real ``llmpulse up`` (tokens from the CLI)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import StackProcess, stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmpulse.cli", *args], env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=180)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str

    def header(self, name: str) -> str | None:
        return {k.lower(): v for k, v in self.headers.items()}.get(name.lower())


def call(url: str, method: str = "GET", body: bytes | None = None, **headers: str) -> Answer:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={k.replace("_", "-"): v for k, v in headers.items()})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Answer(r.status, dict(r.headers.items()), r.read().decode())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers.items()), exc.read().decode())


@dataclass
class Secured:
    sp: StackProcess
    env: dict[str, str]
    root: Path
    admin: str
    read: str

    @property
    def http(self) -> str:
        return str(self.sp.endpoints["http"])

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("auth-stack")
    data = root / "data"
    data.mkdir()
    env = stack_env(data)
    made = [cli(env, "token", "create", "--name", name, "--role", role, cwd=root)
            for name, role in (("ops", "admin"), ("viewer", "read"))]
    assert all(m.returncode == 0 for m in made), [m.stderr for m in made]
    admin, read = (m.stdout.strip() for m in made)
    assert admin.startswith("lp_") and read.startswith("lp_")
    sp = StackProcess(data, env)
    sp.start(timeout=180)
    try:
        yield Secured(sp, env, root, admin, read)
    finally:
        sp.close()


def test_read_token_queries_and_only_admin_reaches_admin_routes(secured: Secured) -> None:
    s = secured
    q = json.dumps({"sql": "SELECT 1 AS x"}).encode()
    ok = call(s.http + "/api/query", "POST", q, Content_Type="application/json",
              **s.bearer(s.read))
    assert ok.status == 200 and json.loads(ok.body)["rows"] == [{"x": 1}]
    assert call(s.http + "/api/stats", **s.bearer(s.read)).status == 200
    assert call(s.http + "/dashboards/overview", **s.bearer(s.read)).status == 200
    erase = json.dumps({"user": "u-1"}).encode()
    denied = call(s.http + "/api/admin/erase", "POST", erase, Content_Type="application/json",
                  **s.bearer(s.read))
    assert denied.status == 403 and "admin role" in denied.body
    admitted = call(s.http + "/api/admin/erase", "POST", erase, Content_Type="application/json",
                    **s.bearer(s.admin))
    assert admitted.status == 200, admitted.body
    assert call(s.http + "/api/stats", **s.bearer(s.admin)).status == 200


def test_audit_trail_names_the_token_behind_each_admin_call(secured: Secured) -> None:
    """The guard and the erase route record into the stack's one audit log, by token name."""
    s = secured
    erase = json.dumps({"request_ids": ["r-audit-1"]}).encode()
    assert call(s.http + "/api/admin/erase", "POST", erase, Content_Type="application/json",
                **s.bearer(s.read)).status == 403
    assert call(s.http + "/api/admin/erase", "POST", erase, Content_Type="application/json",
                **s.bearer(s.admin)).status == 200
    sql = json.dumps({"sql": "SELECT action, actor, outcome, target FROM audit_events "
                             "WHERE target LIKE '%erase%' OR action = 'erase'"}).encode()
    deadline = time.monotonic() + 30
    rows: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        r = call(s.http + "/api/query", "POST", sql, Content_Type="application/json",
                 **s.bearer(s.read))
        rows = json.loads(r.body)["rows"]
        if any(x["action"] == "erase" and x["actor"] == "ops" for x in rows):
            break
        time.sleep(0.5)
    got = {(x["action"], x["actor"], x["outcome"]) for x in rows}
    assert ("auth_failed", "viewer", "denied") in got, rows
    assert ("admin_access", "ops", "ok") in got, rows
    assert ("erase", "ops", "ok") in got, rows
    assert s.admin not in json.dumps(rows) and s.read not in json.dumps(rows)


def test_missing_unknown_and_near_miss_tokens_get_401(secured: Secured) -> None:
    s = secured
    none = call(s.http + "/api/stats")
    assert none.status == 401 and (none.header("WWW-Authenticate") or "").startswith("Bearer")
    unknown = "lp_" + "A" * (len(s.read) - 3)
    near = s.read[:-1] + ("B" if s.read[-1] != "B" else "C")
    for bad in (unknown, near, s.read + "x", ""):
        r = call(s.http + "/api/stats", **s.bearer(bad))
        assert r.status == 401, bad
        assert not bad or bad not in r.body
    assert call(s.http + "/health").status == 200  # probes carry no token


def test_browser_defences_on_the_stack(secured: Secured) -> None:
    s, h = secured, secured.bearer(secured.read)
    body = json.dumps({"sql": "SELECT 1 AS x"}).encode()
    assert call(s.http + "/api/query", "POST", body, Content_Type="text/plain", **h).status == 415
    assert call(s.http + "/api/query", "POST", body, Content_Type="application/x-www-form-urlencoded",
                **h).status == 415
    assert call(s.http + "/api/stats", Origin="http://attacker.example", **h).status == 403
    assert call(s.http + "/api/stats", Origin=s.http, **h).status == 200
    assert call(s.http + "/api/stats", Sec_Fetch_Site="cross-site", Sec_Fetch_Mode="no-cors",
                Sec_Fetch_Dest="image", **h).status == 403
    for origin in ("http://attacker.example", s.http):
        pre = call(s.http + "/api/query", "OPTIONS", Origin=origin,
                   Access_Control_Request_Method="POST",
                   Access_Control_Request_Headers="content-type")
        assert pre.status >= 400
        assert not [k for k in pre.headers if k.lower().startswith("access-control-")], pre.headers
    for path in ("/api/query?name=counts", "/dashboards", "/api/stats"):
        r = call(s.http + path, **h)
        assert r.status == 200, path
        assert r.header("X-Content-Type-Options") == "nosniff"
        assert r.header("Cache-Control") == "no-store"
        assert "frame-ancestors 'none'" in (r.header("Content-Security-Policy") or "")
        assert not [k for k in r.headers if k.lower().startswith("access-control-")]


def _login_url(sp: StackProcess) -> str:
    assert sp.log_path is not None
    m = re.search(r"(http://\S+/login\?code=[A-Za-z0-9_\-]+)", sp.log_path.read_text())
    assert m, sp.log()
    return m.group(1)


def test_login_url_is_one_time_and_sets_a_strict_http_only_cookie(secured: Secured) -> None:
    s = secured
    url = _login_url(s.sp)
    code = url.split("code=", 1)[1]
    page = call(url)
    assert page.status == 200 and page.header("Set-Cookie") is None and code not in page.body
    redeem = json.dumps({"code": code}).encode()
    first = call(s.http + "/login", "POST", redeem, Content_Type="application/json",
                 Origin=s.http)
    assert first.status == 200, first.body
    cookie = first.header("Set-Cookie") or ""
    attrs = [a.strip() for a in cookie.split(";")]
    assert "HttpOnly" in attrs and "SameSite=Strict" in attrs and "Path=/" in attrs
    assert any(a.startswith("Max-Age=") for a in attrs)  # the session expires
    session = attrs[0]
    assert session.startswith("llmpulse_session=")
    assert call(s.http + "/api/stats", Cookie=session).status == 200
    assert call(s.http + "/api/admin/erase", "POST", b"{}", Content_Type="application/json",
                Cookie=session).status == 403
    again = call(s.http + "/login", "POST", redeem, Content_Type="application/json")
    assert again.status == 401 and "used or expired" in again.body
    minted = cli({**s.env, "LLMPULSE_TOKEN": s.read}, "token", "login", cwd=s.root)
    assert minted.returncode == 0 and "/login?code=" in minted.stdout
    assert s.read not in minted.stdout + minted.stderr


def test_tokens_never_show_in_logs_endpoints_status_or_errors(secured: Secured) -> None:
    s = secured
    tokens = (s.admin, s.read)
    status = cli({**s.env, "LLMPULSE_TOKEN": s.read}, "status", cwd=s.root)
    assert status.returncode == 0 and "llmpulse ok" in status.stdout, status.stdout + status.stderr
    as_json = cli({**s.env, "LLMPULSE_TOKEN": s.read}, "status", "--json", cwd=s.root)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["health"]["status"] == "ok"
    wrong = s.read[:-2] + "zz"
    refused = cli({**s.env, "LLMPULSE_TOKEN": wrong}, "status", cwd=s.root)
    assert refused.returncode == 1 and "401" in refused.stdout
    listed = cli(s.env, "token", "list", "--json", cwd=s.root)
    assert {t["name"] for t in json.loads(listed.stdout)} == {"ops", "viewer"}
    texts = {
        "status": status.stdout + status.stderr,
        "status --json": as_json.stdout + as_json.stderr,
        "refused status": refused.stdout + refused.stderr,
        "token list": listed.stdout + listed.stderr,
        "endpoints.json": (s.sp.data_dir / "endpoints.json").read_text(),
        "tokens.json": (s.sp.data_dir / "tokens.json").read_text(),
        "up log": s.sp.log_path.read_text() if s.sp.log_path else "",
    }
    assert "refused GET /api/stats" in texts["up log"]  # the failures above were logged ...
    for where, text in texts.items():
        for tok in (*tokens, wrong):
            assert tok not in text, f"a token shows in {where}"  # ... without the tokens


def test_revoked_token_is_refused_while_running(secured: Secured) -> None:
    s = secured
    made = cli(s.env, "token", "create", "--name", "temp", cwd=s.root)
    temp = made.stdout.strip()
    assert call(s.http + "/api/stats", **s.bearer(temp)).status == 200
    assert cli(s.env, "token", "revoke", "temp", cwd=s.root).returncode == 0
    assert call(s.http + "/api/stats", **s.bearer(temp)).status == 401


def test_non_loopback_bind_without_tokens_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "llmpulse.yaml").write_text("http:\n  host: 0.0.0.0\n")
    up = subprocess.run([sys.executable, "-m", "llmpulse.cli", "up"], env=stack_env(data),
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert up.returncode == 2
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmpulse up: http.host: 0.0.0.0"), up.stderr
    assert "llmpulse token create" in lines[0] and "LLMPULSE_TOKENS_FILE" in lines[0]
    assert not (data / "endpoints.json").exists()


def test_bad_tokens_file_stops_up_naming_the_file_and_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    bad = data / "tokens.json"
    bad.write_text(json.dumps({"tokens": [{"name": "ops", "role": "superuser",
                                           "sha256": "0" * 64}]}))
    up = subprocess.run([sys.executable, "-m", "llmpulse.cli", "up"], env=stack_env(data),
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert up.returncode == 2
    assert f"{bad}: tokens[0].role: must be one of read, ingest, admin" in up.stderr, up.stderr


