"""``llmpulse erase``: remove every stored trace of some requests, a user or an app.

The unit of erasure is the request. A selector names them:

* ``--request-id ID ...``: those requests;
* ``--user USER``: the requests whose inference carries ``user`` = USER, in
  clear or hashed (:func:`~llmpulse.subject.user_forms`; run with the same
  ``LLMPULSE_USER_KEY`` as the apps), plus feedback carrying that user;
* ``--app APP``: every request of that app;

``--before TIME`` (RFC 3339 or epoch seconds) keeps what is newer.

What goes: the raw inference and feedback rows of those requests, their
``request_index`` rows, dead letters whose payload names them (or the user),
the examples kept in the ``detail`` JSON of signals and alerts (the row and its
aggregate value stay; the items naming an erased event go, strings quoting
one become ``[erased]``), Evidently report files under ``<data-dir>/reports``
that quote them, and with ``--journal DIR`` the shim journal on this host.

How: ClickHouse mutations (``ALTER TABLE ... DELETE`` with
``mutations_sync = 2``), not lightweight deletes: a mutation rewrites every part
that holds a matching row, so no older version of a row is left for
``ReplacingMergeTree`` + ``FINAL`` to bring back, and the bytes are gone from
the new parts. The keys travel in a ``Memory`` table (never on disk) so the
mutation's text, which ClickHouse keeps in ``mutation_*.txt``, names no id.
The replaced parts stay on disk until the cleanup pass removes them (seconds,
see :mod:`llmpulse.migrations`); :func:`erase` waits for that, up to
``wait_s``, and reports parts still pending. Rows inserted while an erase
runs are not blocked; an event of an erased request that arrives after the
erase is stored (erase again). Erasing twice is a no-op that reports zeros.

This module is the store side. The signal engine's open windows and feedback
join (memory, and ``<data-dir>/worker/*.pkl``) are cleared by the caller: the
stack's admin route (:mod:`llmpulse.streams.admin`) or, with the stack stopped, the
command (:mod:`llmpulse.erase_cli`). The embedded broker's log on disk
(``broker.storage: disk``) is rewritten without the erased events, offsets kept
(:mod:`llmpulse.broker_erase`). Not reachable at all: the topics of an external
Kafka keep the events until their own retention (the embedded broker in memory
keeps them until it stops), and shim journals on other hosts.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from llmpulse.subject import hash_user, user_forms, user_key

__all__ = ["ERASED", "ErasureError", "ErasureReport", "ErasureRequest", "erase",
           "journal_matcher", "parse_time", "report_counts", "scrub"]

log = logging.getLogger(__name__)

ERASED = "[erased]"
MAX_REQUEST_IDS = 10_000
MAX_TEXT_ROWS = 10_000
_MIN_TEXT = 12  # a detail string this long that occurs inside an erased text quotes it
_CHUNK = 200  # needles per multiSearchAny (ClickHouse takes at most 255)


class ErasureError(ValueError):
    """A bad erasure request; the message names the field."""


def parse_time(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ErasureError(f"{key}: must be RFC 3339 text or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ErasureError(f"{key}: {value!r} is not RFC 3339 or epoch seconds") from None
        if dt.tzinfo is None:
            raise ErasureError(f"{key}: {value!r} has no time zone (add Z or +00:00)")
        return dt.timestamp()
    raise ErasureError(f"{key}: must be RFC 3339 text or epoch seconds, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class ErasureRequest:
    """What to erase: exactly one of ``request_ids``, ``user``, ``app``.

    >>> ErasureRequest.from_json({"user": "alice", "before": "2024-01-01T00:00:00Z"}).before
    1704067200.0
    >>> ErasureRequest.from_json({"user": "a", "app": "b"})
    Traceback (most recent call last):
    ...
    llmpulse.erase.ErasureError: give exactly one of request_ids, user, app
    >>> ErasureRequest.from_json({"request_ids": ["r1", 7]})
    Traceback (most recent call last):
    ...
    llmpulse.erase.ErasureError: request_ids[1]: must be a non-empty string
    """

    request_ids: tuple[str, ...] = ()
    user: str | None = None
    app: str | None = None
    before: float | None = None

    def __post_init__(self) -> None:
        given = [bool(self.request_ids), self.user is not None, self.app is not None]
        if sum(given) != 1:
            raise ErasureError("give exactly one of request_ids, user, app")
        if len(self.request_ids) > MAX_REQUEST_IDS:
            raise ErasureError(f"request_ids: at most {MAX_REQUEST_IDS} per call")
        for i, r in enumerate(self.request_ids):
            if not isinstance(r, str) or not r or len(r) > 256:
                raise ErasureError(f"request_ids[{i}]: must be a non-empty string")
        for name in ("user", "app"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v or len(v) > 256):
                raise ErasureError(f"{name}: must be a non-empty string of at most 256 characters")
        if self.before is not None and self.request_ids:
            raise ErasureError("before: only with user or app")

    @classmethod
    def from_json(cls, body: Any) -> ErasureRequest:
        """From a decoded JSON body (hostile input: every field checked)."""
        if not isinstance(body, Mapping):
            raise ErasureError("body: must be a JSON object")
        unknown = set(body) - {"request_ids", "user", "app", "before"}
        if unknown:
            raise ErasureError(f"{sorted(unknown)[0]}: unknown field (known: request_ids, user, app, before)")
        rids = body.get("request_ids") or []
        if not isinstance(rids, list):
            raise ErasureError("request_ids: must be a list of strings")
        for i, r in enumerate(rids):
            if not isinstance(r, str) or not r:
                raise ErasureError(f"request_ids[{i}]: must be a non-empty string")
        before = body.get("before")
        return cls(
            request_ids=tuple(dict.fromkeys(rids)),
            user=body.get("user"),
            app=body.get("app"),
            before=None if before is None else parse_time(before, "before"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.request_ids:
            out["request_ids"] = list(self.request_ids)
        if self.user is not None:
            out["user"] = self.user
        if self.app is not None:
            out["app"] = self.app
        if self.before is not None:
            out["before"] = self.before
        return out

    def target(self, key: bytes | str | None = None) -> str:
        """For the audit trail, naming no erased identifier: a user appears as a
        keyed hash under a key of its own (it matches no stored ``user`` value, and
        whoever holds the key can still check whether a given user was erased),
        request ids as a count."""
        if self.user is not None:
            t = f"user:{hash_user(self.user, user_key(key) + b':audit')}"
        elif self.app is not None:
            t = f"app:{self.app}"
        else:
            t = f"requests:{len(self.request_ids)}"
        return t + (f" before {self.before:.3f}" if self.before is not None else "")


@dataclass
class ErasureReport:
    """What an erasure removed, per table and place (JSON-able)."""

    rows: dict[str, int] = field(default_factory=dict)
    rewritten: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    journal_events: int = 0
    engine_records: int = 0
    """Events and join records dropped from the running signal engine's memory."""
    broker_records: dict[str, int] = field(default_factory=dict)
    """Records rewritten in the embedded broker's log on disk, per topic."""
    broker_failed: int = 0
    """Stored broker batches that could not be rewritten (each named in ``notes``)."""
    parts_pending: int = 0
    notes: list[str] = field(default_factory=list)
    request_ids: frozenset[str] = frozenset()
    """The requests erased (kept out of :meth:`to_json`: for the engine, not for output)."""

    @property
    def total(self) -> int:
        return (sum(self.rows.values()) + sum(self.rewritten.values()) + len(self.files)
                + self.journal_events + self.engine_records + sum(self.broker_records.values()))

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "rewritten": self.rewritten, "files": self.files,
                "journal_events": self.journal_events, "engine_records": self.engine_records,
                "broker_records": self.broker_records, "broker_failed": self.broker_failed,
                "parts_pending": self.parts_pending,
                "total": self.total, "notes": self.notes}


# -- detail scrubbing ------------------------------------------------------------------------


def scrub(value: Any, needles: Iterable[str], texts: Iterable[str] = ()) -> tuple[Any, int]:
    """``value`` (decoded JSON) without what names an erased event; and how many
    items or strings were removed. A list item naming a needle is dropped; a
    string naming one, or quoting an erased text, becomes ``[erased]``.

    >>> scrub({"worst": [{"event_id": "e1", "sentence": "x"}, {"event_id": "e2"}], "n": 3}, ["e1"])
    ({'worst': [{'event_id': 'e2'}], 'n': 3}, 1)
    >>> scrub({"examples": ["e1", "e9"], "note": "see e1"}, ["e1"])
    ({'examples': ['e9'], 'note': '[erased]'}, 2)
    >>> scrub({"sentence": "gift cards are refundable"}, [], ["Yes, gift cards are refundable within 30 days."])
    ({'sentence': '[erased]'}, 1)
    """
    ns = [n for n in needles if n]
    ts = [t for t in texts if t]

    def hit(s: str) -> bool:
        if any(n in s for n in ns):
            return True
        return len(s) >= _MIN_TEXT and any(s in t for t in ts)

    def mentions(v: Any) -> bool:
        if isinstance(v, str):
            return hit(v)
        if isinstance(v, Mapping):
            return any(mentions(k) or mentions(x) for k, x in v.items())
        if isinstance(v, list):
            return any(mentions(x) for x in v)
        return False

    count = 0

    def walk(v: Any) -> Any:
        nonlocal count
        if isinstance(v, str):
            if hit(v):
                count += 1
                return ERASED
            return v
        if isinstance(v, Mapping):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            kept = []
            for x in v:
                if mentions(x):
                    count += 1
                else:
                    kept.append(walk(x))
            return kept
        return v

    return walk(value), count


# -- the store side --------------------------------------------------------------------------


@dataclass
class _Targets:
    request_ids: set[str] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)
    trace_ids: set[str] = field(default_factory=set)
    feedback_ids: set[str] = field(default_factory=set)
    users: tuple[str, ...] = ()
    texts: set[str] = field(default_factory=set)

    @property
    def needles(self) -> list[str]:
        return sorted(self.request_ids | self.event_ids | self.feedback_ids | set(self.users))


def _time_cond(req: ErasureRequest) -> str:
    return "" if req.before is None else " AND ts < fromUnixTimestamp64Milli({before:Int64}, 'UTC')"


def _params(req: ErasureRequest, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = dict(extra)
    if req.before is not None:
        p["before"] = int(req.before * 1000)
    return p


def _texts(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    out: set[str] = set()
    for r in rows:
        for k in ("prompt", "response", "comment"):
            if r.get(k):
                out.add(str(r[k]))
        for c in r.get("context") or []:
            if c:
                out.add(str(c))
    return out


def _resolve(store: Any, req: ErasureRequest, key: bytes | str | None) -> _Targets:
    t = _Targets()
    params: dict[str, Any]
    if req.request_ids:
        t.request_ids = set(req.request_ids)
        cond, params = "request_id IN {ids:Array(String)}", {"ids": list(t.request_ids)}
    elif req.user is not None:
        t.users = user_forms(req.user, key)
        cond, params = "user IN {u:Array(String)}" + _time_cond(req), _params(req, u=list(t.users))
    else:
        cond, params = "app = {app:String}" + _time_cond(req), _params(req, app=req.app)
    rows = store.query(
        f"SELECT request_id, event_id, trace_id FROM inference_events WHERE {cond}", params)
    t.request_ids |= {r["request_id"] for r in rows}
    t.event_ids |= {r["event_id"] for r in rows}
    # a traced request's other steps (retrievals with their documents, tool calls)
    t.trace_ids |= {r["trace_id"] for r in rows if r["trace_id"]}
    # the texts only serve to find quotes of them (details, report files); a detail
    # item also names its event id, so a sample bounds memory for a whole app
    t.texts |= _texts(store.query(
        f"SELECT prompt, response, context FROM inference_events WHERE {cond} "
        f"LIMIT {MAX_TEXT_ROWS}", params))
    if req.request_ids:
        fb_cond = cond
    else:
        # feedback on those requests, plus feedback carrying the user or the app itself
        own = ("user IN {u:Array(String)}" if req.user is not None else "app = {app:String}")
        fb_cond = (f"(request_id IN (SELECT request_id FROM inference_events WHERE {cond}) "
                   f"OR ({own}{_time_cond(req)}))")
    fb = store.query(f"SELECT event_id FROM feedback_events WHERE {fb_cond}", params)
    t.feedback_ids = {r["event_id"] for r in fb}
    t.texts |= _texts(store.query(
        f"SELECT comment FROM feedback_events WHERE {fb_cond} LIMIT {MAX_TEXT_ROWS}", params))
    return t


class _KeyTable:
    """A ``Memory`` table of keys: in RAM only, dropped after use."""

    def __init__(self, store: Any, columns: str) -> None:
        self.store = store
        self.name = f"erase_keys_{uuid.uuid4().hex[:12]}"
        store.command(f"CREATE TABLE {self.name} ({columns}) ENGINE = Memory")

    def fill(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.store.insert_rows(self.name, rows)

    def drop(self) -> None:
        try:
            self.store.command(f"DROP TABLE IF EXISTS {self.name} SYNC")
        except Exception as exc:
            log.warning("could not drop %s: %s", self.name, exc)


def _multi_search(store: Any, sql: str, column: str, needles: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of ``sql`` (a SELECT with a ``{cond}`` slot) whose ``column`` contains a needle."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(needles), _CHUNK):
        chunk = list(needles[i:i + _CHUNK])
        for r in store.query(sql.format(cond=f"multiSearchAny({column}, {{n:Array(String)}})"),
                             {"n": chunk}):
            out[orjson.dumps(r, option=orjson.OPT_SORT_KEYS).decode()] = r
    return list(out.values())


def _active_parts(store: Any, tables: Sequence[str]) -> set[tuple[str, str]]:
    rows = store.query("SELECT table, name FROM system.parts WHERE database = currentDatabase() "
                       "AND active AND table IN {t:Array(String)}", {"t": list(tables)})
    return {(r["table"], r["name"]) for r in rows}


def _wait_parts_gone(store: Any, parts: set[tuple[str, str]], wait_s: float,
                     sleep: Callable[[float], None]) -> int:
    if not parts:
        return 0
    tables = sorted({t for t, _ in parts})
    deadline = time.monotonic() + wait_s
    while True:
        rows = store.query("SELECT table, name FROM system.parts WHERE database = currentDatabase() "
                           "AND table IN {t:Array(String)}", {"t": tables})
        left = parts & {(r["table"], r["name"]) for r in rows}
        if not left or time.monotonic() >= deadline:
            return len(left)
        sleep(0.5)


def _delete(store: Any, table: str, where: str, params: Mapping[str, Any], count_final: bool,
            report: ErasureReport, touched: set[str]) -> None:
    final = " FINAL" if count_final else ""
    n = int(store.scalar(f"SELECT count() FROM {table}{final} WHERE {where}", params) or 0)
    raw = int(store.scalar(f"SELECT count() FROM {table} WHERE {where}", params) or 0)
    report.rows[table] = n
    if raw:
        touched.add(table)
        store.command(f"ALTER TABLE {table} DELETE WHERE {where} SETTINGS mutations_sync = 2")


def _rewrite_details(store: Any, table: str, key_cols: str, t: _Targets,
                     report: ErasureReport, touched: set[str]) -> None:
    needles = t.needles
    report.rewritten[table] = 0
    if not needles:
        return
    rows = _multi_search(store, f"SELECT *, cityHash64(detail) AS _old FROM {table} WHERE {{cond}}",
                         "detail", needles)
    if not rows:
        return
    hashes = [{"h": h} for h in {int(r.pop("_old")) for r in rows}]
    replacements = []
    for r in rows:
        try:
            detail = json.loads(r["detail"])
        except ValueError:
            detail, n = ERASED, 1
        else:
            detail, n = scrub(detail, needles, t.texts)
            if isinstance(detail, dict):
                detail["erased_items"] = int(detail.get("erased_items", 0)) + n
        replacements.append({**r, "detail": json.dumps(detail, sort_keys=True, default=str)})
    old = _KeyTable(store, "h UInt64")
    try:
        old.fill(hashes)
        store.insert_rows(table, replacements)
        store.command(f"ALTER TABLE {table} DELETE WHERE cityHash64(detail) IN "
                      f"(SELECT h FROM {old.name}) SETTINGS mutations_sync = 2")
    finally:
        old.drop()
    touched.add(table)
    keys = {tuple(r[c] for c in key_cols.split(",")) for r in rows}
    report.rewritten[table] = len(keys)


def erase(
    store: Any,
    req: ErasureRequest,
    *,
    data_dir: Path | None = None,
    user_key: bytes | str | None = None,
    wait_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ErasureReport:
    """Erase what ``req`` selects from ``store`` (blocking) and from report files
    under ``data_dir``; see the module docstring."""
    report = ErasureReport()
    t = _resolve(store, req, user_key)
    report.request_ids = frozenset(t.request_ids)
    touched: set[str] = set()
    tables = ("inference_events", "feedback_events", "request_index", "deadletter_events",
              "signals", "alerts", "spans")
    before = _active_parts(store, tables)
    rids = _KeyTable(store, "k String")
    fids = _KeyTable(store, "k String")
    sids = _KeyTable(store, "k String")
    dl = _KeyTable(store, "topic String, partition UInt32, offset UInt64")
    try:
        rids.fill([{"k": r} for r in sorted(t.request_ids)])
        fids.fill([{"k": f} for f in sorted(t.feedback_ids)])
        sids.fill([{"k": k} for k in sorted(t.trace_ids | t.event_ids)])
        in_r = f"request_id IN (SELECT k FROM {rids.name})"
        _delete(store, "spans", f"trace_id IN (SELECT k FROM {sids.name}) "
                f"OR event_id IN (SELECT k FROM {sids.name})", {}, True, report, touched)
        _delete(store, "inference_events", in_r, {}, True, report, touched)
        _delete(store, "feedback_events", f"{in_r} OR event_id IN (SELECT k FROM {fids.name})",
                {}, True, report, touched)
        _delete(store, "request_index", in_r, {}, True, report, touched)
        quoted = [json.dumps(n) for n in t.needles]  # "id" with its quotes: no prefix matches
        dead = _multi_search(
            store, "SELECT DISTINCT topic, partition, offset FROM deadletter_events WHERE {cond}",
            "payload", quoted) if quoted else []
        if req.app is not None:
            dead += store.query(
                "SELECT DISTINCT topic, partition, offset FROM deadletter_events "
                "WHERE JSONExtractString(payload, 'app') = {app:String}" + _time_cond(req),
                _params(req, app=req.app))
        dl.fill([{"topic": d["topic"], "partition": d["partition"], "offset": d["offset"]}
                 for d in dead])
        _delete(store, "deadletter_events",
                f"(topic, partition, offset) IN (SELECT topic, partition, offset FROM {dl.name})",
                {}, True, report, touched)
    finally:
        for k in (rids, fids, sids, dl):
            k.drop()
    _rewrite_details(store, "signals", "app,model,model_version,signal,dimension,ts", t,
                     report, touched)
    _rewrite_details(store, "alerts", "alert_id", t, report, touched)
    if data_dir is not None:
        report.files = _erase_files(Path(data_dir) / "reports", t)
        _erase_broker_log(Path(data_dir), req, t, report)
    report.parts_pending = _wait_parts_gone(
        store, {p for p in before if p[0] in touched}, wait_s, sleep)
    if report.parts_pending:
        report.notes.append(f"{report.parts_pending} replaced store parts not yet removed; "
                            "they go within minutes")
    return report


def _erase_broker_log(data_dir: Path, req: ErasureRequest, t: _Targets,
                      report: ErasureReport) -> None:
    """The erased events out of the embedded broker's log on disk, if it has one."""
    from llmpulse.broker_erase import EventEraser, erase_from_broker

    eraser = EventEraser(
        ids=frozenset(t.request_ids | t.event_ids | t.feedback_ids),
        # with --before, a user's newer events stay: they go by id only
        users=frozenset(t.users) if req.before is None else frozenset(),
        trace_ids=frozenset(t.trace_ids), texts=tuple(sorted(t.texts)), scrub=scrub)
    done = erase_from_broker(data_dir, eraser)
    report.broker_records = done.records
    report.broker_failed = len(done.failures)
    for failure in done.failures:
        report.notes.append(f"broker batch not rewritten: {failure}")


def _erase_files(directory: Path, t: _Targets) -> list[str]:
    """Delete report files that quote an erased id, user or text."""
    if not directory.is_dir():
        return []
    needles = [n.encode() for n in t.needles]
    needles += [x.encode() for x in t.texts if len(x) >= _MIN_TEXT]
    if not needles:
        return []
    gone: list[str] = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if any(n in data for n in needles):
            path.unlink(missing_ok=True)
            gone.append(str(path))
    return gone


def journal_matcher(req: ErasureRequest, key: bytes | str | None = None) -> Callable[[bytes], bool]:
    """Whether one journaled event (a JSON line) is selected by ``req``.

    >>> m = journal_matcher(ErasureRequest(user="alice"), key=b"k" * 16)
    >>> m(b'{"user": "alice", "ts": 1}'), m(b'{"user": "bob"}'), m(b'not json')
    (True, False, False)
    """
    rids = set(req.request_ids)
    users = set(user_forms(req.user, key)) if req.user is not None else set()
    before_ms = None if req.before is None else req.before * 1000

    def match(line: bytes) -> bool:
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(ev, dict):
            return False
        if rids:
            return ev.get("request_id") in rids
        if before_ms is not None:
            ts = ev.get("ts")
            if not isinstance(ts, (int, float)) or ts >= before_ms:
                return False
        if users:
            return ev.get("user") in users
        return ev.get("app") == req.app

    return match


def report_counts(report: ErasureReport) -> dict[str, Any]:
    """The counts of a report, for the audit trail (no ids, no file names)."""
    return {"rows": dict(report.rows), "rewritten": dict(report.rewritten),
            "files": len(report.files), "journal_events": report.journal_events,
            "broker_records": dict(report.broker_records),
            "broker_failed": report.broker_failed, "total": report.total}
