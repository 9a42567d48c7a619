"""Erasure end to end: a real ``llmpulse up``, real shim, real chDB; then the bytes on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE
from llmpulse.monitor import Monitor
from llmpulse.store import Store
from llmpulse.subject import hash_user
from tests.conftest import StackProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER_KEY = "test-key-0123456789abcdef"
TABLES = ("inference_events", "feedback_events", "request_index", "deadletter_events",
          "signals", "alerts", "audit_events")


def cli(sp: StackProcess, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**sp.env, "LLMPULSE_USER_KEY": USER_KEY}
    return subprocess.run([sys.executable, "-m", "llmpulse.cli", "erase", *args, "--json"],
                          env=env, cwd=str(sp.data_dir.parent), capture_output=True, text=True,
                          timeout=timeout)


def config(d: Path, extra: str = "") -> None:
    (d / "llmpulse.yaml").write_text(
        "signals:\n  latency_window_s: 1\n  window_s: 2\n  poll_s: 0.5\n  snapshot_s: 0\n" + extra)


def send(mon: Monitor, i: int, tag: str, *, user: str | None = None, grounded: bool = True) -> str:
    fields: dict[str, Any] = dict(
        model="m", model_version="1", latency_ms=100.0 + i % 50, status="ok",
        input_tokens=10, output_tokens=5,
        prompt=f"question {i} about refunds {tag}",
        context=["Refunds are issued within 14 days of the return.", "Shipping is free."],
        response=("Refunds are issued within 14 days." if grounded else
                  f"Our moon base {tag} ships llamas to Mars every Tuesday for free."),
    )
    if user is not None:
        fields["user"] = user
    rid = mon.inference(**fields)
    mon.feedback(request_id=rid, score=-1.0 if not grounded else 1.0, hallucination=not grounded,
                 comment=f"complaint {tag} number {i}", **({"user": user} if user else {}))
    return rid


def grep_tree(root: Path, needles: list[bytes]) -> list[tuple[str, str]]:
    """Files holding a needle, in their bytes or, for the broker's record batches
    on disk, in their decompressed records."""
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if name.endswith(".batch,o"):
                data += batch_records(data)
            for n in needles:
                if n in data:
                    hits.append((str(p.relative_to(root)), n.decode(errors="replace")))
    return hits


def batch_records(data: bytes) -> bytes:
    """Keys, values and header values of a stored record batch (aiokafka's reader)."""
    from aiokafka.record.default_records import DefaultRecordBatch

    return b"".join((r.key or b"") + (r.value or b"") + b"".join(v or b"" for _, v in r.headers)
                    for r in DefaultRecordBatch(data))


def _expand(obj: Any) -> str:
    """Text of a worker state file with every nested pickle and zstd blob opened."""
    import pickle

    import cramjam

    if isinstance(obj, (bytes, bytearray)):
        raw = bytes(obj)
        for opener in (pickle.loads, lambda b: bytes(cramjam.zstd.decompress(b))):
            try:
                inner = opener(raw)
            except Exception:
                continue
            if inner is not None and inner != raw:
                return _expand(inner)
        return raw.decode("latin-1")
    if isinstance(obj, dict):
        return " ".join(_expand(k) + " " + _expand(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return " ".join(_expand(v) for v in obj)
    return str(obj)


def worker_state_text(data_dir: Path) -> str:
    """The engine snapshots (pickled, zstd inside) decoded, so a byte grep cannot miss ids."""
    return " ".join(_expand(p.read_bytes()) for p in (data_dir / "worker").rglob("*.pkl"))


def all_rows_text(sp: StackProcess) -> str:
    # request_index is not served by /api/query: it is checked on the stopped store
    return json.dumps({t: sp.sql(f"SELECT * FROM {t}") for t in TABLES if t != "request_index"})


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_erase_user_removes_every_trace_and_twice_is_a_noop(stack_factory, tmp_path,
                                                            storage: str) -> None:
    config(tmp_path)
    sp = stack_factory(tmp_path / "data", LLMPULSE_USER_KEY=USER_KEY,
                       LLMPULSE_BROKER_STORAGE=storage).start()
    secret = "ZQX" + uuid.uuid4().hex[:10]
    bootstrap = sp.endpoints["kafka"]
    erased: list[str] = []
    kept: list[str] = []
    os.environ["LLMPULSE_USER_KEY"] = USER_KEY
    try:
        with Monitor(app="support", bootstrap=bootstrap) as mon, \
                Monitor(app="support", bootstrap=bootstrap, redact=True) as hashed:
            for i in range(30):
                kept.append(send(mon, i, "keep", user="carol"))
            for i in range(4):
                erased.append(send(mon, i, secret, user="alice@example.com", grounded=False))
            for i in range(2):  # sent hashed: erase --user must find them by the same key
                erased.append(send(hashed, 100 + i, secret, user="bob", grounded=False))
            assert mon.flush(30) and hashed.flush(30)
            # later traffic moves event time on, so the windows holding the erased events close
            for k in range(8):
                time.sleep(1.0)
                for i in range(5):
                    kept.append(send(mon, 1000 + 10 * k + i, "keep"))
            assert mon.flush(30)
    finally:
        os.environ.pop("LLMPULSE_USER_KEY", None)
    # a dead letter that names an erased request (negative latency) and one that does not
    p = Producer({"bootstrap.servers": bootstrap})
    for rid in (erased[0], "unrelated-request"):
        p.produce(TOPIC_INFERENCE, orjson.dumps({
            "event_id": uuid.uuid4().hex, "request_id": rid, "ts": int(time.time() * 1000),
            "app": "support", "model": "m", "model_version": "1", "latency_ms": -1,
            "status": "ok", "input_tokens": 1, "output_tokens": 1}), key=rid.encode())
    assert p.flush(30) == 0
    n_inf = len(kept) + len(erased) + 2
    sp.wait_stored(TOPIC_INFERENCE, n_inf)
    sp.wait_stored(TOPIC_FEEDBACK, len(kept) + len(erased))
    eids = [r["event_id"] for r in sp.sql(
        "SELECT event_id FROM inference_events WHERE request_id IN "
        f"({','.join(repr(r) for r in erased)})")]
    assert len(eids) == len(erased)
    assert sp.sql(f"SELECT count() AS n FROM inference_events WHERE user = '{hash_user('bob', USER_KEY)}'") == [{"n": 2}]
    # the hallucination signal keeps the least grounded answers: wait until it names ours
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = sp.sql("SELECT count() AS n FROM signals WHERE signal = 'hallucination.ungrounded_share' "
                      f"AND position(detail, '{eids[0]}') > 0")
        if rows[0]["n"]:
            break
        time.sleep(1)
    else:
        raise AssertionError("no signal detail names an erased event before the erasure")
    signals_before = sp.sql("SELECT count() AS n FROM signals FINAL")[0]["n"]
    needles = [secret, *erased, *eids, "alice@example.com", hash_user("bob", USER_KEY),
               hash_user("alice@example.com", USER_KEY)]
    assert any(n in all_rows_text(sp) for n in needles)

    out = cli(sp, "--user", "alice@example.com")
    assert out.returncode == 0, out.stderr + out.stdout
    first = json.loads(out.stdout)
    assert first["rows"]["inference_events"] == 4
    assert first["rows"]["feedback_events"] == 4
    assert first["rows"]["deadletter_events"] == 1
    assert first["rewritten"]["signals"] >= 1
    assert first["engine_records"] >= 4  # the feedback join held the requests
    if storage == "disk":  # envelopes hold several events: records, not events, are counted
        broker = first["broker_records"]
        assert broker[TOPIC_INFERENCE] >= 2 and broker[TOPIC_FEEDBACK] >= 1, broker
    else:
        assert first["broker_records"] == {}
    out = cli(sp, "--user", "bob")
    assert out.returncode == 0, out.stderr + out.stdout
    assert json.loads(out.stdout)["rows"]["inference_events"] == 2

    text = all_rows_text(sp)
    tables = json.loads(text)
    assert [n for n in needles if n in text] == [], {
        t: [str(r)[:300] for r in rows if any(n in json.dumps(r) for n in needles)][:3]
        for t, rows in tables.items()}
    # aggregate signal rows stay; what else was stored stays
    assert sp.sql("SELECT count() AS n FROM signals FINAL")[0]["n"] >= signals_before
    assert sp.sql("SELECT count() AS n FROM inference_events FINAL") == [{"n": len(kept)}]
    assert sp.sql("SELECT count() AS n FROM feedback_events FINAL") == [{"n": len(kept)}]
    assert sp.sql("SELECT count() AS n FROM deadletter_events FINAL") == [{"n": 1}]
    audit = sp.sql("SELECT actor, target, detail FROM audit_events WHERE action = 'erase'")
    assert len(audit) == 2 and all("alice" not in json.dumps(a) for a in audit)
    # the audit trail counts the broker records rewritten (none in memory: nothing on disk)
    broker_counts = [sum(json.loads(a["detail"])["broker_records"].values()) for a in audit]
    assert all(n >= 1 for n in broker_counts) if storage == "disk" else broker_counts == [0, 0]
    assert all(json.loads(a["detail"])["broker_failed"] == 0 for a in audit)

    again = cli(sp, "--user", "alice@example.com")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["total"] == 0
    assert sp.stop() == 0

    # the stopped store: merge everything, nothing comes back; then every byte on disk
    store = Store.open(f"chdb://{sp.data_dir / 'store'}")
    try:
        for t in TABLES:
            store.command(f"OPTIMIZE TABLE {t} FINAL")
        text = json.dumps({t: store.query(f"SELECT * FROM {t}") for t in TABLES})
        assert [n for n in needles if n in text] == []
        assert store.scalar("SELECT count() FROM inference_events") == len(kept)
    finally:
        store.close()
    hits = grep_tree(sp.data_dir, [n.encode() for n in needles])
    assert hits == []
    state = worker_state_text(sp.data_dir)
    assert kept[0] in state  # the decoding works: the join still holds kept requests
    assert [n for n in needles if n in state] == []

    # with the stack stopped the command erases from the store and the saved engine state
    out = cli(sp, "--request-id", kept[0])
    assert out.returncode == 0, out.stderr + out.stdout
    offline = json.loads(out.stdout)
    assert offline["rows"]["inference_events"] == 1 and offline["engine_records"] >= 1
    assert kept[0] not in worker_state_text(sp.data_dir)
    assert kept[1] in worker_state_text(sp.data_dir)


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_erase_during_steady_ingest_loses_no_other_event(stack_factory, tmp_path,
                                                         storage: str) -> None:
    config(tmp_path)
    sp = stack_factory(tmp_path / "data", LLMPULSE_BROKER_STORAGE=storage).start()
    bootstrap = sp.endpoints["kafka"]
    with Monitor(app="support", bootstrap=bootstrap) as mon:
        victims = [mon.inference(model="m", model_version="1", latency_ms=5, status="ok",
                                 input_tokens=1, output_tokens=1, prompt=f"victim {i}")
                   for i in range(20)]
        assert mon.flush(30)
    sp.wait_stored(TOPIC_INFERENCE, 20)

    sent = 0
    stop = threading.Event()

    def steady() -> None:
        nonlocal sent
        with Monitor(app="support", bootstrap=bootstrap) as m:
            while not stop.is_set():
                for _ in range(20):
                    m.inference(model="m", model_version="1", latency_ms=5, status="ok",
                                input_tokens=1, output_tokens=1, prompt="steady")
                    sent += 1
                time.sleep(0.05)
            assert m.flush(30)

    t = threading.Thread(target=steady)
    t.start()
    try:
        sp.wait_stored(TOPIC_INFERENCE, 20 + 100)  # the erase starts while traffic is stored
        out = cli(sp, "--request-id", *victims)
    finally:
        stop.set()
        t.join(60)
    assert out.returncode == 0, out.stderr + out.stdout
    assert json.loads(out.stdout)["rows"]["inference_events"] == 20
    if storage == "disk":  # the victims' envelopes were rewritten in the broker's log
        assert json.loads(out.stdout)["broker_records"][TOPIC_INFERENCE] >= 1
    sp.wait_stored(TOPIC_INFERENCE, 20 + sent, timeout=120)
    assert sent > 100
    rows = sp.sql("SELECT count() AS n, countIf(prompt = 'steady') AS s FROM inference_events FINAL")
    assert rows == [{"n": sent, "s": sent}]
    # hostile bodies: refused with the field named, nothing erased, the refusal audited
    for body, want in ((b"not json", "body must be JSON"), (b'{"user": 5}', "user:"),
                       (b'{"app": "support", "wait_s": 1e9}', "wait_s:")):
        req = urllib.request.Request(sp.endpoints["http"] + "/api/admin/erase", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 400 and want in json.load(err.value)["error"]
    assert sp.sql("SELECT count() AS n FROM inference_events FINAL") == [{"n": sent}]
    assert sp.sql("SELECT count() AS n FROM audit_events WHERE action = 'erase' "
                  "AND outcome = 'denied'") == [{"n": 2}]
    # a local command while the stack runs: its audit record travels on llmpulse.audit
    r = subprocess.run([sys.executable, "-m", "llmpulse.cli", "rollback", "no-such-model"],
                       env=sp.env, cwd=str(sp.data_dir.parent), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "warning" not in r.stderr, r.stderr
    deadline = time.monotonic() + 30
    while not sp.sql("SELECT 1 FROM audit_events WHERE action = 'rollback'"):
        assert time.monotonic() < deadline, "the rollback's audit record was not stored"
        time.sleep(0.5)
    [row] = sp.sql("SELECT actor, outcome, target FROM audit_events WHERE action = 'rollback'")
    assert row["outcome"] == "error" and row["target"] == "no-such-model"
    assert row["actor"].startswith("cli")
    [erase_row] = sp.sql("SELECT actor, target, detail FROM audit_events WHERE action = 'erase' "
                         "AND outcome = 'ok'")
    assert erase_row["target"] == "requests:20"
    assert json.loads(erase_row["detail"])["rows"]["inference_events"] == 20
    # offline: the stack stopped, the command opens the store itself
    assert sp.stop() == 0
    out = cli(sp, "--request-id", *victims)
    assert out.returncode == 0, out.stderr + out.stdout
    assert json.loads(out.stdout)["total"] == 0
    r = subprocess.run([sys.executable, "-m", "llmpulse.cli", "rollback", "no-such-model"],
                       env=sp.env, cwd=str(sp.data_dir.parent), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "warning" not in r.stderr, r.stderr
    store = Store.open(f"chdb://{sp.data_dir / 'store'}")
    try:
        assert store.scalar("SELECT count() FROM audit_events WHERE action = 'rollback'") == 2
        assert store.scalar("SELECT count() FROM audit_events WHERE action = 'erase' "
                            "AND outcome = 'ok'") == 2
    finally:
        store.close()


def test_retention_change_applies_to_existing_tables_at_restart(stack_factory, tmp_path) -> None:
    config(tmp_path, "retention:\n  raw_events: 90\n  signals: 90\n")
    sp = stack_factory(tmp_path / "data")
    sp.start()
    assert sp.stop() == 0
    config(tmp_path, "retention:\n  raw_events: 7\n  signals: 0\n")
    sp.start()
    assert sp.stop() == 0
    store = Store.open(f"chdb://{sp.data_dir / 'store'}", ddl=False)
    try:
        ddl = {t: store.scalar(f"SHOW CREATE TABLE {t}") for t in
               ("inference_events", "request_index", "signals", "feedback_events")}
        assert "toIntervalDay(7)" in ddl["inference_events"]
        assert "toIntervalDay(7)" in ddl["request_index"]
        assert " TTL " not in ddl["signals"]
        assert "toIntervalDay(90)" in ddl["feedback_events"]
        rows = store.query("SELECT name, value FROM schema_migrations WHERE kind = 'retention' "
                           "AND name = 'inference_events' ORDER BY applied_at")
        assert [r["value"] for r in rows] == ["90", "7"]
        from llmpulse.config import RetentionSettings
        from llmpulse.migrations import migrate

        assert migrate(store, RetentionSettings(raw_events=7, signals=0)) == []
    finally:
        store.close()
