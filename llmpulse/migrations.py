"""Versioned schema migrations and per-table retention, applied at start-up.

:data:`DDL <llmpulse.store.DDL>` creates missing tables; this module changes
tables that already exist, once. Every step it takes is a row of
``schema_migrations``:

* ``kind = 'schema'``: a numbered :class:`Migration` (``name`` = its version and
  title). Applied in order, each at most once; re-running finds the row and
  does nothing.
* ``kind = 'retention'``: the TTL of one table (``name``) set to ``value`` days
  from :class:`~llmpulse.config.RetentionSettings` with ``ALTER TABLE ...
  MODIFY TTL`` (``REMOVE TTL`` for 0 = keep forever). Applied when the last
  recorded value for that table differs from the configuration, so changing
  ``retention:`` and restarting changes existing tables, and an unchanged
  configuration is a no-op.

Statements are idempotent themselves (``IF NOT EXISTS``, ``MODIFY``), so a
crash between a statement and its row only repeats harmless work. They run on
chDB and on a ClickHouse server alike.

>>> import tempfile
>>> from llmpulse.config import RetentionSettings
>>> from llmpulse.store import Store
>>> store = Store.open(f"chdb://{tempfile.mkdtemp()}/store")
>>> applied = migrate(store, RetentionSettings(signals=7))
>>> "retention signals=7" in applied, migrate(store, RetentionSettings(signals=7))
(True, [])
>>> migrate(store, RetentionSettings(signals=0))
['retention signals=0']
>>> "TTL" in store.scalar("SELECT create_table_query FROM system.tables WHERE name = 'signals'")
False
>>> store.close()
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields

from llmpulse.config import RetentionSettings
from llmpulse.store import RAW_INGEST, Store, StoreError, _ingest_ddl

__all__ = ["MIGRATIONS", "Migration", "RETENTION_TABLES", "migrate", "ttl_days"]

log = logging.getLogger(__name__)

MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    kind LowCardinality(String),
    name String,
    value String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = MergeTree
ORDER BY (kind, name, applied_at)
"""

RETENTION_TABLES: dict[str, tuple[str, str]] = {
    "inference_events": ("raw_events", "ts"),
    "request_index": ("raw_events", "ts"),
    "feedback_events": ("feedback", "ts"),
    "signals": ("signals", "ts"),
    "alerts": ("alerts", "updated_at"),
    "deadletter_events": ("deadletters", "ts"),
    "audit_events": ("audit", "ts"),
    "spans": ("raw_events", "ts"),
}
"""Table -> (its key under ``retention:``, the time column its TTL counts from)."""

ERASABLE_TABLES: tuple[str, ...] = (
    "inference_events", "feedback_events", "request_index", "deadletter_events",
    "signals", "alerts",
)

# Parts a mutation (an erasure) replaced stay on disk for ``old_parts_lifetime``
# seconds (default 480) and are removed by a cleanup pass every
# ``cleanup_delay_period`` seconds (default 30, backing off to 300). Short values
# let an erasure confirm within seconds that no old part holds the erased rows.
_CLEANUP_SETTINGS = "old_parts_lifetime = 5, cleanup_delay_period = 1, max_cleanup_delay_period = 5"


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered change to existing tables."""

    version: int
    title: str
    statements: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.version:04d} {self.title}"


def _add_columns(raw: str, columns: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """Add ``columns`` (name, after) as ``String DEFAULT ''`` to a raw table and its
    ingest entry, and recreate the view between them."""
    entry = RAW_INGEST[raw]
    stmts: list[str] = []
    for table in (raw, entry):
        stmts += [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} String DEFAULT '' "
                  f"AFTER {after}" for name, after in columns]
    # the view's SELECT * was expanded when it was created: recreate it
    stmts.append(f"DROP VIEW IF EXISTS {entry}_mv")
    stmts += [s for s in _ingest_ddl(raw, entry, 90) if f"VIEW IF NOT EXISTS {entry}_mv" in s]
    return tuple(stmts)


def _user_column() -> tuple[str, ...]:
    return (_add_columns("inference_events", [("user", "features")])
            + _add_columns("feedback_events", [("user", "comment")]))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "user column on raw events", _user_column()),
    Migration(
        2,
        "prompt removal of parts replaced by an erasure",
        tuple(f"ALTER TABLE {t} MODIFY SETTING {_CLEANUP_SETTINGS}" for t in ERASABLE_TABLES),
    ),
    Migration(3, "trace ids on inference events", _add_columns(
        "inference_events",
        [("trace_id", "user"), ("span_id", "trace_id"), ("parent_span_id", "span_id")])),
    Migration(4, "prompt removal of span parts replaced by an erasure",
              (f"ALTER TABLE spans MODIFY SETTING {_CLEANUP_SETTINGS}",)),
)


def ttl_days(retention: RetentionSettings, table: str) -> int:
    """Days ``table`` keeps rows under ``retention`` (0 = forever).

    >>> ttl_days(RetentionSettings(raw_events=7), "request_index")
    7
    """
    return int(getattr(retention, RETENTION_TABLES[table][0]))


def _ttl_statement(table: str, days: int) -> str:
    if days <= 0:
        return f"ALTER TABLE {table} REMOVE TTL"
    column = RETENTION_TABLES[table][1]
    return f"ALTER TABLE {table} MODIFY TTL toDateTime({column}) + INTERVAL {int(days)} DAY"


def _has_ttl(store: Store, table: str) -> bool:
    ddl = str(store.scalar(
        "SELECT create_table_query FROM system.tables "
        "WHERE database = currentDatabase() AND name = {t:String}", {"t": table}) or "")
    return " TTL " in ddl


def _applied(store: Store) -> tuple[set[str], dict[str, str]]:
    schema = {r["name"] for r in store.query(
        "SELECT name FROM schema_migrations WHERE kind = 'schema'")}
    retention = {r["name"]: r["value"] for r in store.query(
        "SELECT name, argMax(value, applied_at) AS value FROM schema_migrations "
        "WHERE kind = 'retention' GROUP BY name")}
    return schema, retention


def migrate(
    store: Store,
    retention: RetentionSettings = RetentionSettings(),
    migrations: Sequence[Migration] = MIGRATIONS,
) -> list[str]:
    """Apply pending schema migrations, then the retention of ``retention``;
    the names of the steps applied (empty when everything was up to date)."""
    for f in fields(RetentionSettings):
        days = getattr(retention, f.name)
        if not isinstance(days, int) or isinstance(days, bool) or days < 0:
            raise StoreError(f"retention.{f.name}: must be a whole number of days >= 0, got {days!r}")
    store.command(MIGRATIONS_DDL)
    schema, applied_ttl = _applied(store)
    done: list[str] = []
    for m in sorted(migrations, key=lambda m: m.version):
        if m.name in schema:
            continue
        for stmt in m.statements:
            try:
                store.command(stmt)
            except Exception as exc:
                raise StoreError(f"migration {m.name} failed: {str(exc).splitlines()[0]}") from None
        store.insert_rows("schema_migrations", [{"kind": "schema", "name": m.name, "value": ""}])
        log.debug("schema migration %s applied", m.name)
        done.append(m.name)
    for table in RETENTION_TABLES:
        days = ttl_days(retention, table)
        if applied_ttl.get(table) == str(days):
            continue
        if days == 0 and not _has_ttl(store, table):
            pass  # REMOVE TTL on a table without one is an error in ClickHouse
        else:
            try:
                store.command(_ttl_statement(table, days))
            except Exception as exc:
                key = RETENTION_TABLES[table][0]
                raise StoreError(
                    f"retention.{key}: could not set the TTL of {table}: "
                    f"{str(exc).splitlines()[0]}") from None
        store.insert_rows("schema_migrations",
                          [{"kind": "retention", "name": table, "value": str(days)}])
        log.debug("retention of %s set to %s days", table, days or "unlimited")
        done.append(f"retention {table}={days}")
    return done
