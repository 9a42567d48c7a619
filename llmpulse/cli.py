"""The ``llmpulse`` command line.

Subcommands import their modules lazily so ``llmpulse --help`` stays fast
and the shim-only install can still print help.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
from collections.abc import Callable, Sequence

from llmpulse.config import ConfigError, Settings, load_settings

__all__ = ["main"]

BENCHES = ("shim", "ingest", "detectors", "engine", "pipeline", "fault", "serving", "retrain", "redact",
           "redact_hostile", "otlp", "evals", "broker", "broker_latency", "soak", "ceiling", "cost",
           "cluster", "repeat_ids")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(path=getattr(args, "config", "llmpulse.yaml"))


def cmd_up(args: argparse.Namespace) -> int:
    from llmpulse.stack import main_up

    return main_up(_settings(args))


def cmd_status(args: argparse.Namespace) -> int:
    from llmpulse.stack import read_endpoints

    settings = _settings(args)
    ep = read_endpoints(settings.data_dir)
    if not ep:
        print(f"llmpulse is not running from {settings.data_dir} (no endpoints.json)")
        return 1
    from llmpulse.auth import AuthError, stack_request

    try:
        health = stack_request(ep["http"], "/health", timeout=5)
        stats = stack_request(ep["http"], "/api/stats", timeout=5)
    except urllib.error.HTTPError as exc:
        hint = "; set LLMPULSE_TOKEN (or LLMPULSE_TOKEN_FILE)" if exc.code in (401, 403) else ""
        print(f"llmpulse at {ep.get('http')} (pid {ep.get('pid')}) refused: HTTP {exc.code}{hint}")
        return 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"llmpulse at {ep.get('http')} (pid {ep.get('pid')}) does not answer: {exc}")
        return 1
    except AuthError as exc:
        print(f"llmpulse status: {exc}")
        return 2
    if args.json:
        print(json.dumps({"endpoints": ep, "health": health, "stats": stats}, indent=2))
    else:
        print(f"llmpulse {health.get('status')}  pid {ep.get('pid')}")
        print(f"  kafka  {ep['kafka']}\n  http   {ep['http']}\n  store  {ep['clickhouse']}")
        for key in ("consumed", "stored", "dead_lettered", "lag"):
            print(f"  {key:<14}{json.dumps(stats.get(key, {}))}")
    return 0 if health.get("status") == "ok" else 1


def cmd_erase(args: argparse.Namespace) -> int:
    from llmpulse import erase_cli

    return erase_cli.run_cli(args, _settings(args))


def cmd_simulate(args: argparse.Namespace) -> int:
    from llmpulse import simulate

    return simulate.run_cli(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from llmpulse import demo

    return demo.run_cli(args, _settings(args))


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    from llmpulse.bench._stack import finish
    from llmpulse.bench.extras import missing_extra_message

    extra = {"data": args.data} if getattr(args, "data", None) else {}
    if getattr(args, "transport", None):
        if args.name != "otlp":
            print("llmpulse bench: --transport is an option of `otlp`", file=sys.stderr)
            return 2
        extra["transport"] = args.transport
    try:
        mod = importlib.import_module(f"llmpulse.bench.{args.name}")
        result = mod.run(quick=args.quick, **extra)
    except ModuleNotFoundError as exc:
        msg = missing_extra_message(f"llmpulse bench {args.name}", exc)
        if msg is None:
            raise
        print(msg, file=sys.stderr)
        return 2
    return finish(result, mod.format_table, args.json)


def _module_cli(module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(importlib.import_module(module).run_cli(args) or 0)

    return run


def _retrain_cmd(fn_name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from llmpulse.retrain import cli as retrain_cli

        if fn_name == "run_retrain":  # trains on simulated tickets, which retrain/ cannot draw
            from llmpulse.router_data import router_dataset

            data = router_dataset(seed=args.seed, duration_s=args.duration, rate=args.rate)
            return int(retrain_cli.run_retrain(args, _settings(args), data=data) or 0)
        return int(getattr(retrain_cli, fn_name)(args, _settings(args)) or 0)

    return run


def _configure(parser: argparse.ArgumentParser, module: str) -> None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # the shim-only install has no server parts
        parser.description = f"unavailable here: {exc}"
        return
    mod.configure(parser)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmpulse", description="Streaming monitoring for LLM applications."
    )
    p.add_argument("--config", default="llmpulse.yaml", help="YAML settings file (optional)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("up", help="run the embedded stack (broker, store, worker, HTTP API)")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("status", help="health of the running stack, from endpoints.json")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("token", help="API tokens: create, list, revoke; browser sign-in link")
    _configure(s, "llmpulse.token_cli")
    s.set_defaults(func=_module_cli("llmpulse.token_cli"))

    s = sub.add_parser("simulate", help="drive a simulated LLM support app into the pipeline")
    _configure(s, "llmpulse.simulate")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("demo", help="embedded stack + simulator with scripted incidents")
    _configure(s, "llmpulse.demo")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES))
    s.add_argument("name", choices=BENCHES)
    s.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    s.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    s.add_argument("--data", metavar="PATH",
                   help="labelled groundedness set(s) for `detectors`: a .jsonl[.gz] file or a directory "
                        "(default ../shared/data/faithfulness/)")
    s.add_argument("--transport", choices=("http", "grpc", "both"),
                   help="for `otlp`: the OTLP transport to measure (default http)")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("eval", help="golden-set run: ask known questions, record answers and references")
    _configure(s, "llmpulse.golden")
    s.set_defaults(func=_module_cli("llmpulse.golden"))

    s = sub.add_parser("judge", help="optional LLM judge: grade a sample of answers, off the ingest path")
    _configure(s, "llmpulse.judge")
    s.set_defaults(func=_module_cli("llmpulse.judge"))

    s = sub.add_parser("report", help="self-contained HTML snapshot of the dashboards")
    _configure(s, "llmpulse.report")
    s.set_defaults(func=_module_cli("llmpulse.report"))

    s = sub.add_parser("dashboards", help="publish Grafana dashboards or generate provisioning")
    _configure(s, "llmpulse.dashboards_cli")
    s.set_defaults(func=_module_cli("llmpulse.dashboards_cli"))

    s = sub.add_parser("dev", help="developer tools: `dev cluster`, a local cluster of brokers")
    _configure(s, "llmpulse.dev_cli")
    s.set_defaults(func=_module_cli("llmpulse.dev_cli"))

    s = sub.add_parser("erase", help="erase requests, a user or an app from every store")
    _configure(s, "llmpulse.erase_cli")
    s.set_defaults(func=cmd_erase)

    for name, text in (
        ("retrain", "retrain a model, gate it, register and release it"),
        ("deploy", "deploy (or canary) a registered model version"),
        ("rollback", "roll a model back to its previous promoted version"),
    ):
        s = sub.add_parser(name, help=text)
        try:
            from llmpulse.retrain import cli as retrain_cli

            getattr(retrain_cli, f"configure_{name}")(s)
        except ImportError as exc:  # the shim-only install
            s.description = f"unavailable here: {exc}"
        s.set_defaults(func=_retrain_cmd(f"run_{name}"))
    return p


class OncePerMinute(logging.Filter):
    """Let through one record a minute whose message starts with ``prefix``, saying how
    many were held back; others pass.

    The event loop logs a traceback for every connection it cannot accept once the
    process is out of file descriptors (many connections that never finish their
    headers): 1.3 million lines, 575 MB of log in a minute.

    >>> f, now = OncePerMinute("socket.accept()", clock=lambda: now[0]), [0.0]
    >>> rec = lambda: logging.LogRecord("asyncio", 40, "", 0, "socket.accept() out of "
    ...                                 "system resource", None, None)
    >>> [f.filter(rec()) for _ in range(3)]
    [True, False, False]
    >>> now[0] = 61.0; r = rec(); f.filter(r), r.getMessage()
    (True, 'socket.accept() out of system resource (2 similar held back in the last minute)')
    """

    def __init__(self, prefix: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix, self.clock = prefix, clock
        self._last: float | None = None
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        now = self.clock()
        if self._last is not None and now - self._last < 60.0:
            self._held += 1
            return False
        self._last = now
        if self._held:
            record.msg = f"{record.msg} ({self._held} similar held back in the last minute)"
            self._held = 0
        return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncio").addFilter(OncePerMinute("socket.accept() out of system resource"))
    if args.command in ("up", "demo"):
        logging.getLogger("llmpulse").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"llmpulse: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
