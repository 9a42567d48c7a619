"""Retention of the broker's object server for topics no consumer group reads
(``broker.retain_unread_h`` / ``broker.retain_unread_mb``), on real object files."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from llmpulse.broker_storage import ObjectServer
from llmpulse.config import ConfigError, load_settings
from llmpulse.objstore import (
    ObjectFiles,
    PrunePolicy,
    batch_time,
    committed_floors,
    make_app,
    unread_expired,
)
from llmpulse.record_batch import _header_bytes

HOUR = 3600.0
NOW = 1_800_000_000.0  # a fixed "now", epoch seconds


def _records(topic: str, part: str = "0000000000") -> tuple[str, ...]:
    return ("clusters", "c", "topics", topic, "partitions", part, "records")


def _batch(files: ObjectFiles, topic: str, base: int, *, stored_h_ago: float,
           stamped_h_ago: float | None = None, part: str = "0000000000",
           size: int = 100) -> Path:
    """A 10-record batch stored ``stored_h_ago`` hours before NOW (its mtime) whose
    newest record is stamped ``stamped_h_ago`` hours before NOW (default: when stored)."""
    stamped = stored_h_ago if stamped_h_ago is None else stamped_h_ago
    ts_ms = int((NOW - stamped * HOUR) * 1000)
    data = _header_bytes(1, 0, base, 9, max_timestamp=ts_ms)
    data += b"r" * max(0, size - len(data))
    files.put((*_records(topic, part), f"{base:020d}.batch"), data)
    path = files.objects.joinpath(*_records(topic, part), f"{base:020d}.batch,o")
    mtime = NOW - stored_h_ago * HOUR
    os.utime(path, (mtime, mtime))
    return path


def _commit(files: ObjectFiles, group: str, topic: str, part: str, offset: int | str) -> None:
    files.put(("clusters", "c", "groups", "consumers", group, "offsets", topic, "partitions",
               f"{part}.json"), f'{{"offset": {offset}}}'.encode())


def _names(keys: list[tuple[str, ...]]) -> list[str]:
    return [f"{k[3]}/{k[5][-1]}/{int(k[7].split('.')[0])}" for k in keys]


def test_old_batches_of_unread_topics_go_from_the_start_and_the_newest_stays(
        tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    for i, age in enumerate([50, 40, 30, 2, 1]):
        _batch(files, "signals", 10 * i, stored_h_ago=age)
    # a read topic keeps its old batches: the commit-based pruning handles it
    for i, age in enumerate([50, 40]):
        _batch(files, "inference", 10 * i, stored_h_ago=age)
    read = {("c", "inference")}
    assert _names(unread_expired(files, read, NOW, max_age_s=24 * HOUR)) == [
        "signals/0/0", "signals/0/10", "signals/0/20"]
    # nothing configured: nothing goes
    assert unread_expired(files, read, NOW) == []
    # the newest batch stays however old: it proves the partition's high watermark
    assert _names(unread_expired(files, read, NOW, max_age_s=0.5 * HOUR)) == [
        "signals/0/0", "signals/0/10", "signals/0/20", "signals/0/30"]
    # the topic read by no one: the inference batches would go too
    assert "inference/0/0" in _names(unread_expired(files, set(), NOW, max_age_s=24 * HOUR))


def test_age_is_the_later_of_the_record_stamp_and_the_store_time(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    # stored 30 h ago but stamped 2 h ago (a producer clock ahead, or log-append time)
    _batch(files, "a", 0, stored_h_ago=30, stamped_h_ago=2)
    # stored 1 h ago but stamped 30 h ago (a backfill): not older than it was written
    _batch(files, "b", 0, stored_h_ago=1, stamped_h_ago=30)
    for topic in ("a", "b"):
        _batch(files, topic, 10, stored_h_ago=0)
    assert unread_expired(files, set(), NOW, max_age_s=24 * HOUR) == []
    path = files.objects.joinpath(*_records("a"), f"{0:020d}.batch,o")
    assert batch_time(path, NOW - 30 * HOUR) == pytest.approx(NOW - 2 * HOUR, abs=0.01)
    # the run stops at a young batch: nothing after it goes, the log stays contiguous
    _batch(files, "c", 0, stored_h_ago=30)
    _batch(files, "c", 10, stored_h_ago=1)
    _batch(files, "c", 20, stored_h_ago=30)
    _batch(files, "c", 30, stored_h_ago=0)
    assert _names(unread_expired(files, set(), NOW, max_age_s=24 * HOUR)) == ["c/0/0"]


def test_a_file_that_is_not_a_record_batch_is_never_removed(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    files.put((*_records("t"), f"{0:020d}.batch"), b"not a record batch")
    old = NOW - 48 * HOUR
    os.utime(files.objects.joinpath(*_records("t"), f"{0:020d}.batch,o"), (old, old))
    _batch(files, "t", 10, stored_h_ago=48)
    _batch(files, "t", 20, stored_h_ago=0)
    assert unread_expired(files, set(), NOW, max_age_s=HOUR, max_bytes=1) == []
    assert batch_time(files.objects.joinpath(*_records("t"), f"{0:020d}.batch,o"), old) is None


def test_size_cap_removes_the_oldest_while_a_partition_holds_too_much(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    for i in range(6):
        _batch(files, "t", 10 * i, stored_h_ago=0, size=1000)
        _batch(files, "t", 10 * i, stored_h_ago=0, size=1000, part="0000000001")
    keys = unread_expired(files, set(), NOW, max_bytes=2500)
    assert _names(keys) == [f"t/{p}/{b}" for p in (0, 1) for b in (0, 10, 20, 30)]
    # a cap below one batch still keeps the newest
    assert len(unread_expired(files, set(), NOW, max_bytes=1)) == 10
    # age and size together: whichever removes more
    for i in range(2):
        _batch(files, "t", 10 * i, stored_h_ago=48, size=1000)
    assert _names(unread_expired(files, set(), NOW, max_age_s=HOUR, max_bytes=5500)) == [
        "t/0/0", "t/0/10", "t/1/0"]


def test_a_live_commit_marks_the_topic_read_even_unparsable(tmp_path: Path) -> None:
    from llmpulse.objstore import _commits

    files = ObjectFiles(tmp_path, fsync=False)
    _commit(files, "g", "t1", "0000000000", 5)
    _commit(files, "g", "t2", "0000000000", '"nonsense"')
    _commit(files, "old", "t3", "0000000000", 5)
    gone = time.time() - 30 * 86400
    os.utime(files.objects.joinpath("clusters", "c", "groups", "consumers", "old", "offsets",
                                    "t3", "partitions", "0000000000.json,o"), (gone, gone))
    now = time.time()
    floors, read = _commits(files, now, 7 * 86400.0)
    assert floors == {("c", "t1", "0000000000"): 5}
    assert read == {("c", "t1"), ("c", "t2")}  # the expired group reads nothing any more
    assert committed_floors(files, now, 7 * 86400.0) == floors


def test_one_pass_prunes_read_and_unread_topics_each_by_its_rule(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    now = time.time()
    for topic in ("inference", "signals"):
        for part in ("0000000000", "0000000001"):
            for i, age in enumerate([50, 40, 1]):
                path = _batch(files, topic, 10 * i, stored_h_ago=0, stamped_h_ago=-1e6,
                              part=part)
                os.utime(path, (now - age * HOUR,) * 2)
    # a group commits on partition 0 of inference at 15: [0, 10) is consumed
    _commit(files, "g", "inference", "0000000000", 15)
    app = make_app(tmp_path, fsync=False)
    policy = PrunePolicy(margin=0, interval_s=1.0, min_age_s=0.0, unread_max_age_s=24 * HOUR)
    # the stamps lie far ahead: by age nothing goes yet, only the consumed batch
    assert asyncio.run(app["prune_once"](policy)) == 1
    for topic in ("inference", "signals"):
        for part in ("0000000000", "0000000001"):
            for i in range(3):
                path = files.objects.joinpath(*_records(topic, part), f"{10 * i:020d}.batch,o")
                stamped = _header_bytes(1, 0, 10 * i, 9, max_timestamp=int((now - 50 * HOUR)
                                                                            * 1000))
                if path.exists():
                    mtime = path.stat().st_mtime
                    path.write_bytes(stamped + b"r" * 39)
                    os.utime(path, (mtime, mtime))
    assert asyncio.run(app["prune_once"](policy)) == 4
    left = sorted(str(p.relative_to(files.objects / "clusters" / "c" / "topics"))
                  for p in files.objects.rglob("*.batch,o"))
    assert left == [
        # read topic: the committed-on partition as before, the other kept whole
        "inference/partitions/0000000000/records/00000000000000000010.batch,o",
        "inference/partitions/0000000000/records/00000000000000000020.batch,o",
        "inference/partitions/0000000001/records/00000000000000000000.batch,o",
        "inference/partitions/0000000001/records/00000000000000000010.batch,o",
        "inference/partitions/0000000001/records/00000000000000000020.batch,o",
        # unread topic: what is older than 24 h goes on every partition
        "signals/partitions/0000000000/records/00000000000000000020.batch,o",
        "signals/partitions/0000000001/records/00000000000000000020.batch,o"]


@pytest.mark.parametrize(("yaml", "key"), [
    ("broker:\n  retain_unread_h: -1\n", "broker.retain_unread_h"),
    ("broker:\n  retain_unread_h: .inf\n", "broker.retain_unread_h"),
    ("broker:\n  retain_unread_h: .nan\n", "broker.retain_unread_h"),
    ("broker:\n  retain_unread_mb: ten\n", "broker.retain_unread_mb"),
    ("broker:\n  retain_unread_mb: true\n", "broker.retain_unread_mb"),
])
def test_bad_unread_retention_settings_name_the_key(tmp_path: Path, yaml: str, key: str) -> None:
    (tmp_path / "llmpulse.yaml").write_text(yaml)
    with pytest.raises(ConfigError) as err:
        load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "d")},
                      path=tmp_path / "llmpulse.yaml")
    assert key in str(err.value)


def test_the_settings_reach_the_object_server(tmp_path: Path) -> None:
    (tmp_path / "llmpulse.yaml").write_text(
        "broker:\n  retain_unread_h: 0.5\n  retain_unread_mb: 2\n")
    settings = load_settings(env={"LLMPULSE_DATA_DIR": str(tmp_path / "d")},
                             path=tmp_path / "llmpulse.yaml").broker
    assert (settings.retain_unread_h, settings.retain_unread_mb) == (0.5, 2.0)
    server = ObjectServer.start(tmp_path / "store", settings=settings,
                                log_path=tmp_path / "objstore.log")
    try:
        args = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        opts = dict(zip(args, args[1:], strict=False))
        assert opts[b"--unread-max-age"] == b"1800.0"
        assert opts[b"--unread-max-bytes"] == b"2000000"
    finally:
        server.stop()


def test_the_commit_history_stays_bounded_and_never_runs_ahead_of_the_lag() -> None:
    from llmpulse.objstore import CommitHistory

    lag = 3600.0
    h = CommitHistory(lag_s=lag)
    tps = [("c", "t", f"{p:010d}") for p in range(50)]
    sizes = []
    for t in range(0, 5 * 3600, 1):  # a pass every second for five hours
        floors = h.observe(float(t), {tp: t for tp in tps})  # each group commits offset t at t
        sizes.append(len(h))
        if floors is not None:
            for f in floors.values():
                # never a commit younger than the lag; at most two slots (lag / 64) older
                assert t - lag - 2 * lag / 64 - 1 <= f <= t - lag
    assert max(sizes) <= 66
    assert h.observe(5 * 3600.0, {}) is not None  # the reference is still there
