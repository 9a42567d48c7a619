"""``/api/query`` of a real ``llmpulse up``: caller SQL is judged by the guard,
only POSTed as JSON, and a query over a limit gets a 4xx while the stack keeps serving."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def _call(url: str, data: bytes | None = None, content_type: str | None = None,
          method: str = "POST") -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _sql(base: str, sql: str) -> tuple[int, dict[str, Any]]:
    return _call(base + "/api/query", json.dumps({"sql": sql}).encode(), "application/json")


def test_query_api_refuses_attacks_and_survives_limits(stack_factory: Any,
                                                       tmp_path: Path) -> None:
    # llmpulse up reads llmpulse.yaml from its working directory, the data dir's parent
    (tmp_path / "llmpulse.yaml").write_text(
        "query:\n  max_result_rows: 1000\n  max_execution_time_s: 1\n")
    sp = stack_factory(tmp_path / "data").start()
    base = sp.endpoints["http"]

    target = tmp_path / "written-by-query.txt"
    status, body = _sql(base, f"SELECT 1 AS c INTO OUTFILE '{target}'")
    assert status == 400 and "INTO OUTFILE" in body["error"]
    assert not target.exists()

    existing = tmp_path / "existing.txt"
    existing.write_text("original\n")
    status, body = _sql(base, f"SELECT 'evil' INTO OUTFILE '{existing}' APPEND")
    assert status == 400 and "INTO OUTFILE" in body["error"]
    assert existing.read_text() == "original\n"

    for sql, fragment in (
        ("SELECT name FROM system.users", "not an llmpulse table"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "table function file()"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
        ("SELECT 1; DROP TABLE signals", "not one valid SQL statement"),
    ):
        status, body = _sql(base, sql)
        assert (status, fragment in body["error"]) == (400, True), (sql, body)

    # SQL only in a POSTed JSON body; named queries by GET
    q = urllib.parse.urlencode({"sql": "SELECT count() FROM signals"})
    status, body = _call(f"{base}/api/query?{q}", method="GET")
    assert status == 405
    status, body = _call(base + "/api/query", b"sql=SELECT+1", "application/x-www-form-urlencoded")
    assert status == 415
    status, body = _call(base + "/api/query", b'{"sql": "SELECT 1"}', "text/plain")
    assert status == 415
    status, body = _call(f"{base}/api/query?name=counts", method="GET")
    assert status == 200 and {r["table"] for r in body["rows"]} >= {"signals", "alerts"}

    # limits: a clear 4xx naming the key, and the next query still works
    status, body = _sql(base, "SELECT arrayJoin(range(5000)) AS x")
    assert (status, body.get("limit")) == (413, "query.max_result_rows")
    # ~1e10 row pairs: seconds even on a fast idle machine, far past the 1 s limit
    status, body = _sql(base, "SELECT count() AS n FROM (SELECT arrayJoin(range(100000)) AS a) "
                              "AS x CROSS JOIN (SELECT arrayJoin(range(100000)) AS b) AS y "
                              "WHERE cityHash64(a, b) % 7 = 1")
    assert (status, body.get("limit")) == (408, "query.max_execution_time_s")
    assert sp.sql("SELECT count() AS n FROM inference_events FINAL") == [{"n": 0}]
