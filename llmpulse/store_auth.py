"""Credentials for a ClickHouse server over HTTP(S), kept apart from the DSN.

A DSN may carry ``user:password@``; :func:`split_dsn` takes them out, so the
DSN that is logged, written to ``endpoints.json`` or quoted in an error has no
password. ``LLMPULSE_CLICKHOUSE_USER``, ``LLMPULSE_CLICKHOUSE_PASSWORD`` (or
``LLMPULSE_CLICKHOUSE_PASSWORD_FILE``) and ``LLMPULSE_CLICKHOUSE_CA_FILE``
override what the DSN says.

>>> dsn, creds = ClickHouseCredentials.resolve(
...     "https://svc:p%40ss-w0rd@ch.example:8443/llm", env={"LLMPULSE_CLICKHOUSE_CA_FILE": ""})
>>> dsn, creds
('https://ch.example:8443/llm', ClickHouseCredentials(username='svc', password=Secret('***'), ca_file=None))
>>> creds.password.get()
'p@ss-w0rd'
>>> redact_dsn("http://u:secret@h:8123")
'http://u:***@h:8123'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from llmpulse.secret import Secret

__all__ = ["ClickHouseCredentials", "CredentialsError", "redact_dsn", "split_dsn"]


class CredentialsError(ValueError):
    """A bad ClickHouse credential setting; the message starts with the key."""


def split_dsn(dsn: str) -> tuple[str, str | None, str | None]:
    """``dsn`` without its userinfo, and the user and password it named (decoded)."""
    parts = urlsplit(dsn)
    if parts.username is None and parts.password is None:
        return dsn, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return clean, user, password


def redact_dsn(dsn: str) -> str:
    """``dsn`` with the password of its userinfo replaced by ``***`` (for messages)."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
    except ValueError:
        return "<unparsable DSN>"
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class ClickHouseCredentials:
    """User, password and CA of a ClickHouse server; empty for the embedded store."""

    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    """PEM CA of the server's certificate for ``https://`` (default: the system's CAs)."""

    def secrets(self) -> list[Secret]:
        return [self.password] if self.password else []

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``clickhouse_connect.get_client``."""
        kw: dict[str, Any] = {}
        if self.username:
            kw["username"] = self.username
        if self.password:
            kw["password"] = self.password.get()
        if self.ca_file:
            kw["ca_cert"] = self.ca_file
        return kw

    @classmethod
    def resolve(cls, dsn: str, env: Mapping[str, str] | None = None) -> tuple[str, ClickHouseCredentials]:
        """The DSN without credentials and the credentials from it and ``env``."""
        env = os.environ if env is None else env
        clean, user, password = split_dsn(dsn)
        if env.get("LLMPULSE_CLICKHOUSE_USER"):
            user = env["LLMPULSE_CLICKHOUSE_USER"]
        if env.get("LLMPULSE_CLICKHOUSE_PASSWORD") and env.get("LLMPULSE_CLICKHOUSE_PASSWORD_FILE"):
            raise CredentialsError(
                "LLMPULSE_CLICKHOUSE_PASSWORD: set it or LLMPULSE_CLICKHOUSE_PASSWORD_FILE, not both"
            )
        if env.get("LLMPULSE_CLICKHOUSE_PASSWORD"):
            password = env["LLMPULSE_CLICKHOUSE_PASSWORD"]
        elif env.get("LLMPULSE_CLICKHOUSE_PASSWORD_FILE"):
            path = env["LLMPULSE_CLICKHOUSE_PASSWORD_FILE"]
            try:
                password = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise CredentialsError(
                    f"LLMPULSE_CLICKHOUSE_PASSWORD_FILE: cannot read {path}: {exc.__class__.__name__}"
                ) from None
        ca = env.get("LLMPULSE_CLICKHOUSE_CA_FILE") or None
        if ca is not None and not Path(ca).is_file():
            raise CredentialsError(f"LLMPULSE_CLICKHOUSE_CA_FILE: {ca} is not a readable file")
        if (password or ca) and clean.startswith("chdb:"):
            raise CredentialsError(
                "LLMPULSE_CLICKHOUSE: the embedded store (chdb://) takes no password or CA file"
            )
        if ca and not clean.startswith("https:"):
            raise CredentialsError(
                f"LLMPULSE_CLICKHOUSE_CA_FILE: set, but the DSN {clean} is not https://"
            )
        return clean, cls(user or None, Secret(password) if password else None, ca)
