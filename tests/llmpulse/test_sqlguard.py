"""The query API's guard and limits on a real chDB store: every attack is refused
before it runs, ordinary analytics pass, and each limit triggers and is survived."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from llmpulse.config import ConfigError, QuerySettings, load_settings
from llmpulse.dashboards.macros import expand
from llmpulse.dashboards.panels import DASHBOARDS
from llmpulse.dashboards.publish import ANNOTATION_QUERIES
from llmpulse.sample_data import fill_store
from llmpulse.sqlguard import (
    DENIED_FUNCTIONS,
    QueryLimitError,
    QueryRefused,
    SqlGuard,
)
from llmpulse.store import TABLES, QueryError, Store
from llmpulse.streams.app import NAMED_QUERIES

BIG_READ_ROWS = 120_000  # deadletter rows, more than the smallest max_rows_to_read


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store per module (chDB: one engine path per process at a time)."""
    tmp = tmp_path_factory.mktemp("guard-store")
    s = Store.open(f"chdb://{tmp}/store")
    start = float(int(time.time()) // 60 * 60 - 3600)
    try:
        fill_store(s, seed=5, start_ts=start, duration_s=300, rate=5)
        s.command(
            "INSERT INTO deadletter_events (topic, partition, offset, reason, payload) "
            f"SELECT 'llmpulse.inference', 0, number, 'bad', 'x' FROM numbers({BIG_READ_ROWS})"
        )
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def guard(store: Store) -> SqlGuard:
    return SqlGuard.for_store(store)


def refused(guard: SqlGuard, sql: str, params: dict[str, Any] | None = None) -> str:
    with pytest.raises(QueryRefused) as info:
        guard.run(sql, params)
    return str(info.value)


# -- writing files ------------------------------------------------------------------


@pytest.mark.parametrize("clause", [
    "INTO OUTFILE '{p}'",
    "INTO OUTFILE '{p}' TRUNCATE",
    "INTO OUTFILE '{p}' FORMAT CSV",
    "INTO OUTFILE '{p}' COMPRESSION 'gzip'",
    "INTO OUTFILE '{p}' AND STDOUT",
    "into outfile '{p}'",
])
def test_into_outfile_creates_no_file(guard: SqlGuard, tmp_path: Path, clause: str) -> None:
    target = tmp_path / "out.txt"
    msg = refused(guard, f"SELECT 1 AS c FROM signals {clause.format(p=target)}")
    assert "INTO OUTFILE" in msg
    assert not target.exists()


def test_into_outfile_append_leaves_an_existing_file_unchanged(guard: SqlGuard,
                                                               tmp_path: Path) -> None:
    target = tmp_path / "authorized_keys"
    target.write_text("original\n")
    for sql in (f"SELECT 'ssh-rsa evil' INTO OUTFILE '{target}' APPEND",
                f"SELECT 'ssh-rsa evil' INTO OUTFILE '{target}' APPEND FORMAT TSVRaw",
                f"SELECT 'x' FROM signals INTO OUTFILE '{target}' APPEND COMPRESSION 'none'"):
        assert "INTO OUTFILE" in refused(guard, sql)
    assert target.read_text() == "original\n"


# -- clauses a caller may not set -----------------------------------------------------


@pytest.mark.parametrize("sql,word", [
    ("SELECT 1 FROM signals FORMAT CSV", "FORMAT"),
    ("SELECT 1 FORMAT JSONEachRow", "FORMAT"),
    ("SELECT 1 FROM signals SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT count() FROM signals SETTINGS max_execution_time = 1e9", "SETTINGS"),
    ("SELECT count() FROM signals SETTINGS max_result_rows = 0, max_memory_usage = 0",
     "SETTINGS"),
    ("SELECT * FROM (SELECT 1 AS a FROM signals SETTINGS max_threads = 64)", "SETTINGS"),
    ("SELECT 1 FROM signals UNION ALL SELECT 2 FROM alerts SETTINGS readonly = 0", "SETTINGS"),
])
def test_format_and_settings_clauses_are_refused(guard: SqlGuard, sql: str, word: str) -> None:
    assert word in refused(guard, sql)


def test_the_reader_connection_refuses_changes_to_its_limits(store: Store) -> None:
    # the second line of defence, below the guard: readonly=1 set after the limits
    limit = store.query("SELECT getSetting('max_execution_time') AS t, "
                        "getSetting('readonly') AS r", readonly=True)[0]
    assert (limit["t"], limit["r"]) == (QuerySettings().max_execution_time_s, 1)
    for sql in ("SELECT 1 SETTINGS max_execution_time = 1e9", "SELECT 1 SETTINGS readonly = 0"):
        with pytest.raises(Exception, match="readonly"):
            store.query(sql, readonly=True)


# -- table functions, dictionaries, functions reaching outside --------------------------

TABLE_FUNCTIONS = [
    "file('/etc/passwd', 'LineAsString')", "url('http://127.0.0.1:1/', 'LineAsString')",
    "remote('127.0.0.1', system.users)", "remoteSecure('127.0.0.1', system.users)",
    "cluster('default', system.users)", "clusterAllReplicas('default', system.users)",
    "executable('id', 'TSV', 'x String')", "merge('default', '.*')",
    "s3('http://127.0.0.1:1/b/k', 'CSV')", "hdfs('hdfs://127.0.0.1:1/x', 'CSV')",
    "mysql('127.0.0.1:1', 'd', 't', 'u', 'p')", "postgresql('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "jdbc('jdbc:x', 't')", "odbc('DSN=x', 't')", "input('x String')", "numbers(10)",
    "view(SELECT * FROM system.users)", "generateRandom('a String')",
    "dictionary('d')", "sqlite('/tmp/x.db', 't')", "values('x UInt8', 1)", "zeros(10)",
    "mergeTreeIndex('default', 'signals')", "loop(signals)", "format(CSV, '1')",
    "azureBlobStorage('http://x', 'c', 'b')", "iceberg('http://x')",
]


@pytest.mark.parametrize("fn", TABLE_FUNCTIONS)
def test_every_table_function_is_refused(guard: SqlGuard, fn: str) -> None:
    name = fn.split("(")[0]
    assert f"table function {name}()" in refused(guard, f"SELECT * FROM {fn}")
    assert "table function" in refused(
        guard, f"SELECT count() FROM signals AS s JOIN {fn} AS t ON 1 = 1")
    assert "table function" in refused(
        guard, f"SELECT 1 FROM signals WHERE app IN (SELECT toString(1) FROM {fn})")


@pytest.mark.parametrize("sql,fragment", [
    ("SELECT file('/etc/passwd')", "function file is not allowed"),
    ("SELECT length(file('/etc/hostname')) FROM signals", "function file"),
    ("SELECT dictGet('d', 'v', 1)", "Dictionary functions"),
    ("SELECT dictGetOrDefault('d', 'v', 1, 'x')", "Dictionary functions"),
    ("SELECT dictHas('d', 1) FROM signals", "Dictionary functions"),
    ("SELECT joinGet('default.j', 'v', 1)", "function joinGet"),
    ("SELECT joinGetOrNull('default.j', 'v', 1)", "function joinGetOrNull"),
    ("SELECT hasColumnInTable('system', 'users', 'name')", "hasColumnInTable"),
    ("SELECT getSetting('readonly')", "getSetting"),
    ("SELECT getServerSetting('tcp_port')", "getServerSetting"),
    ("SELECT filesystemAvailable()", "filesystemAvailable"),
    ("SELECT hostname()", "hostname is not allowed"),  # an alias of hostName
    ("SELECT currentUser(), user()", "currentUser"),
    ("SELECT sleepEachRow(1) FROM signals", "sleepEachRow"),
    ("SELECT aiGenerate('say hi')", "AI functions"),
    ("SELECT regionToName(1)", "Embedded Dictionary"),
    ("SELECT addressToSymbol(1)", "Introspection"),
    ("SELECT __getScalar('x')", "internal"),
    ("SELECT noSuchFunction(1)", "unknown function noSuchFunction"),
    ("SELECT arrayMap(x -> file(x), ['/etc/passwd'])", "function file"),
    ("SELECT arrayFilter(x -> dictHas('d', x), [1])", "Dictionary"),
    ("SELECT arrayMap(x -> (SELECT count() FROM system.users), [1])", "system.users"),
    ("SELECT * APPLY(file) FROM signals", "APPLY"),
    # an alias naming its target in another letter case, and any letter case
    ("SELECT connection_id()", "connection_id is not allowed"),
    ("SELECT CONNECTIONID()", "CONNECTIONID is not allowed"),
    ("SELECT timezone(), serverTimeZone()", "not allowed"),
    ("SELECT currentDatabase()", "currentDatabase is not allowed"),
    # quadratic inside one row: runs for minutes past the time limit
    ("SELECT editDistance(repeat('a', 65536), repeat('b', 65536))", "editDistance"),
    ("SELECT levenshteinDistance(app, model) FROM signals", "levenshteinDistance"),
    ("SELECT jaroWinklerSimilarity('a', 'b')", "jaroWinklerSimilarity"),
    ("SELECT inIgnoreSet(toUInt8(1), system.time_zones) AS a", "inIgnoreSet"),
    # a denied function called without parentheses
    ("SELECT currentUser AS x", "currentUser is not allowed"),
    ("SELECT CURRENT_USER AS x", "CURRENT_USER is not allowed"),
    ("SELECT DATABASE AS x FROM signals", "DATABASE is not allowed"),
    ("SELECT currentRequestURL AS x", "currentRequestURL is not allowed"),
    ("SELECT globalNotNullInIgnoreSet(1, system.users) AS a", "globalNotNullInIgnoreSet"),
])
def test_functions_reaching_outside_are_refused(guard: SqlGuard, sql: str,
                                                fragment: str) -> None:
    assert fragment in refused(guard, sql)


def test_the_deny_list_names_functions_this_engine_has(guard: SqlGuard) -> None:
    # a renamed function would silently drop out of the deny set
    missing = [n for n in sorted(DENIED_FUNCTIONS) if guard._function(n) is None]
    assert missing == []
    for name in DENIED_FUNCTIONS:
        assert "not allowed" in refused(guard, f"SELECT {name}()")


# -- tables: system, other databases, wherever they hide ---------------------------------

SYSTEM_READS = [
    "SELECT * FROM system.users",
    "SELECT name FROM system.tables",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "SELECT * FROM system.one",
    "SELECT * FROM signals WHERE app IN (SELECT name FROM system.users)",
    "SELECT * FROM signals WHERE app IN system.users",
    "SELECT * FROM signals WHERE app NOT IN (SELECT name FROM system.databases)",
    "SELECT (SELECT any(name) FROM system.users) AS u FROM signals",
    "SELECT * FROM signals AS s JOIN system.users AS u ON s.app = u.name",
    "SELECT * FROM signals, system.users",
    "SELECT * FROM signals ARRAY JOIN [1] AS x JOIN system.users AS u ON 1 = 1",
    "WITH t AS (SELECT name FROM system.users) SELECT * FROM t",
    "SELECT app FROM signals UNION ALL SELECT name FROM system.users",
    "SELECT app FROM signals INTERSECT SELECT name FROM system.users",
    "SELECT app FROM signals EXCEPT SELECT name FROM system.users",
    "SELECT EXISTS (SELECT 1 FROM system.users) FROM signals",
    "SELECT * FROM (SELECT * FROM (SELECT * FROM system.users))",
    "WITH (SELECT any(name) FROM system.users) AS u SELECT u FROM signals",
    "SELECT 1 FROM signals LIMIT (SELECT count() FROM system.users)",
    "SELECT 1 FROM signals ORDER BY (SELECT 1 FROM system.one)",
    "SELECT sum(value) OVER (PARTITION BY (SELECT 1 FROM system.users)) FROM signals",
    "SELECT arrayMap(x -> x IN (SELECT name FROM system.users), ['a']) FROM signals",
    "SELECT * FROM other_db.signals",
    "SELECT * FROM default2.signals",
    "SELECT * FROM request_index",
    "SELECT * FROM default.request_index",
    "SELECT * FROM inference_ingest",
    # quoting: the parse sees through it
    "SELECT * FROM `system`.`users`",
    'SELECT * FROM "system"."users"',
    "SELECT * FROM `system.users`",
    "SELECT * FROM `sуstem`.`users`",  # Cyrillic у
    "SELECT * FROM `ѕignals`",  # Cyrillic ѕ
    'SELECT * FROM "signals\u200b"',  # zero-width space
    "SELECT * FROM `signals `",
    # comments do not hide anything
    "SELECT 1 FROM signals -- harmless\n, system.users",
    "SELECT 1 FROM signals # harmless\n, system.users",
    "SELECT 1 FROM signals /* , */ , system.users",
    "/* SELECT 1 FROM signals */ SELECT * FROM system.users",
    # a CTE named like an llmpulse table
    "WITH signals AS (SELECT name AS app FROM system.users) SELECT app FROM signals",
    "WITH alerts AS (SELECT * FROM system.users), x AS (SELECT 1) SELECT * FROM alerts",
]


@pytest.mark.parametrize("sql", SYSTEM_READS)
def test_tables_outside_the_llmpulse_set_are_refused(guard: SqlGuard, sql: str) -> None:
    assert "not an llmpulse table" in refused(guard, sql)


def test_unquoted_look_alike_names_do_not_even_parse(guard: SqlGuard) -> None:
    assert "not one valid SQL statement" in refused(guard, "SELECT * FROM sуstem.users")
    assert "not one valid SQL statement" in refused(guard, "SELECT * FROM ѕignals")


def test_a_cte_may_not_take_the_name_of_another_table(guard: SqlGuard) -> None:
    # out of the CTE's scope the name would mean the real table
    msg = refused(guard, "SELECT * FROM (WITH request_index AS (SELECT 1 AS x) "
                         "SELECT x FROM request_index), request_index")
    assert "CTE name request_index is also a table" in msg


def test_identifier_parameters_are_refused(guard: SqlGuard) -> None:
    assert "query parameters" in refused(guard, "SELECT * FROM {t:Identifier}",
                                         {"t": "system.users"})
    assert "query parameters" in refused(guard, "SELECT {c:Identifier} FROM signals",
                                         {"c": "app"})
    # the server's rendering drops a parameter alias: what is left has no placeholder
    assert "placeholders" in refused(guard, "SELECT 1 FROM signals AS {a:Identifier}",
                                     {"a": "x"})


def test_client_side_parameter_formatting_cannot_splice_text(guard: SqlGuard) -> None:
    evil = {"x": "*/ (SELECT name FROM system.users) /*"}
    assert "{name:Type}" in refused(guard, "SELECT 1 /* %(x)s */ FROM signals", evil)
    assert "{name:Type}" in refused(guard, "SELECT '%(x)s' FROM signals", evil)


# -- statements other than one SELECT -----------------------------------------------------


@pytest.mark.parametrize("sql,fragment", [
    ("SELECT 1; SELECT 2", "not one valid SQL statement"),
    ("SELECT 1 FROM signals; DROP TABLE signals", "not one valid SQL statement"),
    ("SELECT 1 -- x\n; INSERT INTO signals (app) VALUES ('x')", "not one valid"),
    ("SELECT 1 /* ; */; TRUNCATE TABLE signals", "not one valid"),
    ("INSERT INTO signals (app) VALUES ('x')", "only SELECT"),
    ("INSERT INTO signals (app) SELECT app FROM signals", "only SELECT"),
    ("ALTER TABLE signals DELETE WHERE 1", "only SELECT"),
    ("DROP TABLE signals", "only SELECT"),
    ("TRUNCATE TABLE signals", "only SELECT"),
    ("CREATE TABLE x (a UInt8) ENGINE = Memory", "only SELECT"),
    ("ATTACH TABLE x", "only SELECT"),
    ("EXPLAIN SELECT 1", "only SELECT"),
    ("EXPLAIN AST SELECT 1", "only SELECT"),
    ("SHOW TABLES", "only SELECT"),
    ("SHOW CREATE TABLE signals", "only SELECT"),
    ("DESCRIBE TABLE signals", "only SELECT"),
    ("KILL QUERY WHERE 1", "only SELECT"),
    ("SYSTEM FLUSH LOGS", "only SELECT"),
    ("SET readonly = 0", "only SELECT"),
    ("USE system", "only SELECT"),
    ("OPTIMIZE TABLE signals FINAL", "only SELECT"),
    ("GRANT ALL ON *.* TO default", "only SELECT"),
    ("EXISTS TABLE signals", "only SELECT"),
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("SELEC 1", "not one valid"),
])
def test_only_one_select_statement(guard: SqlGuard, sql: str, fragment: str) -> None:
    assert fragment in refused(guard, sql)


@pytest.mark.parametrize("depth", [400, 900, 2000])
def test_deep_nesting_is_refused_cleanly(guard: SqlGuard, depth: int) -> None:
    refused(guard, "SELECT " + "abs(" * depth + "1" + ")" * depth + " FROM signals")
    assert guard.run("SELECT 1 AS ok FROM signals LIMIT 1") == [{"ok": 1}]


def test_the_text_that_runs_is_the_servers_rendering_without_comments(guard: SqlGuard) -> None:
    q = guard.check("SELECT count() /* ; DROP TABLE signals */ AS n -- tail\nFROM `signals`;")
    assert q.sql == "SELECT count() AS n FROM signals"
    assert q.tables == {"signals"}
    try:
        text = guard.check("SELECT count() AS n FROM signals /* unterminated").sql
    except QueryRefused:
        return
    assert "/*" not in text


# -- what the dashboards, report and analysts need ---------------------------------------


def test_panel_named_and_annotation_queries_pass(guard: SqlGuard, store: Store) -> None:
    sqls = [expand(p.sql, start=time.time() - 3600, end=time.time(),
                   variables={"app": ["a"], "model": ["m"], "version": ["v"]})
            for d in DASHBOARDS.values() for p in d.panels]
    sqls += [v.sql for d in DASHBOARDS.values() for v in getattr(d, "variables", ())]
    sqls += list(NAMED_QUERIES.values()) + list(ANNOTATION_QUERIES)
    for sql in sqls:
        q = guard.check(sql)
        assert q.tables <= set(TABLES), sql
    # and the guarded run returns what the trusted path returns
    for sql in list(NAMED_QUERIES.values())[:3] + list(ANNOTATION_QUERIES):
        def key(r: dict[str, Any]) -> str:
            return repr(sorted(r.items()))

        assert sorted(guard.run(sql), key=key) == sorted(store.query(sql, readonly=True),
                                                         key=key)


ANALYTICS = [
    "SELECT app, model, count() AS n, quantile(0.95)(latency_ms) AS p95, "
    "countIf(status = 'error') / count() AS err FROM inference_events FINAL "
    "GROUP BY app, model ORDER BY n DESC",
    "SELECT app, ts, latency_ms, avg(latency_ms) OVER (PARTITION BY app ORDER BY ts "
    "ROWS BETWEEN 5 PRECEDING AND CURRENT ROW) AS rolling, "
    "row_number() OVER (PARTITION BY app ORDER BY ts) AS rn FROM inference_events "
    "ORDER BY app, ts LIMIT 50",
    "SELECT passage, count() AS n FROM inference_events ARRAY JOIN context AS passage "
    "GROUP BY passage ORDER BY n DESC, passage LIMIT 5",
    "SELECT signal, JSONExtractString(detail, 'test') AS test, "
    "JSONExtractFloat(detail, 'p_value') AS p FROM signals FINAL ORDER BY signal, ts LIMIT 20",
    "WITH recent AS (SELECT app, latency_ms FROM inference_events FINAL) "
    "SELECT app, uniqExactIf(latency_ms, latency_ms > 100) AS slow_distinct, "
    "sumArray([latency_ms]) AS s FROM recent GROUP BY app ORDER BY app",
    "SELECT i.app AS app, count() AS n, avg(f.score) AS score FROM inference_events AS i "
    "INNER JOIN feedback_events AS f ON f.request_id = i.request_id GROUP BY app ORDER BY app",
    "SELECT arrayMap(x -> round(x, 1), arraySlice(token_logprobs, 1, 3)) AS lp, "
    "segment['region'] AS region, CASE WHEN latency_ms > 500 THEN 'slow' ELSE 'ok' END AS k "
    "FROM inference_events ORDER BY event_id LIMIT 5",
    "SELECT toStartOfMinute(ts) AS t, count() AS n FROM inference_events "
    "WHERE ts > now() - INTERVAL 1 DAY GROUP BY t ORDER BY t WITH FILL STEP 60",
    "SELECT app, count() AS n FROM \"inference_events\" GROUP BY app LIMIT 1 BY app",
    "SELECT app FROM inference_events INTERSECT SELECT app FROM signals",
    "SELECT count() AS n FROM default.inference_events "
    "WHERE app IN (SELECT app FROM signals) OR app NOT IN (SELECT app FROM alerts)",
]


@pytest.mark.parametrize("sql", ANALYTICS)
def test_ordinary_analytics_are_allowed_and_answer_like_the_trusted_path(
        guard: SqlGuard, store: Store, sql: str) -> None:
    got = guard.run(sql)
    assert got == store.query(sql, readonly=True)
    assert got, "the test data should give rows"


def test_bound_parameters_work(guard: SqlGuard, store: Store) -> None:
    app = store.query("SELECT any(app) AS a FROM inference_events", readonly=True)[0]["a"]
    rows = guard.run("SELECT count() AS n FROM inference_events WHERE app = {app:String}",
                     {"app": app})
    assert rows[0]["n"] > 0
    assert guard.run("SELECT count() AS n FROM inference_events WHERE app = {app:String}",
                     {"app": "x' OR 1 = 1 --"}) == [{"n": 0}]


# -- limits --------------------------------------------------------------------------------


@pytest.fixture
def limited(store: Store) -> Iterator[Any]:
    """A second reader of the same store with its own (small) limits, and a guard on it."""
    readers: list[Any] = []

    def make(**limits: Any) -> tuple[SqlGuard, Store]:
        q = QuerySettings(**limits)
        reader = clickhouse_connect.get_client(
            dsn=store.dsn, settings={"output_format_json_quote_64bit_integers": 0,
                                     **q.clickhouse_settings(), "readonly": 1})
        readers.append(reader)
        view = Store(store._client, store.dsn, reader=reader, limits=q)
        return SqlGuard.for_store(view), view

    yield make
    for r in readers:
        r.close()


LIMIT_CASES = [
    ({"max_result_rows": 100}, "SELECT event_id FROM inference_events",
     "query.max_result_rows", 413),
    # one block of 300k rows: the server lets a first block through, the guard counts
    ({"max_result_rows": 1000}, "SELECT x FROM (SELECT arrayJoin(range(300000)) AS x)",
     "query.max_result_rows", 413),
    ({"max_result_rows": 1000}, "SELECT x FROM (SELECT arrayJoin(range(300000)) AS x) "
     "ORDER BY x", "query.max_result_rows", 413),
    ({"max_result_bytes": 2**20}, "SELECT repeat('x', 10000) AS s FROM "
     "(SELECT arrayJoin(range(1000)))", "query.max_result_bytes", 413),
    ({"max_rows_to_read": 100_000}, "SELECT sum(offset) AS n FROM deadletter_events",
     "query.max_rows_to_read", 413),
    ({"max_memory_usage_bytes": 64 * 2**20}, "SELECT length(groupArray(repeat('x', 100))) "
     "AS n FROM (SELECT arrayJoin(range(3000000)))", "query.max_memory_usage_bytes", 422),
    # ~1e10 row pairs: seconds even on a fast idle machine, far past the limit
    ({"max_execution_time_s": 0.5}, "SELECT count() AS n FROM "
     "(SELECT arrayJoin(range(100000)) AS a) AS x CROSS JOIN "
     "(SELECT arrayJoin(range(100000)) AS b) AS y WHERE cityHash64(a, b) % 7 = 1",
     "query.max_execution_time_s", 408),
]


@pytest.mark.parametrize("limits,sql,key,status", LIMIT_CASES)
def test_each_limit_triggers_and_the_next_query_works(limited: Any, limits: dict[str, Any],
                                                      sql: str, key: str, status: int) -> None:
    guard, _ = limited(**limits)
    with pytest.raises(QueryLimitError) as info:
        guard.run(sql)
    assert (info.value.key, info.value.status) == (key, status)
    assert key in str(info.value)
    assert guard.run("SELECT 42 AS ok FROM signals LIMIT 1") == [{"ok": 42}]


def test_the_server_itself_stops_a_result_past_its_first_block(limited: Any) -> None:
    _, view = limited(max_result_rows=1000)
    with pytest.raises(Exception, match="TOO_MANY_ROWS_OR_BYTES"):
        view.query("SELECT x FROM (SELECT arrayJoin(range(300000)) AS x) ORDER BY x",
                   readonly=True)
    assert view.query("SELECT 1 AS ok", readonly=True) == [{"ok": 1}]


def test_the_same_queries_pass_under_the_default_limits(guard: SqlGuard) -> None:
    rows = guard.run("SELECT count() AS n, sum(offset) AS s FROM deadletter_events "
                     "WHERE topic = 'llmpulse.inference' AND reason = 'bad'")
    assert rows == [{"n": BIG_READ_ROWS, "s": BIG_READ_ROWS * (BIG_READ_ROWS - 1) // 2}]


def test_other_query_errors_are_plain_query_errors(guard: SqlGuard) -> None:
    with pytest.raises(QueryError, match="no_such_column") as info:
        guard.run("SELECT no_such_column FROM signals")
    assert not isinstance(info.value, (QueryRefused, QueryLimitError))


# -- configuration ---------------------------------------------------------------------------


def test_query_settings_from_yaml_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "llmpulse.yaml"
    cfg.write_text("query:\n  max_result_rows: 5\n  max_execution_time_s: 2\n")
    q = load_settings(env={}, path=cfg).query
    assert (q.max_result_rows, q.max_execution_time_s) == (5, 2.0)
    for text, key in (("query:\n  max_result_rows: -1\n", "query.max_result_rows"),
                      ("query:\n  max_result_bytes: 10\n", "query.max_result_bytes"),
                      ("query:\n  max_rows: 10\n", "query.max_rows"),
                      ("query:\n  max_execution_time_s: fast\n", "query.max_execution_time_s")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_settings(env={}, path=cfg)


def test_a_read_past_its_time_limit_holds_up_other_reads_for_at_most_the_limit_never_ingest(
        limited: Any, store: Store) -> None:
    """The engine checks the time limit only between blocks of rows: one expensive row
    runs far past it (the guard now refuses the function used here, the store itself
    does not judge). Meanwhile ingest goes on, and another read gives up after the
    limit with 503 instead of queueing behind it. Before, both waited for the whole
    read: reads and writes shared one lock."""
    _, view = limited(max_execution_time_s=1.0)
    slow = ("SELECT sum(editDistance(repeat('a', 20000), repeat('b', 20000 - x))) AS r "
            "FROM (SELECT arrayJoin(range(10)) AS x)")
    ended: list[str] = []

    def read() -> None:
        try:
            view.query(slow, readonly=True)
        except Exception as exc:  # stopped past its limit, once it can be
            ended.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not store.query("SELECT count() AS n FROM system.processes "
                              "WHERE query LIKE '%editDistance(repeat%' "
                              "AND query NOT LIKE '%system.processes%'")[0]["n"]:
            assert time.monotonic() < deadline and reader.is_alive()
            time.sleep(0.02)
        row = b'{"event_id":"during-slow-read","request_id":"r","ts":%.3f,"score":1}' % time.time()
        assert view.insert_json("feedback_events", row) == 1
        assert reader.is_alive(), "the write waited for the read"
        with pytest.raises(QueryLimitError) as info:
            view.query("SELECT 1 AS ok", readonly=True)
        assert (info.value.status, info.value.key) == (503, "query.max_execution_time_s")
        assert reader.is_alive(), "the second read waited for the first"
    finally:
        reader.join()
    assert len(ended) == 1 and "TIMEOUT_EXCEEDED" in ended[0]
    assert view.query("SELECT 1 AS ok", readonly=True) == [{"ok": 1}]
    assert store.query("SELECT count() AS n FROM feedback_events "
                       "WHERE event_id = 'during-slow-read'") == [{"n": 1}]


def test_a_result_past_the_byte_limit_is_refused_before_it_is_parsed(limited: Any) -> None:
    """One row of 3 MB passes the engine's own check (it lets a first block through);
    the store refuses it from its size, before turning it into Python objects (a
    100-million-element row took 4 GB and froze the event loop for seconds)."""
    _, view = limited(max_result_bytes=2**20)
    with pytest.raises(QueryLimitError) as info:
        view.query("SELECT arrayWithConstant(3000000, 0::UInt8) AS a", readonly=True)
    assert (info.value.status, info.value.key) == (413, "query.max_result_bytes")
    assert view.query("SELECT 1 AS ok", readonly=True) == [{"ok": 1}]


def test_a_column_named_like_a_denied_function_is_still_a_column(guard: SqlGuard) -> None:
    rows = guard.run("SELECT user, version FROM inference_events, deployments LIMIT 1")
    assert [sorted(r) for r in rows] == [["user", "version"]]
