"""How every llmpulse Kafka client secures its connection: TLS, client certificates, SASL.

One frozen :class:`KafkaSecurity` holds the settings; :meth:`KafkaSecurity.librdkafka`
translates them for confluent-kafka (the client shim, the notifier, topic
creation) and ``llmpulse.streams.app.faust_credentials`` /
:meth:`KafkaSecurity.aiokafka_kwargs` for aiokafka (the Faust workers). The
password is a :class:`~llmpulse.secret.Secret`: it prints as ``***`` and is read
only where a client is built. It comes from ``LLMPULSE_KAFKA_PASSWORD`` or from a
file (``LLMPULSE_KAFKA_PASSWORD_FILE`` / ``kafka_security.password_file``), never
from the YAML file itself.

This module belongs to the client shim: it needs nothing beyond the standard
library (the Faust translation lives with the Faust app, in ``llmpulse.streams.app``).

>>> sec = KafkaSecurity.from_env({"LLMPULSE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
...                               "LLMPULSE_KAFKA_USERNAME": "app",
...                               "LLMPULSE_KAFKA_PASSWORD": "hunter2-s3cret"})
>>> sec
KafkaSecurity(security_protocol='SASL_SSL', sasl_mechanism='SCRAM-SHA-512', username='app', password=Secret('***'), ca_file=None, cert_file=None, key_file=None, check_hostname=True)
>>> conf = sec.librdkafka()
>>> conf["security.protocol"], conf["sasl.mechanism"], conf["ssl.endpoint.identification.algorithm"]
('SASL_SSL', 'SCRAM-SHA-512', 'https')
>>> KafkaSecurity(security_protocol="SASL_PLAINTEXT", username="app")
Traceback (most recent call last):
...
llmpulse.kafka_security.KafkaSecurityError: kafka_security.password (LLMPULSE_KAFKA_PASSWORD or LLMPULSE_KAFKA_PASSWORD_FILE): required with security_protocol SASL_PLAINTEXT
>>> KafkaSecurity().librdkafka()
{}
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from llmpulse.secret import Secret, scrub

__all__ = [
    "ENV",
    "MECHANISMS",
    "PROTOCOLS",
    "KafkaSecurity",
    "KafkaSecurityError",
    "describe_transport_error",
]

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

ENV: dict[str, str] = {
    "security_protocol": "LLMPULSE_KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "LLMPULSE_KAFKA_SASL_MECHANISM",
    "username": "LLMPULSE_KAFKA_USERNAME",
    "password": "LLMPULSE_KAFKA_PASSWORD",
    "password_file": "LLMPULSE_KAFKA_PASSWORD_FILE",
    "ca_file": "LLMPULSE_KAFKA_CA_FILE",
    "cert_file": "LLMPULSE_KAFKA_CERT_FILE",
    "key_file": "LLMPULSE_KAFKA_KEY_FILE",
    "check_hostname": "LLMPULSE_KAFKA_CHECK_HOSTNAME",
}
"""Environment variable of each setting (they override the ``kafka_security:`` YAML mapping)."""

_FILE_KEYS = ("ca_file", "cert_file", "key_file")


class KafkaSecurityError(ValueError):
    """A bad transport security setting; the message starts with the key at fault."""


def _key(name: str) -> str:
    if name == "password":
        return "kafka_security.password (LLMPULSE_KAFKA_PASSWORD or LLMPULSE_KAFKA_PASSWORD_FILE)"
    return f"kafka_security.{name} ({ENV[name]})"


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """Transport security of one Kafka client; the default is plaintext without auth."""

    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str = "SCRAM-SHA-512"
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (used with the SASL protocols)."""
    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    """PEM file of the CA that signed the broker's certificate (default: the system's CAs)."""
    cert_file: str | None = None
    """PEM client certificate for mutual TLS (with ``key_file``)."""
    key_file: str | None = None
    check_hostname: bool = True
    """Check that the broker's certificate names the host connected to."""

    def __post_init__(self) -> None:
        proto = str(self.security_protocol).upper()
        if proto not in PROTOCOLS:
            raise KafkaSecurityError(
                f"{_key('security_protocol')}: {self.security_protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        object.__setattr__(self, "security_protocol", proto)
        mech = str(self.sasl_mechanism).upper()
        if mech not in MECHANISMS:
            raise KafkaSecurityError(
                f"{_key('sasl_mechanism')}: {self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}"
            )
        object.__setattr__(self, "sasl_mechanism", mech)
        if self.password is not None and not isinstance(self.password, Secret):
            object.__setattr__(self, "password", Secret(str(self.password)))
        if self.sasl:
            if not self.username:
                raise KafkaSecurityError(f"{_key('username')}: required with security_protocol {proto}")
            if not self.password:
                raise KafkaSecurityError(f"{_key('password')}: required with security_protocol {proto}")
        elif self.username or self.password:
            raise KafkaSecurityError(
                f"{_key('username')}: a username/password needs security_protocol SASL_SSL "
                f"or SASL_PLAINTEXT, not {proto}"
            )
        for name in _FILE_KEYS:
            value = getattr(self, name)
            if value is None:
                continue
            if not self.tls:
                raise KafkaSecurityError(
                    f"{_key(name)}: a TLS file needs security_protocol SSL or SASL_SSL, not {proto}"
                )
            if not Path(value).is_file() or not os.access(value, os.R_OK):
                raise KafkaSecurityError(f"{_key(name)}: {value} is not a readable file")
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise KafkaSecurityError(f"{_key(missing)}: a client certificate needs both cert_file and key_file")
        if not isinstance(self.check_hostname, bool):
            raise KafkaSecurityError(f"{_key('check_hostname')}: must be true or false")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def is_plaintext(self) -> bool:
        return self.security_protocol == "PLAINTEXT"

    def secrets(self) -> list[Secret]:
        """What must never be printed (for :func:`~llmpulse.secret.scrub`)."""
        return [self.password] if self.password else []

    # -- loading -------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, raw: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
        *, allow_password: bool = False,
    ) -> KafkaSecurity:
        """From a ``kafka_security:`` mapping (YAML or a dict given to the shim),
        overridden by the ``LLMPULSE_KAFKA_*`` variables of ``env``.

        ``allow_password`` accepts a ``password`` in the mapping (a dict built by
        the application); a YAML file must name a ``password_file`` instead.
        """
        env = os.environ if env is None else env
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)} | {"password_file"}
        for name in raw:
            if name not in known:
                raise KafkaSecurityError(
                    f"kafka_security.{name}: unknown setting; known: {', '.join(sorted(known))}"
                )
        if "password" in raw and not allow_password and not isinstance(raw["password"], Secret):
            raise KafkaSecurityError(
                "kafka_security.password: do not write the password into the config file; "
                "set LLMPULSE_KAFKA_PASSWORD or kafka_security.password_file"
            )
        values: dict[str, Any] = {}
        for name in known - {"password", "password_file"}:
            var = ENV[name]
            if env.get(var, "") != "":
                values[name] = env[var]
            elif raw.get(name) is not None:
                values[name] = raw[name]
        if env.get(ENV["password"], "") != "" and env.get(ENV["password_file"], "") != "":
            raise KafkaSecurityError(
                f"{_key('password')}: set LLMPULSE_KAFKA_PASSWORD or LLMPULSE_KAFKA_PASSWORD_FILE, not both"
            )
        if env.get(ENV["password"], "") != "":
            values["password"] = Secret(env[ENV["password"]])
        elif env.get(ENV["password_file"], "") != "":
            values["password"] = Secret(_read_secret(env[ENV["password_file"]], _key("password")))
        elif raw.get("password") is not None:
            pw = raw["password"]
            values["password"] = pw if isinstance(pw, Secret) else Secret(str(pw))
        elif raw.get("password_file") is not None:
            values["password"] = Secret(_read_secret(str(raw["password_file"]), "kafka_security.password_file"))
        if "check_hostname" in values:
            values["check_hostname"] = _bool(values["check_hostname"], _key("check_hostname"))
        for name in ("security_protocol", "sasl_mechanism", "username", *_FILE_KEYS):
            if name in values and not isinstance(values[name], str):
                raise KafkaSecurityError(f"{_key(name)}: must be a string, got {values[name]!r}")
        return cls(**values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """From the ``LLMPULSE_KAFKA_*`` variables only (what the shim does by default)."""
        return cls.from_settings(None, env)

    @classmethod
    def coerce(cls, value: KafkaSecurity | Mapping[str, Any] | None,
               env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """``value`` as settings: itself, a mapping (the environment still overrides),
        or ``None`` for the environment alone."""
        if isinstance(value, KafkaSecurity):
            return value
        if value is None:
            return cls.from_env(env)
        if not isinstance(value, Mapping):
            raise KafkaSecurityError(
                f"kafka_security: must be a KafkaSecurity or a mapping, got {type(value).__name__}"
            )
        return cls.from_settings(value, env, allow_password=True)

    # -- translations ----------------------------------------------------------------

    def librdkafka(self) -> dict[str, Any]:
        """Settings for a confluent-kafka (librdkafka) client; ``{}`` for plaintext,
        so a plain client's configuration is unchanged."""
        if self.is_plaintext:
            return {}
        conf: dict[str, Any] = {"security.protocol": self.security_protocol}
        if self.tls:
            if self.ca_file:
                conf["ssl.ca.location"] = self.ca_file
            if self.cert_file and self.key_file:
                conf["ssl.certificate.location"] = self.cert_file
                conf["ssl.key.location"] = self.key_file
            conf["ssl.endpoint.identification.algorithm"] = "https" if self.check_hostname else "none"
        if self.sasl:
            assert self.password is not None
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.username
            conf["sasl.password"] = self.password.get()
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context for aiokafka (None without TLS)."""
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(f"{_key('ca_file')}: {self.ca_file} is not a PEM CA file: {exc}") from None
        ctx.check_hostname = self.check_hostname
        if self.cert_file and self.key_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise KafkaSecurityError(
                    f"{_key('cert_file')}: {self.cert_file} with {self.key_file} is not a PEM "
                    f"certificate and its key: {exc}"
                ) from None
        return ctx

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client (``AIOKafkaProducer(**...)``)."""
        kw: dict[str, Any] = {"security_protocol": self.security_protocol}
        ctx = self.ssl_context()
        if ctx is not None:
            kw["ssl_context"] = ctx
        if self.sasl:
            assert self.password is not None
            # aiokafka takes SCRAM credentials in the sasl_plain_* arguments too
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.username
            kw["sasl_plain_password"] = self.password.get()
        return kw


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise KafkaSecurityError(f"{key}: must be true or false, got {value!r}")


def _read_secret(path: str, key: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KafkaSecurityError(f"{key}: cannot read {path}: {exc.__class__.__name__}") from None
    value = text.rstrip("\r\n")
    if not value:
        raise KafkaSecurityError(f"{key}: {path} is empty")
    return value


def describe_transport_error(code_name: str, text: str, security: KafkaSecurity) -> str | None:
    """A message naming the setting to fix for an authentication or TLS failure
    reported by a Kafka client, or None when ``code_name`` is another error.
    ``text`` is scrubbed of the password.

    >>> sec = KafkaSecurity(security_protocol="SASL_PLAINTEXT", username="u", password=Secret("pw-123456"))
    >>> describe_transport_error("_AUTHENTICATION", "SASL auth failed for pw-123456", sec)
    'kafka_security.password rejected by the broker for kafka_security.username u (SASL SCRAM-SHA-512): SASL auth failed for ***'
    >>> describe_transport_error("_TRANSPORT", "down", sec) is None
    True
    """
    clean = scrub(text, security.secrets())
    lowered = clean.lower()
    if code_name in ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "_SASL"):
        if "mechanism" in lowered and ("unsupported" in lowered or "handshake" in lowered):
            return (f"kafka_security.sasl_mechanism {security.sasl_mechanism} is not accepted by the "
                    f"broker (check security_protocol and sasl_mechanism): {clean}")
        return (f"kafka_security.password rejected by the broker for kafka_security.username "
                f"{security.username} (SASL {security.sasl_mechanism}): {clean}")
    # OpenSSL's reasons: a refused client certificate reaches a TLS 1.3 client only
    # after its handshake, as an alert on the first read ("Receive failed: ...")
    if code_name == "_SSL" or (security.tls and ("ssl routines" in lowered or "handshake" in lowered)):
        if "certificate verify failed" in lowered or "unable to get local issuer" in lowered:
            return (f"kafka_security.ca_file does not verify the broker's certificate "
                    f"(or check_hostname refused its name): {clean}")
        return (f"kafka_security TLS handshake refused: check kafka_security.cert_file/key_file "
                f"(client certificate) and ca_file: {clean}")
    return None
