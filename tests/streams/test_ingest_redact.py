"""``ingest.redact``: the worker redacts every event it reads, whoever produced it.

Producers that write to the topics without the client shim (a Kafka client of
their own, a connector) send text as the app had it; with ``ingest.redact`` the
ingest agents redact it before anything is stored, forwarded to the signals or
dead-lettered. Each test has a control without redaction, so the personal data is
known to be there to remove."""

from __future__ import annotations

import time

import orjson
import pytest

from llmpulse.config import ConfigError, load_settings
from llmpulse.redact import Redactor
from llmpulse.streams.ingest import REDACTED_DEAD_LETTER_BYTES, Message, split_batch

EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"
REDACT = Redactor()


def _event(i: int, **extra: object) -> dict:
    return {"event_id": f"e{i}", "request_id": f"r{i}", "ts": int(time.time() * 1000), "app": "support",
            "model": "m", "model_version": "1", "latency_ms": 12.5, "status": "ok", "input_tokens": 3, "output_tokens": 4,
            "prompt": f"I am {EMAIL}", "response": f"We will call {PHONE}.",
            "context": [f"Account of {EMAIL}, phone {PHONE}", "Refunds take 14 days."], **extra}


def _msg(*lines: bytes, offset: int = 0, topic: str = "llmpulse.inference") -> Message:
    return Message(b"\n".join(lines), topic, 0, offset)


def _holds(data: bytes | str | dict | list, *secrets: str) -> bool:
    text = data if isinstance(data, str) else data.decode() if isinstance(data, bytes) else orjson.dumps(data).decode()
    return any(s in text for s in secrets)


def test_stored_lines_and_forwarded_events_are_redacted():
    msgs = [_msg(orjson.dumps(_event(0)), orjson.dumps(_event(1)))]
    plain = split_batch(msgs, kind="inference", keep_events=True)
    assert plain.count == 2 and all(_holds(line, EMAIL) for line in plain.lines)  # the control
    batch = split_batch(msgs, kind="inference", keep_events=True, redact=REDACT)
    assert batch.count == 2 and not batch.dead
    for line, ev in zip(batch.lines, batch.events, strict=True):
        assert not _holds(line, EMAIL, "7946 0958") and not _holds(ev, EMAIL, "7946 0958")
        stored = orjson.loads(line)
        assert stored["prompt"] == "I am [EMAIL]" and stored["response"] == "We will call [PHONE]."
        assert stored["context"] == ["Account of [EMAIL], phone [PHONE]", "Refunds take 14 days."]
        assert stored["latency_ms"] == 12.5 and stored["input_tokens"] == 3  # nothing else changes


def test_feedback_comments_are_redacted():
    fb = {"event_id": "f1", "request_id": "r1", "ts": int(time.time() * 1000), "score": -1.0,
          "comment": f"wrong, mail me at {EMAIL}"}
    batch = split_batch([_msg(orjson.dumps(fb), topic="llmpulse.feedback")], kind="feedback", redact=REDACT)
    assert orjson.loads(batch.lines[0])["comment"] == "wrong, mail me at [EMAIL]"


def test_dead_letters_keep_the_reason_and_the_redacted_text():
    bad_json = b'{"prompt": "I am ' + EMAIL.encode() + b'", oops'
    invalid = orjson.dumps(_event(2, latency_ms=-5.0))
    msgs = [_msg(bad_json, invalid, offset=9)]
    plain = split_batch(msgs, kind="inference")
    assert [_holds(d.payload, EMAIL) for d in plain.dead] == [True, True]  # the control
    batch = split_batch(msgs, kind="inference", redact=REDACT)
    assert [d.reason.split(":")[0] for d in batch.dead] == ["bad JSON", "latency_ms"]
    for d in batch.dead:
        assert not _holds(d.payload, EMAIL, "7946 0958") and not _holds(d.row(), EMAIL)
        assert b"[EMAIL]" in d.payload and d.offset == 9


def test_a_dead_letter_too_long_to_redact_keeps_its_size_and_digest():
    huge = b'{"prompt": "' + (EMAIL.encode() + b" ") * (REDACTED_DEAD_LETTER_BYTES // 10) + b'"'
    batch = split_batch([_msg(huge)], kind="inference", redact=REDACT)
    (d,) = batch.dead
    assert d.reason.startswith("bad JSON") and not _holds(d.payload, EMAIL)
    assert d.payload.startswith(b"withheld by ingest.redact: %d bytes, sha256 " % len(huge))


def test_an_event_with_more_text_than_is_redacted_is_dead_lettered_alone():
    big = _event(3, context=["x" * 200_000] * 6)
    msgs = [_msg(orjson.dumps(big), orjson.dumps(_event(4)))]
    batch = split_batch(msgs, kind="inference", redact=REDACT)
    assert batch.count == 1 and orjson.loads(batch.lines[0])["event_id"] == "e4"
    (d,) = batch.dead
    assert "redacted per event" in d.reason and d.payload.startswith(b"withheld by ingest.redact")


def test_settings_and_environment():
    assert load_settings(env={}, path=None).ingest.redact is False
    on = load_settings(env={"LLMPULSE_INGEST_REDACT": "true"}, path=None).ingest
    assert on.redact is True and on.redact_regions == ()
    with pytest.raises(ConfigError, match="LLMPULSE_INGEST_REDACT: must be true or false"):
        load_settings(env={"LLMPULSE_INGEST_REDACT": "yes please"}, path=None)


def test_regions_from_the_file_are_checked_at_start(tmp_path):
    cfg = tmp_path / "llmpulse.yaml"
    cfg.write_text("ingest:\n  redact: true\n  redact_regions: [CH, DE]\n")
    assert load_settings(env={}, path=cfg).ingest.redact_regions == ("CH", "DE")
    cfg.write_text("ingest:\n  redact: true\n  redact_regions: [XX]\n")
    with pytest.raises(ConfigError, match="ingest.redact: regions: unknown region codes"):
        load_settings(env={}, path=cfg)
    cfg.write_text("ingest:\n  redact: true\n  redact_regions: CH\n")
    with pytest.raises(ConfigError, match="ingest.redact_regions: must be a list"):
        load_settings(env={}, path=cfg)


def test_every_field_that_carries_app_text_is_redacted():
    # found by a red-team pass: the reference answer, labels, error types, segment values
    # and the user were stored as sent, and copied into signal details from there
    fb = {"event_id": "f2", "request_id": "r2", "ts": int(time.time() * 1000), "score": 1.0,
          "label": f"escalate: {EMAIL}", "reference": f"Hi Jane, reach us at {PHONE} or {EMAIL}",
          "user": EMAIL}
    inf = _event(5, error_type=f"SMTPRecipientRefused: {EMAIL}", segment={"customer": EMAIL},
                 prediction={"label": f"refund for {EMAIL}", "score": 0.9}, user=EMAIL)
    for kind, ev in (("feedback", fb), ("inference", inf)):
        topic = f"llmpulse.{kind}"
        plain = split_batch([_msg(orjson.dumps(ev), topic=topic)], kind=kind)
        assert _holds(plain.lines[0], EMAIL)  # the control
        batch = split_batch([_msg(orjson.dumps(ev), topic=topic)], kind=kind, redact=REDACT)
        assert batch.count == 1 and not _holds(batch.lines[0], EMAIL, "7946 0958"), batch.lines
        stored = orjson.loads(batch.lines[0])
        assert stored["user"].startswith("u1:")  # the shim's pseudonym: erasable by --user
    assert orjson.loads(batch.lines[0])["error_type"] == "SMTPRecipientRefused: [EMAIL]"


def test_a_dead_letters_reason_does_not_quote_personal_data():
    bad = [orjson.dumps(_event(6, status=f"error: SMTP refused {EMAIL}")),
           orjson.dumps(_event(7, ts=f"{EMAIL} called {PHONE}")),
           orjson.dumps(_event(8, segment={EMAIL: 1}))]
    plain = split_batch([_msg(*bad)], kind="inference")
    assert all(_holds(d.reason, EMAIL) for d in plain.dead)  # the control
    batch = split_batch([_msg(*bad)], kind="inference", redact=REDACT)
    # "segment.jane.doe@example.com" reads as one address
    assert [d.reason.split(":")[0] for d in batch.dead] == ["status", "ts", "[EMAIL]"]
    for d in batch.dead:
        assert not _holds(d.reason, EMAIL, "7946 0958") and not _holds(d.row(), EMAIL)
