"""``llmpulse token``: create, list and revoke API tokens; get a browser sign-in link.

The tokens file is ``<data-dir>/tokens.json`` (or ``LLMPULSE_TOKENS_FILE``).
A running ``llmpulse up`` reloads it when it changes, so a revoked token is
refused from its next request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error

from llmpulse.auth import (
    LOGIN_CODE_PATH,
    ROLES,
    AuthError,
    create_token,
    load_tokens,
    revoke_token,
    stack_request,
    tokens_path,
)
from llmpulse.config import load_settings

__all__ = ["configure", "run_cli"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    p = sub.add_parser("create", help="create a token and print it (once)")
    p.add_argument("--name", required=True, help="who or what uses it (shown in the audit trail)")
    p.add_argument("--role", choices=ROLES, default="read",
                   help="read (default), ingest (OTLP spans only) or admin")
    p = sub.add_parser("list", help="names, roles and creation times (never the tokens)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("revoke", help="remove a token by name")
    p.add_argument("name")
    sub.add_parser("login", help="a one-time browser sign-in URL from the running stack "
                                 "(uses LLMPULSE_TOKEN or LLMPULSE_TOKEN_FILE)")


def run_cli(args: argparse.Namespace) -> int:
    settings = load_settings(path=getattr(args, "config", "llmpulse.yaml"))
    path = tokens_path(settings.data_dir)
    try:
        if args.token_command == "create":
            token = create_token(path, args.name, args.role)
            print(token)
            print(f"token {args.name!r} ({args.role}) added to {path}; it is shown only now. "
                  "Clients read it from LLMPULSE_TOKEN or LLMPULSE_TOKEN_FILE.", file=sys.stderr)
            return 0
        if args.token_command == "list":
            records = load_tokens(path)
            if args.json:
                print(json.dumps([{"name": r.name, "role": r.role, "created_at": r.created_at}
                                  for r in records], indent=2))
            else:
                for r in records:
                    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r.created_at))
                    print(f"{r.name:<24}{r.role:<8}{when}")
                if not records:
                    print(f"no tokens in {path}", file=sys.stderr)
            return 0
        if args.token_command == "revoke":
            if not revoke_token(path, args.name):
                print(f"llmpulse token: no token named {args.name!r} in {path}", file=sys.stderr)
                return 1
            print(f"token {args.name!r} revoked")
            return 0
        return _login(settings.data_dir)
    except AuthError as exc:
        print(f"llmpulse token: {exc}", file=sys.stderr)
        return 2


def _login(data_dir: object) -> int:
    from pathlib import Path

    from llmpulse.stack import read_endpoints

    ep = read_endpoints(Path(str(data_dir)))
    if not ep:
        print(f"llmpulse token: llmpulse is not running from {data_dir} (no endpoints.json)",
              file=sys.stderr)
        return 1
    try:
        out = stack_request(ep["http"], LOGIN_CODE_PATH, {})
    except urllib.error.HTTPError as exc:
        print(f"llmpulse token: {ep['http']} refused: HTTP {exc.code}; set LLMPULSE_TOKEN",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"llmpulse token: {ep['http']} does not answer: {exc}", file=sys.stderr)
        return 1
    print(out["url"])
    return 0
