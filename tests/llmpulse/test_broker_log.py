"""The broker log's repair after a crash: sequences and watermarks set back to
what the stored record batches prove, never raised, never guessed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmpulse.broker_log import BatchError, _header_bytes, batch_header, repair
from llmpulse.objstore import ObjectFiles

C = "llmpulse-test"


def _put_batch(files: ObjectFiles, topic: str, part: int, base: int, pid: int, seq: int,
               n: int) -> None:
    name = f"{base:0>20}.batch"
    files.put(("clusters", C, "topics", topic, "partitions", f"{part:0>10}", "records", name),
              _header_bytes(pid, 0, seq, n - 1) + b"records...")


def _put_json(files: ObjectFiles, segments: tuple[str, ...], value: object) -> None:
    files.put(segments, json.dumps(value).encode())


def _json(files: ObjectFiles, segments: tuple[str, ...]) -> object:
    found = files.read(segments)
    assert found is not None
    return json.loads(found[1])


META = ("clusters", C, "meta.json")


def _wm(topic: str, part: int) -> tuple[str, ...]:
    return ("clusters", C, "topics", topic, "partitions", f"{part:0>10}", "watermark.json")


def test_a_sequence_ahead_of_the_stored_batches_is_set_back(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path)
    _put_batch(files, "t", 0, 0, pid=1, seq=0, n=100)
    _put_batch(files, "t", 0, 100, pid=2, seq=0, n=50)
    _put_batch(files, "t", 0, 150, pid=1, seq=100, n=100)  # producer 1 ends at 200
    # producer 1's next batch (seq 200, 80 records) got its sequence and watermark
    # written, not its batch; producer 2 is consistent
    _put_json(files, META, {"producers": {"1": {"sequences": {"0": {"t": {"0": 280}}}},
                                          "2": {"sequences": {"0": {"t": {"0": 50}}}}},
                            "topics": {}, "transactions": {}})
    _put_json(files, _wm("t", 0), {"low": None, "high": 330, "timestamps": None})
    report = repair(tmp_path, fsync=False)
    meta = _json(files, META)
    assert meta["producers"]["1"]["sequences"]["0"]["t"]["0"] == 200  # type: ignore[index]
    assert meta["producers"]["2"]["sequences"]["0"]["t"]["0"] == 50  # type: ignore[index]
    assert meta["topics"] == {} and meta["transactions"] == {}  # type: ignore[index]
    assert _json(files, _wm("t", 0)) == {"low": None, "high": 250, "timestamps": None}
    assert [s[1:] for s in report.sequences] == [("1", "0", "t", "0", 280, 200)]
    assert report.watermarks == [(C, "t", "0000000000", 330, 250)]
    # a second pass changes nothing
    assert not repair(tmp_path, fsync=False).changed


def test_nothing_consistent_is_touched_and_nothing_is_raised(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path)
    _put_batch(files, "t", 0, 0, pid=1, seq=0, n=10)
    meta = {"producers": {"1": {"sequences": {"0": {"t": {"0": 10}}}}}}
    _put_json(files, META, meta)
    _put_json(files, _wm("t", 0), {"low": None, "high": 10})
    before = {k: files.read(k) for k in (META, _wm("t", 0))}
    assert not repair(tmp_path, fsync=False).changed
    assert {k: files.read(k) for k in (META, _wm("t", 0))} == before
    # a sequence *behind* the batches (cannot happen) is not raised either
    _put_json(files, META, {"producers": {"1": {"sequences": {"0": {"t": {"0": 5}}}}}})
    assert not repair(tmp_path, fsync=False).changed


def test_a_first_batch_lost_sets_the_producer_back_to_zero(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path)
    _put_batch(files, "t", 0, 0, pid=1, seq=0, n=10)
    # producer 2's only batch on t[0], and producer 3's only batch on t[1], were lost
    _put_json(files, META, {"producers": {"2": {"sequences": {"0": {"t": {"0": 40}}}},
                                          "3": {"sequences": {"0": {"t": {"1": 7}}}}}})
    _put_json(files, _wm("t", 0), {"low": None, "high": 50})
    _put_json(files, _wm("t", 1), {"low": None, "high": 7})
    repair(tmp_path, fsync=False)
    meta = _json(files, META)
    assert meta["producers"]["2"]["sequences"]["0"]["t"]["0"] == 0  # type: ignore[index]
    assert meta["producers"]["3"]["sequences"]["0"]["t"]["1"] == 0  # type: ignore[index]
    assert _json(files, _wm("t", 0))["high"] == 10  # type: ignore[index]
    assert _json(files, _wm("t", 1))["high"] == 0  # type: ignore[index]


def test_after_retention_a_producer_without_batches_is_left_alone(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path)
    # batches below 100 were removed by retention: producer 2's may have been among them
    _put_batch(files, "t", 0, 100, pid=1, seq=100, n=10)
    _put_json(files, META, {"producers": {"2": {"sequences": {"0": {"t": {"0": 40}}}}}})
    _put_json(files, _wm("t", 0), {"low": 100, "high": 110})
    assert not repair(tmp_path, fsync=False).changed
    meta = _json(files, META)
    assert meta["producers"]["2"]["sequences"]["0"]["t"]["0"] == 40  # type: ignore[index]


def test_an_unreadable_batch_is_reported_and_skipped(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path)
    _put_batch(files, "t", 0, 0, pid=1, seq=0, n=10)
    files.put(("clusters", C, "topics", "t", "partitions", "0000000000", "records",
               f"{10:0>20}.batch"), b"short")
    _put_json(files, META, {"producers": {"1": {"sequences": {"0": {"t": {"0": 10}}}}}})
    report = repair(tmp_path, fsync=False)
    assert len(report.unreadable) == 1 and "00000000000000000010.batch" in report.unreadable[0]
    assert not report.changed
    # a meta.json that is not JSON is reported, not fatal
    files.put(META, b"{not json")
    assert any("meta.json" in u for u in repair(tmp_path, fsync=False).unreadable)


def test_batch_header_checks_the_format() -> None:
    h = batch_header(_header_bytes(3, 1, 0, 0))
    assert (h.producer_id, h.producer_epoch, h.records, h.idempotent) == (3, 1, 1, True)
    assert not batch_header(_header_bytes(-1, -1, -1, 4)).idempotent
    with pytest.raises(BatchError, match="shorter"):
        batch_header(b"\x00" * 60)
    bad = bytearray(_header_bytes(3, 1, 0, 0))
    bad[16] = 1  # magic
    with pytest.raises(BatchError, match="magic 1"):
        batch_header(bytes(bad))
