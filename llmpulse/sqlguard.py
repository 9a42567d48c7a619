"""Caller SQL for the read API, judged from ClickHouse's own parse of it.

``POST /api/query`` runs SQL written by whoever can reach the HTTP server.
:class:`SqlGuard` lets through exactly one ``SELECT`` (``WITH`` and ``UNION``
/ ``INTERSECT`` / ``EXCEPT`` of selects included) that reads llmpulse tables
and calls side-effect-free functions, and nothing else. It never looks at
the SQL text itself: the server parses it (``formatQuerySingleLine`` then
``parseQueryToJSON``, both pure functions, the text passed as a bound
parameter) and the guard walks the JSON syntax tree. The text that runs is
the server's own single-line rendering of that one statement, so comments,
a second statement or quoting tricks cannot reach execution unchecked.

What the tree may contain:

* node types from a fixed allow-list (selects, table expressions, joins,
  ``ARRAY JOIN``, expressions, window definitions, CTEs ...); anything else
  (``INSERT``, ``EXPLAIN``, ``SHOW``, ``SETTINGS`` ...) is refused;
* no ``INTO OUTFILE`` (any variant), caller ``FORMAT`` or ``SETTINGS``;
* no table function at all (``file``, ``url``, ``remote``, ``numbers`` ...);
* tables: the llmpulse tables, bare or qualified by the current database,
  and names of CTEs defined in the query. A CTE may not be named like an
  existing non-llmpulse table of the current database, so a name the guard
  takes for a CTE can never be resolved by the server to another table;
* functions: those of ``system.functions`` (aliases resolved, aggregate
  combinators stripped) minus :data:`DENIED_FUNCTIONS`, the categories in
  :data:`DENIED_CATEGORIES`, internal ``__`` functions and user-defined ones.

The resource limits live on the reader connection itself (see
:class:`llmpulse.config.QuerySettings` and :meth:`llmpulse.store.Store.open`),
set before ``readonly=1`` so a caller can change none of them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llmpulse.config import QuerySettings
from llmpulse.store import TABLES, QueryError, QueryLimitError

__all__ = [
    "DENIED_CATEGORIES",
    "DENIED_FUNCTIONS",
    "GuardedQuery",
    "QueryLimitError",
    "QueryRefused",
    "SqlGuard",
]

RunFn = Callable[[str, Mapping[str, Any]], list[dict[str, Any]]]
"""Runs one SQL statement with bound parameters on the read-only connection."""

DENIED_CATEGORIES = frozenset({
    "AI",  # calls a model provider over the network
    "Dictionary",  # dictGet*, dictHas ...: other data sources
    "Embedded Dictionary",  # region* read server-side geo files
    "Introspection",  # server binary, threads, logs, parts
    "Machine Learning",  # naiveBayesClassifier loads models from server config
})
"""``system.functions.categories`` refused as a whole."""

DENIED_FUNCTIONS = frozenset({
    # files and the server's file system
    "file", "filesystemAvailable", "filesystemCapacity", "filesystemUnreserved",
    # other tables and databases
    "joinGet", "joinGetOrNull", "hasColumnInTable", "getMaxTableNameLengthForDatabase",
    # server configuration and state
    "getSetting", "getSettingOrDefault", "getServerSetting", "getMergeTreeSetting",
    "getMacro", "globalVariable", "getClientHTTPHeader", "getServerPort", "tcpPort",
    "getOSKernelVersion", "hostName", "FQDN", "displayName", "serverUUID", "buildId",
    "revision", "version", "uptime", "shardNum", "shardCount", "showCertificate",
    "zookeeperSessionUptime", "hasThreadFuzzer",
    # who is asking, and other queries
    "currentUser", "authenticatedUser", "currentRoles", "enabledRoles", "defaultRoles",
    "currentProfiles", "enabledProfiles", "defaultProfiles", "currentQueryID", "queryID",
    "initialQueryID", "initialQueryStartTime", "currentRequestURL", "currentHandler",
    "connectionId", "pgGetUserById", "pgTableIsVisible",
    "transactionID", "transactionLatestSnapshot", "transactionOldestSnapshot",
    "currentDatabase", "currentSchemas", "timezone", "serverTimezone",
    # writes server state or holds the store without doing work
    "generateSerialID", "sleep", "sleepEachRow",
    # quadratic work inside one row: the engine checks the time limit only between
    # blocks of rows, so two 64 KB strings ran for minutes past it
    "editDistance", "editDistanceUTF8", "damerauLevenshteinDistance", "jaroSimilarity",
    "jaroWinklerSimilarity", "arrayLevenshteinDistance", "arrayLevenshteinDistanceWeighted",
    "arraySimilarity",
    # the engine's internal forms of IN: they resolve a bare table name as IN does
    # (`inIgnoreSet(1, system.users)` told the table's column count)
    "inIgnoreSet", "notInIgnoreSet", "globalInIgnoreSet", "globalNotInIgnoreSet",
    "nullInIgnoreSet", "notNullInIgnoreSet", "globalNullInIgnoreSet", "globalNotNullInIgnoreSet",
})
"""Functions refused by name, in any letter case (their aliases too): they reach
files, other tables, server settings or state, block the store, or do work the
time limit cannot stop."""

_DENIED_LOWER = frozenset(n.lower() for n in DENIED_FUNCTIONS)

_ALLOWED_NODES = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList",
    "TablesInSelectQuery", "TablesInSelectQueryElement", "TableExpression", "TableIdentifier",
    "TableJoin", "ArrayJoin", "Identifier", "Function", "Literal", "Asterisk",
    "QualifiedAsterisk", "ColumnsRegexpMatcher", "ColumnsListMatcher",
    "QualifiedColumnsRegexpMatcher", "QualifiedColumnsListMatcher", "ColumnsTransformerList",
    "ColumnsExceptTransformer", "ColumnsReplaceTransformer",
    "ColumnsReplaceTransformerReplacement", "Subquery", "WithElement", "OrderByElement",
    "WindowDefinition", "WindowListElement", "InterpolateElement", "QueryParameter",
    "SampleRatio",
})

_NODE_NAMES = {
    "SetQuery": "a SETTINGS clause",
    "ColumnsApplyTransformer": "APPLY(<function>)",
    "InsertQuery": "INSERT", "ExplainQuery": "EXPLAIN", "AlterQuery": "ALTER",
    "CreateQuery": "CREATE", "DropQuery": "DROP", "KillQueryQuery": "KILL",
    "SystemQuery": "SYSTEM", "SetRoleQuery": "SET ROLE", "UseQuery": "USE",
}

#: the syntax's own functions, not listed in system.functions
_SYNTAX_FUNCTIONS = frozenset({"lambda", "exists"})

_IN_FUNCTIONS = frozenset({
    "in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn",
    "globalNotNullIn",
})

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_LIMIT_CODES: dict[int, tuple[int, str, str]] = {
    159: (408, "query.max_execution_time_s", "took longer than"),  # TIMEOUT_EXCEEDED
    160: (408, "query.max_execution_time_s", "would take longer than"),  # TOO_SLOW
    241: (422, "query.max_memory_usage_bytes", "needs more memory than"),
    158: (413, "query.max_rows_to_read", "reads more rows than"),  # TOO_MANY_ROWS
    307: (413, "query.max_rows_to_read", "reads more bytes than"),  # TOO_MANY_BYTES
}


class QueryRefused(QueryError):
    """The guard refused the query (HTTP 400); the message says what and why."""

    status = 400


@dataclass(frozen=True, slots=True)
class GuardedQuery:
    """A query the guard accepted: the text to run and what it reads."""

    sql: str
    """The server's single-line rendering of the one statement that was checked."""
    tables: frozenset[str]
    """llmpulse tables read (bare names)."""


@dataclass(frozen=True, slots=True)
class _Function:
    canonical: str
    aggregate: bool
    denied: str | None


class SqlGuard:
    """Checks caller SQL on the server's parse, then runs it on the read-only connection.

    ``run`` executes one statement with bound parameters on the connection
    that carries ``readonly=1`` and the limits (``Store.query(..., readonly=True)``).

    >>> import tempfile
    >>> from llmpulse.store import Store
    >>> store = Store.open(f"chdb://{tempfile.mkdtemp()}/store")
    >>> guard = SqlGuard.for_store(store)
    >>> guard.check("SELECT count() AS n FROM signals FINAL -- comment").sql
    'SELECT count() AS n FROM signals FINAL'
    >>> guard.check("SELECT 1 INTO OUTFILE '/tmp/x'")
    Traceback (most recent call last):
    ...
    llmpulse.sqlguard.QueryRefused: INTO OUTFILE is not allowed: the query API only returns rows
    >>> guard.run("SELECT name FROM system.users")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    llmpulse.sqlguard.QueryRefused: table system.users is not an llmpulse table (allowed: inference_events, ...)
    >>> store.close()
    """

    def __init__(self, run: RunFn, *, tables: tuple[str, ...] = TABLES,
                 limits: QuerySettings | None = None) -> None:
        self._run = run
        self.tables = tables
        self.limits = limits or QuerySettings()
        self._lock = threading.Lock()
        self._functions: dict[str, _Function] | None = None
        self._ci_functions: dict[str, _Function] = {}
        self._combinators: tuple[str, ...] = ()
        self._database = "default"
        self._columns: frozenset[str] = frozenset()

    @classmethod
    def for_store(cls, store: Any, *, limits: QuerySettings | None = None) -> SqlGuard:
        """A guard over ``store``'s read-only connection."""

        def run(sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
            return list(store.query(sql, params, readonly=True))

        return cls(run, limits=limits or getattr(store, "limits", None))

    # -- the function catalogue ------------------------------------------------

    def _catalogue(self) -> dict[str, _Function]:
        with self._lock:
            if self._functions is None:
                self._load_catalogue()
            assert self._functions is not None
            return self._functions

    def _load_catalogue(self) -> None:
        row = self._run(
            "SELECT currentDatabase() AS db, (SELECT groupArray(tuple(name, is_aggregate, "
            "case_insensitive, alias_to, categories, toString(origin))) FROM system.functions) "
            "AS functions, (SELECT groupArray(name) FROM system.aggregate_function_combinators) "
            "AS combinators, (SELECT groupUniqArray(name) FROM system.columns WHERE "
            "database = currentDatabase() AND has({tables:Array(String)}, table)) AS columns",
            {"tables": list(self.tables)})[0]
        raw = {r[0]: r for r in row["functions"]}
        folded = {name.lower(): r for name, r in raw.items()}
        functions: dict[str, _Function] = {}
        ci: dict[str, _Function] = {}
        for name, (_, aggregate, case_insensitive, alias_to, *_) in raw.items():
            canonical = alias_to or name
            # an alias may name its target in another letter case (connection_id ->
            # connectionID, listed as connectionId)
            base = raw.get(canonical) or folded.get(canonical.lower()) or raw[name]
            canonical = base[0] if alias_to else canonical
            fn = _Function(canonical, bool(aggregate), _denial(canonical, base[4], base[5]))
            functions[name] = fn
            if case_insensitive:
                ci[name.lower()] = fn
        self._functions = functions
        self._ci_functions = ci
        self._combinators = tuple(sorted(row["combinators"], key=len, reverse=True))
        self._database = row["db"]
        self._columns = frozenset(row["columns"])

    def _function(self, name: str) -> _Function | None:
        catalogue = self._catalogue()
        fn = catalogue.get(name) or self._ci_functions.get(name.lower())
        if fn is not None:
            return fn
        for suffix in self._combinators:  # sumIf, uniqArrayIf, quantilesState ...
            if name.endswith(suffix) and len(name) > len(suffix):
                base = self._function(name[: -len(suffix)])
                if base is not None and base.aggregate:
                    return base
        return None

    # -- the check ---------------------------------------------------------------

    def check(self, sql: str, params: Mapping[str, Any] | None = None) -> GuardedQuery:
        """The statement to run, or :class:`QueryRefused` saying what was refused."""
        if not isinstance(sql, str) or not sql.strip():
            raise QueryRefused("sql must be a non-empty string")
        self._catalogue()
        try:
            row = self._run(
                "SELECT formatQuerySingleLine({q:String}) AS text, parseQueryToJSON(text) AS ast",
                {"q": sql})[0]
        except Exception as exc:
            msg = _server_message(exc)
            unserialisable = re.search(r"AST node of type '([A-Za-z]+)", msg)
            if unserialisable:  # SHOW, DESCRIBE, GRANT ... have no JSON form
                kind = unserialisable.group(1)
                raise QueryRefused(f"only SELECT queries are allowed, got "
                                   f"{_NODE_NAMES.get(kind, kind)}") from None
            raise QueryRefused(f"not one valid SQL statement: {msg}") from None
        text = str(row["text"])
        try:
            ast = orjson.loads(row["ast"])
        except orjson.JSONDecodeError:
            raise QueryRefused("the query nests too deeply to be checked") from None
        if not isinstance(ast, dict) or ast.get("type") != "SelectWithUnionQuery":
            kind = ast.get("type", "?") if isinstance(ast, dict) else "?"
            raise QueryRefused(
                f"only SELECT queries are allowed, got {_NODE_NAMES.get(kind, kind)}")
        try:
            ctes = {str(n["name"]) for n in _nodes(ast) if n.get("type") == "WithElement"}
        except RecursionError:
            raise QueryRefused("the query nests too deeply to be checked") from None
        if ctes:
            existing = self._run(
                "SELECT groupArray(name) AS names FROM system.tables "
                "WHERE database = currentDatabase()", {})[0]["names"]
            for name in sorted(ctes):
                if name in existing and name not in self.tables:
                    raise QueryRefused(
                        f"CTE name {name} is also a table of the store; rename the CTE")
        tables: set[str] = set()
        try:
            self._walk(ast, ctes, tables)
        except RecursionError:
            raise QueryRefused("the query nests too deeply to be checked") from None
        self._check_params(text, params)
        return GuardedQuery(text, frozenset(tables))

    def _check_params(self, text: str, params: Mapping[str, Any] | None) -> None:
        if not params:
            return
        if not isinstance(params, Mapping):
            raise QueryRefused("params must be a JSON object")
        from clickhouse_connect.driver.binding import bind_query

        # only server-side binding ({name:Type}): the client's own %-formatting
        # would splice values into the text after it was checked
        bound, server_params = bind_query(text, dict(params))
        if bound != text or not server_params:
            raise QueryRefused(
                "params are only bound to {name:Type} placeholders in the query")

    def _walk(self, node: Any, ctes: set[str], tables: set[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self._walk(item, ctes, tables)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind is None:  # a typed value (a literal's payload): no nodes inside
            return
        if kind not in _ALLOWED_NODES:
            raise QueryRefused(f"{_NODE_NAMES.get(kind, kind)} is not allowed in a query")
        if kind == "SelectWithUnionQuery":
            _check_output_clauses(node)
        elif kind == "SelectQuery" and node.get("settings"):
            raise QueryRefused("a SETTINGS clause is not allowed: limits are set by the server")
        elif kind == "TableExpression" and node.get("table_function"):
            fn = node["table_function"]
            name = fn.get("name", "?") if isinstance(fn, dict) else "?"
            raise QueryRefused(f"table function {name}() is not allowed; read llmpulse tables")
        elif kind in ("TableIdentifier", "Identifier") and node.get("children"):
            raise QueryRefused("identifiers given as query parameters are not allowed")
        elif kind == "TableIdentifier":
            tables.add(self._table(node, ctes))
        elif kind == "QueryParameter" and str(node.get("param_type", "")).lower() == "identifier":
            raise QueryRefused("query parameters of type Identifier are not allowed")
        elif kind == "Function":
            self._check_function(node, ctes, tables)
        elif kind == "Identifier":
            self._check_bare_name(node)
        for key, value in node.items():
            if key != "type":
                self._walk(value, ctes, tables)

    def _check_function(self, node: dict[str, Any], ctes: set[str], tables: set[str]) -> None:
        name = str(node.get("name", ""))
        if name in _SYNTAX_FUNCTIONS:
            return
        if not _NAME.match(name):
            raise QueryRefused(f"function name {name!r} is not allowed")
        fn = self._function(name)
        if fn is None:
            raise QueryRefused(f"unknown function {name}")
        if fn.denied:
            raise QueryRefused(f"function {name} is not allowed: {fn.denied}")
        if fn.canonical in _IN_FUNCTIONS:
            # `x IN t` names a table with a bare identifier
            args = node.get("arguments")
            children = args.get("children", []) if isinstance(args, dict) else []
            if len(children) == 2 and isinstance(children[1], dict) \
                    and children[1].get("type") == "Identifier":
                tables.add(self._table(children[1], ctes))

    def _check_bare_name(self, node: dict[str, Any]) -> None:
        """A name without parentheses that the engine calls as a function (``currentUser``,
        ``DATABASE``): refused like the call when it is denied, unless it is a column of
        the llmpulse tables (``user`` is one, so ``SELECT user`` with no table still
        names the server's user)."""
        parts = node.get("name_parts") or [node.get("name", "")]
        if len(parts) != 1:
            return
        name = str(parts[0])
        if name in self._columns or not _NAME.match(name):
            return
        fn = self._function(name)
        if fn is not None and fn.denied:
            raise QueryRefused(f"{name} is not allowed: {fn.denied}")

    def _table(self, node: dict[str, Any], ctes: set[str]) -> str:
        parts = node.get("name_parts") or [node.get("name", "")]
        parts = [str(p) for p in parts]
        shown = ".".join(parts)
        allowed = ", ".join(self.tables)
        if len(parts) == 1 and (parts[0] in self.tables or parts[0] in ctes):
            return parts[0]
        if len(parts) == 2 and parts[0] == self._database and parts[1] in self.tables:
            return parts[1]
        raise QueryRefused(f"table {shown} is not an llmpulse table (allowed: {allowed})")

    # -- running -------------------------------------------------------------------

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Check ``sql``, run it read-only within the limits, return the rows.

        Raises :class:`QueryRefused` (400), :class:`QueryLimitError` (its
        ``status``) or :class:`QueryError` for any other error of the query.
        """
        query = self.check(sql, params)
        try:
            rows = self._run(query.sql, dict(params or {}))
        except QueryLimitError:  # the store's own: busy, or a result too large to parse
            raise
        except Exception as exc:
            raise _limit_error(exc, self.limits) or QueryError(_server_message(exc)) from None
        # the server checks result limits per block of rows; this makes them exact
        if len(rows) > self.limits.max_result_rows:
            raise QueryLimitError(
                f"the result has more than {self.limits.max_result_rows} rows "
                "(query.max_result_rows); aggregate or add a LIMIT",
                "query.max_result_rows", 413)
        if len(orjson.dumps(rows)) > self.limits.max_result_bytes:
            raise QueryLimitError(
                f"the result is larger than {self.limits.max_result_bytes} bytes "
                "(query.max_result_bytes); select fewer columns or rows",
                "query.max_result_bytes", 413)
        return rows


def _check_output_clauses(node: dict[str, Any]) -> None:
    if node.get("out_file") or node.get("is_outfile_append") or node.get("is_outfile_truncate") \
            or node.get("is_into_outfile_with_stdout") or node.get("compression"):
        raise QueryRefused("INTO OUTFILE is not allowed: the query API only returns rows")
    if node.get("format_ast"):
        raise QueryRefused("a FORMAT clause is not allowed: results are always JSON rows")
    if node.get("settings_ast"):
        raise QueryRefused("a SETTINGS clause is not allowed: limits are set by the server")


def _denial(name: str, category: str, origin: str) -> str | None:
    if name.lower() in _DENIED_LOWER:
        return "it reaches files, other tables or server state, or its work cannot be stopped"
    if name.startswith("__"):
        return "internal function"
    if category in DENIED_CATEGORIES:
        return f"{category} functions reach data outside the llmpulse tables"
    if origin != "System":
        return "user-defined functions are not allowed"
    return None


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from _nodes(item)
    elif isinstance(node, dict) and "type" in node:
        yield node
        for value in node.values():
            yield from _nodes(value)


def _server_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    msg = re.sub(r"^(Code: \d+\. DB::Exception: )+", "", msg)
    return msg[:500]


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = re.search(r"Code: (\d+)\.", str(exc))
    return int(m.group(1)) if m else None


def _limit_error(exc: BaseException, limits: QuerySettings) -> QueryLimitError | None:
    code = _error_code(exc)
    if code == 396:  # TOO_MANY_ROWS_OR_BYTES: the result limits
        key = "query.max_result_bytes" if "bytes" in str(exc).split("current")[0] \
            else "query.max_result_rows"
        return QueryLimitError(f"the result is larger than {key} allows; aggregate or add a "
                               "LIMIT", key, 413)
    if code in _LIMIT_CODES:
        status, key, what = _LIMIT_CODES[code]
        value = getattr(limits, key.split(".", 1)[1])
        return QueryLimitError(f"the query {what} {key} ({value}) allows", key, status)
    return None
