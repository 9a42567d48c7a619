"""Where the embedded broker keeps its log: on disk (default) or in memory.

``broker.storage: disk`` (the default) runs Tansu with ``--storage-engine s3://tansu/``
against :mod:`llmpulse.objstore`, a small S3-compatible server on loopback
that writes each object as a file under ``<data-dir>/broker-store/``. Both
processes outlive a crashed ``llmpulse up`` and are re-adopted by the next
one; a kill of either (or a reboot) loses nothing the broker acknowledged,
since Tansu acknowledges a produce only once the object server has written the
batch, and a log left half-written by a kill is repaired before the broker
starts again (:mod:`llmpulse.broker_log`). By default (``broker.fsync:
false``, as Apache Kafka, which leaves flushing to the operating system) a
write is acknowledged once it is in the page cache: that survives a kill -9 of
any process (``up``, the broker, the object server) and a clean reboot, but
not a power loss or an OS crash. ``broker.fsync: true`` syncs every object and
its folder to the device before the broker acknowledges, so an acknowledged
event survives a power loss too, and answers a produce several times later
(each produce is two or three object writes, one after the other). The object server also removes the record batches every
consumer group had committed past ``broker.retain_min_s`` seconds ago, and,
from topics no live group commits on (``llmpulse.signals``, produced for
readers outside the stack), the batches older than ``broker.retain_unread_h``
hours (and the oldest beyond ``broker.retain_unread_mb`` per partition), so
the disk stays bounded; an erasure rewrites the batches holding erased events
(:mod:`llmpulse.broker_erase`). ``broker.storage: memory`` (opt-in) answers
produces sooner, but a kill of the broker loses what it holds and its memory
grows with traffic.

The object server is recorded in ``<data-dir>/objstore.json``
(:class:`StoreRecord`) and, like the broker, is only ever adopted or stopped
when ``/proc/<pid>/cmdline`` shows it is ours.

>>> BrokerSettings.from_raw({"storage": "disk", "retain_margin": 10}, {}).retain_margin
10
>>> BrokerSettings.from_raw({"storage": "tape"}, {})
Traceback (most recent call last):
...
llmpulse.broker_storage.BrokerSettingsError: broker.storage: must be disk or memory, got 'tape'
>>> BrokerSettings.from_raw(None, {}).storage, BrokerSettings.from_raw(None, {}).fsync
('disk', False)
>>> BrokerSettings.from_raw(None, {"LLMPULSE_BROKER_STORAGE": "memory"}).storage
'memory'
>>> BrokerSettings.from_raw({"retain_unread_h": -1}, {})
Traceback (most recent call last):
...
llmpulse.broker_storage.BrokerSettingsError: broker.retain_unread_h: must be a number >= 0, got -1
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmpulse.broker import BrokerError, free_port, pid_alive, port_is_free, stop_pid
from llmpulse.objstore import ACCESS_KEY_ENV

__all__ = ["STORAGES", "STORE_DIR", "STORE_RECORD", "BrokerSettings", "BrokerSettingsError",
           "ObjectServer", "StoreRecord", "access_key", "broker_env", "ensure_object_server", "storage_cluster_id",
           "stop_recorded_store", "store_running"]

log = logging.getLogger("llmpulse.up")

STORAGES = ("disk", "memory")
STORE_DIR = "broker-store"
STORE_RECORD = "objstore.json"
S3_URL = "s3://tansu/"


class BrokerSettingsError(ValueError):
    """A bad ``broker:`` setting; the message starts with the key."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """The embedded broker's storage (``broker:`` in the YAML, ``LLMPULSE_BROKER_STORAGE``)."""

    storage: str = "disk"
    """``disk`` (the default; survives a kill of any process, bounded by retention) or
    ``memory`` (faster produces; a kill of the broker loses what it holds)."""
    retain_margin: int = 0
    """Records kept per partition below the lowest offset any consumer group committed."""
    prune_interval_s: float = 30.0
    """Seconds between two retention passes of the object server."""
    group_expiry_h: float = 168.0
    """Hours after which an idle consumer group no longer holds record batches back (0: never)."""
    retain_min_s: float = 60.0
    """Seconds a commit must be old before the record batches below it are removed (a
    reader replaying from a little behind its group's commit still finds them)."""
    fsync: bool = False
    """On disk: ``true`` syncs every object (and its folder) to the device before the
    broker acknowledges it, so an acknowledged event survives a power loss. ``false``
    (the default, as Kafka's): the page cache only, which survives a kill of any
    process but not a power loss or an OS crash; produces are acknowledged several
    times sooner."""
    retain_unread_h: float = 24.0
    """Hours after which the record batches of a topic no live consumer group commits on
    (``llmpulse.signals``, read outside the stack) are removed (0: kept however old)."""
    retain_unread_mb: float = 0.0
    """Megabytes one partition of a topic no live group commits on may hold before its
    oldest record batches are removed (0: no cap)."""

    @classmethod
    def from_raw(cls, raw: Any, env: Mapping[str, str]) -> BrokerSettings:
        if raw is not None and not isinstance(raw, Mapping):
            raise BrokerSettingsError(f"broker: must be a mapping, got {type(raw).__name__}")
        raw = dict(raw or {})
        known = {"storage", "retain_margin", "prune_interval_s", "group_expiry_h", "retain_min_s",
                 "fsync", "retain_unread_h", "retain_unread_mb"}
        for name in raw:
            if name not in known:
                raise BrokerSettingsError(
                    f"broker.{name}: unknown setting; known: {', '.join(sorted(known))}")
        key = "broker.storage"
        storage = raw.get("storage", "disk")
        if env.get("LLMPULSE_BROKER_STORAGE"):
            key, storage = "LLMPULSE_BROKER_STORAGE", env["LLMPULSE_BROKER_STORAGE"]
        if storage not in STORAGES:
            raise BrokerSettingsError(f"{key}: must be disk or memory, got {storage!r}")
        margin = raw.get("retain_margin", 0)
        if not isinstance(margin, int) or isinstance(margin, bool) or margin < 0:
            raise BrokerSettingsError(f"broker.retain_margin: must be an integer >= 0, got {margin!r}")
        values: dict[str, float] = {}
        for name, least in (("prune_interval_s", 1.0), ("group_expiry_h", 0.0),
                            ("retain_min_s", 0.0), ("retain_unread_h", 0.0),
                            ("retain_unread_mb", 0.0)):
            v = raw.get(name, getattr(cls(), name))
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not least <= v < math.inf:
                raise BrokerSettingsError(f"broker.{name}: must be a number >= {least:g}, got {v!r}")
            values[name] = float(v)
        fsync = raw.get("fsync", False)
        if not isinstance(fsync, bool):
            raise BrokerSettingsError(f"broker.fsync: must be true or false, got {fsync!r}")
        return cls(storage=str(storage), retain_margin=margin, fsync=fsync, **values)


@dataclass(frozen=True)
class StoreRecord:
    """Which process serves the broker's objects for a data directory, and where."""

    pid: int
    port: int
    root: str
    host: str = "127.0.0.1"
    started_at: float = 0.0

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def from_json(cls, text: str) -> StoreRecord:
        """Parse and check a record; :class:`BrokerError` naming the bad field.

        >>> StoreRecord.from_json('{"pid": 7, "port": 70000, "root": "/x"}')
        Traceback (most recent call last):
        ...
        llmpulse.broker.BrokerError: objstore.json: port must be an integer in 1..65535, got 70000
        """
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise BrokerError(f"{STORE_RECORD}: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise BrokerError(f"{STORE_RECORD}: must be an object")
        pid, port, root = raw.get("pid"), raw.get("port"), raw.get("root")
        host, started = raw.get("host", "127.0.0.1"), raw.get("started_at", 0.0)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            raise BrokerError(f"{STORE_RECORD}: pid must be an integer > 1, got {pid!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise BrokerError(f"{STORE_RECORD}: port must be an integer in 1..65535, got {port!r}")
        if not isinstance(root, str) or not root:
            raise BrokerError(f"{STORE_RECORD}: root must be a path, got {root!r}")
        if not isinstance(host, str) or not host:
            raise BrokerError(f"{STORE_RECORD}: host must be a string, got {host!r}")
        if not isinstance(started, (int, float)) or isinstance(started, bool):
            raise BrokerError(f"{STORE_RECORD}: started_at must be a number, got {started!r}")
        return cls(pid=pid, port=port, root=root, host=host, started_at=float(started))


def read_store_record(data_dir: Path) -> StoreRecord | None:
    try:
        text = (data_dir / STORE_RECORD).read_text()
    except OSError:
        return None
    try:
        return StoreRecord.from_json(text)
    except BrokerError as exc:
        log.warning("ignoring %s: %s", data_dir / STORE_RECORD, exc)
        return None


def _write_store_record(data_dir: Path, rec: StoreRecord) -> None:
    path = data_dir / STORE_RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(rec), indent=2))
    os.replace(tmp, path)


def is_recorded_store(rec: StoreRecord) -> bool:
    """``rec.pid`` is alive and runs ``-m llmpulse.objstore`` on ``rec``'s root and port
    (judged from ``/proc/<pid>/cmdline``; False where there is no ``/proc``)."""
    if not pid_alive(rec.pid):
        return False
    try:
        argv = Path(f"/proc/{rec.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in argv if a]
    if "llmpulse.objstore" not in args or args[args.index("llmpulse.objstore") - 1] != "-m":
        return False
    opts = dict(zip(args, args[1:], strict=False))
    return opts.get("--root") == rec.root and opts.get("--port") == str(rec.port) \
        and opts.get("--host") == rec.host


def _answers(endpoint: str, access_key: str | None, timeout: float = 2.0) -> bool:
    headers = {"Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/"} if access_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/tansu", method="HEAD",
                                                           headers=headers),
                                    timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class ObjectServer:
    """The :mod:`llmpulse.objstore` process of a data directory (started detached,
    stopped by pid)."""

    def __init__(self, rec: StoreRecord, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.record = rec
        self._proc = proc

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def endpoint(self) -> str:
        return self.record.endpoint

    @classmethod
    def start(cls, root: Path, *, port: int | None = None, host: str = "127.0.0.1",
              settings: BrokerSettings | None = None, log_path: Path | None = None,
              access_key: str | None = None, timeout: float = 20.0) -> ObjectServer:
        settings = settings or BrokerSettings()
        port = port or free_port(host)
        if not port_is_free(port, host):
            raise BrokerError(f"port {port} on {host} is busy: the broker's object server needs it")
        root.mkdir(parents=True, exist_ok=True)
        log_path = log_path or root.parent / "objstore.log"
        args = [sys.executable, "-m", "llmpulse.objstore", "--root", str(root.absolute()),
                "--host", host, "--port", str(port),
                "--prune-margin", str(settings.retain_margin),
                "--prune-interval", str(settings.prune_interval_s),
                "--group-expiry", str(settings.group_expiry_h * 3600.0),
                "--prune-min-age", str(settings.retain_min_s),
                "--unread-max-age", str(settings.retain_unread_h * 3600.0),
                "--unread-max-bytes", str(int(settings.retain_unread_mb * 1e6)),
                *([] if settings.fsync else ["--no-fsync"])]
        # the server runs the code this process runs: its package folder goes first
        source = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
        env.pop(ACCESS_KEY_ENV, None)
        if access_key is not None:
            env[ACCESS_KEY_ENV] = access_key
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, env=env,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        rec = StoreRecord(pid=proc.pid, port=port, root=str(root.absolute()), host=host,
                          started_at=time.time())
        server = cls(rec, proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"the broker's object server exited at start (see {log_path})")
            if _answers(rec.endpoint, access_key, timeout=0.5):
                log.info("broker object server pid %s on %s, objects in %s", proc.pid,
                         rec.endpoint, root)
                return server
            time.sleep(0.1)
        server.stop()
        raise BrokerError(f"the broker's object server did not answer on {rec.endpoint} "
                          f"within {timeout:g} s (see {log_path})")

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (it finishes the request in flight), SIGKILL after ``timeout``."""
        stop_pid(self.pid, timeout, signal.SIGTERM)
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None


def ensure_object_server(data_dir: Path, settings: BrokerSettings, *,
                         host: str = "127.0.0.1") -> tuple[ObjectServer, bool]:
    """The data directory's object server, re-adopted if still running, else started
    (on the recorded port when free) and recorded. Returns ``(server, adopted)``."""
    root = (data_dir / STORE_DIR).absolute()
    key = access_key(data_dir)
    rec = read_store_record(data_dir)
    if rec is not None and rec.root == str(root) and rec.host == host and is_recorded_store(rec):
        if _answers(rec.endpoint, key, timeout=5.0):
            log.info("re-using the broker object server (pid %s, %s)", rec.pid, rec.endpoint)
            return ObjectServer(rec), True
        raise BrokerError(f"the broker object server of {data_dir} (pid {rec.pid}, "
                          f"{rec.endpoint}) is running but does not answer; stop it "
                          f"(kill {rec.pid}) and start again")
    port = rec.port if rec is not None and port_is_free(rec.port, host) else None
    server = ObjectServer.start(root, port=port, host=host, settings=settings,
                                log_path=data_dir / "objstore.log", access_key=key)
    _write_store_record(data_dir, server.record)
    return server, False


def store_running(data_dir: Path, host: str = "127.0.0.1") -> bool:
    """Whether the object server recorded in ``data_dir`` is ours, running and answering."""
    rec = read_store_record(data_dir)
    root = (data_dir / STORE_DIR).absolute()
    return (rec is not None and rec.root == str(root) and rec.host == host
            and is_recorded_store(rec) and _answers(rec.endpoint, access_key(data_dir), 5.0))


def stop_recorded_store(data_dir: Path, timeout: float = 5.0) -> int | None:
    """Stop the object server recorded in ``data_dir`` if it is still ours; its pid, or None."""
    rec = read_store_record(data_dir)
    if rec is None:
        return None
    stopped = None
    if is_recorded_store(rec):
        stop_pid(rec.pid, timeout, signal.SIGTERM)
        stopped = rec.pid
    if read_store_record(data_dir) == rec:
        try:
            (data_dir / STORE_RECORD).unlink()
        except FileNotFoundError:
            pass
    return stopped


def access_key(data_dir: Path) -> str:
    """The access key the broker and its object server share: made once, kept in a
    file only this user can read (``<data-dir>/broker-store/access-key``)."""
    path = data_dir / STORE_DIR / "access-key"
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if len(found) == 32 and found.isalnum():
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    made = secrets.token_hex(16)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(made)
    os.replace(tmp, path)
    return made


def storage_cluster_id(data_dir: Path) -> str:
    """The broker's cluster id for a disk log: made once, kept next to the objects
    (the log is found under it at the next start)."""
    path = data_dir / STORE_DIR / "cluster-id"
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        found = ""
    if found.startswith("llmpulse-") and found[9:].isalnum() and len(found) <= 64:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    made = f"llmpulse-{secrets.token_hex(16)}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(made)
    os.replace(tmp, path)
    return made


def broker_env(endpoint: str, key: str, base: Mapping[str, str] | None = None
               ) -> dict[str, str]:
    """The broker's environment for the object server at ``endpoint``: the caller's
    without any ``AWS_*`` variable (a user's profile or endpoint must not redirect it),
    plus the endpoint and the access key id the server expects (``key``).

    >>> env = broker_env("http://127.0.0.1:9", "k", {"AWS_ENDPOINT_URL_S3": "https://x",
    ...                                               "HOME": "/h"})
    >>> env["AWS_ENDPOINT"], "AWS_ENDPOINT_URL_S3" in env, env["HOME"], env["AWS_ACCESS_KEY_ID"]
    ('http://127.0.0.1:9', False, '/h', 'k')
    """
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.upper().startswith("AWS_")}
    env.update({"AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": "unused",
                "AWS_DEFAULT_REGION": "us-east-1"})
    return env
