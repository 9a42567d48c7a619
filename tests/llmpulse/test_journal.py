from __future__ import annotations

import os

import pytest

from llmpulse.journal import Journal


def _drain(j: Journal) -> list:
    return list(iter(j.next_record, None))


def test_records_round_trip_in_order(tmp_path):
    j = Journal(tmp_path)
    for i in range(50):
        assert j.append("t", str(i).encode(), b"p%d" % i, n_events=i + 1)
    assert j.pending_events == sum(range(1, 51))
    recs = _drain(j)
    assert [r.key for r in recs] == [str(i).encode() for i in range(50)]
    assert [r.payload for r in recs] == [b"p%d" % i for i in range(50)]
    assert [r.n_events for r in recs] == list(range(1, 51))
    assert not j.has_unread()
    for r in recs:
        j.ack(r)
    assert j.pending_events == 0
    j.close()


def test_none_key_round_trips(tmp_path):
    j = Journal(tmp_path)
    j.append("topic.x", None, b"", 0)
    (rec,) = _drain(j)
    assert (rec.topic, rec.key, rec.payload) == ("topic.x", None, b"")
    j.close()


def test_segments_roll_and_are_deleted_once_acknowledged(tmp_path):
    j = Journal(tmp_path, segment_bytes=200)
    for _ in range(20):
        j.append("t", b"k", b"x" * 50, 1)
    segs = sorted(tmp_path.glob("*.seg"))
    assert len(segs) >= 5
    recs = _drain(j)
    assert len(recs) == 20
    # Read but not acknowledged: the segments must stay (a crash would replay them).
    assert len(list(tmp_path.glob("*.seg"))) == len(segs)
    for r in recs:
        j.ack(r)
    j.next_record()  # moves the reader past the last sealed segment
    left = list(tmp_path.glob("*.seg"))
    assert len(left) == 1  # only the segment being written
    assert j.size_bytes == sum(p.stat().st_size for p in left)
    j.close()


def test_unacknowledged_records_are_replayed_by_the_next_process(tmp_path):
    j = Journal(tmp_path)
    for i in range(5):
        j.append("t", None, b"%d" % i, 2)
    recs = _drain(j)
    j.ack(recs[0])
    j.ack(recs[1])
    j.close()
    # Acknowledged records of a still-live segment are replayed too (at-least-once).
    j2 = Journal(tmp_path)
    assert j2.recovered_events == 10  # the whole segment survives: 5 records x 2 events
    assert [r.payload for r in _drain(j2)] == [b"0", b"1", b"2", b"3", b"4"]
    j2.close()


def test_torn_last_record_is_ignored(tmp_path):
    j = Journal(tmp_path)
    for i in range(3):
        j.append("t", None, b"payload-%d" % i, 1)
    j.close()
    (seg,) = tmp_path.glob("*.seg")
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 3)
    j2 = Journal(tmp_path)
    assert j2.recovered_events == 2
    assert [r.payload for r in _drain(j2)] == [b"payload-0", b"payload-1"]
    # New appends go to a new segment, readable after the torn one.
    j2.append("t", None, b"after", 1)
    assert [r.payload for r in _drain(j2)] == [b"after"]
    j2.close()


def test_corrupted_record_ends_its_segment(tmp_path):
    j = Journal(tmp_path)
    for i in range(3):
        j.append("t", None, b"payload-%d" % i, 1)
    j.close()
    (seg,) = tmp_path.glob("*.seg")
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0xFF  # flip a payload byte of the last record: CRC mismatch
    seg.write_bytes(bytes(data))
    j2 = Journal(tmp_path)
    assert [r.payload for r in _drain(j2)] == [b"payload-0", b"payload-1"]
    j2.close()


def test_max_bytes_refuses_appends(tmp_path):
    j = Journal(tmp_path, max_bytes=100)
    assert j.append("t", None, b"x" * 40, 1)
    assert not j.append("t", None, b"x" * 60, 1)
    assert j.pending_events == 1
    assert j.size_bytes <= 100
    j.close()


def test_one_process_per_directory(tmp_path):
    j = Journal(tmp_path)
    with pytest.raises(RuntimeError, match="in use"):
        Journal(tmp_path)
    j.close()
    Journal(tmp_path).close()


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_policies(tmp_path, policy):
    t = [0.0]
    j = Journal(tmp_path, fsync=policy, fsync_interval_s=1.0, clock=lambda: t[0])
    j.append("t", None, b"a", 1)
    t[0] = 2.0
    j.maybe_sync()
    j.close()
    assert [r.payload for r in _drain(Journal(tmp_path))] == [b"a"]


def test_bad_fsync_policy(tmp_path):
    with pytest.raises(ValueError, match="journal_fsync"):
        Journal(tmp_path, fsync="sometimes")


def test_empty_segment_removed_on_close(tmp_path):
    Journal(tmp_path).close()
    assert list(tmp_path.glob("*.seg")) == []
    assert os.path.exists(tmp_path / "LOCK")
