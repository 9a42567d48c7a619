"""``llmpulse dev cluster``: starts brokers that share one log, restarts one that dies,
and stops every process it started on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from llmpulse.broker import pid_alive
from llmpulse.cluster import S3TestServer
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_dev_cluster_runs_until_sigterm_and_restarts_a_dead_broker(
        s3_server: S3TestServer, tmp_path: object) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmpulse.cli", "dev", "cluster", "--brokers", "2",
         "--s3", f"{s3_server.storage.endpoint}/{s3_server.bucket}", "--cluster-id", "devtest",
         "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert len(info["pids"]) == 2 and info["cluster_id"] == "devtest"
        first, second = info["bootstrap"].split(",")
        admin = AdminClient({"bootstrap.servers": first})
        for fut in admin.create_topics([NewTopic("devtopic", 1, 1)]).values():
            fut.result(30)
        assert "devtopic" in AdminClient({"bootstrap.servers": second}).list_topics(timeout=30).topics
        os.kill(info["pids"][0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        md = None
        while md is None and time.monotonic() < deadline:
            try:
                md = AdminClient({"bootstrap.servers": first}).list_topics(timeout=2)
            except Exception:
                time.sleep(0.5)
        assert md is not None and "devtopic" in md.topics  # started again, same log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not any(pid_alive(p) for p in info["pids"])
    assert "broker 0 is down" in (proc.stderr.read() if proc.stderr else "")
