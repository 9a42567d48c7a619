"""The header of a Kafka record batch (format v2), as the broker stores it.

One definition, read by the crash repair (:mod:`llmpulse.broker_log`), the
erasure (:mod:`llmpulse.broker_erase`) and the object server's retention
(:mod:`llmpulse.objstore`). It imports nothing else of the repository.

>>> header = batch_header(_header_bytes(producer_id=7, epoch=0, base_sequence=10, last_delta=4,
...                                     max_timestamp=1_700_000_000_000))
>>> header.producer_id, header.next_sequence, header.records, header.max_timestamp
(7, 15, 5, 1700000000000)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["BATCH_HEADER", "BatchError", "BatchHeader", "batch_header"]

BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
"""Kafka record batch v2: base offset, length, leader epoch, magic, crc, attributes,
last offset delta, first and max timestamp, producer id, producer epoch, base
sequence, record count (61 bytes)."""


class BatchError(ValueError):
    """A stored object that is not a record batch of the v2 format."""


@dataclass(frozen=True, slots=True)
class BatchHeader:
    producer_id: int
    producer_epoch: int
    base_sequence: int
    last_offset_delta: int
    max_timestamp: int = -1
    """Largest record timestamp of the batch, epoch milliseconds (the producer's clock,
    or the broker's when the batch says log-append time); -1 when none."""

    @property
    def records(self) -> int:
        return self.last_offset_delta + 1

    @property
    def next_sequence(self) -> int:
        return self.base_sequence + self.records

    @property
    def idempotent(self) -> bool:
        return self.producer_id >= 0 and self.base_sequence >= 0


def batch_header(data: bytes) -> BatchHeader:
    """The header of a stored record batch (its first 61 bytes are enough)."""
    if len(data) < BATCH_HEADER.size:
        raise BatchError(f"{len(data)} bytes: shorter than a record batch header")
    (_base, _length, _epoch, magic, _crc, _attrs, last_delta, _t0, max_ts, pid, pepoch, base_seq,
     count) = BATCH_HEADER.unpack_from(data)
    if magic != 2:
        raise BatchError(f"record batch magic {magic}, expected 2")
    if last_delta < 0 or count < 0:
        raise BatchError(f"record batch with last offset delta {last_delta}, {count} records")
    return BatchHeader(pid, pepoch, base_seq, last_delta, max_ts)


def _header_bytes(producer_id: int, epoch: int, base_sequence: int, last_delta: int,
                  max_timestamp: int = 0) -> bytes:
    """A header as the broker stores it (tests and doctests)."""
    return BATCH_HEADER.pack(0, 49, 0, 2, 0, 0, last_delta, max_timestamp, max_timestamp,
                             producer_id, epoch, base_sequence, last_delta + 1)
