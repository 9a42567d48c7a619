"""The raw sink against the real embedded store: bisection and outage retry."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from llmpulse.store import Store
from llmpulse.streams.ingest import Message, split_batch
from llmpulse.streams.sink import RawSink


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store.open(f"chdb://{tmp_path_factory.mktemp('sink')}/store")
    yield s
    s.close()


def _feedback(i: int, now: float) -> bytes:
    return orjson.dumps({"event_id": f"f{i}", "request_id": f"r{i}", "ts": now, "score": 0.5})


def test_bad_rows_are_bisected_out_and_the_rest_stored(store) -> None:
    now = time.time()
    lines = [_feedback(i, now) for i in range(100)]
    lines[17] = b'{"event_id": "bad", "request_id": "r", "ts": "not a time", "score": 1}'
    lines[63] = b'{"event_id": "bad2", "request_id": "r", "ts": 1, "score": "high"}'
    sink = RawSink(lambda t, d, n: store.insert_json(t, d, count=n))
    rejected = asyncio.run(sink.write("feedback_events", lines))
    assert [i for i, _ in rejected] == [17, 63]
    assert all(r.startswith("store rejected: ") for _, r in rejected)
    n = store.scalar("SELECT count() FROM feedback_events FINAL WHERE event_id LIKE 'f%'")
    assert n == 98


def test_outage_is_retried_until_the_store_takes_the_rows() -> None:
    calls: list[int] = []
    slept: list[float] = []

    def insert(table: str, data: bytes, count: int) -> int:
        calls.append(count)
        if len(calls) < 5:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return count

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    sink = RawSink(insert, sleep=fake_sleep, retry_max_s=0.5)
    assert asyncio.run(sink.write("t", [b"{}", b"{}"])) == []
    assert calls == [2, 2, 2, 2, 2]  # the whole batch each time, never split
    assert slept == [0.1, 0.2, 0.4, 0.5]  # capped exponential backoff


def test_outage_gives_up_only_when_stopping() -> None:
    def insert(table: str, data: bytes, count: int) -> int:
        raise OSError("network unreachable")

    async def no_sleep(s: float) -> None:
        return None

    sink = RawSink(insert, sleep=no_sleep, should_stop=lambda: sink.errors > 3)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(sink.write("t", [b"{}"]))


def test_split_batch_keeps_good_events_and_names_each_bad_one() -> None:
    now = int(time.time() * 1000)
    good = {"event_id": "e", "request_id": "r", "ts": now, "app": "a", "model": "m",
            "model_version": "1", "latency_ms": 5, "status": "ok",
            "input_tokens": 12.0, "output_tokens": 3}
    env = b"\n".join([orjson.dumps(good), b"", b"not json", orjson.dumps({**good, "status": "meh"})])
    b = split_batch([Message(env, "llmpulse.inference", 2, 40)], kind="inference")
    assert b.count == 1
    row = orjson.loads(b.lines[0])
    assert row["input_tokens"] == 12 and isinstance(row["input_tokens"], int)
    assert row["ts"] == now  # epoch ms, as the ingest entry table takes it
    assert b.lines[0] != env.split(b"\n")[0]  # re-encoded: 12.0 became 12
    assert [(d.reason.split(":")[0], d.offset) for d in b.dead] == [("bad JSON", 40), ("status", 40)]


def _good(**over: object) -> dict:
    ev = {"event_id": "e", "request_id": "r", "ts": int(time.time() * 1000), "app": "a",
          "model": "m", "model_version": "1", "latency_ms": 5, "status": "ok",
          "input_tokens": 12, "output_tokens": 3}
    ev.update(over)
    return {k: v for k, v in ev.items() if v is not None}


HOSTILE_INFERENCES = [
    # unhashable where a name is looked up in a set: TypeError, the batch retried forever
    ({"status": []}, "status"), ({"status": {}}, "status"),
    # ids and group keys no one can type, or without end
    ({"app": "support\nbilling"}, "app"), ({"app": "a\x00b"}, "app"),
    ({"model": "gpt\u200b"}, "model"), ({"model_version": "1\u2028"}, "model_version"),
    ({"app": "x" * 10_000}, "app"), ({"event_id": "e" * 257}, "event_id"),
    ({"request_id": "r\tr"}, "request_id"),
    # span ids are checked without a trace id too
    ({"span_id": "not-hex" * 1000}, "span_id"),
    ({"parent_span_id": "ABCDEF0123456789"}, "parent_span_id"),
    # OpenTelemetry's invalid ids: feedback naming the zero trace would join them all
    ({"trace_id": "0" * 32}, "trace_id"), ({"span_id": "0" * 16}, "span_id"),
    ({"token_logprobs": [-0.5, -1e300]}, "token_logprobs"),
    # a field in another letter case: the store matched it to the column, unchecked
    # (and unredacted)
    ({"PROMPT": "mail jane@example.com"}, "PROMPT"), ({"TTFT_MS": -5}, "TTFT_MS"),
    ({"Prompt_Version": "v\x00"}, "Prompt_Version"),
    # tags and segments are dimensions too
    ({"prompt_version": "v1\n"}, "prompt_version"), ({"experiment": "\u200b"}, "experiment"),
    ({"segment": {"lang\n": "de"}}, "segment.'lang\\n'"),
    ({"segment": {"lang": "de\x00"}}, "segment.lang"),
]


@pytest.mark.parametrize("over,field", HOSTILE_INFERENCES)
def test_hostile_fields_are_dead_letters_and_the_rest_of_the_batch_is_stored(
        over: dict, field: str) -> None:
    env = b"\n".join([orjson.dumps(_good(event_id="ok1")), orjson.dumps(_good(**over)),
                      orjson.dumps(_good(event_id="ok2"))])
    b = split_batch([Message(env, "llmpulse.inference", 0, 7)], kind="inference")
    assert [orjson.loads(line)["event_id"] for line in b.lines] == ["ok1", "ok2"]
    assert [d.reason.split(":")[0] for d in b.dead] == [field]


def test_an_event_nested_deeper_than_the_encoder_writes_is_a_dead_letter() -> None:
    deep = b"[" * 600 + b"]" * 600
    bad = orjson.dumps(_good(event_id="deep", input_tokens=12.0))[:-1] + b',"extra":' + deep + b"}"
    env = b"\n".join([orjson.dumps(_good(event_id="ok1")), bad])
    b = split_batch([Message(env, "llmpulse.inference", 0, 7)], kind="inference")
    assert b.count == 1 and len(b.dead) == 1 and "Recursion" in b.dead[0].reason


def test_the_field_lists_are_the_store_columns(store) -> None:
    """The case check needs every column: one left out could still be set as 'COLUMN'."""
    from llmpulse.events import FEEDBACK_FIELDS, INFERENCE_FIELDS

    for table, fields in (("inference_events", INFERENCE_FIELDS),
                          ("feedback_events", FEEDBACK_FIELDS)):
        columns = {r["name"] for r in store.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() "
            "AND table = {t:String}", {"t": table})}
        assert columns and columns | {"schema"} == fields, table


@pytest.mark.parametrize("source", [["user"], {}, 1])
def test_a_feedback_source_of_the_wrong_type_is_a_dead_letter(source: object) -> None:
    now = int(time.time() * 1000)
    env = orjson.dumps({"event_id": "f", "request_id": "r", "ts": now, "source": source})
    b = split_batch([Message(env, "llmpulse.feedback", 0, 1)], kind="feedback")
    assert b.count == 0 and [d.reason.split(":")[0] for d in b.dead] == ["source"]


def test_printable_names_in_any_script_are_kept() -> None:
    env = orjson.dumps(_good(app="ассистент поддержки", model="模型", model_version="v 1.2"))
    assert split_batch([Message(env, "llmpulse.inference", 0, 1)], kind="inference").count == 1


def test_a_check_that_breaks_dead_letters_its_event_not_the_batch(monkeypatch, caplog) -> None:
    """Whatever a validator raises, the event goes to the dead letters with the reason;
    before, anything but an EventError escaped and the batch was retried forever."""
    from llmpulse.streams import ingest

    real = ingest.VALIDATORS["inference"]

    def brittle(ev, **kw):
        if ev.get("event_id") == "boom":
            raise KeyError("surprise")
        return real(ev, **kw)

    monkeypatch.setitem(ingest.VALIDATORS, "inference", brittle)
    monkeypatch.setattr(ingest, "_warned", [0.0])
    env = b"\n".join(orjson.dumps(_good(event_id=e)) for e in ("a1", "boom", "boom", "a2"))
    b = split_batch([Message(env, "llmpulse.inference", 3, 9)], kind="inference")
    assert b.count == 2
    assert [(d.reason, d.partition, d.offset) for d in b.dead] == [
        ("unexpected KeyError in validation: 'surprise'", 3, 9)] * 2
    assert sum("broke validation" in r.getMessage() for r in caplog.records) == 1


def test_shim_encoded_events_pass_through_byte_for_byte_and_land_in_the_raw_table(store) -> None:
    now = int(time.time() * 1000)
    ev = {"event_id": "pt1", "request_id": "r", "ts": now, "app": "a", "model": "m",
          "model_version": "1", "latency_ms": 5.5, "status": "ok", "input_tokens": 3,
          "output_tokens": 4, "segment": {"region": "eu"}}
    line = orjson.dumps(ev)
    b = split_batch([Message(line, "llmpulse.inference", 0, 1)], kind="inference")
    assert b.lines == [line]
    sink = RawSink(lambda t, d, n: store.insert_json(t, d, count=n))
    assert asyncio.run(sink.write("inference_ingest", b.lines)) == []
    rows = store.query("SELECT toUnixTimestamp64Milli(ts) AS t, segment FROM inference_events "
                       "FINAL WHERE event_id = 'pt1'")
    assert rows == [{"t": now, "segment": {"region": "eu"}}]
