"""Erasure in the embedded broker's log on disk (``broker.storage: disk``).

The broker keeps each record batch as one object of the object server
(:mod:`llmpulse.objstore`), ``clusters/<c>/topics/<t>/partitions/<p>/records/
<base offset>.batch``, holding the batch exactly as Kafka sends it: a record
batch of format v2 (magic 2), its records compressed as the producer chose
(none, gzip, snappy, lz4 or zstd), CRC-32C over the rest of the header and the
records.

An erasure rewrites every batch that holds an erased event, in place:

* the batch keeps its base offset, its record count and every record's offset
  and timestamp delta, so no offset moves and consumers' committed offsets stay
  valid;
* a record's value is NDJSON (one event per line, :func:`llmpulse.events.
  split_envelope`): the lines of erased events go, the other events of the same
  envelope stay byte for byte; a record left with no event gets an empty value
  (an envelope of no event: ingest and the signal engine read nothing from it,
  where a null value would be a tombstone some readers do not expect); lines
  that only mention an erased event (a signal's examples) are scrubbed by the
  caller's ``scrub``;
* a key or header naming an erased id or user goes;
* the records are compressed again with the batch's own codec and the length
  and CRC written anew.

A rewrite is a conditional PUT (``If-Match`` the ETag read) through the
running object server, which holds its per-key lock for the write and writes a
temp file renamed over the old one: the object is the old or the new batch,
never a torn one, and a batch changed or removed since it was read is read
again (or is gone). With no object server running (the stack stopped) the files
are rewritten directly, with the same rename. A batch that cannot be read or
rewritten is reported, never skipped silently.

>>> batch = encode_batch(RecordBatch.new([Record(key=b"k", value=b'{"request_id":"r1"}'),
...                                       Record(key=None, value=b'{"request_id":"r2"}')]))
>>> [r.value for r in parse_batches(batch)[0].records]
[b'{"request_id":"r1"}', b'{"request_id":"r2"}']
>>> eraser = EventEraser(ids=frozenset({"r1"}))
>>> out = [eraser.rewrite(TOPIC_INFERENCE, r) for r in parse_batches(batch)[0].records]
>>> out[0].value, out[0].key, out[1] is None
(b'', b'k', True)
"""

from __future__ import annotations

import json
import logging
import struct
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode
from xml.etree import ElementTree

import orjson
from aiokafka import codec
from aiokafka.record.util import calc_crc32c, decode_varint, encode_varint

from llmpulse.broker_log import BATCH_HEADER
from llmpulse.broker_storage import STORE_DIR, access_key, is_recorded_store, read_store_record
from llmpulse.events import (
    TOPIC_ALERTS,
    TOPIC_DEADLETTER,
    TOPIC_FEEDBACK,
    TOPIC_GROUPED,
    TOPIC_INFERENCE,
    TOPIC_SIGNALS,
)
from llmpulse.objstore import BUCKET, ObjectFiles, S3Error

__all__ = ["DERIVED_TOPICS", "OTLP_SPANS", "SPAN_ROWS", "TOPICS", "BatchFormatError", "BrokerErasure", "EventEraser",
           "MAX_RECORDS_BYTES", "Record", "RecordBatch", "encode_batch", "erase_from_broker", "parse_batches"]

log = logging.getLogger(__name__)

DERIVED_TOPICS = (TOPIC_SIGNALS, TOPIC_ALERTS)
"""Topics whose records only quote events (examples in a signal's or alert's detail):
they are scrubbed, not dropped."""
SPAN_ROWS = "llmpulse.spans"
"""The OTLP receiver's mapped span rows (NDJSON, as :mod:`llmpulse.streams.otlp` names it)."""
OTLP_SPANS = "otlp_spans"
"""The OTLP receiver's input, as exporters send it (OTLP JSON or protobuf)."""
TOPICS = (TOPIC_INFERENCE, TOPIC_FEEDBACK, TOPIC_GROUPED, TOPIC_DEADLETTER, SPAN_ROWS,
          OTLP_SPANS, *DERIVED_TOPICS)
"""The topics that carry events or quote them."""

_HEADER = BATCH_HEADER  # the v2 record batch header, as the repair reads it
_CRC_AT = 17  # base offset, length, leader epoch, magic
_ATTRS_AT = 21
_CODEC_MASK = 0x07
_CONTROL = 0x20
_XERIAL = b"\x82SNAPPY\x00"
_MAX_CONFLICTS = 5


class BatchFormatError(ValueError):
    """Bytes that are not record batches of format v2 (or fail their CRC)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a batch, with the deltas it was stored with."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[bytes, bytes | None], ...] = ()
    timestamp_delta: int = 0
    offset_delta: int = 0
    attributes: int = 0


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """A record batch: its header fields as stored, its records decompressed."""

    header: bytes
    records: tuple[Record, ...]
    snappy_xerial: bool = False

    @classmethod
    def new(cls, records: Iterable[Record], *, codec_id: int = 0) -> RecordBatch:
        """A batch at base offset 0 (for tests and doctests); offsets in order."""
        recs = tuple(replace(r, offset_delta=i) for i, r in enumerate(records))
        header = _HEADER.pack(0, 0, -1, 2, 0, codec_id & _CODEC_MASK, len(recs) - 1,
                              0, 0, -1, -1, -1, len(recs))
        return cls(header, recs)

    @property
    def base_offset(self) -> int:
        return int(_HEADER.unpack(self.header)[0])

    @property
    def attributes(self) -> int:
        return int(_HEADER.unpack(self.header)[5])

    @property
    def codec_id(self) -> int:
        return self.attributes & _CODEC_MASK

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & _CONTROL)


MAX_RECORDS_BYTES = 64 * 1024 * 1024
"""Largest records section a batch may decompress to. A batch is at most the broker's
message limit compressed (about 1 MB); a few kilobytes of zstd or gzip can expand to
gigabytes, so the output is bounded while it is written, not checked after."""


def _too_large(limit: int) -> BatchFormatError:
    return BatchFormatError(f"records decompress to more than {limit} bytes")


def _bounded_into(decompress_into: Callable[[bytes, Any], int], data: bytes, limit: int) -> bytes:
    """``decompress_into`` (cramjam's, which stops with an error once the buffer is
    full) into buffers growing from about 16 times ``data`` up to ``limit`` bytes."""
    import cramjam

    size = min(limit, max(64 * 1024, 16 * len(data)))
    while True:
        buf = bytearray(size + 1)  # one byte over: a full buffer means it went on
        try:
            n = int(decompress_into(data, buf))
        except cramjam.DecompressionError as exc:
            if "whole buffer" not in str(exc):
                raise
            n = size + 1
        if n <= size:
            return bytes(buf[:n])
        if size >= limit:
            raise _too_large(limit)
        size = min(limit, size * 4)


def _gzip_bounded(data: bytes, limit: int) -> bytes:
    import zlib

    out = bytearray()
    rest = data
    while rest:  # a gzip stream may hold several members
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        chunk = rest
        while chunk and not d.eof:
            out += d.decompress(chunk, limit + 1 - len(out))
            if len(out) > limit:
                raise _too_large(limit)
            chunk = d.unconsumed_tail
        if not d.eof:
            raise BatchFormatError("truncated gzip stream")
        rest = d.unused_data
    return bytes(out)


def _uvarint(buf: bytes) -> int:
    """The unsigned varint at the start of ``buf`` (raw snappy's stated length)."""
    value = 0
    for i, byte in enumerate(buf[:5]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value
    raise BatchFormatError("bad snappy length")


def _snappy_bounded(data: bytes, limit: int) -> bytes:
    """Raw snappy, or the xerial framing Kafka's Java clients write (blocks of raw
    snappy behind a 16-byte header, each with its length): every block states its
    decompressed length first, checked before anything is decompressed."""
    import cramjam

    if data.startswith(_XERIAL):
        blocks, pos = [], 16
        while pos < len(data):
            if pos + 4 > len(data):
                raise BatchFormatError("truncated snappy block length")
            (n,) = struct.unpack_from(">i", data, pos)
            if n < 0 or pos + 4 + n > len(data):
                raise BatchFormatError("snappy block runs past the end of the records")
            blocks.append(data[pos + 4:pos + 4 + n])
            pos += 4 + n
    else:
        blocks = [data]
    total = 0
    for block in blocks:
        stated = _uvarint(block)
        total += stated
        if total > limit:
            raise _too_large(limit)
    out = b"".join(bytes(cramjam.snappy.decompress_raw(b)) for b in blocks)
    if len(out) != total:
        raise BatchFormatError("snappy output is not the length it states")
    return out


def _decompress(codec_id: int, data: bytes, limit: int = MAX_RECORDS_BYTES) -> bytes:
    """The records section of a batch of codec ``codec_id``, at most ``limit`` bytes
    (more: :class:`BatchFormatError`, found while decompressing, before the output
    grows past the limit).

    >>> bomb = bytes(codec.zstd_encode(bytes(5_000_000)))
    >>> len(bomb) < 1_000
    True
    >>> _decompress(4, bomb, limit=1_000_000)
    Traceback (most recent call last):
    ...
    llmpulse.broker_erase.BatchFormatError: records decompress to more than 1000000 bytes
    >>> len(_decompress(4, bomb, limit=5_000_000))
    5000000
    """
    if codec_id == 0:
        return data
    import cramjam

    if codec_id == 1:
        return _gzip_bounded(data, limit)
    if codec_id == 2:
        return _snappy_bounded(data, limit)
    if codec_id == 3:
        return _bounded_into(cramjam.lz4.decompress_into, data, limit)
    if codec_id == 4:
        return _bounded_into(cramjam.zstd.decompress_into, data, limit)
    raise BatchFormatError(f"unknown compression codec {codec_id}")


def _compress(codec_id: int, data: bytes, xerial: bool) -> bytes:
    if codec_id == 0:
        return data
    if codec_id == 1:
        return bytes(codec.gzip_encode(data))
    if codec_id == 2:
        import cramjam

        return (bytes(codec.snappy_encode(data, xerial_compatible=True)) if xerial
                else bytes(cramjam.snappy.compress_raw(data)))
    if codec_id == 3:
        return bytes(codec.lz4_encode(data))
    if codec_id == 4:
        return bytes(codec.zstd_encode(data))
    raise BatchFormatError(f"unknown compression codec {codec_id}")


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    try:
        value, pos = decode_varint(buf, pos)
    except (IndexError, ValueError):
        raise BatchFormatError(f"truncated {what}") from None
    return int(value), int(pos)


def _bytes(buf: bytes, pos: int, what: str) -> tuple[bytes | None, int]:
    n, pos = _varint(buf, pos, f"{what} length")
    if n < 0:
        return None, pos
    if pos + n > len(buf):
        raise BatchFormatError(f"{what} runs past the end of the records")
    return buf[pos:pos + n], pos + n


def _parse_records(buf: bytes, count: int) -> tuple[Record, ...]:
    try:
        return _parse_records_unchecked(buf, count)
    except (IndexError, ValueError, OverflowError) as exc:
        if isinstance(exc, BatchFormatError):
            raise
        raise BatchFormatError(f"malformed records: {exc}") from None


def _parse_records_unchecked(buf: bytes, count: int) -> tuple[Record, ...]:
    out = []
    pos = 0
    for i in range(count):
        length, pos = _varint(buf, pos, "record length")
        end = pos + length
        if length < 1 or end > len(buf):
            raise BatchFormatError(f"record {i} runs past the end of the batch")
        attrs = buf[pos]
        ts, p = _varint(buf, pos + 1, "timestamp delta")
        od, p = _varint(buf, p, "offset delta")
        key, p = _bytes(buf, p, "key")
        value, p = _bytes(buf, p, "value")
        nh, p = _varint(buf, p, "header count")
        if nh < 0 or nh > length:
            raise BatchFormatError(f"record {i}: bad header count {nh}")
        headers = []
        for _ in range(nh):
            hk, p = _bytes(buf, p, "header key")
            hv, p = _bytes(buf, p, "header value")
            headers.append((hk or b"", hv))
        if p != end:
            raise BatchFormatError(f"record {i}: {end - p} bytes left over")
        out.append(Record(key, value, tuple(headers), ts, od, attrs))
        pos = end
    if pos != len(buf):
        raise BatchFormatError(f"{len(buf) - pos} bytes after the last record")
    return tuple(out)


def parse_batches(data: bytes, *, max_records_bytes: int = MAX_RECORDS_BYTES) -> list[RecordBatch]:
    """The record batches stored back to back in ``data`` (CRCs checked; each batch's
    records decompressed to at most ``max_records_bytes``)."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            raise BatchFormatError("truncated batch header")
        fields = _HEADER.unpack_from(data, pos)
        length, magic, crc, attrs, count = fields[1], fields[3], fields[4], fields[5], fields[12]
        end = pos + 12 + length
        if magic != 2:
            raise BatchFormatError(f"record batch of format v{magic}, not v2")
        if length < _HEADER.size - 12 or end > len(data):
            raise BatchFormatError("batch length runs past the end of the object")
        if calc_crc32c(data[pos + _ATTRS_AT:end]) != crc:
            raise BatchFormatError("CRC mismatch")
        raw = bytes(data[pos + _HEADER.size:end])
        codec_id = attrs & _CODEC_MASK
        try:
            body = _decompress(codec_id, raw, max_records_bytes)
        except BatchFormatError:
            raise
        except Exception as exc:
            raise BatchFormatError(f"records do not decompress: {exc}") from None
        if count < 0:
            raise BatchFormatError(f"negative record count {count}")
        out.append(RecordBatch(bytes(data[pos:pos + _HEADER.size]), _parse_records(body, count),
                               snappy_xerial=codec_id == 2 and raw.startswith(_XERIAL)))
        pos = end
    return out


def _put_bytes(out: bytearray, b: bytes | None) -> None:
    if b is None:
        encode_varint(-1, out.append)
    else:
        encode_varint(len(b), out.append)
        out += b


def encode_batch(batch: RecordBatch) -> bytes:
    """The stored form of ``batch``: its header with a new length and CRC, its records
    compressed with its own codec."""
    body = bytearray()
    for r in batch.records:
        rec = bytearray((r.attributes,))
        encode_varint(r.timestamp_delta, rec.append)
        encode_varint(r.offset_delta, rec.append)
        _put_bytes(rec, r.key)
        _put_bytes(rec, r.value)
        encode_varint(len(r.headers), rec.append)
        for hk, hv in r.headers:
            _put_bytes(rec, hk)
            _put_bytes(rec, hv)
        encode_varint(len(rec), body.append)
        body += rec
    payload = _compress(batch.codec_id, bytes(body), batch.snappy_xerial)
    out = bytearray(batch.header) + payload
    struct.pack_into(">i", out, 8, len(out) - 12)
    struct.pack_into(">I", out, _CRC_AT, calc_crc32c(bytes(out[_ATTRS_AT:])))
    return bytes(out)


# -- which records change ---------------------------------------------------------------------


def _lines(value: bytes) -> list[bytes]:
    """An envelope's events, as :func:`llmpulse.events.split_envelope` splits them."""
    if b"\n" not in value:
        s = value.strip()
        return [s] if s else []
    return [s for s in (line.strip() for line in value.split(b"\n")) if s]


Scrub = Callable[[Any, Iterable[str], Iterable[str]], tuple[Any, int]]


@dataclass(frozen=True)
class EventEraser:
    """Which events of a record go: those whose ``request_id`` or ``event_id`` is
    in ``ids``, whose ``user`` is in ``users``, and on :data:`SPAN_ROWS` those whose
    ``trace_id`` is in ``trace_ids`` or ``ids`` (as the store's ``spans`` rows go).
    On the :data:`DERIVED_TOPICS`, ``scrub`` (decoded JSON, needles, texts -> new
    JSON, count) removes what quotes them. A line that is not JSON, and an
    exporter's message on :data:`OTLP_SPANS`, goes when it holds an id or user as a
    JSON string (quoted); an OTLP protobuf message is not decoded."""

    ids: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    trace_ids: frozenset[str] = frozenset()
    texts: tuple[str, ...] = ()
    scrub: Scrub | None = None
    _quoted: tuple[str, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        names = sorted(n for n in self.ids | self.users | self.trace_ids if n)
        object.__setattr__(self, "_quoted", tuple(json.dumps(n) for n in names))

    @property
    def empty(self) -> bool:
        return not (self.ids or self.users or self.trace_ids)

    def _erased(self, topic: str, ev: Any) -> bool:
        if not isinstance(ev, dict):
            return False
        if ev.get("request_id") in self.ids or ev.get("event_id") in self.ids:
            return True
        if self.users and ev.get("user") in self.users:
            return True
        trace = ev.get("trace_id")
        return topic == SPAN_ROWS and (trace in self.trace_ids or trace in self.ids)

    def _names(self, raw: bytes) -> bool:
        text = raw.decode("utf-8", "replace")
        if text in self.ids or text in self.users or text in self.trace_ids:
            return True
        return any(q in text for q in self._quoted)

    def _line(self, topic: str, line: bytes) -> bytes | None:
        """The line as it stays (the same object when unchanged), or None when it goes."""
        if topic == OTLP_SPANS:
            return None if self._names(line) else line
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None if self._names(line) else line
        if topic not in DERIVED_TOPICS:
            return None if self._erased(topic, ev) else line
        if self.scrub is None:
            return None if self._names(line) else line
        needles = sorted(self.ids | self.users | self.trace_ids)
        new, n = self.scrub(ev, needles, self.texts)
        return orjson.dumps(new) if n else line

    def rewrite(self, topic: str, record: Record) -> Record | None:
        """``record`` without what is erased, or None when nothing in it is."""
        value = record.value
        if value is not None:
            lines = _lines(value)
            kept = [k for k in (self._line(topic, ln) for ln in lines) if k is not None]
            if len(kept) != len(lines) or any(a is not b for a, b in zip(kept, lines, strict=False)):
                value = b"\n".join(kept)  # b"" when no event is left
        key = None if record.key is not None and self._names(record.key) else record.key
        headers = tuple(h for h in record.headers if h[1] is None or not self._names(h[1]))
        if value is record.value and key is record.key and headers == record.headers:
            return None
        return replace(record, key=key, value=value, headers=headers)


# -- where the batches are ----------------------------------------------------------------------


class BatchObjects(Protocol):
    def keys(self, prefix: str) -> list[str]: ...

    def get(self, key: str) -> tuple[bytes, str] | None: ...

    def put(self, key: str, data: bytes, etag: str) -> bool:
        """Write if the object still has ``etag``; False when it changed or went."""
        ...


class HttpObjects:
    """The running object server, through its S3 API (conditional PUT under its key lock)."""

    def __init__(self, endpoint: str, key: str, timeout: float = 30.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._auth = {"Authorization": f"AWS4-HMAC-SHA256 Credential={key}/llmpulse-erase"}

    def _url(self, key: str) -> str:
        return f"{self.endpoint}/{BUCKET}/" + "/".join(quote(s, safe="") for s in key.split("/"))

    def keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        token: str | None = None
        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        while True:
            params = {"list-type": "2", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            req = urllib.request.Request(f"{self.endpoint}/{BUCKET}?{urlencode(params)}",
                                         headers=self._auth)
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                root = ElementTree.fromstring(resp.read())
            out += [k.text or "" for k in root.iter(f"{ns}Key")]
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return out

    def get(self, key: str) -> tuple[bytes, str] | None:
        req = urllib.request.Request(self._url(key), headers=self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), str(resp.headers.get("ETag", "")).strip('"')
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def put(self, key: str, data: bytes, etag: str) -> bool:
        req = urllib.request.Request(self._url(key), data=data, method="PUT",
                                     headers={**self._auth, "If-Match": f'"{etag}"',
                                              "Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout):
                return True
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 412):
                return False
            raise


class FileObjects:
    """The object files themselves, when no object server runs (the stack stopped)."""

    def __init__(self, root: Path) -> None:
        self.files = ObjectFiles(root)

    def keys(self, prefix: str) -> list[str]:
        return [o.key for o in self.files.list(prefix)]

    def get(self, key: str) -> tuple[bytes, str] | None:
        found = self.files.read(tuple(key.split("/")))
        return None if found is None else (found[1], found[0].etag)

    def put(self, key: str, data: bytes, etag: str) -> bool:
        try:
            self.files.put(tuple(key.split("/")), data, if_match=etag)
        except S3Error:
            return False
        return True


@dataclass
class BrokerErasure:
    """What an erasure changed in the broker's log: records rewritten per topic, and
    the batches it could not rewrite (``key: why``)."""

    records: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    failures: list[str] = field(default_factory=list)


def _batch_keys(objects: BatchObjects, topics: Iterable[str]) -> Iterator[tuple[str, str]]:
    wanted = set(topics)
    for key in objects.keys("clusters/"):
        parts = key.split("/")
        # clusters/<c>/topics/<t>/partitions/<p>/records/<n>.batch
        if len(parts) == 8 and parts[2] == "topics" and parts[4] == "partitions" \
                and parts[6] == "records" and parts[7].endswith(".batch") and parts[3] in wanted:
            yield parts[3], key


def rewrite_object(objects: BatchObjects, topic: str, key: str, eraser: EventEraser,
                   report: BrokerErasure) -> None:
    """Erase in one batch object: read, rewrite, conditional write; again on a conflict."""
    for _ in range(_MAX_CONFLICTS):
        found = objects.get(key)
        if found is None:
            return  # removed by retention meanwhile: nothing left to erase
        data, etag = found
        try:
            batches = parse_batches(data)
        except BatchFormatError as exc:
            report.failures.append(f"{key}: {exc}")
            return
        changed = 0
        out = []
        for b in batches:
            if b.is_control:
                out.append(b)
                continue
            recs = []
            for r in b.records:
                new = eraser.rewrite(topic, r)
                changed += new is not None
                recs.append(r if new is None else new)
            out.append(replace(b, records=tuple(recs)))
        if not changed:
            return
        new_data = b"".join(encode_batch(b) for b in out)
        if objects.put(key, new_data, etag):
            report.records[topic] = report.records.get(topic, 0) + changed
            report.batches += 1
            return
    report.failures.append(f"{key}: changed by another writer {_MAX_CONFLICTS} times in a row")


def objects_of(data_dir: Path) -> BatchObjects | None:
    """How to reach the broker's stored batches of ``data_dir``: through its running object
    server, else the files (none: the broker never kept its log on disk there)."""
    root = (data_dir / STORE_DIR).absolute()
    if not (root / "objects").is_dir():
        return None
    rec = read_store_record(data_dir)
    if rec is not None and rec.root == str(root) and is_recorded_store(rec):
        return HttpObjects(rec.endpoint, access_key(data_dir))
    return FileObjects(root)


def erase_from_broker(data_dir: Path, eraser: EventEraser,
                      topics: Iterable[str] = TOPICS) -> BrokerErasure:
    """Rewrite the broker's stored batches of ``topics`` without what ``eraser`` erases."""
    report = BrokerErasure()
    if eraser.empty:
        return report
    objects = objects_of(Path(data_dir))
    if objects is None:
        return report
    try:
        keys = list(_batch_keys(objects, topics))
    except (OSError, urllib.error.URLError, ElementTree.ParseError) as exc:
        report.failures.append(f"the broker's stored batches could not be listed: {exc}")
        return report
    for topic, key in keys:
        try:
            rewrite_object(objects, topic, key, eraser, report)
        except (OSError, urllib.error.URLError) as exc:
            report.failures.append(f"{key}: {exc}")
    if report.failures:
        log.warning("broker erasure: %d batch(es) not rewritten: %s", len(report.failures),
                    "; ".join(report.failures[:5]))
    return report
