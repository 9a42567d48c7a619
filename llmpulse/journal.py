"""An append-only on-disk journal of Kafka messages awaiting delivery.

The client shim writes here what it cannot hand to the broker (the in-memory
buffer is full, or librdkafka gave a message back as failed) and replays it,
oldest first, once delivery works again.

Layout: ``<dir>/<seq:016d>.seg`` segment files, written strictly in sequence
and never modified after a record is appended. A record is::

    u32 body_len | u32 crc32(body) | body
    body = u16 topic_len | u16 key_len | u32 n_events | topic | key | payload

(big-endian). Reading is crash-safe: a record whose length runs past the end
of the file or whose CRC does not match (a torn write) ends that segment; the
rest of it is ignored. A new process never appends to an old segment, so a
torn tail cannot hide later records.

Durability (``fsync``): ``"always"`` fsyncs after every append (survives a
power cut, slowest); ``"interval"`` (default) fsyncs at most every
``fsync_interval_s`` and at every segment roll and close, so a process crash
loses nothing (the data is in the OS page cache) and a power cut loses at most
the last interval; ``"never"`` leaves it to the OS.

Size is bounded by ``max_bytes`` (all segment files together): an append that
would exceed it is refused and the caller counts the events as dropped. A
segment is deleted once it is fully read and every record read from it has
been acknowledged with :meth:`Journal.ack` (delivered, or given up).

Delivery from the journal is at-least-once: records delivered but not yet
acknowledged when the process dies are replayed by the next one.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> j = Journal(d)
>>> j.append("llmpulse.inference", b"7", b'{"a":1}\\n{"a":2}', n_events=2)
True
>>> rec = j.next_record()
>>> rec.topic, rec.key, rec.payload, rec.n_events, j.pending_events
('llmpulse.inference', b'7', b'{"a":1}\\n{"a":2}', 2, 2)
>>> j.next_record() is None
True
>>> j.ack(rec); j.pending_events
0
>>> j.close()
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_fcntl: Any
_msvcrt: Any
try:
    import fcntl as _fcntl
except ImportError:  # Windows
    _fcntl = None
try:
    import msvcrt as _msvcrt
except ImportError:  # POSIX
    _msvcrt = None

__all__ = ["FSYNC_POLICIES", "Journal", "JournalRecord", "erase_from_journal"]

FSYNC_POLICIES = ("always", "interval", "never")

_HEAD = struct.Struct(">II")
_BODY_HEAD = struct.Struct(">HHI")
_MAX_BODY = 1 << 30


class _DirLock:
    """An exclusive lock on a journal directory, held until :meth:`release` or
    the process ends: ``flock`` on ``LOCK`` where there is :mod:`fcntl`, a
    byte-range lock of ``LOCK`` with :mod:`msvcrt` on Windows, and elsewhere an
    ``LOCK.pid`` file created exclusively, naming its owner (taken over once
    that process is gone).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> first = _DirLock.acquire(d)
    >>> first is not None, _DirLock.acquire(d)
    (True, None)
    >>> first.release(); again = _DirLock.acquire(d); again is not None
    True
    >>> again.release()
    """

    def __init__(self, directory: Path, fd: int, kind: str) -> None:
        self.directory = directory
        self._fd = fd
        self._kind = kind

    @classmethod
    def acquire(cls, directory: Path) -> _DirLock | None:
        """The lock, or None when another holder has it."""
        if _fcntl is None and _msvcrt is None:
            return cls._acquire_pid_file(directory)
        fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if _fcntl is not None:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                return cls(directory, fd, "flock")
            os.lseek(fd, 0, os.SEEK_SET)
            _msvcrt.locking(fd, _msvcrt.LK_NBLCK, 1)
            return cls(directory, fd, "msvcrt")
        except OSError:  # BlockingIOError (flock), PermissionError (msvcrt): held
            os.close(fd)
            return None

    @classmethod
    def _acquire_pid_file(cls, directory: Path) -> _DirLock | None:
        path = directory / "LOCK.pid"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if not _owner_gone(path):
                    return None
                path.unlink(missing_ok=True)  # its owner died without releasing it
                continue
            os.write(fd, str(os.getpid()).encode())
            return cls(directory, fd, "pid")
        return None

    def release(self) -> None:
        if self._fd < 0:
            return
        if self._kind == "flock":
            _fcntl.flock(self._fd, _fcntl.LOCK_UN)
        elif self._kind == "msvcrt":
            os.lseek(self._fd, 0, os.SEEK_SET)
            _msvcrt.locking(self._fd, _msvcrt.LK_UNLCK, 1)
        os.close(self._fd)
        self._fd = -1
        if self._kind == "pid":
            (self.directory / "LOCK.pid").unlink(missing_ok=True)


def _owner_gone(path: Path) -> bool:
    """The process named in a ``LOCK.pid`` file no longer runs (POSIX only: there
    ``kill(pid, 0)`` only asks; elsewhere a lock file is never taken over)."""
    try:
        pid = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return False  # being written right now, or unreadable: not ours to take
    if os.name != "posix" or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One journaled Kafka message (an envelope of ``n_events`` events)."""

    segment: int
    topic: str
    key: bytes | None
    payload: bytes
    n_events: int


class _Segment:
    __slots__ = ("seq", "path", "size", "valid", "events", "outstanding", "sealed")

    def __init__(self, seq: int, path: Path) -> None:
        self.seq = seq
        self.path = path
        self.size = 0  # bytes on disk
        self.valid = 0  # bytes of whole, checked records
        self.events = 0  # events in records not yet acknowledged
        self.outstanding = 0  # records read but not yet acknowledged
        self.sealed = False


def _encode(topic: str, key: bytes | None, payload: bytes, n_events: int) -> bytes:
    t = topic.encode()
    k = b"" if key is None else key
    body = b"".join((_BODY_HEAD.pack(len(t), len(k), n_events), t, k, payload))
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def _decode(seq: int, body: bytes) -> JournalRecord:
    tl, kl, n = _BODY_HEAD.unpack_from(body)
    o = _BODY_HEAD.size
    topic = body[o : o + tl].decode()
    key = body[o + tl : o + tl + kl] or None
    return JournalRecord(seq, topic, key, body[o + tl + kl :], n)


def _read_at(fd: int, offset: int, limit: int) -> tuple[bytes, int] | None:
    """The body of the record at ``offset`` and its total length, or None if torn."""
    if offset + _HEAD.size > limit:
        return None
    head = os.pread(fd, _HEAD.size, offset)
    if len(head) < _HEAD.size:
        return None
    n, crc = _HEAD.unpack(head)
    if n < _BODY_HEAD.size or n > _MAX_BODY or offset + _HEAD.size + n > limit:
        return None
    body = os.pread(fd, n, offset + _HEAD.size)
    if len(body) < n or zlib.crc32(body) != crc:
        return None
    return body, _HEAD.size + n


class Journal:
    """Segmented append-only journal; see the module docstring for the format.

    One process at a time owns a directory (an advisory lock enforces it).
    Records left by an earlier process are replayed first; their events are
    counted in :attr:`recovered_events`.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> j = Journal(d, max_bytes=200)
    >>> [j.append("t", None, b"x" * 60, 1) for _ in range(3)]
    [True, True, False]
    >>> j.close()
    >>> j = Journal(d)   # a new process finds both records
    >>> j.recovered_events, [r.payload[:3] for r in iter(j.next_record, None)]
    (2, [b'xxx', b'xxx'])
    >>> j.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        fsync: str = "interval",
        fsync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"journal_fsync: must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = int(segment_bytes)
        self.fsync = fsync
        self.fsync_interval_s = float(fsync_interval_s)
        self._clock = clock
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = _DirLock.acquire(self.directory)
        if lock is None:
            raise RuntimeError(
                f"journal directory {self.directory} is in use by another process; "
                "give each Monitor its own journal_dir"
            )
        self._lock: _DirLock | None = lock
        self._segments: dict[int, _Segment] = {}
        self._size = 0
        self._pending = 0
        self.recovered_events = 0
        for path in sorted(self.directory.glob("*.seg")):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            self._segments[seq] = self._scan(seq, path)
        for seg in self._segments.values():
            seg.sealed = True
            self._size += seg.size
            self._pending += seg.events
            self.recovered_events += seg.events
        next_seq = max(self._segments, default=0) + 1
        self._read_seq = min(self._segments, default=next_seq)
        self._read_off = 0
        self._read_fd: int | None = None
        self._read_fd_seq = -1
        self._write: _Segment
        self._write_fd = -1
        self._last_sync = self._clock()
        self._dirty = False
        self._open_segment(next_seq)

    # -- properties -----------------------------------------------------------

    @property
    def pending_events(self) -> int:
        """Events in records not yet acknowledged (unread, or read and in flight)."""
        return self._pending

    @property
    def size_bytes(self) -> int:
        """Bytes on disk in all segment files."""
        return self._size

    def has_unread(self) -> bool:
        """Whether :meth:`next_record` would return a record now."""
        seq, off = self._read_seq, self._read_off
        while True:
            seg = self._segments.get(seq)
            if seg is None:
                return False
            if off < seg.valid:
                return True
            if not seg.sealed:
                return False
            seq, off = seq + 1, 0

    # -- writing --------------------------------------------------------------

    def append(self, topic: str, key: bytes | None, payload: bytes, n_events: int) -> bool:
        """Add a record; False (nothing written) if it would exceed ``max_bytes``."""
        rec = _encode(topic, key, payload, n_events)
        if self._size + len(rec) > self.max_bytes:
            return False
        w = self._write
        if w.size and w.size + len(rec) > self.segment_bytes:
            self._roll()
            w = self._write
        # One write call per record: a reader in this process never sees half
        # a record, and after a crash a torn record is the last one.
        os.write(self._write_fd, rec)
        w.size += len(rec)
        w.valid = w.size
        w.events += n_events
        self._size += len(rec)
        self._pending += n_events
        self._dirty = True
        if self.fsync == "always":
            os.fsync(self._write_fd)
            self._dirty = False
        elif self.fsync == "interval":
            self.maybe_sync()
        return True

    def maybe_sync(self) -> None:
        """Fsync now if the ``"interval"`` policy is due (called by the shim's loop)."""
        if self._dirty and self.fsync != "never" and self._clock() - self._last_sync >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        """Fsync the segment being written."""
        if self._dirty and self._write_fd >= 0:
            os.fsync(self._write_fd)
        self._dirty = False
        self._last_sync = self._clock()

    # -- reading --------------------------------------------------------------

    def next_record(self) -> JournalRecord | None:
        """The oldest unread record, or None if everything has been read."""
        while True:
            seg = self._segments.get(self._read_seq)
            if seg is None:
                return None
            if self._read_off < seg.valid:
                fd = self._reader(seg)
                got = _read_at(fd, self._read_off, seg.valid)
                if got is None:  # cannot happen for our own writes; be safe
                    seg.valid = self._read_off
                    continue
                body, n = got
                self._read_off += n
                rec = _decode(seg.seq, body)
                seg.outstanding += 1
                return rec
            if not seg.sealed:
                return None
            self._read_seq += 1
            self._read_off = 0
            self._maybe_delete(seg)

    def ack(self, rec: JournalRecord) -> None:
        """A record returned by :meth:`next_record` is done with (delivered or dropped)."""
        seg = self._segments.get(rec.segment)
        if seg is None:
            return
        seg.outstanding -= 1
        seg.events -= rec.n_events
        self._pending -= rec.n_events
        self._maybe_delete(seg)

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Fsync (unless ``"never"``), delete fully acknowledged segments, and
        release the directory."""
        if self._write_fd >= 0:
            if self.fsync != "never":
                self.sync()
            os.close(self._write_fd)
            self._write_fd = -1
            self._write.sealed = True
            for seg in list(self._segments.values()):
                read = seg.seq < self._read_seq or (seg.seq == self._read_seq and self._read_off >= seg.valid)
                if read and seg.outstanding == 0 and seg.events == 0:
                    self._unlink(seg)
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- internals ------------------------------------------------------------

    def _scan(self, seq: int, path: Path) -> _Segment:
        seg = _Segment(seq, path)
        seg.size = path.stat().st_size
        fd = os.open(path, os.O_RDONLY)
        try:
            off = 0
            while True:
                got = _read_at(fd, off, seg.size)
                if got is None:
                    break
                body, n = got
                seg.events += _BODY_HEAD.unpack_from(body)[2]
                off += n
            seg.valid = off
        finally:
            os.close(fd)
        return seg

    def _open_segment(self, seq: int) -> None:
        seg = _Segment(seq, self.directory / f"{seq:016d}.seg")
        self._write_fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        if self.fsync != "never":
            self._sync_dir()
        self._segments[seq] = seg
        self._write = seg

    def _roll(self) -> None:
        if self.fsync != "never":
            self.sync()
        os.close(self._write_fd)
        self._write.sealed = True
        old = self._write
        self._open_segment(old.seq + 1)
        if old.seq < self._read_seq:
            self._maybe_delete(old)

    def _reader(self, seg: _Segment) -> int:
        if self._read_fd_seq != seg.seq:
            if self._read_fd is not None:
                os.close(self._read_fd)
            self._read_fd = os.open(seg.path, os.O_RDONLY)
            self._read_fd_seq = seg.seq
        assert self._read_fd is not None
        return self._read_fd

    def _maybe_delete(self, seg: _Segment) -> None:
        if seg.sealed and seg.outstanding == 0 and seg.seq < self._read_seq:
            self._unlink(seg)

    def _unlink(self, seg: _Segment) -> None:
        if self._segments.pop(seg.seq, None) is None:
            return
        if self._read_fd_seq == seg.seq and self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None
            self._read_fd_seq = -1
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass
        self._size -= seg.size
        # Records past a torn tail were never readable: their events are gone.
        self._pending -= seg.events
        seg.events = 0

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def erase_from_journal(directory: str | os.PathLike[str], drop: Callable[[bytes], bool]) -> int:
    """Remove from a journal every event (one line of an envelope) for which
    ``drop(line)`` is true; the number of events removed.

    Each segment holding such an event is rewritten whole through a synced
    temporary file and a rename, so a crash leaves the old segment or the new
    one. Needs the directory's lock: a :class:`Journal` open in another process
    makes this raise ``RuntimeError`` (stop that app first, or erase again later).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> j = Journal(d); j.append("t", b"k", b'{"user":"a"}\\n{"user":"b"}', 2); j.close()
    True
    >>> erase_from_journal(d, lambda line: b'"a"' in line), erase_from_journal(d, lambda line: b'"a"' in line)
    (1, 0)
    >>> j = Journal(d); [r.payload for r in iter(j.next_record, None)]
    [b'{"user":"b"}']
    >>> j.close()
    """
    path = Path(directory)
    if not path.is_dir():
        return 0
    lock = _DirLock.acquire(path)
    if lock is None:
        raise RuntimeError(f"journal directory {path} is in use by a running app")
    try:
        removed = 0
        for seg_path in sorted(path.glob("*.seg")):
            data = seg_path.read_bytes()
            out: list[bytes] = []
            changed = False
            off = 0
            while off + _HEAD.size <= len(data):
                length, crc = _HEAD.unpack_from(data, off)
                body = data[off + _HEAD.size: off + _HEAD.size + length]
                if length < _BODY_HEAD.size or len(body) < length or zlib.crc32(body) != crc:
                    break  # a torn tail: never readable, dropped with the rewrite
                off += _HEAD.size + length
                rec = _decode(0, body)
                lines = rec.payload.split(b"\n")
                kept = [ln for ln in lines if not (ln.strip() and drop(ln))]
                if len(kept) == len(lines):
                    out.append(_encode(rec.topic, rec.key, rec.payload, rec.n_events))
                    continue
                changed = True
                gone = sum(1 for ln in lines if ln.strip()) - sum(1 for ln in kept if ln.strip())
                removed += gone
                payload = b"\n".join(ln for ln in kept if ln.strip())
                if payload:
                    out.append(_encode(rec.topic, rec.key, payload, rec.n_events - gone))
            if not changed:
                continue
            tmp = seg_path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(b"".join(out))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, seg_path)
        return removed
    finally:
        lock.release()
