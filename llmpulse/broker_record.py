"""An embedded broker that outlives a crashed ``llmpulse up`` and is re-adopted.

Tansu keeps topics in memory. If the broker died with ``up``, a ``kill -9``
of ``up`` (or an out-of-memory kill, or a closed terminal) would take every
acknowledged event not yet stored with it. So ``up`` starts the broker
detached and records it in ``<data-dir>/broker.json``
(:class:`BrokerRecord`); the next ``up`` from the same data directory checks
that the recorded process really is our Tansu broker listening on the
recorded port, and uses it again: the worker resumes from its committed
offsets, and producers keep the same bootstrap address. ``up`` stops the
broker only when every message on the raw topics is stored and committed
(:func:`unstored`); otherwise it leaves it running and says so.

With ``broker.storage: memory`` (opt-in) the broker process itself dying
(kill -9 of the broker, a reboot) still loses what it holds; with ``disk`` (the
default, :mod:`llmpulse.broker_storage`) the log is on disk, the broker and its
object server are stopped at every clean stop and a kill of either loses nothing.

>>> rec = BrokerRecord(pid=4242, port=24001, binary="/opt/tansu")
>>> BrokerRecord.from_json(rec.to_json()) == rec
True
>>> BrokerRecord.from_json('{"pid": "1; rm -rf /", "port": 1, "binary": "x"}')
Traceback (most recent call last):
...
llmpulse.broker.BrokerError: broker.json: pid must be an integer > 1, got '1; rm -rf /'
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmpulse.broker import BrokerError, EmbeddedBroker, pid_alive, port_is_free, tansu_binary
from llmpulse.broker_log import repair
from llmpulse.broker_storage import (
    S3_URL,
    STORE_DIR,
    BrokerSettings,
    access_key,
    broker_env,
    ensure_object_server,
    stop_recorded_store,
    storage_cluster_id,
    store_running,
)

if TYPE_CHECKING:
    from llmpulse.kafka_security import KafkaSecurity

__all__ = ["RECORD_FILE", "BrokerRecord", "adopt_or_start", "disk_backed", "finish",
           "read_record", "stop_recorded_broker", "unstored", "verify"]

log = logging.getLogger("llmpulse.up")

RECORD_FILE = "broker.json"


@dataclass(frozen=True)
class BrokerRecord:
    """Which process serves the embedded broker of a data directory, and where."""

    pid: int
    port: int
    binary: str
    host: str = "127.0.0.1"
    started_at: float = 0.0

    @property
    def listener(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> BrokerRecord:
        """Parse and check a record; :class:`BrokerError` naming the bad field."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise BrokerError(f"{RECORD_FILE}: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise BrokerError(f"{RECORD_FILE}: must be an object")
        pid, port = raw.get("pid"), raw.get("port")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            raise BrokerError(f"{RECORD_FILE}: pid must be an integer > 1, got {pid!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise BrokerError(f"{RECORD_FILE}: port must be an integer in 1..65535, got {port!r}")
        binary, host = raw.get("binary"), raw.get("host", "127.0.0.1")
        if not isinstance(binary, str) or not binary:
            raise BrokerError(f"{RECORD_FILE}: binary must be a path, got {binary!r}")
        if not isinstance(host, str) or not host:
            raise BrokerError(f"{RECORD_FILE}: host must be a string, got {host!r}")
        started = raw.get("started_at", 0.0)
        if not isinstance(started, (int, float)) or isinstance(started, bool):
            raise BrokerError(f"{RECORD_FILE}: started_at must be a number, got {started!r}")
        return cls(pid=pid, port=port, binary=binary, host=host, started_at=float(started))


def read_record(data_dir: Path) -> BrokerRecord | None:
    """The recorded broker, or None (no record, or one that does not parse: it is ignored)."""
    try:
        text = (data_dir / RECORD_FILE).read_text()
    except OSError:
        return None
    try:
        return BrokerRecord.from_json(text)
    except BrokerError as exc:
        log.warning("ignoring %s: %s", data_dir / RECORD_FILE, exc)
        return None


def _write_record(data_dir: Path, rec: BrokerRecord) -> None:
    path = data_dir / RECORD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(rec.to_json())
    os.replace(tmp, path)


PORT_FILE = "broker.port"
"""The port of the broker a clean stop ended: the next start listens on it again when
it is free. Producers that outlive the stack (an app's shim, with its events waiting
in memory or its journal) keep their bootstrap address; after a clean stop the port
was chosen anew and such an app never reached the broker again."""


def _remove_record(data_dir: Path, rec: BrokerRecord) -> None:
    if read_record(data_dir) == rec:
        try:
            (data_dir / PORT_FILE).write_text(f"{rec.port}\n")
        except OSError as exc:
            log.warning("the broker's port is not kept for the next start: %s", exc)
        try:
            (data_dir / RECORD_FILE).unlink()
        except FileNotFoundError:
            pass


def last_port(data_dir: Path) -> int | None:
    """The port a clean stop left in ``data_dir`` (None: none, or not a port).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / PORT_FILE).write_text("29092\\n")
    6
    >>> last_port(d), (d / PORT_FILE).write_text("x"), last_port(d)
    (29092, 1, None)
    >>> [((d / PORT_FILE).write_text(t), last_port(d))[1] for t in ("9" * 5000, "\\u00b2", "70000")]
    [None, None, None]
    """
    try:
        text = (data_dir / PORT_FILE).read_text(errors="replace")[:16].strip()
    except OSError:
        return None
    # ASCII digits only: str.isdigit() takes "²", and int() refuses a 5,000-digit run
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        return None
    return int(text) if 0 < int(text) < 65536 else None


def is_recorded_process(rec: BrokerRecord) -> bool:
    """``rec.pid`` is alive and runs the recorded Tansu binary as a broker on ``rec``'s listener.

    Judged from the process's own argument vector (``/proc/<pid>/cmdline``),
    so a pid reused by an unrelated process is never taken for the broker.
    Where there is no ``/proc`` this is False: nothing is adopted or stopped.
    """
    if not pid_alive(rec.pid):
        return False
    try:
        argv = Path(f"/proc/{rec.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in argv if a]
    if len(args) < 2 or args[1] != "broker":
        return False
    try:
        same_binary = os.path.samefile(args[0], rec.binary)
    except OSError:
        same_binary = False
    if not same_binary:
        return False
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--listener-url":
            return value == rec.listener
    return False


def _answers(rec: BrokerRecord, timeout: float) -> bool:
    """A Kafka broker answers a metadata request on ``rec``'s port."""
    try:
        with socket.create_connection((rec.host, rec.port), timeout=min(timeout, 2.0)):
            pass
    except OSError:
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"{rec.host}:{rec.port}",
                         "socket.timeout.ms": int(timeout * 1000)})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def verify(rec: BrokerRecord, timeout: float = 5.0) -> bool:
    """The recorded broker is ours (:func:`is_recorded_process`) and answers Kafka requests."""
    return is_recorded_process(rec) and _answers(rec, timeout)


def adopt_or_start(data_dir: Path, *, host: str = "127.0.0.1",
                   binary: str | None = None,
                   storage: BrokerSettings | None = None) -> tuple[EmbeddedBroker, bool]:
    """The data directory's broker, re-adopted if a previous ``up`` left it running,
    else started detached (on the recorded port when it is free, so producers'
    bootstrap addresses stay valid) and recorded. Returns ``(broker, adopted)``.

    ``storage`` (default: in memory) with ``storage="disk"`` first adopts or
    starts the object server the broker keeps its log in."""
    log_path = data_dir / "broker.log"
    disk = storage is not None and storage.storage == "disk"
    env: dict[str, str] | None = None
    store_adopted = True
    if disk:
        assert storage is not None
        _restart_over_repaired_log(data_dir, host)
        running = read_record(data_dir)
        if not (running is not None and running.host == host and is_recorded_process(running)):
            binary = binary or tansu_binary()  # no broker to start: fail before the object server
        server, store_adopted = ensure_object_server(data_dir, storage, host=host)
        env = broker_env(server.endpoint, access_key(data_dir))
    rec = read_record(data_dir)
    if rec is not None and rec.host == host and is_recorded_process(rec):
        if _answers(rec, timeout=10.0):
            log.warning("re-using the embedded broker (pid %s, %s) a previous run left "
                        "running; the events it holds are stored now", rec.pid, rec.listener)
            return EmbeddedBroker.adopt(rec.pid, rec.port, host=host, log_path=log_path), True
        raise BrokerError(
            f"the embedded broker of {data_dir} (pid {rec.pid}, {rec.listener}) is running but "
            f"does not answer; it may hold events not yet stored. Stop it (kill {rec.pid}) to "
            f"discard them, then start again")
    binary = binary or tansu_binary()
    kept = rec.port if rec is not None else last_port(data_dir)
    port = kept if kept is not None and port_is_free(kept, host) else None
    broker = EmbeddedBroker(port, host=host, log_path=log_path, binary=binary, detached=True,
                            storage=S3_URL if disk else "memory://tansu/", env=env,
                            cluster=storage_cluster_id(data_dir) if disk else None)
    try:
        broker.start()
    except BaseException:
        if disk and not store_adopted:
            stop_recorded_store(data_dir)  # started for this broker only
        raise
    assert broker.pid is not None
    _write_record(data_dir, BrokerRecord(pid=broker.pid, port=broker.port, binary=binary,
                                         host=host, started_at=time.time()))
    return broker, False


def _restart_over_repaired_log(data_dir: Path, host: str) -> None:
    """Unless both the broker and its object server still run, stop whichever does
    and repair the log (:func:`llmpulse.broker_log.repair`) before they start again.

    A kill of either in the middle of a produce can leave a producer's sequence
    ahead of the stored batches, and the broker caches it: both restart over the
    repaired files, or the producer's resend is answered as a duplicate and lost."""
    rec = read_record(data_dir)
    broker_alive = rec is not None and rec.host == host and is_recorded_process(rec)
    if broker_alive and rec is not None and _answers(rec, timeout=10.0) \
            and store_running(data_dir, host):
        return
    if broker_alive and rec is not None:
        log.warning("the embedded broker (pid %s) outlived its object server: restarting "
                    "both over a repaired log", rec.pid)
        # the record stays: the broker starts again on its port, where producers are
        EmbeddedBroker.adopt(rec.pid, rec.port, host=host).stop(10.0)
    stop_recorded_store(data_dir)
    store = data_dir / STORE_DIR
    if store.is_dir():
        repair(store)


def unstored(bootstrap: str, group: str, topics: Iterable[str], *, timeout: float = 10.0,
             security: KafkaSecurity | None = None) -> dict[str, int]:
    """Messages per topic beyond ``group``'s committed offsets (topics that do not
    exist count 0). Raises :class:`BrokerError` when the broker cannot tell.

    The end of each partition is read from a fetch at the committed offset, not
    from ListOffsets: Tansu 0.6 answers ListOffsets(latest) with the last
    batch's base offset + 1, which is short by all but one record of that batch.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "group.id": group,
                            "enable.auto.commit": False, "auto.offset.reset": "earliest",
                            "enable.partition.eof": True,
                            "socket.timeout.ms": int(timeout * 1000)}
    if security is not None:
        conf.update(security.librdkafka())
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(timeout=timeout)
        tps = [TopicPartition(t, p) for t in topics if t in meta.topics
               for p in sorted(meta.topics[t].partitions)]
        if not tps:
            return {}
        start = {(tp.topic, tp.partition): max(0, tp.offset)
                 for tp in consumer.committed(tps, timeout=timeout)}
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
        ends: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout
        while len(ends) < len(start):
            if time.monotonic() > deadline:
                raise BrokerError(f"no fetch answer for {sorted(set(start) - set(ends))}")
            msg = consumer.poll(0.2)
            for t, p in start:
                high = consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)[1]
                if (t, p) not in ends and high is not None and high >= 0:
                    ends[(t, p)] = int(high)
            err = msg.error() if msg is not None else None
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                raise BrokerError(str(err))
        out: dict[str, int] = {}
        for (t, p), pos in start.items():
            out[t] = out.get(t, 0) + max(0, ends[(t, p)] - pos)
        return out
    except KafkaException as exc:
        raise BrokerError(f"cannot read offsets of group {group} at {bootstrap}: {exc}") from None
    finally:
        consumer.close()


def finish(broker: EmbeddedBroker, data_dir: Path, *, group: str, topics: Iterable[str],
           security: KafkaSecurity | None = None) -> bool:
    """At the end of ``up``: stop the broker if nothing on ``topics`` is left unstored
    by ``group`` or if it keeps its log on disk (and then its object server too);
    else leave it running (recorded) and say so. True if stopped."""
    rec = read_record(data_dir)
    if broker.pid is not None and disk_backed(broker.pid):
        broker.stop()
        if rec is not None:
            _remove_record(data_dir, rec)
        stop_recorded_store(data_dir)
        return True
    try:
        left = {t: n for t, n in unstored(broker.bootstrap, group, topics,
                                          security=security).items() if n}
    except BrokerError as exc:
        left = {"(unknown)": -1}
        log.warning("%s", exc)
    if not left:
        broker.stop()
        if rec is not None:
            _remove_record(data_dir, rec)
        return True
    pid = broker.pid
    broker.release()
    what = ", ".join(f"{t}: {n:,}" for t, n in sorted(left.items()) if n > 0) or "unknown"
    log.warning("the embedded broker (pid %s, %s) is left running: it holds events not yet "
                "stored (%s). The next 'llmpulse up' from %s stores them; 'kill %s' discards "
                "them", pid, broker.bootstrap, what, data_dir, pid)
    return False


def stop_recorded_broker(data_dir: Path, timeout: float = 5.0) -> int | None:
    """Stop the broker recorded in ``data_dir`` if it is still ours and running
    (the recorded pid runs the recorded binary on the recorded port), then its object
    server (:mod:`llmpulse.broker_storage`) if it has one; the broker's pid, or None."""
    rec = read_record(data_dir)
    if rec is None:
        stop_recorded_store(data_dir, timeout)
        return None
    stopped = None
    if is_recorded_process(rec):
        EmbeddedBroker.adopt(rec.pid, rec.port, host=rec.host).stop(timeout)
        stopped = rec.pid
    _remove_record(data_dir, rec)
    stop_recorded_store(data_dir, timeout)  # after the broker: it may still write to it
    return stopped


def disk_backed(pid: int) -> bool:
    """The broker process ``pid`` keeps its log in S3 (our object server), per its argv."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in argv if a]
    return any(flag == "--storage-engine" and value.startswith("s3://")
               for flag, value in zip(args, args[1:], strict=False))
