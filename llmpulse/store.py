"""The ClickHouse store: tables of the contract, batched inserts, read-only queries.

One code path for both modes: a ``chdb:///<dir>`` DSN opens the embedded
engine in this process (one process at a time may own a directory, guarded
by a lock file), an ``http(s)://`` DSN talks to a ClickHouse server.

Raw event tables are ``ReplacingMergeTree`` ordered by the event's own
identity, so an event replayed after a crash collapses into one row; every
query llmpulse runs on them reads with ``FINAL``, so duplicates are never
visible (proved by the crash test in ``tests/integration``).

Blocking calls: every method here blocks. Async callers run them in a thread
(``asyncio.to_thread``); a lock serialises access to the one client.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import orjson

from llmpulse.store_auth import ClickHouseCredentials

if TYPE_CHECKING:
    from llmpulse.config import QuerySettings

__all__ = [
    "DDL",
    "QueryError",
    "QueryLimitError",
    "Store",
    "StoreError",
    "StoreLockedError",
    "TABLES",
    "lookup_requests",
]

log = logging.getLogger(__name__)

TTL_DAYS = 90

DDL: dict[str, str] = {
    "inference_events": """
CREATE TABLE IF NOT EXISTS inference_events (
    event_id String,
    request_id String,
    ts DateTime64(3, 'UTC'),
    app LowCardinality(String),
    model LowCardinality(String),
    model_version LowCardinality(String),
    latency_ms Float64,
    ttft_ms Nullable(Float64),
    status LowCardinality(String),
    error_type LowCardinality(String) DEFAULT '',
    input_tokens UInt32,
    output_tokens UInt32,
    cost_usd Nullable(Float64),
    prompt String DEFAULT '',
    response String DEFAULT '',
    context Array(String),
    token_logprobs Array(Float32),
    prediction Tuple(label String, score Nullable(Float64)),
    segment Map(LowCardinality(String), String),
    features Map(LowCardinality(String), Float64),
    user String DEFAULT '',
    trace_id String DEFAULT '',
    span_id String DEFAULT '',
    parent_span_id String DEFAULT '',
    prompt_version LowCardinality(String) DEFAULT '',
    experiment LowCardinality(String) DEFAULT '',
    variant LowCardinality(String) DEFAULT '',
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (app, model, model_version, ts, event_id)
TTL toDateTime(ts) + INTERVAL {ttl} DAY
""",
    "feedback_events": """
CREATE TABLE IF NOT EXISTS feedback_events (
    event_id String,
    request_id String,
    ts DateTime64(3, 'UTC'),
    app LowCardinality(String) DEFAULT '',
    score Nullable(Float64),
    label Nullable(String),
    hallucination Nullable(UInt8),
    comment String DEFAULT '',
    user String DEFAULT '',
    reference String DEFAULT '',
    source LowCardinality(String) DEFAULT '',
    judge Map(LowCardinality(String), Float64),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (request_id, event_id)
TTL toDateTime(ts) + INTERVAL {ttl} DAY
""",
    "signals": """
CREATE TABLE IF NOT EXISTS signals (
    ts DateTime64(3, 'UTC'),
    window_s Float64,
    app LowCardinality(String),
    model LowCardinality(String),
    model_version LowCardinality(String),
    signal LowCardinality(String),
    dimension String,
    value Float64,
    n UInt64,
    detail String,
    computed_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMMDD(ts)
ORDER BY (app, model, model_version, signal, dimension, ts)
TTL toDateTime(ts) + INTERVAL {ttl} DAY
""",
    "alerts": """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id String,
    rule String,
    state LowCardinality(String),
    severity LowCardinality(String),
    app LowCardinality(String),
    model LowCardinality(String),
    model_version LowCardinality(String),
    signal LowCardinality(String),
    dimension String,
    value Float64,
    threshold Float64,
    started_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    resolved_at Nullable(DateTime64(3, 'UTC')),
    summary String,
    detail String DEFAULT '{{}}'
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY alert_id
""",
    "deployments": """
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id String,
    model LowCardinality(String),
    version String,
    previous_version String,
    trigger String,
    stage LowCardinality(String),
    metrics String,
    ts DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(ts)
ORDER BY (model, deployment_id, stage)
""",
    "deadletter_events": """
CREATE TABLE IF NOT EXISTS deadletter_events (
    ts DateTime64(3, 'UTC') DEFAULT now64(3),
    topic LowCardinality(String),
    partition UInt32,
    offset UInt64,
    reason String,
    payload String
) ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset, reason)
TTL toDateTime(ts) + INTERVAL {ttl} DAY
""",
    "audit_events": """
CREATE TABLE IF NOT EXISTS audit_events (
    ts DateTime64(3, 'UTC'),
    action LowCardinality(String),
    actor String,
    outcome LowCardinality(String),
    target String,
    remote String,
    detail String DEFAULT '{{}}'
) ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, action)
TTL toDateTime(ts) + INTERVAL 365 DAY
""",
    "spans": """
CREATE TABLE IF NOT EXISTS spans (
    trace_id String,
    span_id String,
    parent_span_id String,
    ts DateTime64(6, 'UTC'),
    end_ts DateTime64(6, 'UTC'),
    duration_ms Float64,
    app LowCardinality(String),
    name String,
    kind LowCardinality(String),
    scope LowCardinality(String),
    step LowCardinality(String),
    operation LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    tool_name LowCardinality(String),
    agent_name LowCardinality(String),
    status LowCardinality(String),
    error_type LowCardinality(String),
    input_tokens UInt32,
    output_tokens UInt32,
    finish_reasons Array(String),
    response_id String,
    event_id String,
    attributes Map(String, String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (app, trace_id, span_id)
TTL toDateTime(ts) + INTERVAL {ttl} DAY
""",
}

TABLES: tuple[str, ...] = tuple(DDL)

RAW_INGEST: dict[str, str] = {
    "inference_events": "inference_ingest",
    "feedback_events": "feedback_ingest",
}
"""Raw table -> its ingest entry: a ``Null`` table taking ``ts`` as epoch
milliseconds, the contract's own encoding, so the sink can pass an event's
original JSON through without re-encoding it; a materialized view converts
``ts`` into the raw table."""


ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "inference_events": (
        ("prompt_version", "LowCardinality(String) DEFAULT ''"),
        ("experiment", "LowCardinality(String) DEFAULT ''"),
        ("variant", "LowCardinality(String) DEFAULT ''"),
    ),
    "feedback_events": (
        ("reference", "String DEFAULT ''"),
        ("source", "LowCardinality(String) DEFAULT ''"),
        ("judge", "Map(LowCardinality(String), Float64)"),
    ),
}
"""Columns added to raw tables after their first release: a store made before
gets them (and so does its ingest entry; the view's ``SELECT *`` follows)."""


def _ingest_ddl(raw: str, entry: str, ttl: int) -> list[str]:
    ddl = DDL[raw].format(ttl=ttl)
    cols = ddl[ddl.index("(") + 1 : ddl.index(") ENGINE")]
    lines = [
        ln for ln in cols.strip().splitlines() if not ln.strip().startswith("ingested_at")
    ]
    body = "\n".join(lines).rstrip().rstrip(",")
    body = body.replace("ts DateTime64(3, 'UTC')", "ts Int64")
    stmts = [
        f"CREATE TABLE IF NOT EXISTS {entry} (\n{body}\n) ENGINE = Null",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {entry}_mv TO {raw} AS "
        f"SELECT * REPLACE (fromUnixTimestamp64Milli(ts, 'UTC') AS ts) FROM {entry}",
    ]
    if raw == "inference_events":
        stmts += [
            REQUEST_INDEX_DDL.format(ttl=ttl),
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS request_index_mv TO request_index AS "
            f"SELECT request_id, app, model, model_version, "
            f"fromUnixTimestamp64Milli(ts, 'UTC') AS ts, event_id, "
            f"prediction.label AS prediction_label, segment FROM {entry}",
        ]
    return stmts


REQUEST_INDEX_DDL = """
CREATE TABLE IF NOT EXISTS request_index (
    request_id String,
    app LowCardinality(String),
    model LowCardinality(String),
    model_version LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    event_id String,
    prediction_label String,
    segment Map(LowCardinality(String), String)
) ENGINE = ReplacingMergeTree
ORDER BY request_id
TTL toDateTime(ts) + INTERVAL {ttl} DAY
"""
"""request_id -> the inference it belongs to, for joining feedback that arrives
seconds to days later (a primary-key lookup, filled by a materialized view)."""

_INSERT_SETTINGS = {
    "input_format_skip_unknown_fields": 1,
    "input_format_null_as_default": 1,
    # duplicates are collapsed by FINAL at read time; sorting them out at
    # insert costs ~20 % of the insert's CPU (measured on simulator rows)
    "optimize_on_insert": 0,
    # one parsing thread: the worker's own thread already keeps the other core busy
    "input_format_parallel_parsing": 0,
}


_READ_SETTINGS = {"output_format_json_quote_64bit_integers": 0}


class StoreError(RuntimeError):
    """The store could not be opened or did not accept a statement."""


class StoreLockedError(StoreError):
    """Another process owns the embedded store directory."""


class QueryError(ValueError):
    """A query sent to the read-only API is not allowed or failed."""


class QueryLimitError(QueryError):
    """A query broke a resource limit; ``key`` names the setting, ``status`` the HTTP code."""

    def __init__(self, message: str, key: str, status: int) -> None:
        super().__init__(message)
        self.key = key
        self.status = status


class Store:
    """The tables of the contract behind one clickhouse-connect client.

    >>> import tempfile
    >>> store = Store.open(f"chdb://{tempfile.mkdtemp()}/store")
    >>> import time
    >>> row = b'{"event_id":"f1","request_id":"r1","ts":%.3f,"score":1}' % time.time()
    >>> store.insert_json("feedback_events", row + bytes([10]) + row)
    2
    >>> store.query("SELECT event_id, score FROM feedback_events FINAL")
    [{'event_id': 'f1', 'score': 1}]
    >>> store.close()
    """

    def __init__(
        self, client: Any, dsn: str, lock_fd: int | None = None, reader: Any = None,
        limits: QuerySettings | None = None,
    ) -> None:
        self._client = client
        # chDB keeps settings per connection: readonly=1 would stick to the
        # writer, so read-only queries run on their own connection.
        self._reader = reader if reader is not None else client
        #: limits the reader connection carries (None: a reader made elsewhere)
        self.limits = limits
        self.dsn = dsn
        self._lock = threading.Lock()
        # read-only queries hold their own connection's lock, so a slow one (the engine
        # checks its time limit only between blocks of rows: one expensive row can run
        # far past it) holds up other reads, never ingest
        self._read_lock = threading.Lock() if self._reader is not client else self._lock
        self._lock_fd = lock_fd
        self.closed = False

    @classmethod
    def open(cls, dsn: str, *, ddl: bool = True, ttl_days: int = TTL_DAYS,
             limits: QuerySettings | None = None,
             credentials: ClickHouseCredentials | None = None) -> Store:
        """Connect (or open the embedded engine), then run the idempotent DDL.

        The reader connection gets ``limits`` (default :class:`QuerySettings`)
        and then ``readonly=1``, in that order: read-only queries can change
        neither. A user and password in the DSN are taken out of it
        (``store.dsn`` and errors never show them); ``credentials`` override them.
        """
        from llmpulse.config import QuerySettings
        from llmpulse.secret import Secret, scrub
        from llmpulse.store_auth import split_dsn

        limits = limits or QuerySettings()
        dsn, dsn_user, dsn_password = split_dsn(dsn)
        if credentials is None:
            credentials = ClickHouseCredentials(dsn_user, Secret(dsn_password) if dsn_password else None)
        try:
            import clickhouse_connect
        except ImportError:
            raise StoreError(
                "the store needs clickhouse-connect: pip install 'llmpulse[server]'"
            ) from None
        lock_fd = None
        if dsn.startswith("chdb:"):
            path = Path(urlparse(dsn).path)
            path.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock_dir(path)
        try:
            url = dsn.replace("clickhouse://", "http://", 1)
            auth = credentials.client_kwargs()
            if url.startswith("https:"):
                # clickhouse-connect takes TLS from the port (443/8443), not the DSN's
                # scheme: an https:// DSN on another port would go out in clear
                auth["interface"] = "https"
            client = clickhouse_connect.get_client(dsn=url, **auth)
            reader = clickhouse_connect.get_client(
                dsn=url, **auth,
                settings={**_READ_SETTINGS, **limits.clickhouse_settings(), "readonly": 1},
            )
        except Exception as exc:
            if lock_fd is not None:
                os.close(lock_fd)
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            msg = scrub(msg, credentials.secrets())
            if "lock" in str(exc).lower():
                raise StoreLockedError(f"store {dsn} is in use by another process: {msg}") from None
            raise StoreError(f"cannot open store {dsn}: {msg}") from None
        store = cls(client, dsn, lock_fd, reader, limits)
        if ddl:
            store.create_tables(ttl_days=ttl_days)
        return store

    def create_tables(self, *, ttl_days: int = TTL_DAYS) -> None:
        for name, stmt in DDL.items():
            try:
                self.command(stmt.format(ttl=int(ttl_days)))
            except Exception as exc:
                raise StoreError(f"DDL for table {name} failed: {exc}") from None
        for raw, entry in RAW_INGEST.items():
            self._add_columns(raw, raw)
            for stmt in _ingest_ddl(raw, entry, int(ttl_days)):
                try:
                    self.command(stmt)
                except Exception as exc:
                    raise StoreError(f"DDL for {entry} failed: {exc}") from None
            self._add_columns(entry, raw)

    def _add_columns(self, table: str, raw: str) -> None:
        for col, typ in ADDED_COLUMNS.get(raw, ()):
            try:
                self.command(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {col} {typ}")
            except Exception as exc:
                raise StoreError(f"adding column {col} to {table} failed: {exc}") from None

    # -- statements -----------------------------------------------------------

    def command(self, sql: str) -> Any:
        with self._lock:
            self._check_open()
            return self._client.command(sql)

    def insert_json(self, table: str, rows: bytes, *, count: int | None = None) -> int:
        """Insert newline-delimited JSON rows (``JSONEachRow``); returns the row count."""
        if not rows:
            return 0
        with self._lock:
            self._check_open()
            self._client.raw_insert(
                table, insert_block=rows, fmt="JSONEachRow", settings=_INSERT_SETTINGS
            )
        return count if count is not None else rows.count(b"\n") + (not rows.endswith(b"\n"))

    def insert_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
        if not rows:
            return 0
        data = b"\n".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in rows)
        return self.insert_json(table, data, count=len(rows))

    def query(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        readonly: bool = False,
    ) -> list[dict[str, Any]]:
        """Rows as dicts (JSON types: DateTime64 as text ``YYYY-MM-DD hh:mm:ss.sss``).

        ``readonly``: on the reader connection, within its limits. Such a query waits
        for another one at most ``query.max_execution_time_s`` (then
        :class:`QueryLimitError`, 503), and a result larger than
        ``query.max_result_bytes`` is refused before it is parsed (413): the engine
        lets a first block of rows past its own limit, and parsing a few hundred MB of
        JSON held the event loop's lock for seconds and took gigabytes.
        """
        settings: dict[str, Any] = dict(_READ_SETTINGS)
        lock, wait = self._lock, -1.0
        if readonly:
            settings["readonly"] = 1
            lock = self._read_lock
            if self.limits is not None:
                wait = self.limits.max_execution_time_s
        if not lock.acquire(timeout=wait):
            raise QueryLimitError(
                f"the store was busy with other read-only queries for {wait:g} s "
                "(query.max_execution_time_s); try again", "query.max_execution_time_s", 503)
        try:
            self._check_open()
            client = self._reader if readonly else self._client
            raw = client.raw_query(
                sql, parameters=dict(params or {}), settings=settings, fmt="JSONEachRow"
            )
        finally:
            lock.release()
        if readonly and self.limits is not None and len(raw) > self.limits.max_result_bytes:
            raise QueryLimitError(
                f"the result is larger than {self.limits.max_result_bytes} bytes "
                "(query.max_result_bytes); select fewer columns or rows",
                "query.max_result_bytes", 413)
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        rows = self.query(sql, params)
        if not rows:
            return None
        return next(iter(rows[0].values()))

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError("store is closed")

    def close(self) -> None:
        # a read-only query under way ends first: its connection is closed here too
        with self._read_lock, (self._lock if self._read_lock is not self._lock
                               else contextlib.nullcontext()):
            if self.closed:
                return
            self.closed = True
            try:
                if self._reader is not self._client:
                    self._reader.close()
                self._client.close()
            finally:
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None


def _lock_dir(path: Path) -> int:
    lock_path = path.parent / (path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = os.read(fd, 32).decode().strip() or "?"
        finally:
            os.close(fd)
        raise StoreLockedError(
            f"store {path} is locked by another llmpulse process (pid {owner}); "
            "stop it, or read through its HTTP API"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def lookup_requests(store: Store, request_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The inference behind each request id that the store knows (feedback join)."""
    if not request_ids:
        return {}
    rows = store.query(
        "SELECT request_id, app, model, model_version, toUnixTimestamp64Milli(ts) AS ts, "
        "event_id, prediction_label, segment FROM request_index FINAL "
        "WHERE request_id IN {ids:Array(String)}",
        {"ids": list(dict.fromkeys(request_ids))},
    )
    return {r["request_id"]: r for r in rows}
