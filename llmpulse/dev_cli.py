"""``llmpulse dev cluster``: a local cluster of Kafka-protocol brokers to develop and test against.

Starts ``--brokers`` Tansu brokers on loopback over one S3 bucket (``--s3``; without
it, a local ``moto_server`` from the ``test`` extra, in memory), prints the bootstrap
list, and runs until Ctrl-C or SIGTERM, then stops every process it started. Point
``llmpulse up`` and the shim at it with ``LLMPULSE_KAFKA=<bootstrap list>``.
What the cluster guarantees when a broker dies: docs/cluster.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from llmpulse.cluster import ClusterError, ClusterSettings, LocalCluster, S3Storage, S3TestServer

__all__ = ["configure", "run_cli"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dev_command", required=True, metavar="TOOL")
    c = sub.add_parser("cluster", help="a local cluster of Tansu brokers over shared S3 storage",
                       description=(__doc__ or "").strip().splitlines()[0])
    c.add_argument("--brokers", type=int, default=3, help="how many brokers (default 3)")
    c.add_argument("--s3", metavar="URL",
                   help="shared storage, http(s)://host:port/bucket (credentials from "
                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); default: a local moto_server")
    c.add_argument("--cluster-id", default="llmpulse-local",
                   help="the brokers' cluster id: a new id is an empty log on the same bucket")
    c.add_argument("--ports", metavar="P1,P2,...", help="the brokers' ports (default: free ports)")
    c.add_argument("--dir", metavar="PATH", help="where the logs go (default: a temporary folder)")


def _ports(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise ClusterError(f"--ports: {text!r} is not a comma-separated list of ports") from None


def run_cli(args: argparse.Namespace) -> int:
    try:
        settings = ClusterSettings(brokers=args.brokers, cluster_id=args.cluster_id,
                                   ports=_ports(args.ports))
        storage = S3Storage.parse(args.s3, os.environ) if args.s3 else None
    except ClusterError as exc:
        print(f"llmpulse dev cluster: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log_dir = Path(args.dir) if args.dir else None
    with ExitStack() as stack:
        try:
            if storage is None:
                s3 = S3TestServer(log_path=(log_dir / "s3.log") if log_dir else None)
                stack.enter_context(s3)
                storage = s3.storage
            cluster = stack.enter_context(LocalCluster(storage, settings, log_dir=log_dir))
        except ClusterError as exc:
            print(f"llmpulse dev cluster: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({"bootstrap": cluster.bootstrap, "storage": storage.endpoint,
                          "bucket": storage.bucket, "cluster_id": settings.cluster_id,
                          "pids": [b.pid for b in cluster.brokers],
                          "logs": str(cluster.log_dir)}), flush=True)
        print(f"export LLMPULSE_KAFKA={cluster.bootstrap}   # Ctrl-C stops the cluster",
              flush=True)
        while not stop.wait(1.0):
            down = [b.index for b in cluster.brokers if not b.running()]
            for i in down:  # a broker that died is started again, on its port
                print(f"broker {i} is down; starting it again", file=sys.stderr, flush=True)
                try:
                    cluster.restart(i)
                except ClusterError as exc:
                    print(f"llmpulse dev cluster: {exc}", file=sys.stderr, flush=True)
    return 0
