"""``llmpulse dashboards``: publish to Grafana, or write its provisioning files.

The command line around :mod:`llmpulse.dashboards.publish`: it reads the annotation
rows from the running stack's HTTP API (``--url``, else ``endpoints.json``)
or, with no stack running, from the store, and hands them to the publisher.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlparse

from llmpulse.dashboards.grafana import DATASOURCE_UID, FOLDER_UID, datasource_payload
from llmpulse.dashboards.panels import DASHBOARDS
from llmpulse.dashboards.publish import ANNOTATION_QUERIES, Publisher, PublishError, grafana_client

__all__ = ["configure", "run_cli"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Subcommands of ``llmpulse dashboards``: ``publish`` and ``generate``."""
    sub = parser.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")
    p = sub.add_parser("publish", help="create or update data source, folder, dashboards, "
                                       "annotations in Grafana")
    p.add_argument("--grafana-url", required=True, help="e.g. http://localhost:3000")
    p.add_argument("--token", help="Grafana service account token (better: GRAFANA_TOKEN or "
                   "GRAFANA_TOKEN_FILE, which other users cannot see in the process list)")
    p.add_argument("--basic-auth", metavar="USER:PASSWORD", help="instead of a token")
    p.add_argument("--clickhouse-url", default="http://clickhouse:8123",
                   help="ClickHouse as Grafana reaches it (default http://clickhouse:8123)")
    p.add_argument("--clickhouse-user", default="default")
    p.add_argument("--clickhouse-password", help="(or CLICKHOUSE_PASSWORD)")
    p.add_argument("--dashboard", action="append", choices=list(DASHBOARDS),
                   help="only these (repeatable; default all)")
    p.add_argument("--no-annotations", action="store_true",
                   help="skip deployment and alert annotations")
    p.add_argument("--url", help="llmpulse HTTP API to read annotations from "
                                 "(default: endpoints.json, else the store)")
    g = sub.add_parser("generate", help="write the Grafana provisioning files")
    g.add_argument("--out", help="directory (default: dashboards/provisioning in the package)")


def _annotation_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from llmpulse.config import load_settings
    from llmpulse.report import http_query, store_query
    from llmpulse.stack import read_endpoints
    from llmpulse.store import Store

    settings = load_settings(path=getattr(args, "config", "llmpulse.yaml"))
    url = args.url
    if url is None:
        ep = read_endpoints(settings.data_dir)
        url = ep.get("http") if ep else None
    rows: list[dict[str, Any]] = []
    if url:
        query = http_query(url)
        for sql in ANNOTATION_QUERIES:
            rows += query(sql, {})
        return rows
    store = Store.open(settings.clickhouse_dsn, ddl=False, credentials=settings.clickhouse_auth)
    try:
        query = store_query(store)
        for sql in ANNOTATION_QUERIES:
            rows += query(sql, {})
    finally:
        store.close()
    return rows


def _read_token_file(path: str | None) -> str | None:
    """The token in ``GRAFANA_TOKEN_FILE`` (a mounted secret), without its newline."""
    if not path:
        return None
    try:
        return open(path, encoding="utf-8").read().strip() or None
    except OSError as exc:
        raise PublishError(f"GRAFANA_TOKEN_FILE: cannot read {path}: {exc.__class__.__name__}") from None


def run_cli(args: argparse.Namespace) -> int:
    """``llmpulse dashboards ...``: 0 on success, 2 with a one-line reason."""
    import os
    from pathlib import Path

    if args.dashboards_command == "generate":
        from llmpulse.dashboards.grafana import PROVISIONING_DIR, write_provisioning

        for path in write_provisioning(Path(args.out) if args.out else PROVISIONING_DIR):
            print(path)
        return 0
    from llmpulse.secret import Secret, scrub

    secrets: list[Secret] = []
    try:
        token = args.token or os.environ.get("GRAFANA_TOKEN") or _read_token_file(
            os.environ.get("GRAFANA_TOKEN_FILE"))
        ch_password = args.clickhouse_password or os.environ.get("CLICKHOUSE_PASSWORD")
        secrets = [Secret(s) for s in (token, ch_password, (args.basic_auth or "").partition(":")[2])
                   if s]
        face = grafana_client(args.grafana_url, token, args.basic_auth)
        ch = urlparse(args.clickhouse_url)
        ds = datasource_payload(
            host=ch.hostname or "clickhouse", port=ch.port or 8123,
            username=args.clickhouse_user, password=ch_password,
            secure=ch.scheme == "https")
        rows = [] if args.no_annotations else _annotation_rows(args)
        result = Publisher(face).publish(ds, names=args.dashboard, annotation_rows=rows)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"llmpulse dashboards publish: {scrub(msg, secrets)}", file=sys.stderr)
        return 2
    print(f"data source {DATASOURCE_UID}: {result.datasource}")
    print(f"folder {FOLDER_UID}: {result.folder}")
    for name, status in result.dashboards.items():
        print(f"dashboard {name}: {status}")
    print("annotations: " + ", ".join(f"{k} {v}" for k, v in result.annotations.items()))
    return 0
