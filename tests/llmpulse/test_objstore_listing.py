"""The object server's in-memory folder listings (llmpulse.objstore.ObjectFiles.list):
every put and delete shows at once, and a folder changed behind its back is read again."""

from __future__ import annotations

import os
import random
from pathlib import Path

from llmpulse.objstore import ObjectFiles

RECORDS = ("clusters", "c", "topics", "t", "partitions", "0000000000", "records")


def _batch(n: int) -> tuple[str, ...]:
    return (*RECORDS, f"{n:020d}.batch")


def _keys(files: ObjectFiles, prefix: str) -> list[str]:
    return [o.key for o in files.list(prefix)]


def _walked(files: ObjectFiles, prefix: str) -> list[str]:
    """What a listing read from the disk afresh holds (another instance, nothing cached)."""
    return _keys(ObjectFiles(files.root, fsync=False), prefix)


def test_puts_and_deletes_show_in_the_next_listing(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    rng = random.Random(7)
    alive: set[int] = set()
    for step in range(300):
        n = rng.randrange(60)
        if n in alive and rng.random() < 0.4:
            assert files.delete(_batch(n))
            alive.discard(n)
        else:
            files.put(_batch(n), os.urandom(rng.randrange(1, 64)))
            alive.add(n)
        if step % 7 == 0:
            got = files.list("clusters/c/topics/t/partitions/0000000000/records/")
            assert [o.key for o in got] == ["/".join(_batch(k)) for k in sorted(alive)]
            assert got == ObjectFiles(tmp_path, fsync=False).list(
                "clusters/c/topics/t/partitions/0000000000/records/")


def test_a_put_into_a_new_folder_shows_under_a_cached_parent(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    files.put(("clusters", "c", "meta.json"), b"{}")
    assert _keys(files, "clusters/") == ["clusters/c/meta.json"]
    files.put(_batch(0), b"x")  # makes six folders under the cached clusters/c
    files.put(("clusters", "c2", "meta.json"), b"{}")
    expected = ["clusters/c/meta.json", "/".join(_batch(0)), "clusters/c2/meta.json"]
    assert _keys(files, "clusters/") == sorted(expected, key=str.encode)
    assert _keys(files, "clusters/c/") == _walked(files, "clusters/c/")
    assert _keys(files, "clusters/c/m") == ["clusters/c/meta.json"]


def test_a_folder_changed_by_another_process_is_read_again(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    for n in range(3):
        files.put(_batch(n), b"x")
    prefix = "clusters/c/topics/t/"
    assert len(_keys(files, prefix)) == 3
    other = ObjectFiles(tmp_path, fsync=False)  # e.g. a repair run with the server stopped
    other.put(_batch(3), b"y")
    other.delete(_batch(0))
    folder = tmp_path.joinpath("objects", *RECORDS)
    # a later clock tick than the cached listing's (the folder's mtime is what is compared)
    st = folder.stat()
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert _keys(files, prefix) == _walked(files, prefix) == ["/".join(_batch(n)) for n in (1, 2, 3)]


def test_a_read_gives_the_etag_of_the_bytes_it_returns(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path, fsync=False)
    first = files.put(_batch(0), b"one")
    info, data = files.read(_batch(0)) or (None, b"")
    assert info is not None and (info.etag, data) == (first.etag, b"one")
    ObjectFiles(tmp_path, fsync=False).put(_batch(0), b"three")  # same size class, new inode
    info, data = files.read(_batch(0)) or (None, b"")
    assert info is not None and data == b"three" and info.etag != first.etag
    assert files.list("clusters/")[0].etag == info.etag


class _DeletedWhileListed(ObjectFiles):
    """A delete (retention, another process) lands between a file's stat and its read."""

    def __init__(self, root: Path, victim: tuple[str, ...]) -> None:
        super().__init__(root, fsync=False)
        self.victim = victim
        self.hits = 0

    def _etag(self, path: Path, st: os.stat_result) -> str:
        if path.name.startswith(self.victim[-1]) and path.exists():
            self.hits += 1
            path.unlink()
        return super()._etag(path, st)


def test_an_object_deleted_during_a_listing_or_a_stat_is_left_out_not_an_error(
        tmp_path: Path) -> None:
    for n in range(3):
        ObjectFiles(tmp_path, fsync=False).put(_batch(n), b"x" * (n + 1))
    files = _DeletedWhileListed(tmp_path, _batch(1))
    assert _keys(files, "clusters/") == _walked(files, "clusters/") \
        == ["clusters/c/topics/t/partitions/0000000000/records/" + f"{n:020d}.batch"
            for n in (0, 2)]
    assert files.hits == 1
    ObjectFiles(tmp_path, fsync=False).put(_batch(1), b"again")
    files = _DeletedWhileListed(tmp_path, _batch(1))
    assert files.stat(_batch(1)) is None and files.hits == 1
    assert files.stat(_batch(0)) is not None
