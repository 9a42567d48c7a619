"""API tokens, browser sessions and the request guard of llmpulse's HTTP servers.

Three roles: ``read`` (queries, dashboards, stats), ``ingest`` (write
OpenTelemetry spans and feedback log records to ``POST /v1/traces`` and
``/v1/logs`` and nothing else: the token an
instrumented app holds can neither read what others sent nor act) and
``admin`` (deploy, rollback, retrain, erase, rule reload; admin implies the
others). A token is 256
random bits (``lp_`` + URL-safe base64), shown once when created and stored
only as its SHA-256. A fast hash is enough here: a slow password hash
(bcrypt, argon2) protects low-entropy secrets from guessing, and nobody
guesses 2**256; SHA-256 keeps every request's check at microseconds. The
presented token's hash is compared with every stored hash by
:func:`hmac.compare_digest`, without stopping at the first match.

Tokens live in a JSON file, ``<data-dir>/tokens.json`` or
``LLMPULSE_TOKENS_FILE``, written with mode 0600::

    {"version": 1, "tokens": [{"name": "ci", "role": "admin",
                               "sha256": "<64 hex>", "created_at": 1733370000.0}]}

:class:`ApiGuard` is an aiohttp middleware for every route: it refuses a
foreign ``Origin``, a cross-site or same-site ``Sec-Fetch-Site`` (a browser
sends no Origin on an ``<img>`` GET, and sites ignore ports, so another
local server's page is "same-site"), a ``Host`` that is not a loopback name
on a loopback bind (DNS rebinding), a non-JSON body on POST/PUT/PATCH/DELETE
(415: a page can send ``text/plain`` without a preflight); then it checks
the bearer token or the session cookie and the role of the route. Those
browser defences stay on when authentication is off (no tokens on a loopback
bind), because a page in the user's browser can reach loopback.

A browser signs in with a one-time code (:class:`OneTimeCodes`): ``GET
/login?code=...`` serves a page whose same-origin script POSTs the code as
JSON; the POST sets an ``HttpOnly; SameSite=Strict`` session cookie. No GET
changes state.

>>> t = new_token()
>>> t.startswith("lp_") and len(t) == 46 and t != new_token()
True
>>> len(hash_token(t)), hash_token(t) == hash_token(t)
(64, True)
>>> table = TokenTable([TokenRecord("ci", "read", hash_token(t))])
>>> table.lookup(t).name, table.lookup(t + "x")
('ci', None)
>>> Principal("ci", "admin").allows("read"), Principal("ci", "read").allows("admin")
(True, False)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from llmpulse.audit import AuditEvent, AuditSink, discard
from llmpulse.secret import Secret, scrub

__all__ = [
    "ADMIN",
    "INGEST",
    "CLIENT_TOKEN_ENV",
    "CLIENT_TOKEN_FILE_ENV",
    "LOGIN_CODE_PATH",
    "LOGIN_PATH",
    "READ",
    "ROLES",
    "SESSION_COOKIE",
    "TOKENS_FILE_ENV",
    "ApiGuard",
    "AuthError",
    "OneTimeCodes",
    "Principal",
    "Sessions",
    "TokenRecord",
    "TokenTable",
    "auth_headers",
    "client_token",
    "create_token",
    "hash_token",
    "is_loopback_host",
    "load_tokens",
    "new_token",
    "principal_of",
    "revoke_token",
    "route_role",
    "save_tokens",
    "stack_request",
    "tokens_path",
]

log = logging.getLogger("llmpulse.auth")

READ = "read"
INGEST = "ingest"
ADMIN = "admin"
ROLES = (READ, INGEST, ADMIN)
SESSION_COOKIE = "llmpulse_session"
TOKENS_FILE_ENV = "LLMPULSE_TOKENS_FILE"
CLIENT_TOKEN_ENV = "LLMPULSE_TOKEN"
CLIENT_TOKEN_FILE_ENV = "LLMPULSE_TOKEN_FILE"
_TOKEN_PREFIX = "lp_"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
LOGIN_CODE_PATH = "/api/login-code"
PUBLIC_PATHS = frozenset({LOGIN_PATH, "/health"})
"""No credential needed: the login page and its redeeming POST (the code is the
credential), and ``/health`` (one word for probes, which carry no token)."""
ADMIN_PREFIXES = ("/api/admin/", "/admin/")
INGEST_PATHS = frozenset({"/v1/traces", "/v1/logs"})
"""OTLP/HTTP: written by instrumented apps with an ``ingest`` (or ``admin``) token."""
ROUTE_CHECKED_BODIES = frozenset({"/v1/traces", "/v1/logs"})
"""Paths whose handler checks the body's content type itself: the OTLP receiver
takes protobuf as well as JSON, answers every other type 415 before reading
anything into the pipeline, and counts and dead-letters the refusal. The
Origin, Sec-Fetch-Site and credential checks apply there as everywhere."""
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_ONLY = frozenset({"application/json"})


class AuthError(ValueError):
    """A bad tokens file or client token setting; the message names the file or key."""


# -- tokens --------------------------------------------------------------------------------


def new_token() -> str:
    """A fresh API token: 256 random bits."""
    return _TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token (hex SHA-256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a token's name (or a session's) and its role."""

    name: str
    role: str
    via: str = "token"
    """``token``, ``session`` or ``open`` (authentication off)."""
    token_sha256: str = ""
    """The hash of the token the credential comes from (a session, a sign-in code):
    it lasts only as long as that token does. Empty for ``up``'s own sign-in URL."""

    def allows(self, role: str) -> bool:
        return self.role == ADMIN or role == self.role


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One configured token: its name, role and SHA-256 (never the token)."""

    name: str
    role: str
    sha256: str
    created_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "sha256": self.sha256,
                "created_at": self.created_at}


def tokens_path(data_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where the tokens file is: ``LLMPULSE_TOKENS_FILE`` or ``<data-dir>/tokens.json``."""
    env = os.environ if env is None else env
    explicit = env.get(TOKENS_FILE_ENV, "").strip()
    return Path(explicit) if explicit else data_dir / "tokens.json"


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARS:
        raise AuthError(f"{where}: a name is 1-64 letters, digits or -_.@, got {name!r}")
    return name


def _check_record(raw: Any, where: str) -> TokenRecord:
    if not isinstance(raw, Mapping):
        raise AuthError(f"{where}: must be an object with name, role and sha256")
    unknown = set(raw) - {"name", "role", "sha256", "created_at"}
    if unknown:
        raise AuthError(f"{where}.{sorted(unknown)[0]}: unknown key; known: created_at, name, "
                        "role, sha256")
    name = _check_name(raw.get("name"), f"{where}.name")
    role = raw.get("role")
    if role not in ROLES:
        raise AuthError(f"{where}.role: must be one of {', '.join(ROLES)}, got {role!r}")
    digest = raw.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
        raise AuthError(f"{where}.sha256: must be 64 lowercase hex digits (the SHA-256 of the "
                        "token, never the token)")
    created = raw.get("created_at", 0.0)
    if not isinstance(created, (int, float)) or isinstance(created, bool):
        raise AuthError(f"{where}.created_at: must be epoch seconds, got {created!r}")
    return TokenRecord(name, str(role), digest, float(created))


def load_tokens(path: Path) -> tuple[TokenRecord, ...]:
    """The tokens in ``path``; none when it does not exist; :class:`AuthError` when bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise AuthError(f"{path}: cannot read the tokens file: {exc.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AuthError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix it or "
                        "recreate it with 'llmpulse token create'") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("tokens"), list):
        raise AuthError(f"{path}: tokens: must be an object with a \"tokens\" list")
    records = tuple(_check_record(r, f"{path}: tokens[{i}]") for i, r in enumerate(raw["tokens"]))
    names = [r.name for r in records]
    for name in names:
        if names.count(name) > 1:
            raise AuthError(f"{path}: tokens: name {name!r} appears twice; names are unique")
    return records


def save_tokens(path: Path, records: Iterable[TokenRecord]) -> None:
    """Write the tokens file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": 1, "tokens": [r.as_json() for r in records]}, indent=2)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body + "\n")
    os.replace(tmp, path)


def create_token(path: Path, name: str, role: str, *, now: float | None = None) -> str:
    """Add a token to the file and return it (the only time it is ever seen)."""
    _check_name(name, "--name")
    if role not in ROLES:
        raise AuthError(f"--role: must be one of {', '.join(ROLES)}, got {role!r}")
    records = load_tokens(path)
    if any(r.name == name for r in records):
        raise AuthError(f"--name: a token named {name!r} exists; revoke it first or pick another")
    token = new_token()
    rec = TokenRecord(name, role, hash_token(token), time.time() if now is None else now)
    save_tokens(path, (*records, rec))
    return token


def revoke_token(path: Path, name: str) -> bool:
    """Remove the token named ``name``; False when there is none."""
    records = load_tokens(path)
    kept = tuple(r for r in records if r.name != name)
    if len(kept) == len(records):
        return False
    save_tokens(path, kept)
    return True


class TokenTable:
    """The configured tokens, reloaded when their file changes.

    A file that turns bad while the server runs is logged (naming the file
    and key) and no token is accepted until it is fixed: fail closed.
    """

    def __init__(self, records: Iterable[TokenRecord] = (), *, path: Path | None = None) -> None:
        self.path = path
        self.records: tuple[TokenRecord, ...] = tuple(records)
        self.broken = False
        self._stamp = self._file_stamp()

    @classmethod
    def from_file(cls, path: Path) -> TokenTable:
        """The tokens in ``path`` (none when missing); :class:`AuthError` when bad."""
        return cls(load_tokens(path), path=path)

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def refresh(self) -> None:
        """Reload the file when it changed (a ``token create`` or ``revoke`` while running)."""
        stamp = self._file_stamp()
        if stamp == self._stamp or self.path is None:
            return
        self._stamp = stamp
        try:
            self.records = load_tokens(self.path)
            self.broken = False
        except AuthError as exc:
            log.error("no API token is accepted until the tokens file is fixed: %s", exc)
            self.records, self.broken = (), True

    @property
    def configured(self) -> bool:
        """Tokens exist (or the file is broken): authentication is required."""
        return bool(self.records) or self.broken

    def lookup(self, token: str) -> TokenRecord | None:
        """The record whose hash matches ``token``, comparing in constant time."""
        presented = hash_token(token).encode("ascii")
        found: TokenRecord | None = None
        for rec in self.records:  # no early exit: the time does not depend on which one matched
            if hmac.compare_digest(presented, rec.sha256.encode("ascii")):
                found = rec
        return found


# -- one-time login codes and sessions --------------------------------------------------------


@dataclass
class OneTimeCodes:
    """Single-use login codes that expire; kept as hashes, in memory.

    >>> now = [0.0]
    >>> codes = OneTimeCodes(ttl_s=600, clock=lambda: now[0])
    >>> c = codes.issue(Principal("up", "read"))
    >>> codes.redeem(c).name, codes.redeem(c)
    ('up', None)
    >>> c2 = codes.issue(Principal("up", "read")); now[0] = 601.0
    >>> codes.redeem(c2) is None
    True
    """

    ttl_s: float = 600.0
    clock: Callable[[], float] = time.time
    _codes: dict[str, tuple[Principal, float]] = field(default_factory=dict)

    def issue(self, principal: Principal) -> str:
        self._expire()
        code = secrets.token_urlsafe(24)
        self._codes[hash_token(code)] = (principal, self.clock() + self.ttl_s)
        return code

    def redeem(self, code: str) -> Principal | None:
        """The principal the code was issued for, once; None when unknown, used or expired."""
        self._expire()
        entry = self._codes.pop(hash_token(code), None)
        return entry[0] if entry is not None else None

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, (_, exp) in self._codes.items() if exp <= now]:
            del self._codes[key]


@dataclass
class Sessions:
    """Browser sessions: a random id in the cookie, its hash here; they expire."""

    ttl_s: float = 8 * 3600.0
    clock: Callable[[], float] = time.time
    _sessions: dict[str, tuple[Principal, float]] = field(default_factory=dict)

    def create(self, principal: Principal) -> str:
        self._expire()
        sid = secrets.token_urlsafe(32)
        self._sessions[hash_token(sid)] = (
            Principal(principal.name, principal.role, "session", principal.token_sha256),
            self.clock() + self.ttl_s)
        return sid

    def get(self, sid: str) -> Principal | None:
        self._expire()
        entry = self._sessions.get(hash_token(sid))
        return entry[0] if entry is not None else None

    def drop(self, sid: str) -> None:
        self._sessions.pop(hash_token(sid), None)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, (_, exp) in self._sessions.items() if exp <= now]:
            del self._sessions[key]


# -- routes and hosts ------------------------------------------------------------------------


def route_role(path: str) -> str | None:
    """The role a path needs; None for the public ones.

    >>> route_role("/api/query"), route_role("/api/admin/erase"), route_role("/admin/swap")
    ('read', 'admin', 'admin')
    >>> route_role("/login"), route_role("/dashboards/overview"), route_role("/v1/traces")
    (None, 'read', 'ingest')
    """
    if path in PUBLIC_PATHS:
        return None
    if path in INGEST_PATHS:
        return INGEST
    if path.startswith(ADMIN_PREFIXES):
        return ADMIN
    return READ


def is_loopback_host(host: str) -> bool:
    """Whether every address ``host`` stands for is a loopback address.

    Decided by :mod:`ipaddress` on the address (or on what the name resolves
    to); ``0.0.0.0`` and ``::`` mean every interface, so they are not loopback.

    >>> is_loopback_host("127.0.0.1"), is_loopback_host("::1"), is_loopback_host("127.8.9.1")
    (True, True, True)
    >>> is_loopback_host("0.0.0.0"), is_loopback_host("::"), is_loopback_host("10.1.2.3")
    (False, False, False)
    """
    text = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(text, None)
    except (OSError, UnicodeError):
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback
                               for a in addrs)


def _host_is_loopback_name(hostname: str) -> bool:
    """A ``Host`` header a loopback server may see: ``localhost`` or a loopback address."""
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _origin_key(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int] | None:
    if scheme not in ("http", "https") or not host:
        return None
    return (scheme, host.lower(), port or (443 if scheme == "https" else 80))


def _split_host(value: str, scheme: str) -> tuple[str, str, int] | None:
    """The origin a ``Host`` header names: a plain ``host[:port]``, nothing else (a user
    part, a path, a query or a fragment make it no Host at all).

    >>> _split_host("127.0.0.1:8080", "http"), _split_host("[::1]", "http")
    (('http', '127.0.0.1', 8080), ('http', '::1', 80))
    >>> [_split_host(v, "http") for v in ("evil.com@localhost:1", "127.0.0.1#evil.com",
    ...                                   "127.0.0.1/evil.com", "127.0.0.1?x.evil.com")]
    [None, None, None, None]
    """
    try:
        parts = urlsplit(f"{scheme}://{value}")
        if parts.netloc != value or parts.username is not None or parts.password is not None:
            return None
        return _origin_key(scheme, parts.hostname, parts.port)
    except ValueError:
        return None


_KEY: list[Any] = []


def _principal_key() -> Any:
    """The request-storage key of the principal (an aiohttp ``RequestKey``, made once).

    aiohttp names a key after the first module-level frame it finds up the stack; a
    worker thread's stack has none, and the key's constructor raised
    ``UnboundLocalError`` there (every request of a server run in a thread was a 500).
    So the key is made by module-level code of this module, wherever it is asked for."""
    if not _KEY:
        from aiohttp import web

        ns: dict[str, Any] = {"__name__": __name__, "web": web, "Principal": Principal}
        exec("key = web.RequestKey('llmpulse.principal', Principal)", ns)  # noqa: S102
        _KEY.append(ns["key"])
    return _KEY[0]


def principal_of(request: Any) -> Principal | None:
    """The principal the guard let through (for handlers that record who acted)."""
    value = request.get(_principal_key())
    return value if isinstance(value, Principal) else None


# -- the guard -----------------------------------------------------------------------------

_LOGIN_SCRIPT = """
(function () {
  var params = new URLSearchParams(window.location.search);
  var code = params.get("code") || "";
  var next = params.get("next") || "/dashboards";
  history.replaceState(null, "", window.location.pathname);
  var out = document.getElementById("msg");
  fetch("/login", {method: "POST", credentials: "same-origin",
                   headers: {"Content-Type": "application/json"},
                   body: JSON.stringify({code: code, next: next})})
    .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
    .then(function (res) {
      if (res[0] === 200) { window.location.replace(res[1].next); }
      else { out.textContent = "sign-in refused: " + (res[1].error || res[0]); }
    })
    .catch(function (e) { out.textContent = "sign-in failed: " + e; });
})();
""".strip()
_LOGIN_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_LOGIN_SCRIPT.encode()).digest()).decode()
_LOGIN_PAGE = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>llmpulse "
               "sign-in</title></head><body><p id=\"msg\">signing in…</p><script>"
               f"{_LOGIN_SCRIPT}</script></body></html>")
_LOGIN_CSP = (f"default-src 'none'; script-src 'sha256-{_LOGIN_SCRIPT_HASH}'; connect-src 'self'; "
              "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


_SIGN_IN_HINT = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>llmpulse: "
                 "sign in</title></head><body><p>%s.</p><p>Run <code>llmpulse token login</code> "
                 "(with <code>LLMPULSE_TOKEN</code> set) and open the one-time URL it prints."
                 "</p></body></html>")


def _safe_next(value: Any) -> str:
    """A local path to land on after sign-in (never another site)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") \
            or "\\" in value:
        return "/dashboards"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/dashboards"
    return value


Handler = Callable[[Any], Awaitable[Any]]


class ApiGuard:
    """Authentication, roles and browser defences for one HTTP server.

    ``loopback`` says whether the server binds a loopback address: then a
    ``Host`` that is not a loopback name is refused, and with no tokens
    configured authentication is off (the browser defences are not).

    The guard answers its own routes, on any server it guards:
    ``GET /login`` (the sign-in page), ``POST /login`` (redeem a code, set
    the cookie), ``POST /logout``, and ``POST /api/login-code`` (a sign-in
    URL for the caller's own name and role).
    """

    def __init__(
        self,
        tokens: TokenTable,
        *,
        loopback: bool,
        audit: AuditSink = discard,
        sessions: Sessions | None = None,
        codes: OneTimeCodes | None = None,
        body_types: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.tokens = tokens
        self.loopback = loopback
        self.audit = audit
        self.sessions = sessions or Sessions()
        self.codes = codes or OneTimeCodes()
        self.body_types = dict(body_types or {})
        """Path → accepted body content types other than JSON (e.g. OTLP protobuf)."""

    @classmethod
    def from_settings(cls, data_dir: Path, host: str, *, audit: AuditSink = discard,
                      env: Mapping[str, str] | None = None) -> ApiGuard:
        """The guard of a server bound to ``host``, tokens from the configured file.

        :class:`AuthError` names the file and key of a bad tokens file.
        """
        return cls(TokenTable.from_file(tokens_path(data_dir, env)),
                   loopback=is_loopback_host(host), audit=audit)

    @property
    def required(self) -> bool:
        """Whether requests need a credential (tokens configured, or not loopback)."""
        self.tokens.refresh()
        return self.tokens.configured or not self.loopback

    def login_url(self, base_url: str, principal: Principal | None = None) -> str | None:
        """A one-time sign-in URL (None when authentication is off)."""
        if not self.required:
            return None
        code = self.codes.issue(principal or Principal("login-url", READ, "session"))
        return f"{base_url.rstrip('/')}{LOGIN_PATH}?code={code}"

    # -- middleware ---------------------------------------------------------------------

    def middleware(self) -> Any:
        """The aiohttp middleware (pass it in ``Application(middlewares=[...])``)."""
        from aiohttp import web

        @web.middleware
        async def llmpulse_guard(request: Any, handler: Handler) -> Any:
            try:
                response = await self._screen(request)
                if response is None:
                    response = await self._route(request, handler)
            except web.HTTPException as exc:
                response = web.Response(status=exc.status, reason=exc.reason, text=exc.text,
                                        headers={k: v for k, v in exc.headers.items()
                                                 if k.lower() != "content-length"})
            _harden(response, login=request.path == LOGIN_PATH)
            return response

        return llmpulse_guard

    async def _route(self, request: Any, handler: Handler) -> Any:
        if request.path == LOGIN_PATH:
            if request.method in ("GET", "HEAD"):
                return self._login_page()
            if request.method == "POST":
                return await self._redeem(request)
        if request.path == LOGOUT_PATH and request.method == "POST":
            return self._logout(request)
        if request.path == LOGIN_CODE_PATH and request.method == "POST":
            return self._mint_code(request)
        return await handler(request)

    def _refuse(self, request: Any, status: int, message: str, reason: str) -> Any:
        from aiohttp import web

        log.info("refused %s %s from %s: %s", request.method, request.path,
                 request.remote or "?", reason)
        headers = {"WWW-Authenticate": 'Bearer realm="llmpulse"'} if status == 401 else None
        if status == 401 and request.method == "GET" and _is_navigation(request):
            # a person opened a page: say how to sign in rather than show JSON
            return web.Response(text=_SIGN_IN_HINT % escape(message), status=401,
                                content_type="text/html", headers=headers)
        return web.json_response({"error": message}, status=status, headers=headers)

    async def _screen(self, request: Any) -> Any:
        """The refusal for this request, or None to let it through (``request`` annotated)."""
        scheme = _scheme(request)
        own = _split_host(request.host or "", scheme)
        if own is None:
            return self._refuse(request, 400, "bad Host header", "bad Host")
        if self.loopback and not _host_is_loopback_name(own[1].strip("[]")):
            return self._refuse(request, 403, "this server answers to loopback names only",
                                f"Host {own[1]} on a loopback bind")
        origin = request.headers.get("Origin")
        if origin is not None:
            try:
                parts = urlsplit(origin)
                theirs = _origin_key(parts.scheme, parts.hostname, parts.port)
            except ValueError:
                theirs = None
            if theirs != own:
                return self._refuse(request, 403, "cross-origin requests are refused",
                                    f"Origin {origin[:100]!r}")
        site = (request.headers.get("Sec-Fetch-Site") or "").lower()
        if site in ("cross-site", "same-site") and not _is_navigation(request):
            return self._refuse(request, 403, "cross-site requests are refused",
                                f"Sec-Fetch-Site {site}")
        if request.method in UNSAFE_METHODS and request.path not in ROUTE_CHECKED_BODIES:
            allowed = self.body_types.get(request.path, JSON_ONLY)
            if request.content_type not in allowed:
                return self._refuse(request, 415,
                                    f"the body must be {' or '.join(sorted(allowed))}",
                                    f"Content-Type {request.content_type!r}")
        return self._authorize(request)

    def _bearer(self, header: str) -> tuple[Principal | None, str]:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, "malformed Authorization header"
        rec = self.tokens.lookup(value.strip())
        if rec is None:
            return None, "unknown token"
        return Principal(rec.name, rec.role, "token", rec.sha256), ""

    def _current(self, principal: Principal) -> bool:
        """Whether the token a session or a code comes from is still configured (a
        revoked token ends them at the next request; before, a session went on for its
        8 hours and could mint codes for new ones)."""
        if not principal.token_sha256:
            return True
        self.tokens.refresh()
        return any(hmac.compare_digest(principal.token_sha256, rec.sha256)
                   for rec in self.tokens.records)

    def check_bearer(self, authorization: str | None, need: str, *, target: str,
                     remote: str = "") -> tuple[int, str]:
        """The guard's answer for a server that is not aiohttp (OTLP/gRPC), which has
        no cookies and no browser behind it: ``(0, "")`` to let the call through,
        else ``(401 or 403, why)``. ``authorization`` is the ``Authorization`` value
        (``Bearer <token>``); failures are audited as on the HTTP API."""
        if not self.required:
            return 0, ""
        principal, why = (self._bearer(authorization) if authorization is not None
                          else (None, "no credential"))
        call = SimpleNamespace(method="gRPC", path=target, remote=remote)
        if principal is None:
            self._audit("auth_failed", call, "anonymous", outcome="denied", why=why)
            return 401, why
        if not principal.allows(need):
            self._audit("auth_failed", call, principal.name, outcome="denied",
                        why=f"role {principal.role} lacks {need}")
            return 403, f"the {need} role is required"
        return 0, ""

    def _credential(self, request: Any) -> tuple[Principal | None, str]:
        header = request.headers.get("Authorization")
        if header is not None:
            return self._bearer(header)
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            p = self.sessions.get(sid)
            if p is None:
                return None, "unknown or expired session"
            if not self._current(p):
                self.sessions.drop(sid)
                return None, "the token this session was signed in with was revoked"
            return p, ""
        return None, "no credential"

    def _authorize(self, request: Any) -> Any:
        need = route_role(request.path)
        if not self.required:
            request[_principal_key()] = Principal("anonymous", ADMIN, "open")
            if need == ADMIN:
                self._audit("admin_access", request, "anonymous")
            return None
        if need is None:
            return None
        principal, why = self._credential(request)
        if principal is None:
            self._audit("auth_failed", request, "anonymous", outcome="denied", why=why)
            return self._refuse(request, 401, f"authentication required: {why}; send "
                                "'Authorization: Bearer <token>'", why)
        if not principal.allows(need):
            self._audit("auth_failed", request, principal.name, outcome="denied",
                        why=f"role {principal.role} lacks {need}")
            return self._refuse(request, 403, f"the {need} role is required",
                                f"{principal.name} has role {principal.role}")
        request[_principal_key()] = principal
        if need == ADMIN:
            self._audit("admin_access", request, principal.name)
        return None

    def _audit(self, action: str, request: Any, actor: str, *, outcome: str = "ok",
               why: str = "") -> None:
        detail = {"method": request.method, **({"reason": why} if why else {})}
        try:
            self.audit(AuditEvent(action, actor=actor, outcome=outcome, target=request.path,
                                  remote=request.remote or "", detail=detail))
        except Exception:  # a sink must not raise; if one does, the request still answers
            log.exception("audit sink failed on %s", action)

    # -- sign-in ------------------------------------------------------------------------

    def _login_page(self) -> Any:
        from aiohttp import web

        return web.Response(text=_LOGIN_PAGE, content_type="text/html",
                            headers={"Content-Security-Policy": _LOGIN_CSP})

    async def _redeem(self, request: Any) -> Any:
        from aiohttp import web

        try:
            body = await request.json()
        except ValueError:
            body = None
        code = body.get("code") if isinstance(body, dict) else None
        principal = self.codes.redeem(code) if isinstance(code, str) and code else None
        if principal is not None and not self._current(principal):
            principal = None  # its token was revoked since the code was issued
        if principal is None:
            self._audit("login", request, "anonymous", outcome="denied",
                        why="unknown, used or expired code")
            return self._refuse(request, 401, "this sign-in link is unknown, used or expired; "
                                "get a new one with 'llmpulse token login'", "bad login code")
        sid = self.sessions.create(principal)
        self._audit("login", request, principal.name)
        resp = web.json_response({"ok": True, "next": _safe_next(body.get("next")),
                                  "role": principal.role})
        resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/",
                        secure=_scheme(request) == "https", max_age=int(self.sessions.ttl_s))
        return resp

    def _logout(self, request: Any) -> Any:
        from aiohttp import web

        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            self.sessions.drop(sid)
        resp = web.json_response({"ok": True})
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

    def _mint_code(self, request: Any) -> Any:
        """``POST /api/login-code``: a sign-in URL for the caller's own name and role."""
        from aiohttp import web

        principal = principal_of(request) or Principal("anonymous", ADMIN, "open")
        scheme = _scheme(request)
        url = self.login_url(f"{scheme}://{request.host}", principal)
        if url is None:
            return web.json_response({"url": f"{scheme}://{request.host}/dashboards",
                                      "note": "authentication is off"})
        return web.json_response({"url": url, "expires_in_s": self.codes.ttl_s})


def _scheme(request: Any) -> str:
    """``https`` when served over TLS, here or at a proxy in front (``X-Forwarded-Proto``).

    Trusting the header is safe for what it decides (the own origin, the
    cookie's ``Secure``): a page cannot add it to a request without a
    preflight, which is refused.
    """
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return "https" if request.secure or forwarded == "https" else "http"


def _is_navigation(request: Any) -> bool:
    """A top-level GET navigation (a link in an alert): it cannot read the answer, and
    the SameSite=Strict cookie is not sent with it."""
    h = request.headers
    return (request.method in ("GET", "HEAD") and h.get("Sec-Fetch-Mode") == "navigate"
            and h.get("Sec-Fetch-Dest") == "document")


def _harden(response: Any, *, login: bool = False) -> None:
    if getattr(response, "prepared", False):
        return
    h = response.headers
    h["X-Content-Type-Options"] = "nosniff"
    h["Cache-Control"] = "no-store"
    h["X-Frame-Options"] = "DENY"
    h["Referrer-Policy"] = "no-referrer"
    if not login:
        h.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    for key in [k for k in h if k.lower().startswith("access-control-")]:
        del h[key]


# -- clients -------------------------------------------------------------------------------


def client_token(env: Mapping[str, str] | None = None) -> Secret | None:
    """The token a client sends: ``LLMPULSE_TOKEN``, else the file ``LLMPULSE_TOKEN_FILE``."""
    env = os.environ if env is None else env
    value = env.get(CLIENT_TOKEN_ENV, "").strip()
    if value:
        return Secret(value)
    path = env.get(CLIENT_TOKEN_FILE_ENV, "").strip()
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AuthError(f"{CLIENT_TOKEN_FILE_ENV}: cannot read {path}: {exc.strerror}") from None
    if not text:
        raise AuthError(f"{CLIENT_TOKEN_FILE_ENV}: {path} is empty")
    return Secret(text)


def auth_headers(token: Secret | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token`` (none without one)."""
    return {"Authorization": f"Bearer {token.get()}"} if token else {}


_UNSET: Any = object()


def stack_request(base_url: str, path: str, body: Any = None, *, token: Secret | None = _UNSET,
                  timeout: float = 30.0) -> Any:
    """An authenticated request to an llmpulse server: GET, or POST of ``body`` as JSON.

    The token defaults to :func:`client_token`. Returns the decoded JSON
    answer; HTTP errors raise :class:`urllib.error.HTTPError` (whose text
    never holds the token).
    """
    tok = client_token() if token is _UNSET else token
    headers = {"Accept": "application/json", **auth_headers(tok)}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base_url.rstrip("/") + path, data=data, headers=headers,
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)
    except OSError as exc:
        if tok and tok.get() in str(exc):  # defensive: no client error message carries it
            raise OSError(scrub(str(exc), [tok])) from None
        raise
