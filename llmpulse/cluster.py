"""A local cluster of Kafka-protocol brokers: Tansu brokers over one shared S3 bucket.

Tansu brokers keep no state of their own: topics, offsets, producer ids and
idempotence sequences live in the storage engine. Brokers started with the
same ``--cluster-id`` over the same ``s3://`` bucket therefore serve the same
log, and a client with all of them in its bootstrap list goes on through
another one when the broker it talks to dies. What that guarantees (and what
it does not: idempotent producers) is measured in ``docs/cluster.md``.

Each broker advertises only itself, always as node ``111``, leader of every
partition; librdkafka follows the node to another address when the broker it
used is gone.

:class:`S3Storage` names the bucket (any S3-compatible endpoint);
:class:`S3TestServer` runs a local one (``moto_server``, from the ``test``
extra) for tests and ``llmpulse dev cluster``.

>>> S3Storage.parse("http://127.0.0.1:9000/tansu").url
's3://tansu/'
>>> S3Storage.parse("http://127.0.0.1:9000/tansu").endpoint
'http://127.0.0.1:9000'
>>> S3Storage.parse("ftp://h/b")
Traceback (most recent call last):
...
llmpulse.cluster.ClusterError: cluster.s3: 'ftp://h/b' is not an http(s)://host[:port]/bucket URL
>>> ClusterSettings(brokers=0)
Traceback (most recent call last):
...
llmpulse.cluster.ClusterError: cluster.brokers: 0 is not between 1 and 9
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from llmpulse.broker import BrokerError, free_port, pid_alive, port_is_free, tansu_binary

__all__ = [
    "ClusterBroker",
    "ClusterError",
    "ClusterSettings",
    "LocalCluster",
    "S3Storage",
    "S3TestServer",
    "established_connections",
]


class ClusterError(BrokerError):
    """The local cluster is misconfigured or could not be started."""


@dataclass(frozen=True)
class S3Storage:
    """An S3-compatible bucket the brokers share (``cluster.s3``).

    Credentials are passed to the brokers in their environment (``AWS_*``);
    a local test server accepts any.
    """

    endpoint: str
    bucket: str = "tansu"
    region: str = "us-east-1"
    access_key_id: str = "llmpulse"
    secret_access_key: str = field(default="llmpulse", repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ClusterError(f"cluster.s3: endpoint {self.endpoint!r} is not http(s)://host[:port]")
        if not self.bucket or "/" in self.bucket:
            raise ClusterError(f"cluster.s3: bucket {self.bucket!r} is not a bucket name")

    @classmethod
    def parse(cls, text: str, env: Mapping[str, str] | None = None) -> S3Storage:
        """``http(s)://host[:port]/bucket`` (the bucket defaults to ``tansu``); the
        credentials and region come from ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
        and ``AWS_REGION`` in ``env`` where set."""
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            parts, port = None, None
        bucket = parts.path.strip("/") if parts else ""
        if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                or "/" in bucket or parts.query or parts.fragment):
            raise ClusterError(f"cluster.s3: {text!r} is not an http(s)://host[:port]/bucket URL")
        netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
        if ":" in parts.hostname:  # IPv6 literal
            netloc = f"[{parts.hostname}]" + ("" if port is None else f":{port}")
        env = env or {}
        return cls(endpoint=f"{parts.scheme}://{netloc}", bucket=bucket or "tansu",
                   region=env.get("AWS_REGION") or "us-east-1",
                   access_key_id=env.get("AWS_ACCESS_KEY_ID") or "llmpulse",
                   secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or "llmpulse")

    @property
    def url(self) -> str:
        """The ``--storage-engine`` URL Tansu takes."""
        return f"s3://{self.bucket}/"

    def env(self) -> dict[str, str]:
        """What Tansu's S3 client reads from its environment."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true" if self.endpoint.startswith("http://") else "false",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }


@dataclass(frozen=True)
class ClusterSettings:
    """How many brokers, on which host, under which cluster id; ``ports`` fixes
    their ports (default: free ports, picked once and kept across restarts)."""

    brokers: int = 3
    host: str = "127.0.0.1"
    cluster_id: str = "llmpulse-local"
    ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.brokers <= 9:
            raise ClusterError(f"cluster.brokers: {self.brokers} is not between 1 and 9")
        if self.ports and len(self.ports) != self.brokers:
            raise ClusterError(f"cluster.ports: {len(self.ports)} ports for {self.brokers} brokers")
        if any(not 0 < p < 65536 for p in self.ports):
            raise ClusterError(f"cluster.ports: {self.ports} holds a port out of range")
        if not self.cluster_id or not self.cluster_id.replace("-", "").replace("_", "").isalnum():
            raise ClusterError(f"cluster.cluster_id: {self.cluster_id!r} is not [A-Za-z0-9_-]+")


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the process that started it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _wait_listening(proc: subprocess.Popen[bytes], host: str, port: int, timeout: float,
                    what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"{what} exited at start (code {proc.returncode}); see {log_path}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ClusterError(f"{what} did not listen on {host}:{port} within {timeout:g} s; see {log_path}")


def _end(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float) -> None:
    """Send ``sig`` to ``proc`` (by its pid), then SIGKILL if it is still there after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


class ClusterBroker:
    """One Tansu broker of a :class:`LocalCluster`: a process on a fixed port."""

    def __init__(self, index: int, port: int, storage: S3Storage, settings: ClusterSettings,
                 log_path: Path, binary: str | None = None) -> None:
        self.index = index
        self.port = port
        self.host = settings.host
        self._storage = storage
        self._cluster_id = settings.cluster_id
        self._binary = binary
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and pid_alive(self._proc.pid)

    def start(self, timeout: float = 20.0) -> None:
        if self.running():
            return
        deadline = time.monotonic() + timeout
        while not port_is_free(self.port, self.host):  # a killed broker's socket lingers briefly
            if time.monotonic() > deadline:
                raise ClusterError(f"port {self.port} on {self.host} is busy: broker {self.index} "
                                   "cannot take it back")
            time.sleep(0.1)
        url = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self._storage.env())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                [self._binary or tansu_binary(), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", self._storage.url,
                 "--cluster-id", self._cluster_id],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent)
        self.starts += 1
        try:
            _wait_listening(self._proc, self.host, self.port, max(1.0, deadline - time.monotonic()),
                            f"broker {self.index}", self.log_path)
        except ClusterError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: the broker dies mid-request, as in a machine or process crash."""
        _end(self._proc, signal.SIGKILL, 5.0)
        self._proc = None

    def stop(self, timeout: float = 3.0) -> None:
        """SIGINT (Tansu ends at once on it), then SIGKILL."""
        _end(self._proc, signal.SIGINT, timeout)
        self._proc = None


class LocalCluster:
    """``settings.brokers`` Tansu brokers over ``storage``, on loopback, stopped by pid.

    >>> c = LocalCluster(S3Storage("http://127.0.0.1:1"), ClusterSettings(ports=(29301, 29302, 29303)))
    >>> c.bootstrap
    '127.0.0.1:29301,127.0.0.1:29302,127.0.0.1:29303'
    """

    def __init__(self, storage: S3Storage, settings: ClusterSettings | None = None, *,
                 log_dir: str | os.PathLike[str] | None = None, binary: str | None = None) -> None:
        self.storage = storage
        self.settings = settings or ClusterSettings()
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="llmpulse-cluster-"))
        s = self.settings
        ports = s.ports or _distinct_free_ports(s.brokers, s.host)
        self.brokers = [ClusterBroker(i, port, storage, s, self.log_dir / f"broker-{i}.log", binary)
                        for i, port in enumerate(ports)]

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` naming every broker."""
        return ",".join(b.address for b in self.brokers)

    def start(self, timeout: float = 30.0) -> LocalCluster:
        try:
            for b in self.brokers:
                b.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> None:
        self.brokers[index].kill()

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start broker ``index`` again on its port, over the same storage."""
        self.brokers[index].start(timeout)

    def busiest(self) -> int:
        """The broker that the most client connections go to (the one to kill to hurt most)."""
        counts = established_connections([b.port for b in self.brokers])
        return max(range(len(self.brokers)), key=lambda i: (counts.get(self.brokers[i].port, 0), -i))

    def stop(self) -> None:
        for b in self.brokers:
            b.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _distinct_free_ports(n: int, host: str) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port(host)
        if p not in ports:
            ports.append(p)
    return ports


def established_connections(ports: list[int], proc_net: str = "/proc/net/tcp") -> dict[int, int]:
    """Established TCP connections accepted on each of ``ports`` (from the kernel's table).

    >>> import tempfile, os
    >>> row = "  0: 0100007F:5208 0100007F:9C40 01 0:0 0:0 0 0 0 1 1"
    >>> with tempfile.NamedTemporaryFile("w", delete=False) as f:
    ...     _ = f.write("  sl  local_address rem_address   st\\n" + row + "\\n")
    >>> established_connections([21000, 21001], f.name)
    {21000: 1, 21001: 0}
    >>> os.unlink(f.name)
    """
    counts = dict.fromkeys(ports, 0)
    try:
        lines = Path(proc_net).read_text().splitlines()[1:]
    except OSError:
        return counts
    for line in lines:
        cols = line.split()
        if len(cols) < 4 or cols[3] != "01":  # 01 = ESTABLISHED
            continue
        try:
            port = int(cols[1].rsplit(":", 1)[1], 16)
        except (IndexError, ValueError):
            continue
        if port in counts:
            counts[port] += 1
    return counts


class S3TestServer:
    """A local S3-compatible server for tests and ``llmpulse dev cluster``:
    ``moto_server`` (``pip install 'llmpulse[test]'``) in a child process,
    holding its objects in memory, with the bucket created."""

    def __init__(self, bucket: str = "tansu", *, host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | os.PathLike[str] | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.bucket = bucket
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="llmpulse-s3-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> S3Storage:
        return S3Storage(endpoint=f"http://{self.host}:{self.port}", bucket=self.bucket)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0) -> S3TestServer:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise ClusterError("the local S3 server needs moto: pip install 'llmpulse[test]' "
                               "(or give an S3 endpoint: --s3 http://host:port/bucket)") from None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            _wait_listening(self._proc, self.host, self.port, timeout, "moto_server", self.log_path)
            create_bucket(self.storage)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _end(self._proc, signal.SIGTERM, 5.0)
        self._proc = None

    def __enter__(self) -> S3TestServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def create_bucket(storage: S3Storage, timeout: float = 10.0) -> None:
    """Create the bucket on a local test server (which takes unsigned requests)."""
    req = urllib.request.Request(f"{storage.endpoint}/{storage.bucket}", method="PUT", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our own server
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # already there
            raise ClusterError(f"cannot create bucket {storage.bucket} at {storage.endpoint}: "
                               f"HTTP {exc.code}") from None
    except OSError as exc:
        raise ClusterError(f"cannot reach the S3 server at {storage.endpoint}: {exc}") from None

