"""The broker's object server (llmpulse.objstore), as a real process on a free port.

Requests go over raw HTTP (http.client) so that hostile request targets reach
the server as written.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from llmpulse.broker import pid_alive
from llmpulse.broker_storage import (
    BrokerSettings,
    ObjectServer,
    access_key,
    ensure_object_server,
    read_store_record,
    stop_recorded_store,
)
from llmpulse.objstore import MAX_BODY, CommitHistory, ObjectFiles, committed_floors, prunable

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class Client:
    def __init__(self, server: ObjectServer, key: str | None = None) -> None:
        self.host, self.port = server.record.host, server.record.port
        self.key = key

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
            hdrs = dict(headers or {})
            if self.key is not None:
                hdrs.setdefault("Authorization", f"AWS4-HMAC-SHA256 Credential={self.key}/x/y, "
                                                 "SignedHeaders=host, Signature=00")
            if body is not None and "Content-Length" not in hdrs:
                hdrs["Content-Length"] = str(len(body))
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def error_code(body: bytes) -> str:
    return ElementTree.fromstring(body).findtext("Code") or ""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ObjectServer]:
    s = ObjectServer.start(tmp_path / "store", log_path=tmp_path / "objstore.log")
    yield s
    s.stop()
    assert not pid_alive(s.pid)


def test_conditional_puts(server: ObjectServer) -> None:
    c = Client(server)
    key = "/tansu/clusters/c/meta.json"
    status, h, _ = c.request("PUT", key, b"v1", {"If-None-Match": "*"})
    assert status == 200
    etag1 = h["etag"]
    status, _, body = c.request("PUT", key, b"v2", {"If-None-Match": "*"})
    assert status == 412 and error_code(body) == "PreconditionFailed"
    status, _, body = c.request("PUT", key, b"v2", {"If-Match": '"0123"'})
    assert status == 412
    status, h, _ = c.request("PUT", key, b"v2", {"If-Match": etag1})
    assert status == 200 and h["etag"] != etag1
    # the first writer's version is gone: a second update from it fails
    status, _, _ = c.request("PUT", key, b"v3", {"If-Match": etag1})
    assert status == 412
    status, h2, body = c.request("GET", key)
    assert (status, body, h2["etag"]) == (200, b"v2", h["etag"])
    status, _, _ = c.request("GET", key, headers={"If-None-Match": h["etag"]})
    assert status == 304
    status, _, body = c.request("PUT", "/tansu/clusters/c/none.json", b"x", {"If-Match": etag1})
    assert status == 404 and error_code(body) == "NoSuchKey"
    status, _, body = c.request("GET", key, headers={"Range": "bytes=1-"})
    assert (status, body) == (206, b"2")
    assert c.request("DELETE", key)[0] == 204
    assert c.request("GET", key)[0] == 404
    assert c.request("HEAD", key)[0] == 404


def test_traversal_and_bad_targets_are_refused(server: ObjectServer, tmp_path: Path) -> None:
    c = Client(server)
    before = sorted(p.name for p in tmp_path.iterdir())
    for target in ("/tansu/a/../../../escaped", "/tansu/%2e%2e/%2e%2e/escaped",
                   "/tansu/a/./b", "/tansu/a//b", "/tansu/a%00b", "/tansu/%ff%fe",
                   "/tansu/" + "x" * 300):
        status, _, body = c.request("PUT", target, b"evil")
        assert status == 400 and error_code(body) == "InvalidKey", (target, status, body)
    # an encoded slash is part of one segment: stored inside the store, under a safe name
    status, _, _ = c.request("PUT", "/tansu/a%2F..%2F..%2Fescaped", b"ok")
    assert status == 200
    assert c.request("GET", "/tansu/a%2F..%2F..%2Fescaped")[2] == b"ok"
    status, _, body = c.request("PUT", "/../escaped", b"evil")
    assert status == 404 and error_code(body) == "NoSuchBucket"
    status, _, body = c.request("PUT", "/other/key", b"evil")
    assert status == 404 and error_code(body) == "NoSuchBucket"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not any("escaped" in str(p.relative_to(tmp_path / "store"))
                   and not str(p).endswith("%2F..%2F..%2Fescaped,o")
                   for p in (tmp_path / "store").rglob("*"))


def test_unserved_requests_get_s3_errors(server: ObjectServer) -> None:
    c = Client(server)
    status, _, body = c.request("POST", "/tansu/big?uploads", b"")
    assert status == 501 and error_code(body) == "NotImplemented"
    status, _, body = c.request("PUT", "/tansu/k?partNumber=1&uploadId=x", b"x")
    assert status == 501 and error_code(body) == "NotImplemented"
    status, _, body = c.request("GET", "/tansu?prefix=a")  # ListObjects v1
    assert status == 501 and error_code(body) == "NotImplemented"
    status, _, body = c.request("PUT", "/tansu/copy", b"", {"x-amz-copy-source": "/tansu/a"})
    assert status == 501
    status, _, body = c.request("PUT", "/tansu/huge", b"x",
                                {"Content-Length": str(MAX_BODY + 1)})
    assert status == 400 and error_code(body) == "EntityTooLarge"
    status, _, body = c.request("PUT", "/tansu/k", b"x", {"If-None-Match": '"abc"'})
    assert status == 501
    status, _, body = c.request("GET", "/tansu?list-type=2&prefix=a&prefix=b")
    assert status == 400 and error_code(body) == "InvalidArgument"
    assert server.running()  # nothing of the above hurt it
    assert c.request("PUT", "/tansu/fine", b"ok")[0] == 200


def test_list_objects_v2_with_delimiter_and_pages(server: ObjectServer) -> None:
    c = Client(server)
    keys = ["p/records/00000000000000000000.batch", "p/records/00000000000000000008.batch",
            "p/records/00000000000000000016.batch", "p/watermark.json", "q/x.json"]
    for k in keys:
        assert c.request("PUT", f"/tansu/{k}", k.encode())[0] == 200

    def listing(query: str) -> ElementTree.Element:
        status, _, body = c.request("GET", f"/tansu?list-type=2&{query}")
        assert status == 200, body
        return ElementTree.fromstring(body)

    root = listing("prefix=p%2F&delimiter=%2F")
    assert [e.text for e in root.iter(f"{NS}Key")] == ["p/watermark.json"]
    assert [e.text for e in root.iter(f"{NS}Prefix") if e.text != "p/"] == ["p/records/"]
    got: list[str] = []
    token = ""
    for _ in range(5):
        root = listing("prefix=p%2Frecords%2F&max-keys=2" + token)
        got += [e.text or "" for e in root.iter(f"{NS}Key")]
        nxt = root.findtext(f"{NS}NextContinuationToken")
        if root.findtext(f"{NS}IsTruncated") != "true":
            break
        assert nxt
        token = f"&continuation-token={nxt}"
    assert got == keys[:3]
    sizes = [int(e.text or 0) for e in listing("prefix=q").iter(f"{NS}Size")]
    assert sizes == [len(b"q/x.json")]


def test_objects_survive_a_kill_of_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    settings = BrokerSettings()
    server, adopted = ensure_object_server(data, settings)
    try:
        assert not adopted
        c = Client(server, access_key(data))
        assert Client(server).request("HEAD", "/tansu")[0] == 403  # no key, no access
        status, h, _ = c.request("PUT", "/tansu/clusters/c/topics/t/x.batch", b"kept",
                                 {"If-None-Match": "*"})
        assert status == 200
        again, adopted = ensure_object_server(data, settings)
        assert adopted and again.pid == server.pid
        os.kill(server.pid, 9)
        server.stop()
        restarted, adopted = ensure_object_server(data, settings)
        assert not adopted and restarted.pid != server.pid
        assert restarted.record.port == server.record.port  # same address for the broker
        status, h2, body = Client(restarted, access_key(data)).request(
            "GET", "/tansu/clusters/c/topics/t/x.batch")
        assert (status, body, h2["etag"]) == (200, b"kept", h["etag"])
    finally:
        assert stop_recorded_store(data) is not None
        assert read_store_record(data) is None


def test_a_record_naming_another_process_is_not_adopted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (data / "objstore.json").write_text(
            f'{{"pid": {sleeper.pid}, "port": 1, "root": "{data / "broker-store"}"}}')
        server, adopted = ensure_object_server(data, BrokerSettings())
        assert not adopted and server.pid != sleeper.pid
        assert stop_recorded_store(data) == server.pid
        (data / "objstore.json").write_text(
            f'{{"pid": {sleeper.pid}, "port": 1, "root": "{data / "broker-store"}"}}')
        assert stop_recorded_store(data) is None  # not ours: left alone
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait(10)


def test_requests_with_another_access_key_are_refused(tmp_path: Path) -> None:
    key = "a" * 32
    server = ObjectServer.start(tmp_path / "store", access_key=key)
    try:
        for who in (None, "b" * 32, key[:-1]):
            status, _, body = Client(server, who).request("PUT", "/tansu/k", b"x")
            assert status == 403 and error_code(body) == "AccessDenied", who
        status, _, _ = Client(server).request(
            "PUT", "/tansu/k", b"x", {"Authorization": f"Basic {key}"})
        assert status == 403
        assert Client(server, key).request("PUT", "/tansu/k", b"x")[0] == 200
        # the key is not in the server's argument vector, which every user can read
        assert key.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    finally:
        server.stop()


def test_the_server_binds_loopback_only() -> None:
    out = subprocess.run([sys.executable, "-m", "llmpulse.objstore", "--root", "/nonexistent",
                          "--host", "0.0.0.0", "--port", "9"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "loopback" in out.stderr


def _layout(root: Path, batches: dict[str, list[int]], commits: dict[str, dict[str, int]]) -> ObjectFiles:
    files = ObjectFiles(root, fsync=False)
    for part, bases in batches.items():
        for b in bases:
            files.put(("clusters", "c", "topics", "t", "partitions", part, "records",
                       f"{b:020d}.batch"), b"x")
    for group, offsets in commits.items():
        for part, off in offsets.items():
            files.put(("clusters", "c", "groups", "consumers", group, "offsets", "t",
                       "partitions", f"{part}.json"), f'{{"offset": {off}}}'.encode())
    return files


def test_prune_keeps_what_any_group_has_not_consumed(tmp_path: Path) -> None:
    parts = {"0000000000": [0, 10, 20, 30], "0000000001": [0, 10, 20],
             "0000000002": [0, 10]}
    files = _layout(tmp_path, parts, {"fast": {"0000000000": 35, "0000000001": 25},
                                      "slow": {"0000000000": 20}})
    floors = committed_floors(files)
    assert floors == {("c", "t", "0000000000"): 20, ("c", "t", "0000000001"): 25}

    def names(floors: dict[tuple[str, str, str], int], margin: int = 0) -> list[str]:
        return sorted("/".join(s[-3:]) for s in prunable(files, floors, margin))

    # partition 0: slow committed 20, so only [0, 10) and [10, 20) are consumed by both;
    # partition 1: [0,10), [10,20); partition 2: no group committed, all kept
    assert names(floors) == ["0000000000/records/00000000000000000000.batch",
                             "0000000000/records/00000000000000000010.batch",
                             "0000000001/records/00000000000000000000.batch",
                             "0000000001/records/00000000000000000010.batch"]
    # a margin of 5 records keeps the batch that ends within it
    assert names(floors, margin=5) == ["0000000000/records/00000000000000000000.batch",
                                       "0000000001/records/00000000000000000000.batch",
                                       "0000000001/records/00000000000000000010.batch"]
    # an idle group stops holding batches back once it expires
    slow = tmp_path / "objects/clusters/c/groups/consumers/slow/offsets/t/partitions"
    old = os.stat(slow / "0000000000.json,o").st_mtime - 10 * 86400
    os.utime(slow / "0000000000.json,o", (old, old))
    floors = committed_floors(files, expiry_s=7 * 86400)
    assert floors[("c", "t", "0000000000")] == 35
    assert "0000000000/records/00000000000000000020.batch" in names(floors)
    # the newest batch always stays, even below every commit
    assert not any(re.search(r"0000000000/records/0+30\.batch", n)
                   for n in names({("c", "t", "0000000000"): 10**6}))


def test_prune_waits_until_a_commit_is_old_enough() -> None:
    tp = ("c", "t", "0")
    h = CommitHistory(lag_s=60)
    assert h.observe(0, {tp: 10}) is None
    assert h.observe(59, {tp: 50}) is None  # nothing is a minute old yet
    assert h.observe(61, {tp: 90}) == {tp: 10}  # the commit of a minute ago
    # a group that appears with a lower commit lowers the floor at once
    assert h.observe(62, {tp: 5}) == {tp: 5}
    # a partition first committed on recently is not pruned yet
    assert h.observe(70, {tp: 90, ("c", "t", "1"): 3}) == {tp: 10}
