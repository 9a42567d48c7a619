"""Configuration: one optional YAML file overridden by environment variables.

Each component takes its own small frozen settings object; :class:`Settings`
only groups them. Every value is checked at start and a bad one raises
:class:`ConfigError` naming the key and the fix.

>>> s = load_settings(env={"LLMPULSE_DATA_DIR": "/tmp/lp"}, path=None)
>>> str(s.data_dir), s.kafka, s.embedded_broker, s.clickhouse_dsn
('/tmp/lp', None, True, 'chdb:///tmp/lp/store')
>>> load_settings(env={"LLMPULSE_KAFKA": "no-port-here"}, path=None)
Traceback (most recent call last):
...
llmpulse.config.ConfigError: LLMPULSE_KAFKA: 'no-port-here' is not host:port[,host:port...]; unset it to use the embedded broker
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from llmpulse.broker_storage import BrokerSettings, BrokerSettingsError
from llmpulse.judge_config import JudgeError, JudgeSettings
from llmpulse.kafka_security import KafkaSecurity, KafkaSecurityError
from llmpulse.store_auth import ClickHouseCredentials, CredentialsError, redact_dsn

__all__ = [
    "ConfigError",
    "HttpSettings",
    "IngestSettings",
    "OtlpSettings",
    "QuerySettings",
    "RetentionSettings",
    "SignalSettings",
    "Settings",
    "load_settings",
]

_HOSTPORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


class ConfigError(ValueError):
    """Bad configuration; the message starts with the key at fault."""


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """How the ingest agents batch rows into the store."""

    batch_messages: int = 500
    """Kafka messages (envelopes) taken per batch."""
    batch_within_s: float = 0.1
    """Longest a batch waits to fill before it is stored."""
    partitions: int = 4
    """Partitions of each llmpulse topic created by the embedded stack."""
    store_retry_max_s: float = 5.0
    """Cap of the exponential backoff while the store is unreachable."""
    max_past_days: float = 30.0
    """Events older than this are dead-lettered as a clock years off."""
    redact: bool = False
    """Redact personal data in every event the ingest agents read (prompt, response,
    context passages, feedback comment), and in the dead letters, before anything is
    stored or forwarded, whatever produced it: for producers that write to the topics
    without the client shim (``LLMPULSE_INGEST_REDACT``; needs the ``redact`` extra).
    Events the shim already redacted pass through it again unchanged, at its cost."""
    redact_regions: tuple[str, ...] = ()
    """Phone regions tried for numbers without a country code (empty: the redactor's
    defaults), e.g. ``[CH, DE, AT]``."""


SIGNAL_STOP_MODES: tuple[str, ...] = ("save", "flush")
"""Values of ``signals.stop``."""


@dataclass(frozen=True, slots=True)
class SignalSettings:
    """How the signal agents window events and run detectors."""

    enabled: bool = True
    latency_window_s: float = 10.0
    """Window of the latency, errors, tokens and cost family."""
    window_s: float = 60.0
    """Window of the drift, bias, hallucination and quality families."""
    embedding: bool = False
    """Embedding drift on prompts (MiniLM on ONNX Runtime; costly on CPU)."""
    hallucination_max_scored: int = 500
    """Responses scored for groundedness per window and group."""
    poll_s: float = 1.0
    """How often windows are checked for closing."""
    snapshot_s: float = 30.0
    """How often the engine state is saved for restarts (0 = only at stop)."""
    feedback_wait_s: float = 60.0
    """How long feedback waits for its inference to be stored before it counts as unmatched."""
    max_event_lead_s: float = 10.0
    """How far ahead of this worker's clock an event time may move the watermark. An
    event stamped later (a client whose clock is fast) waits in its window until the
    clock gets there, instead of making every other event late once its partition
    goes quiet."""
    join_horizon_s: float = 3600.0
    """How long (event time) each inference waits in memory for its feedback: the
    feedback join's memory is about horizon x inference rate x 0.5 kB, so a busy
    worker lowers it; later feedback is still stored, and counted unmatched."""
    process: bool = True
    """Run windows and detectors in a child process, off the ingest path's interpreter lock."""
    engine_processes: int = 2
    """Child processes the groups are spread over (by a hash of app/model/version), so
    window closes of different groups run on different cores (with ``process``)."""
    notify_in_worker: bool = True
    """Workers page on-call themselves; false when a separate notifier service
    (``python -m llmpulse.streams.notify``) consumes ``llmpulse.alerts`` instead."""
    stop: str = "flush"
    """What a clean stop does with the open windows: ``flush`` closes them now as
    partial windows (a final stop); ``save`` saves them with the offsets they cover,
    as a crash would leave them, so the next start continues them (a rolling restart)."""


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """Days each table keeps its rows (``retention:`` in the YAML); 0 keeps them forever.

    Applied to existing tables at start (``ALTER TABLE ... MODIFY TTL``), so a
    change here changes the store the next time ``llmpulse up`` starts.
    """

    raw_events: int = 90
    """``inference_events`` and the ``request_index`` that joins feedback to them."""
    feedback: int = 90
    signals: int = 90
    alerts: int = 365
    deadletters: int = 30
    audit: int = 365


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port."""


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """The OTLP receiver of ``llmpulse up`` (``otlp:``); OTLP/HTTP is always on the API port.

    >>> load_settings(env={"LLMPULSE_OTLP_GRPC_PORT": "4317"}, path=None).otlp
    OtlpSettings(grpc=True, grpc_port=4317, map_processes=-1, redact=False, redact_regions=())
    >>> load_settings(env={"LLMPULSE_OTLP_REDACT": "true"}, path=None).otlp.redact
    True
    >>> load_settings(env={"LLMPULSE_OTLP_GRPC": "maybe"}, path=None)
    Traceback (most recent call last):
    ...
    llmpulse.config.ConfigError: LLMPULSE_OTLP_GRPC: must be true or false, got 'maybe'
    """

    grpc: bool = True
    """Serve OTLP/gRPC too (``LLMPULSE_OTLP_GRPC``), on ``http.host``."""
    grpc_port: int = 0
    """0 picks a free port (``LLMPULSE_OTLP_GRPC_PORT``); 4317 is the usual one."""
    map_processes: int = -1
    """Processes that decode and map export requests (0: on the worker's event loop;
    -1: as many as the machine has cores beyond two, at most 2)."""
    redact: bool = False
    """Redact personal data in what spans and log records carry (prompts, responses,
    retrieved documents, tool and span attributes, feedback comments) before anything
    is produced or stored, as the client shim's ``redact=True`` does in the app
    (``LLMPULSE_OTLP_REDACT``; needs the ``redact`` extra)."""
    redact_regions: tuple[str, ...] = ()
    """Phone regions tried for numbers without a country code (empty: the redactor's
    defaults), e.g. ``[CH, DE, AT]``."""


MAX_MAP_PROCESSES = 64
"""The most OTLP mapping processes ``otlp.map_processes`` may ask for."""


_S = TypeVar("_S", "IngestSettings", "OtlpSettings")


def _split_regions(raw: Any, section: str) -> tuple[Any, tuple[str, ...]]:
    """``raw`` without its ``redact_regions`` list, and that list checked."""
    if not isinstance(raw, Mapping) or "redact_regions" not in raw:
        return raw, ()
    regions = raw["redact_regions"]
    if not isinstance(regions, list) or not all(type(r) is str and r for r in regions):
        raise ConfigError(f"{section}.redact_regions: must be a list of region codes such as "
                          f"[CH, DE], got {regions!r}")
    return {k: v for k, v in raw.items() if k != "redact_regions"}, tuple(regions)


def _env_flags(base: _S, env: Mapping[str, str], flags: Iterable[tuple[str, str]]) -> _S:
    """``base`` with boolean fields set from environment variables ``(name, field)``."""
    for name, field_ in flags:
        flag = env.get(name)
        if flag is not None:
            if flag.strip().lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"{name}: must be true or false, got {flag!r}")
            values: dict[str, Any] = {field_: flag.strip().lower() in ("true", "1")}
            base = replace(base, **values)
    return base


def _check_redactor(section: str, regions: tuple[str, ...]) -> None:
    """The ``redact`` extra and the regions, checked at start rather than at the first event."""
    from llmpulse.redact import Redactor

    try:
        Redactor(regions=regions) if regions else Redactor()
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{section}.redact: {exc}") from None


def _ingest(raw: Any, env: Mapping[str, str]) -> IngestSettings:
    raw, regions = _split_regions(raw, "ingest")
    base = replace(_sub(IngestSettings, raw, "ingest"), redact_regions=regions)
    base = _env_flags(base, env, (("LLMPULSE_INGEST_REDACT", "redact"),))
    if base.redact:
        _check_redactor("ingest", base.redact_regions)
    return base


def _otlp(raw: Any, env: Mapping[str, str]) -> OtlpSettings:
    if isinstance(raw, Mapping) and raw.get("map_processes") == -1 \
            and type(raw.get("map_processes")) is int:
        raw = {k: v for k, v in raw.items() if k != "map_processes"}  # -1: automatic
    raw, regions = _split_regions(raw, "otlp")
    base = replace(_sub(OtlpSettings, raw, "otlp"), redact_regions=regions)
    base = _env_flags(base, env, (("LLMPULSE_OTLP_GRPC", "grpc"), ("LLMPULSE_OTLP_REDACT", "redact")))
    port = env.get("LLMPULSE_OTLP_GRPC_PORT")
    key = "LLMPULSE_OTLP_GRPC_PORT" if port is not None else "otlp.grpc_port"
    value: Any = port if port is not None else base.grpc_port
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigError(f"{key}: must be a port in 0..65535 (0 picks a free one), got {value!r}")
    if base.redact:
        _check_redactor("otlp", base.redact_regions)
    if not -1 <= base.map_processes <= MAX_MAP_PROCESSES:
        raise ConfigError(f"otlp.map_processes: must be 0..{MAX_MAP_PROCESSES}, or -1 for "
                          f"automatic, got {base.map_processes!r}")
    return replace(base, grpc_port=number)


@dataclass(frozen=True, slots=True)
class QuerySettings:
    """Limits of every read-only query (``/api/query``, dashboards, report).

    They are set on the reader connection before ``readonly=1``, so a query
    cannot change them.

    >>> QuerySettings(max_result_rows=10).clickhouse_settings()["max_result_rows"]
    10
    """

    max_execution_time_s: float = 10.0
    """A query running longer is stopped (HTTP 408); it holds the store meanwhile."""
    max_result_rows: int = 100_000
    """Rows one query may return (HTTP 413)."""
    max_result_bytes: int = 64 * 2**20
    """Bytes one query may return (HTTP 413)."""
    max_memory_usage_bytes: int = 2**30
    """Memory one query may use (HTTP 422)."""
    max_rows_to_read: int = 2_000_000_000
    """Rows one query may read from tables (HTTP 413)."""

    def clickhouse_settings(self) -> dict[str, Any]:
        return {
            "max_execution_time": self.max_execution_time_s,
            "timeout_overflow_mode": "throw",
            "max_result_rows": self.max_result_rows,
            "max_result_bytes": self.max_result_bytes,
            "result_overflow_mode": "throw",
            "max_memory_usage": self.max_memory_usage_bytes,
            "max_rows_to_read": self.max_rows_to_read,
            "read_overflow_mode": "throw",
        }


_QUERY_MINIMUM = {
    "max_execution_time_s": 0.1,
    "max_result_rows": 1,
    # the guard's own look-ups (function catalogue, parse tree) are single rows of that size
    "max_result_bytes": 2**20,
    "max_memory_usage_bytes": 64 * 2**20,
    "max_rows_to_read": 100_000,
}


def _check_query(q: QuerySettings) -> QuerySettings:
    for name, least in _QUERY_MINIMUM.items():
        if getattr(q, name) < least:
            raise ConfigError(f"query.{name}: must be >= {least}, got {getattr(q, name)!r}")
    return q


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path(".llmpulse")
    kafka: str | None = None
    """Bootstrap servers; None runs the embedded broker."""
    clickhouse: str | None = None
    """A ClickHouse DSN (http://... or chdb:///...); None opens the embedded store."""
    rules: Path | None = None
    ingest: IngestSettings = field(default_factory=IngestSettings)
    signals: SignalSettings = field(default_factory=SignalSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    query: QuerySettings = field(default_factory=QuerySettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    session_timeout_s: float = 6.0
    """Kafka consumer session timeout: a short one makes group joins fast."""
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    """TLS/SASL of every Kafka client (``kafka_security:`` and ``LLMPULSE_KAFKA_*``)."""
    clickhouse_auth: ClickHouseCredentials = field(default_factory=ClickHouseCredentials)
    """User, password and CA of a ClickHouse server (taken out of the DSN)."""
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    """The optional LLM judge (``judge:``, :mod:`llmpulse.judge_config`)."""
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    """The embedded broker's storage (``broker:``, :mod:`llmpulse.broker_storage`)."""
    otlp: OtlpSettings = field(default_factory=OtlpSettings)
    """The OTLP receiver's gRPC endpoint (``otlp:``)."""

    @property
    def embedded_broker(self) -> bool:
        return self.kafka is None

    @property
    def embedded_store(self) -> bool:
        return self.clickhouse is None or self.clickhouse.startswith("chdb:")

    @property
    def clickhouse_dsn(self) -> str:
        if self.clickhouse:
            return self.clickhouse
        return f"chdb://{(self.data_dir / 'store').absolute()}"

    @property
    def endpoints_path(self) -> Path:
        return self.data_dir / "endpoints.json"


def _check_kafka(value: str, key: str) -> str:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(_HOSTPORT.match(p) for p in parts):
        raise ConfigError(
            f"{key}: {value!r} is not host:port[,host:port...]; unset it to use the embedded broker"
        )
    return ",".join(parts)


def _check_dsn(value: str, key: str) -> str:
    if not re.match(r"^(chdb|https?|clickhouse)://", value):
        raise ConfigError(
            f"{key}: {redact_dsn(value)!r} is not a ClickHouse DSN (http://host:8123, https://..., "
            "or chdb:///path); unset it to use the embedded store"
        )
    return value


def _sub(cls: type, raw: Any, key: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(f"{key}.{name}: unknown setting; known: {', '.join(sorted(known))}")
        default = getattr(cls(), name)
        want = type(default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool) != isinstance(default, bool):
            raise ConfigError(f"{key}.{name}: must be {want.__name__}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{key}.{name}: must be >= 0, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def load_settings(
    env: Mapping[str, str] | None = None, path: str | os.PathLike[str] | None = "llmpulse.yaml"
) -> Settings:
    """Settings from ``path`` (if it exists) overridden by ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        from llmpulse.yaml_input import YamlInputError, load_yaml

        try:
            loaded = load_yaml(Path(path).read_text())
        except YamlInputError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: must be a mapping of settings")
        raw = dict(loaded or {})
    known = {"data_dir", "kafka", "clickhouse", "rules", "ingest", "signals", "http",
             "query", "retention", "session_timeout_s", "kafka_security", "judge", "broker",
             "otlp"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown setting in {path}; known: {', '.join(sorted(known))}")

    data_dir = env.get("LLMPULSE_DATA_DIR") or raw.get("data_dir") or ".llmpulse"
    kafka = env.get("LLMPULSE_KAFKA") or raw.get("kafka")
    ch = env.get("LLMPULSE_CLICKHOUSE") or raw.get("clickhouse")
    rules = env.get("LLMPULSE_RULES") or raw.get("rules")
    kkey = "LLMPULSE_KAFKA" if env.get("LLMPULSE_KAFKA") else "kafka"
    ckey = "LLMPULSE_CLICKHOUSE" if env.get("LLMPULSE_CLICKHOUSE") else "clickhouse"
    rkey = "LLMPULSE_RULES" if env.get("LLMPULSE_RULES") else "rules"
    if kafka is not None:
        kafka = _check_kafka(str(kafka), kkey)
    ch_auth = ClickHouseCredentials()
    if ch is not None:
        ch = _check_dsn(str(ch), ckey)
        try:
            ch, ch_auth = ClickHouseCredentials.resolve(ch, env)
        except (CredentialsError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    raw_sec = raw.get("kafka_security")
    if raw_sec is not None and not isinstance(raw_sec, Mapping):
        raise ConfigError(f"kafka_security: must be a mapping, got {type(raw_sec).__name__}")
    try:
        kafka_security = KafkaSecurity.from_settings(raw_sec, env)
    except KafkaSecurityError as exc:
        raise ConfigError(str(exc)) from None
    if kafka is None and not kafka_security.is_plaintext:
        raise ConfigError(
            f"kafka_security.security_protocol: {kafka_security.security_protocol} needs a Kafka "
            "cluster (LLMPULSE_KAFKA); the embedded broker speaks plaintext on loopback only"
        )
    rules_path: Path | None = None
    if rules:
        rules_path = Path(str(rules))
        if not rules_path.is_file():
            raise ConfigError(f"{rkey}: rules file {rules_path} does not exist")
    data = Path(str(data_dir))
    if data.exists() and not data.is_dir():
        raise ConfigError(f"LLMPULSE_DATA_DIR: {data} exists and is not a directory")
    session = raw.get("session_timeout_s", 6.0)
    if not isinstance(session, (int, float)) or isinstance(session, bool) or not 1 <= session <= 300:
        raise ConfigError(f"session_timeout_s: must be a number of seconds in 1..300, got {session!r}")
    signals = _sub(SignalSettings, raw.get("signals"), "signals")
    if signals.engine_processes < 1:
        raise ConfigError(f"signals.engine_processes: must be >= 1, got {signals.engine_processes!r}")
    if signals.join_horizon_s < signals.window_s:
        raise ConfigError(f"signals.join_horizon_s: must be at least signals.window_s "
                          f"({signals.window_s:g} s), got {signals.join_horizon_s!r}")
    if not 0 <= signals.max_event_lead_s <= 86400:
        raise ConfigError("signals.max_event_lead_s: must be a number of seconds in 0..86400, "
                          f"got {signals.max_event_lead_s!r}")
    if signals.stop not in SIGNAL_STOP_MODES:
        raise ConfigError(f"signals.stop: must be one of {', '.join(SIGNAL_STOP_MODES)}, "
                          f"got {signals.stop!r}")
    try:
        judge = JudgeSettings.from_settings(raw.get("judge"), env)
    except JudgeError as exc:
        raise ConfigError(str(exc)) from None
    try:
        broker = BrokerSettings.from_raw(raw.get("broker"), env)
    except BrokerSettingsError as exc:
        raise ConfigError(str(exc)) from None
    return Settings(
        data_dir=data,
        kafka=kafka,
        clickhouse=ch,
        rules=rules_path,
        ingest=_ingest(raw.get("ingest"), env),
        signals=signals,
        http=_sub(HttpSettings, raw.get("http"), "http"),
        query=_check_query(_sub(QuerySettings, raw.get("query"), "query")),
        retention=_sub(RetentionSettings, raw.get("retention"), "retention"),
        session_timeout_s=float(session),
        kafka_security=kafka_security,
        clickhouse_auth=ch_auth,
        judge=judge,
        broker=broker,
        otlp=_otlp(raw.get("otlp"), env),
    )
