"""Erasure, retention migrations and the audit sink on a real chDB store (no broker)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmpulse.audit import AuditEvent, AuditLog
from llmpulse.config import ConfigError, RetentionSettings, load_settings
from llmpulse.erase import ErasureError, ErasureRequest, erase, journal_matcher, scrub
from llmpulse.events import EventError, validate_feedback, validate_inference
from llmpulse.journal import Journal, erase_from_journal
from llmpulse.migrations import MIGRATIONS, migrate
from llmpulse.monitor import Monitor
from llmpulse.store import Store
from llmpulse.subject import hash_user

KEY = b"unit-test-key-0123456789"
NOW_MS = int(time.time() * 1000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"chdb://{tmp_path}/store")
    migrate(s, RetentionSettings())
    try:
        yield s
    finally:
        s.close()


def inference(i: int, *, app: str = "support", user: str = "", ts: int = NOW_MS,
              text: str = "") -> dict[str, Any]:
    return {"event_id": f"e{i}", "request_id": f"r{i}", "ts": ts, "app": app, "model": "m",
            "model_version": "1", "latency_ms": 10.0, "status": "ok", "input_tokens": 1,
            "output_tokens": 1, "prompt": f"prompt {i} {text}", "response": f"answer {i} {text}",
            "context": [f"passage {i} {text}"], "user": user}


def put(store: Store, events: list[dict[str, Any]], table: str = "inference_ingest") -> None:
    store.insert_json(table, b"\n".join(orjson.dumps(e) for e in events))


# -- the event contract and the shim --------------------------------------------------------


def test_user_field_is_checked_on_both_schemas() -> None:
    base = inference(1)
    with pytest.raises(EventError, match="^user: must be a string"):
        validate_inference({**base, "user": 42}, now_ms=NOW_MS)
    with pytest.raises(EventError, match="^user: longer than 256"):
        validate_inference({**base, "user": "x" * 257}, now_ms=NOW_MS)
    with pytest.raises(EventError, match="^user: must be a string"):
        validate_feedback({"event_id": "f", "request_id": "r", "ts": NOW_MS, "user": ["a"]},
                          now_ms=NOW_MS)
    assert validate_inference({**base, "user": "alice"}, now_ms=NOW_MS)["user"] == "alice"


def test_the_shim_hashes_the_user_when_redacting_and_the_journal_erases_it(tmp_path) -> None:
    journal = tmp_path / "journal"
    for redact in (True, False):
        mon = Monitor(app="support", bootstrap="127.0.0.1:9", model="m", model_version="1",
                      journal_dir=journal, redact=redact, user_key=KEY)
        rid = mon.inference(user="alice", latency_ms=1, status="ok", input_tokens=1,
                            output_tokens=1)
        mon.feedback(request_id=rid, score=1.0, user="alice")
        mon.inference(user="bob", latency_ms=1, status="ok", input_tokens=1, output_tokens=1)
        mon.close(timeout=0)
    j = Journal(journal)
    users = [orjson.loads(line)["user"] for r in iter(j.next_record, None)
             for line in r.payload.split(b"\n")]
    j.close()
    alice = hash_user("alice", KEY)
    assert sorted(users) == sorted([alice, alice, hash_user("bob", KEY), "alice", "alice", "bob"])
    # erase --user alice finds both the hashed and the clear events, with the same key
    assert erase_from_journal(journal, journal_matcher(ErasureRequest(user="alice"), KEY)) == 4
    assert erase_from_journal(journal, journal_matcher(ErasureRequest(user="alice"), KEY)) == 0
    j = Journal(journal)
    left = [orjson.loads(line)["user"] for r in iter(j.next_record, None)
            for line in r.payload.split(b"\n")]
    j.close()
    assert sorted(left) == sorted([hash_user("bob", KEY), "bob"])


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({}, "exactly one"),
    ({"user": "a", "request_ids": ["r"]}, "exactly one"),
    ({"request_ids": "r1"}, "request_ids"),
    ({"request_ids": [""]}, r"request_ids\[0\]"),
    ({"user": 5}, "user"),
    ({"app": "a" * 300}, "app"),
    ({"app": "a", "before": "yesterday"}, "before"),
    ({"app": "a", "before": "2024-01-01T00:00:00"}, "before"),
    ({"request_ids": ["r"], "before": 5}, "before"),
    ({"app": "a", "drop": "table"}, "drop"),
])
def test_hostile_erasure_bodies_are_refused_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(ErasureError, match=field):
        ErasureRequest.from_json(body)


def test_scrub_keeps_aggregates_and_drops_what_names_an_erased_event() -> None:
    detail = {"threshold": 0.5, "scored": 40,
              "worst": [{"event_id": "e1", "sentence": "moon base"}, {"event_id": "e2"}]}
    out, n = scrub(detail, ["e1"])
    assert out == {"threshold": 0.5, "scored": 40, "worst": [{"event_id": "e2"}]} and n == 1


# -- erasure on the store -----------------------------------------------------------------


def test_erase_requests_everywhere_in_the_store_and_twice_is_a_noop(store, tmp_path) -> None:
    put(store, [{**inference(i, text="SECRETXYZ" if i < 2 else ""), "trace_id": f"t{i}",
                 "span_id": f"s{i}"} for i in range(10)])
    # the traces' steps: r0's model call and its retrieval (documents quoting the secret),
    # and a step of a trace that stays
    span = {"ts": NOW_MS / 1000, "end_ts": NOW_MS / 1000, "app": "support", "kind": "internal"}
    store.insert_rows("spans", [
        {**span, "trace_id": "t0", "span_id": "s0", "event_id": "e0", "name": "chat"},
        {**span, "trace_id": "t0", "span_id": "s0r", "name": "retrieve",
         "attributes": {"retrieval.documents.0.document.content": "SECRETXYZ passage"}},
        {**span, "trace_id": "t5", "span_id": "s5", "event_id": "e5", "name": "chat"}])
    put(store, [inference(0, text="SECRETXYZ")])  # a replay: a second part, a duplicate row
    put(store, [{"event_id": f"f{i}", "request_id": f"r{i}", "ts": NOW_MS, "score": 1.0,
                 "comment": f"comment {i} {'SECRETXYZ' if i < 2 else ''}"} for i in range(4)],
        "feedback_ingest")
    store.insert_rows("deadletter_events", [
        {"topic": "llmpulse.inference", "partition": 0, "offset": 1, "reason": "bad",
         "payload": '{"request_id": "r1", "latency_ms": -1}'},
        {"topic": "llmpulse.inference", "partition": 0, "offset": 2, "reason": "bad",
         "payload": '{"request_id": "r11", "latency_ms": -1}'}])  # r11 is not r1
    detail = {"threshold": 0.5, "worst": [{"event_id": "e0", "sentence": "prompt 0 SECRETXYZ"},
                                          {"event_id": "e5", "sentence": "fine"}]}
    store.insert_rows("signals", [{"ts": NOW_MS / 1000, "window_s": 60, "app": "support",
                                   "model": "m", "model_version": "1",
                                   "signal": "hallucination.ungrounded_share", "dimension": "",
                                   "value": 0.25, "n": 10, "detail": json.dumps(detail)}])
    reports = tmp_path / "data" / "reports"
    reports.mkdir(parents=True)
    (reports / "a.html").write_text("<td>e1</td>")
    (reports / "b.html").write_text("<td>e7</td>")

    # a table's first cleanup pass runs up to ~30 s after it is loaded (the period it
    # had then); later passes every second (llmpulse.migrations)
    report = erase(store, ErasureRequest(request_ids=("r0", "r1")), data_dir=tmp_path / "data",
                   wait_s=120)
    assert report.rows == {"inference_events": 2, "feedback_events": 2, "request_index": 2,
                           "deadletter_events": 1, "spans": 2}
    assert [r["span_id"] for r in store.query("SELECT span_id FROM spans")] == ["s5"]
    assert report.rewritten == {"signals": 1, "alerts": 0}
    assert [Path(f).name for f in report.files] == ["a.html"]
    assert report.parts_pending == 0
    for sql in ("SELECT count() FROM inference_events", "SELECT count() FROM inference_events FINAL",
                "SELECT count() FROM request_index"):
        assert store.scalar(sql) == 8
    for t in ("inference_events", "feedback_events", "request_index", "deadletter_events",
              "signals", "spans"):
        store.command(f"OPTIMIZE TABLE {t} FINAL")
        rows = json.dumps(store.query(f"SELECT * FROM {t}"))
        assert "SECRETXYZ" not in rows and '"r0"' not in rows and '"e1"' not in rows, t
    [sig] = store.query("SELECT value, n, detail FROM signals FINAL")
    assert (sig["value"], sig["n"]) == (0.25, 10)
    assert json.loads(sig["detail"])["worst"] == [{"event_id": "e5", "sentence": "fine"}]
    assert store.scalar("SELECT count() FROM deadletter_events") == 1
    # a file of every store part and mutation is free of the erased text
    hits = [p for p in (tmp_path / "store").rglob("*") if p.is_file()
            and b"SECRETXYZ" in p.read_bytes()]
    assert hits == []

    again = erase(store, ErasureRequest(request_ids=("r0", "r1")), data_dir=tmp_path / "data")
    assert again.total == 0


def test_erase_user_hashed_or_clear_and_app_before(store) -> None:
    old = NOW_MS - 3_600_000
    put(store, [inference(1, user="alice"), inference(2, user=hash_user("alice", KEY)),
                inference(3, user="bob"), inference(4, app="staging", ts=old),
                inference(5, app="staging")])
    r = erase(store, ErasureRequest(user="alice"), user_key=KEY)
    assert r.rows["inference_events"] == 2
    assert store.scalar("SELECT groupArray(request_id) FROM inference_events FINAL "
                        "WHERE app = 'support'") == ["r3"]
    r = erase(store, ErasureRequest(app="staging", before=(NOW_MS - 60_000) / 1000))
    assert r.rows["inference_events"] == 1
    assert store.scalar("SELECT groupArray(request_id) FROM inference_events FINAL "
                        "WHERE app = 'staging'") == ["r5"]


# -- migrations and retention ---------------------------------------------------------------


def test_migrations_upgrade_a_store_without_the_user_column(tmp_path) -> None:
    s = Store.open(f"chdb://{tmp_path}/store")
    try:
        # the layout before the user column: column gone, view without it
        for stmt in ("DROP VIEW inference_ingest_mv",
                     "ALTER TABLE inference_events DROP COLUMN user",
                     "ALTER TABLE inference_ingest DROP COLUMN user",
                     "CREATE MATERIALIZED VIEW inference_ingest_mv TO inference_events AS "
                     "SELECT * REPLACE (fromUnixTimestamp64Milli(ts, 'UTC') AS ts) "
                     "FROM inference_ingest"):
            s.command(stmt)
        applied = migrate(s, RetentionSettings())
        assert [m.name for m in MIGRATIONS] == applied[:len(MIGRATIONS)]
        put(s, [inference(1, user="carol")])
        assert s.scalar("SELECT user FROM inference_events") == "carol"
        assert migrate(s, RetentionSettings()) == []
        ttl = s.scalar("SHOW CREATE TABLE deadletter_events")
        assert "toIntervalDay(30)" in ttl
        assert migrate(s, RetentionSettings(deadletters=0, alerts=0)) == [
            "retention alerts=0", "retention deadletter_events=0"]
        assert " TTL " not in s.scalar("SHOW CREATE TABLE deadletter_events")
        assert " TTL " not in s.scalar("SHOW CREATE TABLE alerts")
    finally:
        s.close()


def test_retention_configuration_is_checked(tmp_path) -> None:
    cfg = tmp_path / "llmpulse.yaml"
    cfg.write_text("retention:\n  raw_events: 7\n  audit: 0\n")
    s = load_settings(env={}, path=cfg)
    assert (s.retention.raw_events, s.retention.audit, s.retention.signals) == (7, 0, 90)
    for bad, msg in (("raw_events: -1", "retention.raw_events: must be >= 0"),
                     ("raw_events: 1.5", "retention.raw_events: must be int"),
                     ("forever: 1", "retention.forever: unknown setting")):
        cfg.write_text(f"retention:\n  {bad}\n")
        with pytest.raises(ConfigError, match=msg):
            load_settings(env={}, path=cfg)


# -- the audit sink ---------------------------------------------------------------------


class _DownStore:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.down = True

    def insert_rows(self, table: str, rows: list[dict[str, Any]]) -> int:
        if self.down:
            raise ConnectionError("store unreachable")
        self.rows += rows
        return len(rows)


async def test_audit_log_never_raises_keeps_rows_through_an_outage_and_is_bounded() -> None:
    target = _DownStore()
    produced: list[tuple[bytes, bytes]] = []

    async def produce(key: bytes, value: bytes) -> None:
        produced.append((key, value))

    log = AuditLog(target, max_pending=3, retry_s=0.01)
    log.bind(produce)
    task = asyncio.ensure_future(log.run())
    await asyncio.sleep(0)
    for i in range(5):
        log(AuditEvent("erase", actor="ops", target=f"requests:{i}"))  # never raises
    log(None)  # type: ignore[arg-type]  # not even for garbage
    await asyncio.sleep(0.05)
    assert log.dropped == 2 and log.errors >= 2 and target.rows == []
    target.down = False
    for _ in range(100):
        if len(target.rows) == 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert [r["target"] for r in target.rows] == ["requests:0", "requests:1", "requests:2"]
    assert [k for k, _ in produced] == [b"erase"] * 3
    assert json.loads(produced[0][1])["actor"] == "ops"


# -- the signal engine's memory -------------------------------------------------------------


def test_windows_and_join_forget_erased_requests() -> None:
    from llmpulse.streams.join import FeedbackJoin
    from llmpulse.streams.windows import TumblingWindows, WindowSpec

    g = ("support", "m", "1")
    spec = WindowSpec(60, 30)
    windows = TumblingWindows(spec)
    join = FeedbackJoin(spec, horizon_s=3600)
    for i in range(4):
        ev = {"ts": 1_000 + i, "event_id": f"e{i}", "request_id": f"r{i}", "status": "ok",
              "response": f"answer {i} kept for a late reference"}
        windows.add(g, ev)
        join.add_inference(g, ev)
    join.add_feedback({"request_id": "r9", "ts": 2_000, "score": 1.0})  # waiting for r9
    assert b'"r1"' in join.packed(lambda b: b)  # a save packed the window before the erasure
    assert windows.forget({"r1", "r2"}) == 2
    assert join.forget({"r1", "r9"}) == 2
    assert join.forget({"r1", "r9"}) == 0
    [(_, _, evs)] = windows.close_all()
    assert [e["request_id"] for e in evs] == ["r0", "r3"]
    rows = join.snapshot()["records"]
    assert sorted(r[1] for r in rows) == ["r0", "r2", "r3"] and join.snapshot()["pending"] == []
    assert "answer 1 " not in str(join.snapshot_rows())  # nor its answer, kept for scoring
    assert "answer 0 " in str(join.snapshot_rows())
    saved = join.packed(lambda b: b)  # what the next save writes forgets them too
    assert b'"r1"' not in saved and b"answer 1 " not in saved and b'"r9"' not in saved
    assert b"answer 0 " in saved
