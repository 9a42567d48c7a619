"""Record batches of the broker's log: our reader and writer against aiokafka's, and
which records an erasure changes."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from llmpulse.broker_erase import (
    OTLP_SPANS,
    SPAN_ROWS,
    BatchFormatError,
    EventEraser,
    FileObjects,
    Record,
    encode_batch,
    parse_batches,
)
from llmpulse.erase import ERASED, scrub
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_INFERENCE, TOPIC_SIGNALS, split_envelope

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _reference(codec: int, n: int = 12, seed: int = 7) -> bytes:
    """A batch written by aiokafka's builder (the reference writer), at base offset 1000."""
    rng = random.Random(seed)
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0,
                                  producer_id=42, producer_epoch=3, base_sequence=17,
                                  batch_size=1 << 20)
    for i in range(n):
        value = None if i == 4 else orjson.dumps({"request_id": f"r{i}", "pad": "x" * rng.randrange(300)})
        key = None if i % 3 == 0 else f"k{i}".encode()
        headers = [("h", b"v"), ("none", None)] if i % 2 else []
        b.append(i * 2, timestamp=1_700_000_000_000 + 7 * i, key=key, value=value, headers=headers)
    out = bytearray(b.build())
    struct.pack_into(">q", out, 0, 1000)  # the broker sets the base offset
    return bytes(out)


def _read(data: bytes) -> list[tuple[int, int, bytes | None, bytes | None, list]]:
    batch = DefaultRecordBatch(data)
    assert batch.validate_crc()
    return [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_our_reader_and_writer_agree_with_aiokafka(codec: str) -> None:
    raw = _reference(CODECS[codec])
    [batch] = parse_batches(raw)
    assert batch.base_offset == 1000 and batch.codec_id == CODECS[codec]
    assert [r.value for r in batch.records] == [v for *_, v, _ in _read(raw)]
    again = encode_batch(batch)
    assert _read(again) == _read(raw)
    # every header field but the length and the CRC is kept
    assert again[:8] == raw[:8] and again[12:17] == raw[12:17] and again[21:61] == raw[21:61]
    if codec == "none":
        assert again == raw  # byte for byte


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_rewrite_keeps_offsets_timestamps_and_producer_fields(codec: str) -> None:
    raw = _reference(CODECS[codec])
    [batch] = parse_batches(raw)
    eraser = EventEraser(ids=frozenset({"r3", "r8"}))
    recs = tuple(eraser.rewrite(TOPIC_INFERENCE, r) or r for r in batch.records)
    new = encode_batch(type(batch)(batch.header, recs, batch.snappy_xerial))
    before, after = _read(raw), _read(new)
    assert [a[:2] for a in after] == [b[:2] for b in before]  # offsets and timestamps
    assert [a for a, b in zip(after, before, strict=True) if a != b] == [
        (*before[i][:3], b"", before[i][4]) for i in (3, 8)]
    assert after[3][0] == 1006 and after[8][0] == 1016
    old_b, new_b = DefaultRecordBatch(raw), DefaultRecordBatch(new)
    for attr in ("base_offset", "producer_id", "producer_epoch", "base_sequence",
                 "last_offset_delta", "compression_type", "max_timestamp"):
        assert getattr(new_b, attr) == getattr(old_b, attr), attr


def test_hostile_bytes_are_a_batch_format_error_and_nothing_else() -> None:
    raw = _reference(0, n=5)
    with pytest.raises(BatchFormatError, match="CRC"):
        parse_batches(raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(BatchFormatError, match="runs past"):
        parse_batches(raw[:-4])
    v1 = bytearray(raw)
    v1[16] = 1
    with pytest.raises(BatchFormatError, match="v1"):
        parse_batches(bytes(v1))
    rng = random.Random(3)
    for codec in CODECS.values():
        good = _reference(codec, n=4)
        for _ in range(300):
            bad = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                bad[rng.randrange(61, len(bad))] = rng.randrange(256)
            # a valid CRC over the damage: the record parser itself meets it
            struct.pack_into(">I", bad, 17, calc_crc32c(bytes(bad[21:])))
            try:
                parse_batches(bytes(bad))
            except BatchFormatError:
                pass


_BOMB = r"""
import resource, struct, sys, zlib
import cramjam
from aiokafka.record.util import calc_crc32c, encode_varint
from llmpulse.broker_erase import BatchFormatError, RecordBatch, Record, parse_batches

codec, size = int(sys.argv[1]), int(sys.argv[2])
head = bytearray((0,))  # one record: attributes, deltas, no key, a value of `size` zeros
for v in (0, 0, -1, size):
    encode_varint(v, head.append)
length = bytearray()
encode_varint(len(head) + size + 1, length.append)
zeros = bytes(1 << 20)
if codec == 1:  # streamed: the bomb is built without holding its output
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [c.compress(bytes(length) + bytes(head))]
    parts += [c.compress(zeros) for _ in range(size >> 20)] + [c.compress(b"\0"), c.flush()]
else:
    c = cramjam.zstd.Compressor() if codec == 4 else cramjam.lz4.Compressor()
    c.compress(bytes(length) + bytes(head))
    for _ in range(size >> 20):
        c.compress(zeros)
    c.compress(b"\0")
    parts = [bytes(c.finish())]
payload = b"".join(parts)
out = bytearray(RecordBatch.new([Record(None, b"")], codec_id=codec).header) + payload
struct.pack_into(">i", out, 8, len(out) - 12)
struct.pack_into(">I", out, 17, calc_crc32c(bytes(out[21:])))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    parse_batches(bytes(out))
    print("parsed", len(payload))
except BatchFormatError as exc:
    print("refused", len(payload), exc)
print("grew_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd"])
def test_a_decompression_bomb_is_refused_before_it_takes_the_memory(codec: str) -> None:
    """A few kilobytes that decompress to 1 GiB: refused at the records limit (64 MiB),
    and the reader's memory grows by about that much, not by the gigabyte."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _BOMB, str(CODECS[codec]), str(1 << 30)],
                          capture_output=True, text=True, timeout=300, check=True)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert "refused" in lines, done.stdout
    compressed = int(lines["refused"].split()[0])
    assert compressed < 8 << 20  # a bomb: at least 128 times smaller than its output
    assert "more than 67108864 bytes" in lines["refused"]
    assert int(lines["grew_kib"]) < 400 * 1024, done.stdout


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_records_up_to_the_limit_decompress_and_past_it_do_not(codec: str) -> None:
    raw = _reference(CODECS[codec], n=12)
    [batch] = parse_batches(raw)
    size = sum(len(r.value or b"") for r in batch.records)  # the records section is larger
    with pytest.raises(BatchFormatError, match=f"more than {size // 2} bytes"):
        parse_batches(raw, max_records_bytes=size // 2)
    assert parse_batches(raw, max_records_bytes=size * 2)[0].records == batch.records


def test_an_envelope_loses_only_its_erased_lines() -> None:
    keep = orjson.dumps({"event_id": "e1", "request_id": "r1", "user": "carol"})
    gone = orjson.dumps({"event_id": "e2", "request_id": "r2", "user": "alice"})
    rec = Record(key=b"17", value=keep + b"\n" + gone + b"\n",
                 headers=((b"source_topic", b"llmpulse.inference"),), offset_delta=3)
    by_id = EventEraser(ids=frozenset({"r2"})).rewrite(TOPIC_INFERENCE, rec)
    assert by_id is not None and by_id.value == keep and by_id.key == b"17"
    assert by_id.offset_delta == 3 and by_id.headers == rec.headers
    by_user = EventEraser(users=frozenset({"alice"})).rewrite(TOPIC_FEEDBACK, rec)
    assert by_user is not None and by_user.value == keep
    assert EventEraser(ids=frozenset({"r9"})).rewrite(TOPIC_INFERENCE, rec) is None
    both = EventEraser(ids=frozenset({"e1", "r2"})).rewrite(TOPIC_INFERENCE, rec)
    assert both is not None and both.value == b""  # an envelope of no event
    assert list(split_envelope(both.value)) == []


def test_keys_headers_and_lines_that_are_not_json() -> None:
    rec = Record(key=b"r2", value=b'not json {"request_id": "r2"',
                 headers=((b"request", b"r2"), (b"reason", b"bad JSON")))
    out = EventEraser(ids=frozenset({"r2"})).rewrite(TOPIC_INFERENCE, rec)
    assert out == Record(key=None, value=b"", headers=((b"reason", b"bad JSON"),))
    # an id inside other text, unquoted, is not taken for it (no over-erasure)
    assert EventEraser(ids=frozenset({"r2"})).rewrite(
        TOPIC_INFERENCE, Record(key=None, value=b"not json r2x")) is None


def test_signal_details_are_scrubbed_not_dropped() -> None:
    sig = orjson.dumps({"signal": "hallucination.ungrounded_share", "value": 0.5,
                        "detail": {"worst": [{"event_id": "e2"}, {"event_id": "e7"}]}})
    eraser = EventEraser(ids=frozenset({"e2"}), scrub=scrub)
    out = eraser.rewrite(TOPIC_SIGNALS, Record(key=b"m", value=sig))
    assert out is not None and out.value is not None
    assert orjson.loads(out.value)["detail"] == {"worst": [{"event_id": "e7"}]}
    assert orjson.loads(out.value)["value"] == 0.5
    quoted = orjson.dumps({"detail": {"sentence": "moon base ships llamas"}})
    texts = ("Our moon base ships llamas to Mars.",)
    out = EventEraser(ids=frozenset({"e2"}), texts=texts, scrub=scrub).rewrite(
        TOPIC_SIGNALS, Record(key=None, value=quoted))
    assert out is not None and orjson.loads(out.value or b"")["detail"]["sentence"] == ERASED


def test_file_objects_write_only_the_version_read(tmp_path: Path) -> None:
    objs = FileObjects(tmp_path)
    objs.files.put(("a", "b.batch"), b"one")
    found = objs.get("a/b.batch")
    assert found is not None
    data, etag = found
    objs.files.put(("a", "b.batch"), b"two")  # another writer
    assert objs.put("a/b.batch", b"three", etag) is False
    assert objs.get("a/b.batch") == (b"two", objs.get("a/b.batch")[1])  # type: ignore[index]
    assert objs.put("a/gone.batch", b"x", etag) is False


def test_span_rows_go_by_trace_and_exporter_messages_by_a_quoted_id() -> None:
    rows = [orjson.dumps({"trace_id": "t1", "span_id": "s1", "name": "retrieve"}),
            orjson.dumps({"trace_id": "t2", "span_id": "s2", "name": "retrieve"})]
    eraser = EventEraser(ids=frozenset({"r1"}), trace_ids=frozenset({"t1"}))
    out = eraser.rewrite(SPAN_ROWS, Record(key=None, value=b"\n".join(rows)))
    assert out is not None and out.value == rows[1]
    # on the raw topics a trace id alone does not take an event (only spans go by trace)
    inf = orjson.dumps({"request_id": "r9", "trace_id": "t1"})
    assert eraser.rewrite(TOPIC_INFERENCE, Record(key=None, value=inf)) is None
    otlp = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "t1", "attributes": [{"key": "llmpulse.request_id",
                                          "value": {"stringValue": "r1"}}]}]}]}]})
    out = eraser.rewrite(OTLP_SPANS, Record(key=None, value=otlp))
    assert out is not None and out.value == b""
    other = otlp.replace(b'"r1"', b'"r5"').replace(b'"t1"', b'"t5"')
    assert eraser.rewrite(OTLP_SPANS, Record(key=None, value=other)) is None
