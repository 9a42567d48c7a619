"""``llmpulse erase``: the command line of :mod:`llmpulse.erase`.

With a stack running (``<data-dir>/endpoints.json``) the command posts to its
``POST /api/admin/erase`` (``Authorization: Bearer $LLMPULSE_TOKEN`` when set):
the stack erases from its store and from the signal engine's memory. With no
stack running it opens the store itself (the embedded directory, or the
ClickHouse server of ``LLMPULSE_CLICKHOUSE``), erases, drops the requests from
the worker's saved engine state, and records the audit event. ``--journal DIR``
also rewrites a shim journal on this host.

Exit status: 0 done, 1 failed, 2 bad arguments, 3 done with notes (parts still
pending removal, a journal in use).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmpulse.audit import AuditEvent, AuditLog
from llmpulse.erase import (
    ErasureError,
    ErasureReport,
    ErasureRequest,
    erase,
    journal_matcher,
    parse_time,
    report_counts,
)
from llmpulse.journal import erase_from_journal

__all__ = ["configure", "erase_offline", "run_cli"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of ``llmpulse erase``."""
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--request-id", nargs="+", metavar="ID", help="erase these requests")
    g.add_argument("--user", help="erase the requests of this user (clear or hashed)")
    g.add_argument("--app", help="erase every request of this app")
    parser.add_argument("--before", metavar="TIME",
                        help="only events before TIME (RFC 3339 or epoch seconds; with --user or --app)")
    parser.add_argument("--journal", action="append", default=[], metavar="DIR",
                        help="also erase from the shim journal in DIR (this host; repeatable)")
    parser.add_argument("--wait", type=float, default=60.0, metavar="S",
                        help="how long to wait for replaced store parts to be removed")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _request_from_args(args: argparse.Namespace) -> ErasureRequest:
    return ErasureRequest(
        request_ids=tuple(dict.fromkeys(args.request_id or ())),
        user=args.user,
        app=args.app,
        before=None if args.before is None else parse_time(args.before, "--before"),
    )


def _post(url: str, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("LLMPULSE_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url.rstrip("/") + "/api/admin/erase",
                                 data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out: dict[str, Any] = json.load(r)
            return out
    except urllib.error.HTTPError as exc:
        try:
            msg = json.load(exc).get("error", "")
        except Exception:
            msg = ""
        raise ErasureError(f"the stack refused the erasure ({exc.code}): {msg or exc.reason}") from None


def erase_offline(settings: Any, req: ErasureRequest, *, wait_s: float) -> ErasureReport:
    """Erase with no stack running: the store opened here, the worker's saved state."""
    from llmpulse.audit_record import command_actor
    from llmpulse.migrations import migrate
    from llmpulse.store import Store

    store = Store.open(settings.clickhouse_dsn)
    try:
        migrate(store, settings.retention)
        report = erase(store, req, data_dir=settings.data_dir, wait_s=wait_s)
        if report.request_ids:
            from llmpulse.streams.signals import forget_saved_requests

            try:
                report.engine_records = forget_saved_requests(settings, set(report.request_ids))
            except Exception as exc:
                report.notes.append(f"the worker's saved state was not rewritten: {exc}")
        sink = AuditLog(store)
        sink(AuditEvent("erase", actor=command_actor(), target=req.target(), remote="local",
                        detail=report_counts(report)))
        sink.flush_now()
        return report
    finally:
        store.close()


def _endpoints(data_dir: Path) -> dict[str, Any] | None:
    try:
        out = json.loads((data_dir / "endpoints.json").read_text())
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def run_cli(args: argparse.Namespace, settings: Any) -> int:
    """``llmpulse erase``: through the running stack's API, else on the stopped store."""
    from llmpulse.store import StoreError

    try:
        req = _request_from_args(args)
    except ErasureError as exc:
        print(f"llmpulse erase: {exc}", file=sys.stderr)
        return 2
    ep = _endpoints(Path(settings.data_dir))
    try:
        if ep and ep.get("http"):
            out = _post(str(ep["http"]), {**req.to_json(), "wait_s": args.wait}, args.wait + 120)
            report = ErasureReport(rows=out.get("rows", {}), rewritten=out.get("rewritten", {}),
                                   files=out.get("files", []),
                                   engine_records=int(out.get("engine_records", 0)),
                                   broker_records=dict(out.get("broker_records", {})),
                                   broker_failed=int(out.get("broker_failed", 0)),
                                   parts_pending=int(out.get("parts_pending", 0)),
                                   notes=list(out.get("notes", [])))
            where = f"stack at {ep['http']}"
        else:
            report = erase_offline(settings, req, wait_s=args.wait)
            where = f"store {settings.clickhouse_dsn}"
    except (ErasureError, StoreError, OSError) as exc:
        print(f"llmpulse erase: {exc}", file=sys.stderr)
        return 1
    for d in args.journal:
        try:
            report.journal_events += erase_from_journal(d, journal_matcher(req))
        except RuntimeError as exc:
            report.notes.append(str(exc))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(f"erased from {where}: {report.total} item(s)")
        for table, n in sorted(report.rows.items()):
            print(f"  {table:<20}{n:>8} row(s) deleted")
        for table, n in sorted(report.rewritten.items()):
            print(f"  {table:<20}{n:>8} detail(s) rewritten")
        print(f"  {'report files':<20}{len(report.files):>8} deleted")
        print(f"  {'engine records':<20}{report.engine_records:>8} dropped")
        for topic, n in sorted(report.broker_records.items()):
            print(f"  {topic:<20}{n:>8} broker record(s) rewritten")
        if args.journal:
            print(f"  {'journal events':<20}{report.journal_events:>8} removed")
        for note in report.notes:
            print(f"  note: {note}")
    return 0 if not report.notes else 3
