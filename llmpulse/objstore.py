"""A small S3-compatible object server on loopback: the embedded broker's disk.

Tansu can keep its log in S3 (``--storage-engine s3://tansu/``). This module
serves the part of the S3 API that Tansu uses, storing each object as a file
under ``<data-dir>/broker-store/``, so the embedded broker keeps what it
acknowledged across a kill of the broker or a reboot, with nothing but Python.

What is served, path-style, on one bucket (:data:`BUCKET`):

- ``PUT /tansu/<key>``: write (temp file, fsync, rename, fsync of the
  directory; without the fsyncs under ``--no-fsync``), with ``If-None-Match: *`` (create only) and ``If-Match: <etag>``
  (replace only that version), answered ``412 PreconditionFailed`` otherwise.
- ``GET``/``HEAD /tansu/<key>``: read, with ``Range: bytes=a-b``,
  ``If-Match`` and ``If-None-Match``.
- ``DELETE /tansu/<key>``.
- ``GET /tansu?list-type=2``: ListObjectsV2 (``prefix``, ``delimiter`` ``/``,
  ``start-after``, ``continuation-token``, ``max-keys``).

Everything else (other buckets, multipart uploads, ACLs, copies, v1
listings, ...) gets an S3-style XML error. Keys are decided from a real URL
parse (:func:`parse_target`): each ``/``-separated segment is
percent-decoded and must be a non-empty UTF-8 name other than ``.`` and
``..`` without NUL; a file name is the percent-encoded segment, so no key
can name a path outside the store.

ETags are the MD5 of the content (what S3 returns for a single-part PUT).

>>> parse_target("/tansu/clusters/c1/topics/t%2Fx", "")
('tansu', ('clusters', 'c1', 'topics', 't/x'), {})
>>> parse_target("/tansu/a/../../etc/passwd", "")
Traceback (most recent call last):
...
llmpulse.objstore.S3Error: InvalidKey: segment '..' is not allowed in a key
>>> file_for(Path("/s"), ("a", "b c", "t/x"))
PosixPath('/s/objects/a/b%20c/t%2Fx,o')
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, unquote_to_bytes, urlsplit
from xml.sax.saxutils import escape

from llmpulse.record_batch import BATCH_HEADER, BatchError, batch_header

__all__ = [
    "ACCESS_KEY_ENV",
    "BUCKET",
    "MAX_BODY",
    "ObjectFiles",
    "CommitHistory",
    "PrunePolicy",
    "S3Error",
    "access_key_of",
    "committed_floors",
    "file_for",
    "key_of",
    "main",
    "make_app",
    "parse_target",
    "batch_time",
    "prunable",
    "unread_expired",
]

log = logging.getLogger("llmpulse.objstore")

BUCKET = "tansu"
"""The one bucket served (the broker is started with ``s3://tansu/``)."""
MAX_BODY = 16 * 1024 * 1024
"""Largest object accepted (a record batch is at most what the broker takes, 1 MiB by default)."""
ACCESS_KEY_ENV = "LLMPULSE_OBJSTORE_ACCESS_KEY"
"""Environment variable with the access key id requests must be signed with (optional)."""
MAX_KEY = 1024
"""Longest key, in UTF-8 bytes (the S3 limit)."""
MAX_SEGMENT = 200
"""Longest key segment, in UTF-8 bytes (its percent-encoded file name must fit 255)."""
_FILE_SUFFIX = ",o"
"""Object files end with it; a percent-encoded segment never holds a comma, so an object
``a`` (file ``a,o``) and the objects under ``a/`` (folder ``a``) never collide."""
_TMP_MARK = ",tmp-"


class S3Error(Exception):
    """An S3 error answer: HTTP ``status``, S3 ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _bad_key(why: str) -> S3Error:
    return S3Error(400, "InvalidKey", why)


def parse_target(path: str, query: str) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """``(bucket, key segments, query)`` of a path-style request target.

    ``path`` is the raw (still percent-encoded) path. A query parameter given
    twice, or a key that is not a safe relative name, is an :class:`S3Error`.

    >>> parse_target("/tansu", "list-type=2&prefix=clusters%2F")
    ('tansu', (), {'list-type': '2', 'prefix': 'clusters/'})
    >>> parse_target("/tansu/a//b", "")
    Traceback (most recent call last):
    ...
    llmpulse.objstore.S3Error: InvalidKey: empty segment in key
    >>> parse_target("/tansu/a%00b", "")
    Traceback (most recent call last):
    ...
    llmpulse.objstore.S3Error: InvalidKey: NUL in key
    >>> parse_target("/%ff/a", "")
    Traceback (most recent call last):
    ...
    llmpulse.objstore.S3Error: InvalidBucketName: bucket name is not UTF-8
    """
    if not path.startswith("/"):
        raise S3Error(400, "InvalidURI", "the path must start with /")
    bucket_raw, _, key_raw = path[1:].partition("/")
    try:
        bucket = unquote_to_bytes(bucket_raw).decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error(400, "InvalidBucketName", "bucket name is not UTF-8") from None
    segments: list[str] = []
    if key_raw:
        if len(key_raw.encode()) > 3 * MAX_KEY:
            raise _bad_key("key too long")
        for part in key_raw.split("/"):
            try:
                seg = unquote_to_bytes(part).decode("utf-8")
            except UnicodeDecodeError:
                raise _bad_key("key is not UTF-8") from None
            if seg == "":
                raise _bad_key("empty segment in key")
            if seg in (".", ".."):
                raise _bad_key(f"segment {seg!r} is not allowed in a key")
            if "\0" in seg:
                raise _bad_key("NUL in key")
            if len(seg.encode()) > MAX_SEGMENT:
                raise _bad_key(f"key segment longer than {MAX_SEGMENT} bytes")
            segments.append(seg)
        if len("/".join(segments).encode()) > MAX_KEY:
            raise _bad_key(f"key longer than {MAX_KEY} bytes")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                          encoding="utf-8", errors="strict", max_num_fields=20)
    except ValueError as exc:
        raise S3Error(400, "InvalidArgument", f"bad query string: {exc}") from None
    for name, value in pairs:
        if name in params:
            raise S3Error(400, "InvalidArgument", f"query parameter {name!r} given twice")
        params[name] = value
    return bucket, tuple(segments), params


def _enc(seg: str) -> str:
    return quote(seg, safe="")


def _dec(name: str) -> str:
    return unquote(name, errors="strict")


def file_for(root: Path, segments: tuple[str, ...]) -> Path:
    """The file holding the object of ``segments`` (checked by :func:`parse_target`)."""
    *dirs, last = segments
    return root.joinpath("objects", *(_enc(d) for d in dirs), _enc(last) + _FILE_SUFFIX)


def key_of(segments: tuple[str, ...]) -> str:
    return "/".join(segments)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    mtime: float


@dataclass(slots=True)
class _Folder:
    """The cached listing of one folder: its objects by name, its sub-folders
    (file name, decoded name), and the folder's (inode, mtime) when read."""

    stamp: tuple[int, int]
    objects: dict[str, ObjectInfo] = field(default_factory=dict)
    folders: list[tuple[str, str]] = field(default_factory=list)


_Infos = list[ObjectInfo]


def _folder_stamp(folder: Path) -> tuple[int, int]:
    st = os.stat(folder)
    return st.st_ino, st.st_mtime_ns


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, max(size, 65536))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class ObjectFiles:
    """Objects as files under ``root/objects`` (synchronous; callers serialise writers).

    >>> import tempfile
    >>> fs = ObjectFiles(Path(tempfile.mkdtemp()))
    >>> fs.put(("a", "b"), b"x", if_none_match=True).size
    1
    >>> fs.put(("a", "b"), b"y", if_none_match=True)
    Traceback (most recent call last):
    ...
    llmpulse.objstore.S3Error: PreconditionFailed: a/b exists
    >>> [o.key for o in fs.list("a/")]
    ['a/b']
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._etags: dict[Path, tuple[tuple[int, int, int], str]] = {}
        # listings by folder: what a fetch lists (a partition's batches) is read many
        # times per second and changes by one object at a time
        self._folders: dict[Path, _Folder] = {}
        self._folders_lock = threading.Lock()
        self._sweep_temps()

    def _sweep_temps(self) -> None:
        """Remove temp files a killed server left behind (never renamed, so never an object)."""
        for dirpath, _dirs, files in os.walk(self.objects):
            for f in files:
                if _TMP_MARK in f:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(dirpath, f))

    def _etag(self, path: Path, st: os.stat_result) -> str:
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        hit = self._etags.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        etag = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        self._etags[path] = (stamp, etag)
        return etag

    def stat(self, segments: tuple[str, ...]) -> ObjectInfo | None:
        path = file_for(self.root, segments)
        try:
            st = path.stat()
            etag = self._etag(path, st)
        except (FileNotFoundError, NotADirectoryError):  # gone, or gone after the stat
            return None
        return ObjectInfo(key_of(segments), st.st_size, etag, st.st_mtime)

    def read(self, segments: tuple[str, ...]) -> tuple[ObjectInfo, bytes] | None:
        path = file_for(self.root, segments)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            # the open file is one version: a rename over it does not change what is read
            st = os.fstat(fd)
            data = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
        stamp = (st.st_ino, len(data), st.st_mtime_ns)
        hit = self._etags.get(path)
        if hit is not None and hit[0] == stamp:
            etag = hit[1]
        else:
            etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
            self._etags[path] = (stamp, etag)
        return ObjectInfo(key_of(segments), len(data), etag, st.st_mtime), data

    def put(self, segments: tuple[str, ...], data: bytes, *, if_none_match: bool = False,
            if_match: str | None = None) -> ObjectInfo:
        key = key_of(segments)
        if if_none_match or if_match is not None:
            current = self.stat(segments)
            if if_none_match and current is not None:
                raise S3Error(412, "PreconditionFailed", f"{key} exists")
            if if_match is not None:
                if current is None:
                    raise S3Error(404, "NoSuchKey", f"{key} does not exist")
                if if_match not in ("*", current.etag):
                    raise S3Error(412, "PreconditionFailed", f"{key} has another version")
        path = file_for(self.root, segments)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}{_TMP_MARK}{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        st = os.fstat(fd)
        os.close(fd)
        os.replace(tmp, path)
        if self.fsync:
            self._fsync_dir(path.parent)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        self._etags[path] = ((st.st_ino, st.st_size, st.st_mtime_ns), etag)
        info = ObjectInfo(key, len(data), etag, st.st_mtime)
        self._listed(path, segments[-1], info)
        return info

    def delete(self, segments: tuple[str, ...]) -> bool:
        path = file_for(self.root, segments)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return False
        self._etags.pop(path, None)
        self._listed(path, segments[-1], None)
        if self.fsync:
            self._fsync_dir(path.parent)
        return True

    def _listed(self, path: Path, name: str, info: ObjectInfo | None) -> None:
        """Bring the cached listing of ``path``'s folder up to date after a put
        (``info``) or a delete (None) of the object ``name`` there; the folders
        above it are read again at the next listing (a put may have made them)."""
        folder = path.parent
        with self._folders_lock:
            for above in folder.parents:
                if above == self.root:
                    break
                self._folders.pop(above, None)
            cached = self._folders.get(folder)
            if cached is None:
                return
            try:
                cached.stamp = _folder_stamp(folder)
            except OSError:
                del self._folders[folder]
                return
            if info is None:
                cached.objects.pop(name, None)
            else:
                cached.objects[name] = info

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _walk(self, folder: Path, prefix: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if _TMP_MARK in e.name:
                continue
            if e.is_dir(follow_symlinks=False):
                yield from self._walk(Path(e.path), (*prefix, _dec(e.name)))
            elif e.name.endswith(_FILE_SUFFIX) and e.is_file(follow_symlinks=False):
                yield key_of((*prefix, _dec(e.name[: -len(_FILE_SUFFIX)]))), Path(e.path)

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key (UTF-8 byte order).

        Each folder's listing is kept in memory: a put or delete through this
        object updates it, and a folder whose inode or modification time changed
        otherwise (another process wrote there) is read again.
        """
        parts = prefix.split("/")
        folders = tuple(p for p in parts[:-1])
        if any(p in ("", ".", "..") or "\0" in p for p in folders):
            return []  # no stored key has such a segment
        base = self.objects.joinpath(*(_enc(p) for p in folders))
        out: list[ObjectInfo] = []
        with self._folders_lock:
            self._collect(base, folders, out)
        out = [o for o in out if o.key.startswith(prefix)]
        out.sort(key=lambda o: o.key.encode())
        return out

    def _collect(self, folder: Path, prefix: tuple[str, ...], out: _Infos) -> None:
        """Append the objects under ``folder`` (caller holds ``_folders_lock``)."""
        try:
            stamp = _folder_stamp(folder)
        except (FileNotFoundError, NotADirectoryError):
            self._folders.pop(folder, None)
            return
        cached = self._folders.get(folder)
        if cached is None or cached.stamp != stamp:
            cached = self._scan(folder, prefix, stamp)
            self._folders[folder] = cached
        out.extend(cached.objects.values())
        for enc, name in cached.folders:
            self._collect(folder / enc, (*prefix, name), out)

    def _scan(self, folder: Path, prefix: tuple[str, ...], stamp: tuple[int, int]) -> _Folder:
        found = _Folder(stamp)
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return found
        for e in entries:
            if _TMP_MARK in e.name:
                continue
            if e.is_dir(follow_symlinks=False):
                found.folders.append((e.name, _dec(e.name)))
            elif e.name.endswith(_FILE_SUFFIX) and e.is_file(follow_symlinks=False):
                name = _dec(e.name[: -len(_FILE_SUFFIX)])
                path = Path(e.path)
                try:  # a delete (retention) may remove it between the scan and here
                    st = path.stat()
                    etag = self._etag(path, st)
                except FileNotFoundError:
                    continue
                found.objects[name] = ObjectInfo(key_of((*prefix, name)), st.st_size, etag,
                                                 st.st_mtime)
        return found

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for _, p in self._walk(self.objects, ()))


# -- retention ----------------------------------------------------------------------------

_BATCH_SUFFIX = ".batch"

Partition = tuple[str, str, str]
"""(cluster, topic, partition folder) of the broker's layout."""


@dataclass(frozen=True, slots=True)
class PrunePolicy:
    """Which stored record batches the object server removes.

    A batch of a partition goes once every consumer group that commits on
    that partition had committed past its last record (less ``margin``
    records) ``min_age_s`` seconds ago already: what was committed within the
    last ``min_age_s`` stays, for a reader that replays a little behind its
    group's commit (the signal engine restarts from its last snapshot, taken
    every ``signals.snapshot_s``). Partitions no group commits on are kept
    whole (nothing unconsumed is removed). A group whose commit of a
    partition is older than ``group_expiry_s`` (a group gone for good) no
    longer holds it back, as Kafka forgets the offsets of idle groups; 0
    never expires one. The newest batch of a partition is always kept.

    Topics no live group commits on (``llmpulse.signals`` is produced for
    readers outside the stack) are bounded like Kafka's ``retention.ms`` and
    ``retention.bytes`` instead: a batch goes once it is older than
    ``unread_max_age_s`` (0: kept however old), and the oldest go while a
    partition holds more than ``unread_max_bytes`` (0: no cap), see
    :func:`unread_expired`.
    """

    margin: int = 0
    interval_s: float = 30.0
    group_expiry_s: float = 7 * 86400.0
    min_age_s: float = 60.0
    unread_max_age_s: float = 0.0
    unread_max_bytes: int = 0


def _batch_base(name: str) -> int | None:
    """The base offset of a record batch file name, else None.

    >>> _batch_base("00000000000000000042.batch"), _batch_base("watermark.json")
    (42, None)
    """
    if not name.endswith(_BATCH_SUFFIX):
        return None
    digits = name[: -len(_BATCH_SUFFIX)]
    return int(digits) if digits.isdigit() and digits.isascii() else None


def committed_floors(files: ObjectFiles, now: float | None = None,
                     expiry_s: float = 0.0) -> dict[Partition, int]:
    """Lowest offset committed on each partition over the groups not expired."""
    return _commits(files, now, expiry_s)[0]


def _commits(files: ObjectFiles, now: float | None, expiry_s: float
             ) -> tuple[dict[Partition, int], set[tuple[str, str]]]:
    """The committed floors, and the ``(cluster, topic)`` pairs that any group not
    expired has a commit on (readable or not: an unreadable commit still marks a reader)."""
    import json

    now = time.time() if now is None else now
    out: dict[Partition, int] = {}
    read: set[tuple[str, str]] = set()
    clusters = files.objects / "clusters"
    try:
        cluster_names = [_dec(e.name) for e in os.scandir(clusters)
                         if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return out, read
    for cluster in cluster_names:
        prefix = ("clusters", cluster, "groups", "consumers")
        for key, path in files._walk(files.objects.joinpath(*(_enc(c) for c in prefix)), prefix):
            # clusters/<c>/groups/consumers/<group>/offsets/<topic>/partitions/<p>.json
            tail = key.split("/")[len(prefix):]
            if len(tail) != 5 or tail[1] != "offsets" or tail[3] != "partitions" \
                    or not tail[4].endswith(".json"):
                continue
            try:
                st = path.stat()
                if expiry_s and now - st.st_mtime > expiry_s:
                    continue
                read.add((cluster, tail[2]))
                if st.st_size > 64 * 1024:
                    continue
                offset = json.loads(path.read_bytes()).get("offset")
            except (OSError, ValueError, AttributeError):
                continue
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                continue
            tp = (cluster, tail[2], tail[4][: -len(".json")])
            out[tp] = min(out.get(tp, offset), offset)
    return out, read


class CommitHistory:
    """The committed floors as they were ``lag_s`` seconds ago.

    :meth:`observe` takes the floors of now and returns, per partition, the
    lower of now's floor and the floor of the newest observation at least
    ``lag_s`` old; partitions not committed on back then are left out. None
    until an observation is that old (a restarted server prunes nothing for
    ``lag_s``).

    At most ``max_entries`` observations are held, whatever ``lag_s`` and the
    pass interval: observations closer than ``lag_s / max_entries`` to the
    oldest of their slot are merged into it (the lower floor of each partition,
    the time of the newest), so a merged entry is never younger than what it
    holds and retention only ever waits a little longer.

    >>> h = CommitHistory(lag_s=60)
    >>> tp = ("c", "t", "0")
    >>> h.observe(0, {tp: 100}) is None, h.observe(30, {tp: 200}) is None
    (True, True)
    >>> h.observe(65, {tp: 300})
    {('c', 't', '0'): 100}
    >>> h.observe(95, {tp: 400, ("c", "t", "1"): 5})
    {('c', 't', '0'): 200}
    >>> h = CommitHistory(lag_s=3600, max_entries=8)
    >>> for t in range(0, 36_000, 10):
    ...     _ = h.observe(t, {tp: t})
    >>> len(h), h.observe(36_000, {tp: 36_000})
    (9, {('c', 't', '0'): 31950})
    """

    def __init__(self, lag_s: float, max_entries: int = 64) -> None:
        self.lag_s = lag_s
        self._slot_s = lag_s / max(1, max_entries)
        # (time of the slot's first observation, time of its newest, floors)
        self._seen: list[tuple[float, float, dict[Partition, int]]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, now: float, floors: dict[Partition, int]) -> dict[Partition, int] | None:
        last = self._seen[-1] if self._seen else None
        if last is not None and now - last[0] < self._slot_s:
            merged = dict(last[2])
            for tp, f in floors.items():
                merged[tp] = min(f, merged.get(tp, f))
            self._seen[-1] = (last[0], now, merged)
        else:
            self._seen.append((now, now, dict(floors)))
        old = [i for i, (_t0, t, _f) in enumerate(self._seen) if now - t >= self.lag_s]
        if not old:
            return None
        ref = self._seen[old[-1]][2]
        del self._seen[: old[-1]]  # the reference stays: it may be the one next time too
        return {tp: min(f, floors.get(tp, f)) for tp, f in ref.items()}


def prunable(files: ObjectFiles, floors: dict[Partition, int], margin: int = 0
             ) -> list[tuple[str, ...]]:
    """Keys (as segments) of the record batches wholly below ``floors`` less
    ``margin`` records, oldest first; the newest batch of a partition stays."""
    out: list[tuple[str, ...]] = []
    for (cluster, topic, part), floor in sorted(floors.items()):
        records = ("clusters", cluster, "topics", topic, "partitions", part, "records")
        folder = files.objects.joinpath(*(_enc(s) for s in records))
        try:
            names = [e.name[: -len(_FILE_SUFFIX)] for e in os.scandir(folder)
                     if e.name.endswith(_FILE_SUFFIX)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        bases = sorted((b, _dec(n)) for n in names if (b := _batch_base(_dec(n))) is not None)
        limit = floor - margin
        # a batch ends where the next begins
        for (_base, name), (next_base, _) in zip(bases, bases[1:], strict=False):
            if next_base > limit:
                break
            out.append((*records, name))
    return out


def _batch_files(folder: Path) -> list[tuple[int, str, Path]]:
    """``(base offset, key segment, file)`` of the record batches in a ``records``
    folder, by base offset."""
    try:
        names = [e.name for e in os.scandir(folder) if e.name.endswith(_FILE_SUFFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for n in names:
        name = _dec(n[: -len(_FILE_SUFFIX)])
        base = _batch_base(name)
        if base is not None:
            out.append((base, name, folder / n))
    out.sort()
    return out


def batch_time(path: Path, mtime: float) -> float | None:
    """When a stored record batch counts as written, for age-based retention (epoch s):
    the later of its header's max timestamp and when the object server stored it
    (``mtime``), so a producer's clock set in the past cannot make a batch expire
    before it was even written. None when the file is not a v2 record batch."""
    try:
        with open(path, "rb") as f:
            header = batch_header(f.read(BATCH_HEADER.size))
    except (OSError, BatchError):
        return None
    return max(mtime, header.max_timestamp / 1000.0)


def unread_expired(files: ObjectFiles, read: set[tuple[str, str]], now: float,
                   max_age_s: float = 0.0, max_bytes: int = 0) -> list[tuple[str, ...]]:
    """Keys (as segments) of the record batches that retention removes from the topics
    not in ``read`` (``(cluster, topic)`` pairs some live group commits on), oldest
    first: per partition, the batches older than ``max_age_s`` (:func:`batch_time`;
    0: none for age), then the oldest while the partition's batches hold more than
    ``max_bytes`` (0: none for size).

    Only a run of batches from the start of a partition goes, so the log stays
    contiguous and a reader from the earliest offset starts at the first batch
    kept; the newest batch of a partition always stays (it proves the high
    watermark, see :mod:`llmpulse.broker_log`); a file that is not a record batch
    stops the run and is never removed.
    """
    out: list[tuple[str, ...]] = []
    if max_age_s <= 0 and max_bytes <= 0:
        return out
    try:
        clusters = sorted(_dec(e.name) for e in os.scandir(files.objects / "clusters")
                          if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return out
    for cluster in clusters:
        topics_dir = files.objects.joinpath("clusters", _enc(cluster), "topics")
        try:
            topics = sorted(_dec(e.name) for e in os.scandir(topics_dir)
                            if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for topic in topics:
            if (cluster, topic) in read:
                continue
            parts_dir = topics_dir / _enc(topic) / "partitions"
            try:
                parts = sorted(_dec(e.name) for e in os.scandir(parts_dir)
                               if e.is_dir(follow_symlinks=False))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for part in parts:
                records = ("clusters", cluster, "topics", topic, "partitions", part, "records")
                batches = _batch_files(files.objects.joinpath(*(_enc(s) for s in records)))
                out.extend((*records, name) for name in
                           _expired_run(batches[:-1], batches[-1:], now, max_age_s, max_bytes))
    return out


def _expired_run(older: list[tuple[int, str, Path]], newest: list[tuple[int, str, Path]],
                 now: float, max_age_s: float, max_bytes: int) -> list[str]:
    """Names of the leading batches of ``older`` that go (see :func:`unread_expired`)."""
    sizes: list[int] = []
    times: list[float | None] = []
    for _base, _name, path in older + newest:
        try:
            st = path.stat()
        except OSError:
            st = None
        sizes.append(st.st_size if st is not None else 0)
        times.append(st.st_mtime if st is not None else None)
    gone, held = 0, sum(sizes)
    while gone < len(older):
        mtime = times[gone]
        if mtime is None:
            break  # removed meanwhile (an erasure, a rewrite): look again next pass
        aged = max_age_s > 0 and now - mtime >= max_age_s
        if aged:
            when = batch_time(older[gone][2], mtime)
            if when is None:
                break
            aged = now - when >= max_age_s
        over = max_bytes > 0 and held > max_bytes
        if over and not aged and batch_time(older[gone][2], mtime) is None:
            break
        if not (aged or over):
            break
        held -= sizes[gone]
        gone += 1
    return [name for _base, name, _path in older[:gone]]


# -- HTTP ---------------------------------------------------------------------------------

def _xml_error(err: S3Error, resource: str) -> tuple[int, bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(err.code)}</Code>'
            f"<Message>{escape(err.message)}</Message><Resource>{escape(resource)}</Resource>"
            f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>")
    return err.status, body.encode()


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _unquote_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """``(start, end exclusive)`` of one ``bytes=`` range; S3Error 416 when unsatisfiable.

    >>> _byte_range("bytes=2-5", 10), _byte_range("bytes=7-", 10), _byte_range("bytes=-3", 10)
    ((2, 6), (7, 10), (7, 10))
    """
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise S3Error(400, "InvalidArgument", "only one bytes= range is supported")
    first, sep, last = spec.strip().partition("-")
    if not sep or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        raise S3Error(400, "InvalidArgument", f"bad Range {header!r}")
    if first == "":
        if last == "" or int(last) == 0:
            raise S3Error(416, "InvalidRange", f"bad Range {header!r}")
        return max(0, size - int(last)), size
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise S3Error(416, "InvalidRange", f"range {header!r} outside {size} bytes")
    return start, end


_REFUSED_SUBRESOURCES = frozenset({
    "uploads", "uploadId", "partNumber", "acl", "policy", "tagging", "versioning", "versions",
    "versionId", "lifecycle", "cors", "website", "location", "delete", "restore", "select",
    "select-type", "torrent", "attributes", "legal-hold", "retention", "object-lock",
})


def access_key_of(authorization: str | None) -> str | None:
    """The access key id of an AWS Signature V4 ``Authorization`` header, else None.

    >>> access_key_of("AWS4-HMAC-SHA256 Credential=k1/20260101/us-east-1/s3/aws4_request, "
    ...               "SignedHeaders=host, Signature=ab")
    'k1'
    >>> access_key_of("Basic dXNlcjpwYXNz") is None, access_key_of(None) is None
    (True, True)
    """
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme != "AWS4-HMAC-SHA256":
        return None
    for part in rest.split(","):
        name, eq, value = part.strip().partition("=")
        if name == "Credential" and eq:
            key = value.split("/", 1)[0]
            return key or None
    return None


def make_app(root: Path, *, fsync: bool = True, max_body: int = MAX_BODY,
             prune: PrunePolicy | None = None, access_key: str | None = None) -> Any:
    """The aiohttp application serving the objects under ``root``; with ``prune``,
    a background task removes consumed record batches every ``prune.interval_s``;
    with ``access_key``, a request signed with another access key id (or none) is
    refused (the key is a secret shared with the broker through their environment,
    which other users cannot read; signatures are not checked)."""
    import hmac

    from aiohttp import web

    files = ObjectFiles(root, fsync=fsync)
    locks: dict[str, asyncio.Lock] = {}
    stats = {"requests": 0}

    async def write(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A put or delete: in a thread when it waits for the device (fsync), else
        here (a write to the page cache takes less than a thread hand-off)."""
        if fsync:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def lock_for(key: str) -> asyncio.Lock:
        lk = locks.get(key)
        if lk is None:
            lk = locks[key] = asyncio.Lock()
        return lk

    def xml(status: int, body: bytes) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/xml")

    def obj_headers(info: ObjectInfo) -> dict[str, str]:
        return {"ETag": f'"{info.etag}"', "Last-Modified": _http_date(info.mtime),
                "Accept-Ranges": "bytes"}

    async def list_objects(params: dict[str, str]) -> web.Response:
        if params.get("list-type") != "2":
            raise S3Error(501, "NotImplemented", "only ListObjectsV2 (list-type=2) is served")
        known = {"list-type", "prefix", "delimiter", "start-after", "continuation-token",
                 "max-keys", "encoding-type", "fetch-owner"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise S3Error(501, "NotImplemented", f"list parameter {unknown[0]!r} is not served")
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        if delimiter not in ("", "/"):
            raise S3Error(501, "NotImplemented", "only the delimiter '/' is served")
        try:
            max_keys = min(1000, int(params.get("max-keys", "1000")))
        except ValueError:
            raise S3Error(400, "InvalidArgument", "max-keys must be an integer") from None
        if max_keys < 0:
            raise S3Error(400, "InvalidArgument", "max-keys must be >= 0")
        after = params.get("start-after", "")
        token = params.get("continuation-token")
        if token is not None:
            try:
                after = max(after, base64.urlsafe_b64decode(token.encode()).decode())
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise S3Error(400, "InvalidArgument", "bad continuation-token") from None
        objects = files.list(prefix)  # from memory, or one folder read: no thread needed
        contents: list[ObjectInfo] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for o in objects:
            if after and o.key.encode() <= after.encode():
                continue
            common = None
            if delimiter:
                cut = o.key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = o.key[: cut + 1]
            if common is not None and prefixes and prefixes[-1] == common:
                continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            if common is not None:
                prefixes.append(common)
                # skip the rest of this common prefix: the token resumes after it
                last = common + "\U0010ffff"
            else:
                contents.append(o)
                last = o.key
        parts = ['<?xml version="1.0" encoding="UTF-8"?>\n'
                 '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                 f"<Name>{BUCKET}</Name><Prefix>{escape(prefix)}</Prefix>",
                 f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
                 f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        if truncated:
            tok = base64.urlsafe_b64encode(last.encode()).decode()
            parts.append(f"<NextContinuationToken>{tok}</NextContinuationToken>")
        for o in contents:
            parts.append(f"<Contents><Key>{escape(o.key)}</Key><LastModified>{_iso(o.mtime)}"
                         f"</LastModified><ETag>&quot;{o.etag}&quot;</ETag><Size>{o.size}</Size>"
                         "<StorageClass>STANDARD</StorageClass></Contents>")
        for p in prefixes:
            parts.append(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        return xml(200, "".join(parts).encode())

    async def handle(request: web.Request) -> web.StreamResponse:
        if not log.isEnabledFor(logging.DEBUG):
            return await serve(request)
        t0 = time.perf_counter()
        resp = await serve(request)
        log.debug("served %s %s %d %.2f ms", request.method, urlsplit(request.raw_path).path,
                  resp.status, (time.perf_counter() - t0) * 1000)
        return resp

    async def serve(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        raw = urlsplit(request.raw_path)
        try:
            bucket, segments, params = parse_target(raw.path, raw.query)
            log.debug("%s %s?%s %s", request.method, raw.path, raw.query,
                      {k: v for k, v in request.headers.items()
                       if k.lower().startswith(("if-", "range", "content-length", "x-amz-meta"))})
            if access_key is not None:
                given = access_key_of(request.headers.get("Authorization")) or ""
                if not hmac.compare_digest(given.encode(), access_key.encode()):
                    raise S3Error(403, "AccessDenied", "unknown access key")
            if bucket != BUCKET:
                raise S3Error(404, "NoSuchBucket", f"only the bucket {BUCKET!r} is served")
            refused = sorted(set(params) & _REFUSED_SUBRESOURCES)
            if refused:
                raise S3Error(501, "NotImplemented", f"{refused[0]!r} is not served")
            if "x-amz-copy-source" in request.headers:
                raise S3Error(501, "NotImplemented", "copies are not served")
            if not segments:
                if request.method == "GET":
                    return await list_objects(params)
                if request.method == "HEAD":
                    return web.Response(status=200)
                raise S3Error(405, "MethodNotAllowed", f"{request.method} on the bucket")
            if params:
                raise S3Error(501, "NotImplemented", f"parameter {sorted(params)[0]!r} is not served")
            key = key_of(segments)
            if request.method == "PUT":
                return await put(request, segments, key)
            if request.method in ("GET", "HEAD"):
                return await get(request, segments, key)
            if request.method == "DELETE":
                async with lock_for(key):
                    await write(files.delete, segments)
                return web.Response(status=204)
            raise S3Error(405, "MethodNotAllowed", f"{request.method} is not served")
        except S3Error as err:
            if err.status >= 500 or err.code not in ("NoSuchKey", "PreconditionFailed",
                                                     "NotModified"):
                log.warning("%s %s: %s", request.method, raw.path, err)
            status, body = _xml_error(err, raw.path)
            if request.method == "HEAD":
                return web.Response(status=status)
            return xml(status, body)

    async def put(request: web.Request, segments: tuple[str, ...], key: str) -> web.Response:
        length = request.content_length
        if length is None:
            raise S3Error(411, "MissingContentLength", "PUT needs a Content-Length")
        if length > max_body:
            raise S3Error(400, "EntityTooLarge", f"objects are limited to {max_body} bytes")
        data = await request.read()
        if len(data) != length:
            raise S3Error(400, "IncompleteBody", "body shorter than its Content-Length")
        inm = request.headers.get("If-None-Match")
        if inm is not None and inm.strip() != "*":
            raise S3Error(501, "NotImplemented", "If-None-Match on PUT must be *")
        im = request.headers.get("If-Match")
        async with lock_for(key):
            info = await write(
                files.put, segments, data, if_none_match=inm is not None,
                if_match=_unquote_etag(im) if im is not None else None)
        return web.Response(status=200, headers={"ETag": f'"{info.etag}"'})

    async def get(request: web.Request, segments: tuple[str, ...], key: str) -> web.Response:
        if request.method == "HEAD":
            info = files.stat(segments)
            data = b""
        else:
            found = files.read(segments)
            info, data = found if found is not None else (None, b"")
        if info is None:
            raise S3Error(404, "NoSuchKey", f"{key} does not exist")
        im, inm = request.headers.get("If-Match"), request.headers.get("If-None-Match")
        if im is not None and _unquote_etag(im) not in ("*", info.etag):
            raise S3Error(412, "PreconditionFailed", f"{key} has another version")
        if inm is not None and _unquote_etag(inm) in ("*", info.etag):
            return web.Response(status=304, headers=obj_headers(info))
        headers = obj_headers(info)
        rng = request.headers.get("Range")
        if rng is not None:
            start, end = _byte_range(rng, info.size)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
            if request.method == "HEAD":
                return web.Response(status=206, headers=headers)
            return web.Response(status=206, body=data[start:end], headers=headers,
                                content_type="application/octet-stream")
        if request.method == "HEAD":
            headers["Content-Length"] = str(info.size)
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=data, headers=headers,
                            content_type="application/octet-stream")

    history = CommitHistory(prune.min_age_s if prune is not None else 0.0)

    async def prune_once(policy: PrunePolicy) -> int:
        now = time.time()
        current, read = await asyncio.to_thread(_commits, files, now, policy.group_expiry_s)
        floors = history.observe(time.monotonic(), current)
        doomed = await asyncio.to_thread(prunable, files, floors, policy.margin) if floors else []
        # topics no live group commits on now: by age and size, like Kafka's retention.ms
        doomed += await asyncio.to_thread(unread_expired, files, read, now,
                                          policy.unread_max_age_s, policy.unread_max_bytes)
        removed = 0
        for segments in doomed:
            async with lock_for(key_of(segments)):
                if await asyncio.to_thread(files.delete, segments):
                    removed += 1
        # the locks of removed keys are not needed any more
        for k in [k for k, lk in locks.items() if not lk.locked()]:
            del locks[k]
        return removed

    async def prune_loop(policy: PrunePolicy) -> None:
        while True:
            await asyncio.sleep(policy.interval_s)
            try:
                n = await prune_once(policy)
            except OSError as exc:
                log.warning("retention pass failed: %s", exc)
                continue
            stats["pruned"] = stats.get("pruned", 0) + n
            if n:
                log.info("retention removed %d record batches", n)

    async def start_pruning(app: web.Application) -> None:
        if prune is not None:
            app["pruner"] = asyncio.ensure_future(prune_loop(prune))

    async def stop_pruning(app: web.Application) -> None:
        task = app.get("pruner")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(start_pruning)
    app.on_cleanup.append(stop_pruning)
    app["files"] = files
    app["stats"] = stats
    app["prune_once"] = prune_once
    return app


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve(root: Path, host: str, port: int, fsync: bool,
                 prune: PrunePolicy | None, access_key: str | None) -> None:
    from aiohttp import web

    app = make_app(root, fsync=fsync, prune=prune, access_key=access_key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("object server on http://%s:%s storing under %s", host, port, root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``python -m llmpulse.objstore --root DIR --port N``: serve until SIGINT/SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m llmpulse.objstore", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, type=Path, help="folder of the objects")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--no-fsync", action="store_true",
                   help="write to the page cache only: objects survive a kill of any process, "
                        "not a power loss (broker.fsync: false)")
    p.add_argument("--debug", action="store_true", help="log every request")
    p.add_argument("--prune-margin", type=int, default=None,
                   help="remove record batches this many records below every group's commit "
                        "(default: keep everything)")
    p.add_argument("--prune-interval", type=float, default=30.0, help="seconds between passes")
    p.add_argument("--group-expiry", type=float, default=7 * 86400.0,
                   help="seconds after which an idle group's commits stop holding batches")
    p.add_argument("--prune-min-age", type=float, default=60.0,
                   help="seconds a commit must be old before the batches below it go")
    p.add_argument("--unread-max-age", type=float, default=0.0,
                   help="seconds after which record batches of topics no group commits on "
                        "go (default 0: kept)")
    p.add_argument("--unread-max-bytes", type=int, default=0,
                   help="bytes a partition of a topic no group commits on may hold before "
                        "its oldest record batches go (default 0: no cap)")
    args = p.parse_args(argv)
    if args.port <= 0 or args.port > 65535:
        print(f"--port: {args.port} is not a port", file=sys.stderr)
        return 2
    if args.prune_margin is not None and (args.prune_margin < 0 or args.prune_interval <= 0):
        print("--prune-margin/--prune-interval: must be >= 0 and > 0", file=sys.stderr)
        return 2
    if not args.unread_max_age >= 0 or args.unread_max_bytes < 0:
        print("--unread-max-age/--unread-max-bytes: must be >= 0", file=sys.stderr)
        return 2
    prune = (PrunePolicy(args.prune_margin, args.prune_interval, args.group_expiry,
                         args.prune_min_age, args.unread_max_age, args.unread_max_bytes)
             if args.prune_margin is not None else None)
    if not _loopback(args.host):
        print(f"--host: {args.host} is not a loopback address; the object server has no "
              f"authentication and binds to loopback only", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # the access key comes through the environment: an argument would be world-readable
    key = os.environ.pop(ACCESS_KEY_ENV, None) or None
    asyncio.run(_serve(args.root, args.host, args.port, not args.no_fsync, prune, key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
