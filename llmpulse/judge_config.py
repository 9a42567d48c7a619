"""The LLM judge's settings: the ``judge:`` section of ``llmpulse.yaml``.

The judge (``llmpulse judge``, :mod:`llmpulse.judge`) is optional and runs as
a process of its own. Its settings live here, next to the other settings
objects, so the YAML file is checked once at start like the rest
(:func:`llmpulse.config.load_settings`) and every error names its key::

    judge:
      endpoint: https://llm.internal/v1   # OpenAI-compatible API root
      model: grader-large
      token_env: JUDGE_API_TOKEN          # the variable holding the token
      # token_file: /run/secrets/judge    # or a file holding it
      sample_rate: 0.05                   # share of answers graded ...
      app_rates: {checkout: 0.5}          # ... or per app
      cost_cap_usd_per_hour: 2.0
      price_per_1k_tokens: 0.002
      concurrency: 4
      timeout_s: 20

The token is never written in the file (a ``token:`` key is refused): it is
read from the variable named by ``token_env`` (default
``LLMPULSE_JUDGE_TOKEN``) or from ``token_file``, and held as a
:class:`~llmpulse.secret.Secret`, which prints as ``***``.

>>> s = JudgeSettings.from_settings({"endpoint": "http://127.0.0.1:9/v1", "model": "m",
...                                  "app_rates": {"checkout": 1}}, env={"LLMPULSE_JUDGE_TOKEN": "t0k"})
>>> s.rate_for("checkout"), s.rate_for("support"), s.token
(1.0, 0.05, Secret('***'))
>>> JudgeSettings.from_settings({"concurrency": 0}, env={})
Traceback (most recent call last):
...
llmpulse.judge_config.JudgeError: judge.concurrency: must be >= 1, got 0
>>> JudgeSettings.from_settings({"endpoint": "ftp://x/v1"}, env={})
Traceback (most recent call last):
...
llmpulse.judge_config.JudgeError: judge.endpoint: must be an http:// or https:// URL with a host, got 'ftp://x/v1'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmpulse.secret import Secret

__all__ = ["DEFAULT_TOKEN_ENV", "JudgeError", "JudgeSettings", "check_endpoint"]

DEFAULT_TOKEN_ENV = "LLMPULSE_JUDGE_TOKEN"


class JudgeError(ValueError):
    """A judge setting is not usable; the message names the key."""


def check_endpoint(url: str, key: str = "judge.endpoint") -> str:
    """An http(s) API root with a host and no credentials in it (they would be logged).

    >>> check_endpoint("https://user:pw@llm/v1")
    Traceback (most recent call last):
    ...
    llmpulse.judge_config.JudgeError: judge.endpoint: credentials do not go in the URL; use judge.token_env or judge.token_file
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError:
        raise JudgeError(f"{key}: not a URL: {url!r}") from None
    if parts.username is not None or parts.password is not None:
        raise JudgeError(f"{key}: credentials do not go in the URL; use judge.token_env or "
                         "judge.token_file")
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise JudgeError(f"{key}: must be an http:// or https:// URL with a host, got {url!r}")
    return url


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JudgeError(f"judge.{key}: must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    """Where the judge is and its limits. Prices are USD per 1000 tokens (prompt +
    completion); the sampling picks requests by a hash of their ``request_id``."""

    endpoint: str | None = None
    """OpenAI-compatible API root (``http://host:port/v1``); None: given on the command line."""
    model: str = ""
    token: Secret | None = None
    """The endpoint's bearer token, from ``token_env`` or ``token_file``; never printed."""
    sample_rate: float = 0.05
    app_rates: Mapping[str, float] = field(default_factory=dict)
    cost_cap_usd_per_hour: float = 1.0
    price_per_1k_tokens: float = 0.002
    concurrency: int = 4
    timeout_s: float = 30.0
    max_queue: int = 1000
    health_every_s: float = 30.0
    """How often the judge reports its counts (``llmpulse.health``, the health dashboard)."""

    def __post_init__(self) -> None:
        for key, rate in [("sample_rate", self.sample_rate),
                          *((f"app_rates.{k}", v) for k, v in self.app_rates.items())]:
            if not 0.0 <= rate <= 1.0:
                raise JudgeError(f"judge.{key}: must be within 0..1, got {rate!r}")
        if not self.cost_cap_usd_per_hour >= 0:
            raise JudgeError(f"judge.cost_cap_usd_per_hour: must be >= 0, got {self.cost_cap_usd_per_hour!r}")
        if not self.price_per_1k_tokens >= 0:
            raise JudgeError(f"judge.price_per_1k_tokens: must be >= 0, got {self.price_per_1k_tokens!r}")
        if self.concurrency < 1:
            raise JudgeError(f"judge.concurrency: must be >= 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise JudgeError(f"judge.timeout_s: must be > 0, got {self.timeout_s!r}")
        if self.max_queue < 1:
            raise JudgeError(f"judge.max_queue: must be >= 1, got {self.max_queue}")
        if not self.health_every_s > 0:
            raise JudgeError(f"judge.health_every_s: must be > 0, got {self.health_every_s!r}")
        if self.endpoint is not None:
            check_endpoint(self.endpoint)
        if self.token is not None and not isinstance(self.token, Secret):
            object.__setattr__(self, "token", Secret(str(self.token)))

    def rate_for(self, app: str) -> float:
        return float(self.app_rates.get(app, self.sample_rate))

    def secrets(self) -> list[Secret]:
        """What must never be printed."""
        return [self.token] if self.token else []

    @classmethod
    def from_settings(cls, raw: Mapping[str, Any] | None,
                      env: Mapping[str, str] | None = None) -> JudgeSettings:
        """From a ``judge:`` mapping (YAML); the token from the environment or a file."""
        env = os.environ if env is None else env
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise JudgeError(f"judge: must be a mapping, got {type(raw).__name__}")
        own = {f.name for f in fields(cls)} - {"token"}
        known = own | {"token_env", "token_file"}
        for name in raw:
            if name == "token":
                raise JudgeError("judge.token: do not write the token into the config file; "
                                 f"set {DEFAULT_TOKEN_ENV}, or name another variable in "
                                 "judge.token_env, or a file in judge.token_file")
            if name not in known:
                raise JudgeError(f"judge.{name}: unknown setting; known: {', '.join(sorted(known))}")
        kw: dict[str, Any] = {}
        for name in ("endpoint", "model"):
            if raw.get(name) is not None:
                if not isinstance(raw[name], str) or not raw[name].strip():
                    raise JudgeError(f"judge.{name}: must be a non-empty string, got {raw[name]!r}")
                kw[name] = raw[name].strip()
        for name in ("sample_rate", "cost_cap_usd_per_hour", "price_per_1k_tokens", "timeout_s",
                     "health_every_s"):
            if name in raw:
                kw[name] = _number(name, raw[name])
        for name in ("concurrency", "max_queue"):
            if name in raw:
                v = raw[name]
                if isinstance(v, bool) or not isinstance(v, int):
                    raise JudgeError(f"judge.{name}: must be a whole number, got {v!r}")
                kw[name] = v
        rates = raw.get("app_rates")
        if rates is not None:
            if not isinstance(rates, Mapping):
                raise JudgeError(f"judge.app_rates: must be a mapping of app: rate, got {rates!r}")
            kw["app_rates"] = {str(app): _number(f"app_rates.{app}", r) for app, r in rates.items()}
        kw["token"] = _token(raw, env)
        return cls(**kw)


def _token(raw: Mapping[str, Any], env: Mapping[str, str]) -> Secret | None:
    var = raw.get("token_env", DEFAULT_TOKEN_ENV)
    if not isinstance(var, str) or not var:
        raise JudgeError(f"judge.token_env: must be the name of an environment variable, got {var!r}")
    path = raw.get("token_file")
    if path is not None and "token_env" in raw:
        raise JudgeError("judge.token_file: set judge.token_env or judge.token_file, not both")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise JudgeError(f"judge.token_file: must be a file path, got {path!r}")
        try:
            text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise JudgeError(f"judge.token_file: cannot read {path}: {exc.__class__.__name__}") from None
        if not text:
            raise JudgeError(f"judge.token_file: {path} is empty")
        return Secret(text)
    value = env.get(var, "")
    return Secret(value) if value else None
