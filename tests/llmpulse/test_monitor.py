"""The client shim without a broker: nothing listens on the bootstrap address,
so every event ends in the journal (or is dropped), where the test reads it back."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import zlib

import orjson
import pytest

from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE, EventError, split_envelope
from llmpulse.journal import Journal
from llmpulse.monitor import Call, Monitor, current_call, new_id, resolve_bootstrap

NOWHERE = "127.0.0.1:9"  # nothing listens on the discard port
T0 = 1_700_000_000.0

OK = {"latency_ms": 12.5, "status": "ok", "input_tokens": 3, "output_tokens": 4}


def _mon(tmp_path, **kw):
    kw.setdefault("clock", lambda: T0)
    kw.setdefault("journal_dir", tmp_path / "journal")
    return Monitor(app="support", bootstrap=NOWHERE, model="m", model_version="7", **kw)


def _journal(tmp_path):
    """(topic, key, events) of every journaled envelope, in journal order."""
    j = Journal(tmp_path / "journal")
    out = [
        (r.topic, r.key, [orjson.loads(line) for line in split_envelope(r.payload)], r.n_events)
        for r in iter(j.next_record, None)
    ]
    j.close()
    for _, _, evs, n in out:
        assert len(evs) == n
    return [(t, k, evs) for t, k, evs, _ in out]


def _events(tmp_path, topic=TOPIC_INFERENCE):
    return [e for t, _, evs in _journal(tmp_path) if t == topic for e in evs]


def _invariant(s):
    assert s["sent"] + s["recovered"] == s["delivered"] + s["dropped"] + s["queued"] + s["journaled"], s


def test_defaults_are_filled(tmp_path):
    mon = _mon(tmp_path)
    rid = mon.inference(**OK)
    rid2 = mon.inference(request_id="mine", model="other", **OK)
    mon.close(timeout=0)
    assert rid2 == "mine"
    evs = {e["request_id"]: e for e in _events(tmp_path)}
    e = evs[rid]
    assert uuid.UUID(e["event_id"]).version == 4 and len(e["event_id"]) == 32
    assert uuid.UUID(rid).version == 4
    assert e["ts"] == int(T0 * 1000)
    assert (e["app"], e["model"], e["model_version"], e["schema"]) == ("support", "m", "7", "inference/v1")
    assert evs["mine"]["model"] == "other"
    s = mon.stats()
    assert (s["sent"], s["journaled"], s["queued"], s["dropped"]) == (2, 2, 0, 0)
    _invariant(s)


def test_fields_round_trip_exactly(tmp_path):
    mon = _mon(tmp_path)
    fields = dict(
        request_id="r1", latency_ms=812.5, ttft_ms=90, status="error", error_type="RateLimit",
        input_tokens=120, output_tokens=0, cost_usd=0.0031, prompt="p", response="r",
        context=["a", "b"], token_logprobs=[-0.1, -2.0], prediction={"label": "spam", "score": 0.9},
        segment={"region": "eu"}, features={"len": 3}, ts=int(T0 * 1000) - 5,
    )
    mon.inference(**fields)
    eid = mon.feedback(request_id="r1", score=-0.5, label="ham", hallucination=True, comment="bad")
    mon.close(timeout=0)
    (inf,) = _events(tmp_path)
    (fb,) = _events(tmp_path, TOPIC_FEEDBACK)
    for k, v in fields.items():
        assert inf[k] == v, k
    assert fb["event_id"] == eid
    assert (fb["score"], fb["label"], fb["hallucination"], fb["comment"], fb["app"]) == (-0.5, "ham", True, "bad", "support")
    assert fb["schema"] == "feedback/v1"


def test_inference_and_feedback_share_the_bucket_key(tmp_path):
    mon = _mon(tmp_path, buckets=8)
    rids = [mon.inference(**OK) for _ in range(200)]
    for r in rids:
        mon.feedback(request_id=r, score=1.0)
    mon.close(timeout=0)
    key_of: dict[tuple[str, str], bytes] = {}
    for topic, key, evs in _journal(tmp_path):
        for e in evs:
            key_of[(topic, e["request_id"])] = key
    for r in rids:
        expected = str(zlib.crc32(r.encode()) % 8).encode()
        assert key_of[(TOPIC_INFERENCE, r)] == key_of[(TOPIC_FEEDBACK, r)] == expected


def test_envelopes_bounded_by_events_and_bytes(tmp_path):
    mon = _mon(tmp_path, buckets=1, envelope_max_events=7, envelope_max_bytes=10_000)
    for i in range(50):
        mon.inference(prompt="x" * (i * 100), **OK)
    mon.close(timeout=0)
    recs = _journal(tmp_path)
    assert sum(len(evs) for _, _, evs in recs) == 50
    for _, _, evs in recs:
        assert 1 <= len(evs) <= 7
        size = sum(len(orjson.dumps(e)) + 1 for e in evs) - 1
        assert size <= 10_000 or len(evs) == 1


def test_field_errors_raise_with_the_field_name(tmp_path):
    mon = _mon(tmp_path)
    with pytest.raises(ValueError, match="^output_tokens: required field is missing"):
        mon.inference(latency_ms=1, status="ok", input_tokens=1)
    with pytest.raises(EventError) as ei:
        mon.inference(**{**OK, "status": "fine"})
    assert ei.value.field == "status"
    with pytest.raises(EventError, match="request_id"):
        mon.feedback(score=1.0)
    with pytest.raises(EventError, match="not JSON-serialisable"):
        mon.inference(extra=object(), **OK)
    mon.close(timeout=0)
    assert mon.stats()["sent"] == 0


def test_non_strict_counts_and_logs_once_per_interval(tmp_path, caplog):
    t = [T0]
    mon = _mon(tmp_path, strict=False, clock=lambda: t[0], log_interval_s=60)
    with caplog.at_level(logging.WARNING, logger="llmpulse.monitor"):
        for _ in range(5):
            mon.inference(latency_ms=-1, status="ok", input_tokens=1, output_tokens=1)
        t[0] += 61
        mon.inference(latency_ms=-1, status="ok", input_tokens=1, output_tokens=1)
    mon.inference(**OK)
    mon.close(timeout=0)
    logged = [r.getMessage() for r in caplog.records if "invalid event" in r.getMessage()]
    assert len(logged) == 2
    assert "latency_ms" in logged[0] and "(4 similar messages suppressed)" in logged[1]
    s = mon.stats()
    assert (s["invalid"], s["sent"], s["journaled"]) == (6, 1, 1)


def test_memory_full_without_journal_drops_and_counts(tmp_path):
    mon = Monitor(app="a", bootstrap=NOWHERE, model="m", model_version="1", buffer_events=10)
    for _ in range(100):
        mon.inference(**OK)
    s = mon.stats()
    assert s["sent"] == 100 and s["dropped"] >= 90 and s["queued"] <= 10
    _invariant(s)
    mon.close(timeout=0)
    s = mon.stats()
    assert (s["sent"], s["dropped"], s["queued"], s["delivered"]) == (100, 100, 0, 0)
    mon.inference(**OK)  # after close: counted, never raised
    assert mon.stats()["dropped"] == 101
    _invariant(mon.stats())


def test_overflow_goes_to_the_journal_and_survives_a_restart(tmp_path):
    mon = _mon(tmp_path, buffer_events=10)
    ids = [mon.inference(**OK) for _ in range(300)]
    _invariant(mon.stats())
    mon.close(timeout=0)
    s = mon.stats()
    assert (s["sent"], s["journaled"], s["dropped"], s["queued"]) == (300, 300, 0, 0)
    again = _mon(tmp_path, buffer_events=10)
    s2 = again.stats()
    assert (s2["recovered"], s2["journaled"]) == (300, 300)
    again.close(timeout=0)
    assert sorted(e["request_id"] for e in _events(tmp_path)) == sorted(ids)


def test_journal_full_counts_dropped(tmp_path):
    mon = _mon(tmp_path, buffer_events=4, journal_max_bytes=2_000)
    for _ in range(200):
        mon.inference(**OK)
    mon.close(timeout=0)
    s = mon.stats()
    assert s["dropped"] > 0 and s["journaled"] > 0
    _invariant(s)


def test_track_records_latency_and_status(tmp_path):
    ticks = iter([1.0, 1.25, 2.0, 2.5, 3.0, 3.125, 4.0, 4.5])
    mon = _mon(tmp_path, timer=lambda: next(ticks))
    with mon.track(prompt="q") as call:
        assert current_call() is call
        call.response = "a"
        call.set(input_tokens=5, output_tokens=6)
    assert current_call() is None

    class Boom(Exception):
        pass

    err = Boom("x")
    with pytest.raises(Boom) as ei, mon.track():
        raise err
    assert ei.value is err  # re-raised unchanged

    @mon.track(segment={"tier": "free"})
    def slow():
        raise TimeoutError

    with pytest.raises(TimeoutError):
        slow()

    @mon.track()
    async def fast():
        current_call().output_tokens = 9  # type: ignore[union-attr]
        await asyncio.wait_for(asyncio.Event().wait(), 0.001)  # raises asyncio.TimeoutError

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(fast())
    mon.close(timeout=0)
    evs = _events(tmp_path)
    assert [(e["latency_ms"], e["status"], e.get("error_type")) for e in evs] == [
        (250.0, "ok", None),
        (500.0, "error", "Boom"),
        (125.0, "timeout", "TimeoutError"),
        (500.0, "timeout", "TimeoutError"),
    ]
    assert (evs[0]["response"], evs[0]["input_tokens"], evs[0]["output_tokens"]) == ("a", 5, 6)
    assert evs[1]["input_tokens"] == 0 and evs[2]["segment"] == {"tier": "free"}
    assert evs[3]["output_tokens"] == 9
    assert call.request_id == evs[0]["request_id"]


def test_track_never_masks_the_app_exception(tmp_path):
    mon = _mon(tmp_path, strict=True)
    with pytest.raises(KeyError), mon.track(input_tokens="many"):
        raise KeyError("k")
    assert mon.stats()["invalid"] == 1
    with pytest.raises(EventError, match="input_tokens"), mon.track(input_tokens="many"):
        pass
    mon.close(timeout=0)


def test_redaction_and_text_modes(tmp_path):
    mon = _mon(tmp_path, redact=True)
    mon.inference(request_id="r1", prompt="I am bob@x.io", context=["card 4111 1111 1111 1111"], **OK)
    mon.close(timeout=0)
    (e,) = _events(tmp_path)
    assert e["prompt"] == "I am [EMAIL]" and e["context"] == ["card [CARD]"]

    mon = _mon(tmp_path, text="none", embed=lambda s: [1.0, 2.0])
    mon.inference(request_id="r2", prompt="secret", response="also", **OK)
    mon.close(timeout=0)
    e = [x for x in _events(tmp_path) if x["request_id"] == "r2"][0]
    assert "prompt" not in e and "response" not in e
    assert e["text_meta"]["prompt"]["chars"] == 6 and e["embeddings"]["response"] == [1.0, 2.0]


def test_text_sampling_keeps_metrics_for_all(tmp_path):
    mon = _mon(tmp_path, text_sample_rate=0.5)
    for i in range(200):
        mon.inference(request_id=f"r{i}", prompt="hello", **OK)
    mon.close(timeout=0)
    evs = _events(tmp_path)
    assert len(evs) == 200
    with_text = {e["request_id"] for e in evs if "prompt" in e}
    assert with_text == {f"r{i}" for i in range(200) if mon.text_policy.keeps_text(f"r{i}")}
    assert 60 < len(with_text) < 140
    assert all(e["text_meta"]["prompt"]["chars"] == 5 for e in evs if "prompt" not in e)


def test_resolve_bootstrap(tmp_path):
    assert resolve_bootstrap("b:1", {"LLMPULSE_KAFKA": "x:2"}) == "b:1"
    assert resolve_bootstrap(None, {"LLMPULSE_KAFKA": "x:2"}) == "x:2"
    (tmp_path / "endpoints.json").write_text(json.dumps({"kafka": "127.0.0.1:4567"}))
    assert resolve_bootstrap(None, {"LLMPULSE_DATA_DIR": str(tmp_path)}) == "127.0.0.1:4567"
    (tmp_path / "endpoints.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="cannot read"):
        resolve_bootstrap(None, {"LLMPULSE_DATA_DIR": str(tmp_path)})
    with pytest.raises(RuntimeError, match="LLMPULSE_KAFKA"):
        resolve_bootstrap(None, {"LLMPULSE_DATA_DIR": str(tmp_path / "none")})


def test_monitor_uses_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPULSE_KAFKA", NOWHERE)
    mon = Monitor(app="a")
    assert mon.bootstrap == NOWHERE
    mon.close(timeout=0)


def test_new_ids_are_unique_uuid4():
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert {uuid.UUID(i).version for i in ids[:100]} == {4}


def test_call_handle():
    c = Call({})
    c.latency_ms = 3
    with pytest.raises(AttributeError):
        _ = c.nothing
    assert c.fields == {"latency_ms": 3}


def test_bad_configuration():
    with pytest.raises(ValueError, match="app"):
        Monitor(app="", bootstrap=NOWHERE)
    with pytest.raises(ValueError, match="text"):
        Monitor(app="a", bootstrap=NOWHERE, text="some")
