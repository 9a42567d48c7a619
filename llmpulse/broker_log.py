"""Repairing the embedded broker's log on disk after a crash, before the broker starts.

The broker (Tansu with ``s3://`` storage, :mod:`llmpulse.broker_storage`)
takes an idempotent produce in three writes to the object server: the
producer's next sequence number (``meta.json``), the partition's high
watermark (``watermark.json``), then the record batch. A kill between the
first write and the last leaves a sequence number that no stored batch
holds. The producer, which had no answer, sends the batch again; the broker
reads the advanced sequence, answers *duplicate*, and the client counts the
batch as delivered. An acknowledged batch is then lost: a crash test lost
4,650 acknowledged records that way.

:func:`repair` puts the log back the way the stored batches say, while neither
the broker nor the object server runs (the broker caches both files, so it is
restarted with the object server, see :func:`llmpulse.broker_record.adopt_or_start`):

* a producer's next sequence on a partition is set back to the end of the
  last batch of it that is stored, so the resent batch is taken;
* a partition's high watermark is set back to the end of its last stored
  batch, so no offset points past the log.

Only ever lowered, and only from what the batches prove. A producer with no
batch left on a partition is set back to 0 only when nothing of the partition
was ever removed by retention; otherwise its batches may all have been removed
and its sequence is left as it is.

>>> header = batch_header(_header_bytes(producer_id=7, epoch=0, base_sequence=10, last_delta=4))
>>> header.producer_id, header.next_sequence, header.records
(7, 15, 5)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from llmpulse.objstore import ObjectFiles
from llmpulse.record_batch import BATCH_HEADER, BatchError, BatchHeader, batch_header
from llmpulse.record_batch import _header_bytes as _header_bytes  # doctests and tests

__all__ = ["BATCH_HEADER", "BatchHeader", "RepairReport", "batch_header", "repair"]

log = logging.getLogger("llmpulse.up")

_BATCH_SUFFIX = ".batch"


@dataclass
class RepairReport:
    """What :func:`repair` changed: ``sequences`` set back as ``(cluster, producer,
    epoch, topic, partition, was, now)``; ``watermarks`` as ``(cluster, topic,
    partition, was, now)``; objects it could not read."""

    sequences: list[tuple[str, str, str, str, str, int, int]] = field(default_factory=list)
    watermarks: list[tuple[str, str, str, int, int]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.sequences or self.watermarks)


@dataclass
class _Partition:
    end: int = -1  # end offset of the last stored batch; -1: no batch (a watermark only)
    first: int = -1  # base offset of the first stored batch
    sequences: dict[tuple[int, int], int] = field(default_factory=dict)


def _scan(files: ObjectFiles, cluster: str, report: RepairReport
          ) -> dict[tuple[str, str], _Partition]:
    topics = ("clusters", cluster, "topics")
    out: dict[tuple[str, str], _Partition] = {}
    for key, path in files._walk(files.objects.joinpath(*(_seg(s) for s in topics)), topics):
        parts = key.split("/")
        if len(parts) == 7 and parts[4] == "partitions" and parts[6] == "watermark.json":
            out.setdefault((parts[3], parts[5]), _Partition())
            continue
        # clusters/<c>/topics/<topic>/partitions/<p>/records/<offset>.batch
        if len(parts) != 8 or parts[4] != "partitions" or parts[6] != "records" \
                or not parts[7].endswith(_BATCH_SUFFIX):
            continue
        digits = parts[7][: -len(_BATCH_SUFFIX)]
        if not (digits.isascii() and digits.isdigit()):
            continue
        try:
            with open(path, "rb") as f:
                header = batch_header(f.read(BATCH_HEADER.size))
        except (OSError, BatchError) as exc:
            report.unreadable.append(f"{key}: {exc}")
            continue
        base = int(digits)
        p = out.setdefault((parts[3], parts[5]), _Partition())
        p.end = max(p.end, base + header.records)
        p.first = base if p.first < 0 else min(p.first, base)
        if header.idempotent:
            k = (header.producer_id, header.producer_epoch)
            p.sequences[k] = max(p.sequences.get(k, 0), header.next_sequence)
    return out


def _seg(s: str) -> str:
    return quote(s, safe="")


def _read_json(files: ObjectFiles, segments: tuple[str, ...]) -> Any:
    found = files.read(segments)
    if found is None:
        return None
    return json.loads(found[1])


def _write_json(files: ObjectFiles, segments: tuple[str, ...], value: Any) -> None:
    files.put(segments, json.dumps(value, separators=(",", ":")).encode())


def _clusters(files: ObjectFiles) -> list[str]:
    try:
        return sorted(unquote(e.name) for e in os.scandir(files.objects / "clusters")
                      if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def repair(root: Path, *, fsync: bool = True) -> RepairReport:
    """Set the producers' sequences and the high watermarks of the log under ``root``
    (the object server's folder) back to what its record batches hold. Run it only
    while neither the broker nor the object server is running."""
    files = ObjectFiles(root, fsync=fsync)
    report = RepairReport()
    for cluster in _clusters(files):
        stored = _scan(files, cluster, report)
        meta_key = ("clusters", cluster, "meta.json")
        try:
            meta = _read_json(files, meta_key)
        except ValueError as exc:
            report.unreadable.append(f"{'/'.join(meta_key)}: {exc}")
            meta = None
        if isinstance(meta, dict) and _repair_sequences(meta, stored, cluster, report):
            _write_json(files, meta_key, meta)
        for (topic, part), p in sorted(stored.items()):
            wm_key = ("clusters", cluster, "topics", topic, "partitions", part, "watermark.json")
            try:
                wm = _read_json(files, wm_key)
            except ValueError as exc:
                report.unreadable.append(f"{'/'.join(wm_key)}: {exc}")
                continue
            if not isinstance(wm, dict):
                continue
            high, low = wm.get("high"), wm.get("low")
            # no batch at all: none was ever stored (retention keeps a partition's newest)
            end = max(p.end, 0)
            if isinstance(low, int) and not isinstance(low, bool):
                end = max(end, low)
            if isinstance(high, int) and not isinstance(high, bool) and high > end:
                wm["high"] = end
                _write_json(files, wm_key, wm)
                report.watermarks.append((cluster, topic, part, high, end))
    for c, pid, epoch, topic, part, was, now in report.sequences:
        log.warning("broker log repair: producer %s (epoch %s) on %s[%s] of %s: next sequence "
                    "%d -> %d (a batch it was told was taken is not stored; the resend is "
                    "taken now)", pid, epoch, topic, part, c, was, now)
    for c, topic, part, was, now in report.watermarks:
        log.warning("broker log repair: %s[%s] of %s: high watermark %d -> %d (end of the last "
                    "stored batch)", topic, part, c, was, now)
    for what in report.unreadable:
        log.warning("broker log repair: could not read %s", what)
    return report


def _repair_sequences(meta: dict[str, Any], stored: dict[tuple[str, str], _Partition],
                      cluster: str, report: RepairReport) -> bool:
    changed = False
    producers = meta.get("producers")
    if not isinstance(producers, dict):
        return False
    for pid, detail in producers.items():
        epochs = detail.get("sequences") if isinstance(detail, dict) else None
        if not isinstance(epochs, dict):
            continue
        for epoch, topics in epochs.items():
            if not isinstance(topics, dict):
                continue
            for topic, partitions in topics.items():
                if not isinstance(partitions, dict):
                    continue
                for part, seq in partitions.items():
                    if not isinstance(seq, int) or isinstance(seq, bool):
                        continue
                    truth = _stored_sequence(stored, topic, part, pid, epoch)
                    if truth is not None and seq > truth:
                        partitions[part] = truth
                        report.sequences.append((cluster, str(pid), str(epoch), topic,
                                                 str(part), seq, truth))
                        changed = True
    return changed


def _stored_sequence(stored: dict[tuple[str, str], _Partition], topic: str, part: str,
                     pid: str, epoch: str) -> int | None:
    """The next sequence the stored batches prove for the producer, else None (unknown)."""
    try:
        key = (int(pid), int(epoch))
        folder = f"{int(part):0>10}"
    except ValueError:
        return None
    p = stored.get((topic, folder))
    if p is None or p.end < 0:
        return 0  # no batch at all: none was ever stored (retention keeps the newest)
    if key in p.sequences:
        return p.sequences[key]
    # no batch of the producer left: 0 if nothing of the partition was ever removed
    return 0 if p.first == 0 else None
