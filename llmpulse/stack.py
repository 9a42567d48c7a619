"""``llmpulse up``: the embedded stack in one process.

Start order: store (the lock fails fast), broker (re-adopted if a crashed run
left it running, see :mod:`llmpulse.broker_record`), topics, worker (agents
and HTTP API), the OTLP/gRPC receiver (``otlp.grpc``), then ``endpoints.json`` once
everything is ready. Stop order on SIGINT/SIGTERM: stop the OTLP/gRPC receiver (calls in
flight finish), drain what the broker held when the stop began into the store and
the signals for as long as the backlog shrinks (:mod:`llmpulse.drain`: events sent
meanwhile wait in the broker for the next start; a second signal stops waiting),
stop the worker (offsets committed), close the store, stop the broker (and its
object server) if its log is on disk (``broker.storage: disk``) or if everything
it holds is stored (a broker in memory is otherwise left running for the next
start), remove ``endpoints.json``, exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmpulse.audit import TOPIC_AUDIT, AuditLog, AuditSink, discard
from llmpulse.auth import ApiGuard, AuthError
from llmpulse.broker import (
    BrokerError,
    EmbeddedBroker,
    create_topics,
    free_port,
    pid_alive,
    port_is_free,
    topic_partitions,
)
from llmpulse.broker_record import adopt_or_start, finish
from llmpulse.config import ConfigError, Settings
from llmpulse.drain import DrainPolicy, drain, race
from llmpulse.events import TOPIC_FEEDBACK, TOPIC_GROUPED, TOPIC_INFERENCE, TOPICS
from llmpulse.malloc import tune_malloc
from llmpulse.migrations import migrate
from llmpulse.store import Store, StoreError

__all__ = ["StackContext", "StackError", "api_guard", "read_endpoints", "run_stack"]

log = logging.getLogger("llmpulse.up")


class StackError(RuntimeError):
    """The stack could not start; the message is one line for the operator."""


@dataclass
class StackContext:
    """What an in-process main (the demo) sees of the running stack."""

    settings: Settings
    endpoints: dict[str, Any]
    store: Store
    stats: Any
    lag: Callable[[], Awaitable[dict[str, int]]]
    app: Any = None
    retrain: Any = None


def read_endpoints(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / "endpoints.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def run_stack(
    settings: Settings,
    *,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    stop_event: asyncio.Event | None = None,
    drain_timeout_s: float = 60.0,
    main: Callable[[StackContext], Awaitable[int]] | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (or ``stop_event``, or ``main`` returns); the exit code.

    ``drain_timeout_s``: at stop, give up draining after this many seconds
    without progress (the embedded broker is then left running, nothing lost).

    The stack's audit log (``audit_events`` and the ``llmpulse.audit`` topic)
    receives the HTTP API's records (admin access, failed authentication,
    sign-ins) and the admin actions.
    """
    tune_malloc()  # before the threads start (llmpulse.malloc)
    return asyncio.run(_run(settings, on_ready, stop_event, drain_timeout_s, main))


def kept_partitions(existing: Mapping[str, int], asked: int) -> int:
    """The partitions the stack works with: those of the raw and grouped topics if they
    exist already (a log kept on disk, or an external Kafka), else ``asked``
    (``ingest.partitions``). The ingest's forward and the OTLP receiver pick partitions
    themselves, so those topics must agree.

    >>> kept_partitions({}, 4), kept_partitions({"llmpulse.inference": 2, "other": 9}, 4)
    (4, 2)
    >>> kept_partitions({"llmpulse.inference": 2, "llmpulse.grouped": 4}, 4)
    Traceback (most recent call last):
    ...
    ValueError: ingest.partitions: the kept topics disagree (llmpulse.grouped has 4, llmpulse.inference has 2); give them one count
    """
    kept = {t: existing[t] for t in sorted((TOPIC_GROUPED, TOPIC_INFERENCE)) if t in existing}
    if len(set(kept.values())) > 1:
        have = ", ".join(f"{t} has {n}" for t, n in kept.items())
        raise ValueError(f"ingest.partitions: the kept topics disagree ({have}); "
                         "give them one count")
    return next(iter(kept.values()), asked)


def api_guard(settings: Settings, audit: AuditSink = discard) -> ApiGuard:
    """The HTTP API's guard; :class:`StackError` for a bad tokens file or for a
    non-loopback bind without tokens."""
    try:
        guard = ApiGuard.from_settings(settings.data_dir, settings.http.host, audit=audit)
    except AuthError as exc:
        raise StackError(str(exc)) from None
    if not guard.loopback and not guard.tokens.configured:
        raise StackError(
            f"http.host: {settings.http.host} is not a loopback address and no API token is "
            f"configured; create one with 'llmpulse token create --name NAME --role admin' "
            f"(or set LLMPULSE_TOKENS_FILE), or bind http.host to 127.0.0.1")
    return guard


async def _run(
    settings: Settings,
    on_ready: Callable[[dict[str, Any]], None] | None,
    stop_event: asyncio.Event | None,
    drain_timeout_s: float,
    main: Callable[[StackContext], Awaitable[int]] | None = None,
) -> int:
    from llmpulse.streams.app import IngestStats
    from llmpulse.streams.otlp import OTLP_TOPICS
    from llmpulse.worker import Worker, build_worker

    guard = api_guard(settings)  # records to the audit log once the store is open
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    ep = read_endpoints(data_dir)
    if ep and isinstance(ep.get("pid"), int) and pid_alive(ep["pid"]) and ep["pid"] != os.getpid():
        raise StackError(
            f"llmpulse is already running from {data_dir} (pid {ep['pid']}, {ep.get('http')})"
        )
    web_port = settings.http.port or free_port(settings.http.host)
    if settings.http.port and not port_is_free(web_port, settings.http.host):
        raise StackError(f"http.port: port {web_port} is busy; pick another or 0 for a free one")
    grpc_port = settings.otlp.grpc_port
    if settings.otlp.grpc and grpc_port and not port_is_free(grpc_port, settings.http.host):
        raise StackError(f"otlp.grpc_port: port {grpc_port} is busy; pick another, 0 for a free "
                         "one, or turn OTLP/gRPC off with otlp.grpc: false")

    from llmpulse.streams.alerts_agent import load_rules
    from llmpulse.streams.rules import RulesError

    try:
        rules = load_rules(settings.rules)
    except RulesError as exc:
        raise StackError(str(exc)) from None
    from llmpulse.dashboards.links import AlertLinks

    # alerts link to Grafana when the rules file names it, else to the embedded pages
    try:
        server = f"http://{settings.http.host}:{web_port}"
        links = (AlertLinks(rules.dashboard_url, server=server) if rules.dashboard_url
                 else AlertLinks(server, embedded=True))
    except ValueError as exc:
        raise StackError(f"rules file: {exc}") from None
    try:
        store = await asyncio.to_thread(Store.open, settings.clickhouse_dsn,
                                        limits=settings.query,
                                        credentials=settings.clickhouse_auth)
    except StoreError as exc:
        raise StackError(str(exc)) from None
    try:
        await asyncio.to_thread(migrate, store, settings.retention)
    except StoreError as exc:
        await asyncio.to_thread(store.close)
        raise StackError(str(exc)) from None

    broker: EmbeddedBroker | None = None
    app: Any = None
    worker: Worker | None = None
    audit: AuditLog | None = None
    otlp_grpc: Any = None
    stop = stop_event or asyncio.Event()
    abort = asyncio.Event()  # a second signal: stop draining now
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: (abort if stop.is_set() else stop).set())
    try:
        if settings.embedded_broker:
            try:
                broker, _ = adopt_or_start(data_dir, storage=settings.broker)
            except BrokerError as exc:
                raise StackError(str(exc)) from None
            bootstrap = broker.bootstrap
        else:
            assert settings.kafka is not None
            bootstrap = settings.kafka
        try:
            counts = await asyncio.to_thread(topic_partitions, bootstrap,
                                             security=settings.kafka_security)
            partitions = kept_partitions(counts, settings.ingest.partitions)
            if partitions != settings.ingest.partitions:
                log.warning("ingest.partitions is %d, but the topics kept at %s have %d "
                            "partitions: using %d", settings.ingest.partitions, bootstrap,
                            partitions, partitions)
                settings = replace(settings, ingest=replace(settings.ingest,
                                                            partitions=partitions))
            await asyncio.to_thread(
                create_topics, bootstrap,
                {t: partitions for t in (*TOPICS, TOPIC_AUDIT, *OTLP_TOPICS)},
                security=settings.kafka_security,
            )
        except (BrokerError, ValueError) as exc:
            raise StackError(str(exc)) from None

        stats = IngestStats()
        # the one audit log of the process: admin routes, retrain and the API guard
        # (admin access, failed authentication, sign-ins) record into it
        audit = AuditLog(store)
        guard.audit = audit
        try:
            worker = build_worker(settings, store, stats, bootstrap=bootstrap, web_port=web_port,
                                  rules=rules, guard=guard, audit=audit, linker=links)
        except ConfigError as exc:
            raise StackError(str(exc)) from None
        app = worker.app
        await app.start()
        await _wait_assigned(app, timeout=settings.session_timeout_s * 4 + 10,
                             partitions=settings.ingest.partitions)
        if settings.otlp.grpc:
            otlp_grpc = await _start_otlp_grpc(settings, worker.pipeline.otlp, guard)
        endpoints = {
            "kafka": bootstrap,
            "http": f"http://{settings.http.host}:{web_port}",
            "clickhouse": settings.clickhouse_dsn,
            "otlp": f"http://{settings.http.host}:{web_port}",
            **({"otlp_grpc": f"http://{settings.http.host}:{otlp_grpc.port}"}
               if otlp_grpc is not None else {}),
            "pid": os.getpid(),
            "started_at": time.time(),
        }
        tmp = settings.endpoints_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(endpoints, indent=2))
        os.replace(tmp, settings.endpoints_path)
        log.info("llmpulse up: kafka %s, http %s, store %s", bootstrap, endpoints["http"],
                 settings.clickhouse_dsn)
        if on_ready:
            on_ready(endpoints)
        login = guard.login_url(str(endpoints["http"]))
        if login is not None:
            # the one-time code is the only credential shown; tokens are never printed
            print(f"llmpulse up: sign in to the dashboards at {login} (one-time, valid "
                  f"{guard.codes.ttl_s / 60:g} min; 'llmpulse token login' makes another)",
                  flush=True)
            log.info("one-time sign-in URL printed on stdout (valid %g min)",
                     guard.codes.ttl_s / 60)
        else:
            log.info("API authentication is off: no tokens configured on a loopback bind")
        code = 0
        stop_task = asyncio.ensure_future(stop.wait())
        crash_task = asyncio.ensure_future(crashed(app))
        waits: set[asyncio.Future[Any]] = {stop_task, crash_task}
        main_task: asyncio.Future[int] | None = None
        if main is not None:
            ctx = StackContext(settings, endpoints, store, stats, worker.lag, app=app,
                               retrain=worker.retrain)
            main_task = asyncio.ensure_future(main(ctx))
            waits.add(main_task)
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits - done:
            task.cancel()
        reason = crash_task.result() if crash_task in done else None
        if main_task is not None and main_task in done:
            code = main_task.result()
        elif reason is not None:
            code = EXIT_CRASHED
        elif main_task is not None:
            code = 130
        if otlp_grpc is not None:  # calls in flight reach the broker before the drain
            await otlp_grpc.stop(5.0)
        if reason is not None:
            # a crashed app runs on in part (ingest goes on, the signal timer is gone):
            # exit, so that a restart (compose's restart policy, systemd, or the operator)
            # restores the engines from their saved state and replays the rest
            log.error("the worker crashed (%s: %s): stopping with exit status %d without "
                      "draining; nothing acknowledged is lost, and the next start restores "
                      "the signal engines from their last saved state and replays the rest",
                      type(reason).__name__, reason, EXIT_CRASHED)
            try:
                await bounded(worker.close(), abort, "closing the crashed worker")
            except Exception as exc:  # the engine that crashed cannot save: the last save holds
                log.warning("closing the crashed worker: %s: %s", type(exc).__name__, exc)
            return code
        log.info("stopping: storing what the broker holds now (events sent from here on "
                 "wait in the broker for the next start)")
        result = await drain(worker.stop_backlog(), DrainPolicy(stall_s=drain_timeout_s), abort=abort)
        if not result.drained:
            log.warning("drain ended (%s) after %.0f s with %s not yet stored", result.reason,
                        result.waited_s, result.left)
        await bounded(worker.close(), abort, "saving the signal engines and alert states")
        return code
    finally:
        try:
            settings.endpoints_path.unlink()
        except FileNotFoundError:
            pass
        if otlp_grpc is not None:
            await otlp_grpc.stop(None)
        if app is not None:
            try:
                await asyncio.wait_for(app.stop(), timeout=20)
            except Exception as exc:  # keep going: the store and broker must still close
                log.warning("worker stop: %s", exc)
        if audit is not None:
            await asyncio.to_thread(audit.flush_now)
        await asyncio.to_thread(store.close)
        if broker is not None:
            raw = [TOPIC_INFERENCE, TOPIC_FEEDBACK] + ([TOPIC_GROUPED] if settings.signals.enabled
                                                       else [])
            await asyncio.to_thread(finish, broker, data_dir, group="llmpulse", topics=raw)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


CLOSE_TIMEOUT_S = 60.0
"""How long a stop waits for the worker to save its state (engines, alert states)."""
CLOSE_GRACE_S = 5.0
"""How long it waits when a second signal asked to stop at once."""


async def bounded(aw: Any, abort: asyncio.Event, what: str, *,
                  timeout_s: float = CLOSE_TIMEOUT_S, grace_s: float = CLOSE_GRACE_S) -> bool:
    """Await ``aw`` for at most ``timeout_s``, or until ``abort`` is set (a second Ctrl-C);
    when ``abort`` is already set, for ``grace_s``. True if it finished. Stopping without
    it loses nothing acknowledged: the next start restores the last saved state and
    replays the rest. A stop whose broker or object server had died waited here for
    good, and further signals did nothing (an outside fault test: 7 minutes, then kill -9).

    >>> async def demo():
    ...     abort = asyncio.Event()
    ...     quick = await bounded(asyncio.sleep(0.01), abort, "quick", timeout_s=1)
    ...     stuck = asyncio.ensure_future(bounded(asyncio.sleep(60), abort, "stuck"))
    ...     await asyncio.sleep(0.05); abort.set()
    ...     return quick, await stuck
    >>> asyncio.run(demo())
    (True, False)
    """
    late = abort.is_set()
    done, _ = await race(aw, None if late else abort, grace_s if late else timeout_s)
    if done:
        return True
    why = (f"{grace_s:g} s after a second signal" if late
           else "a second signal" if abort.is_set() else f"{timeout_s:g} s")
    log.warning("stopping without %s (%s): nothing acknowledged is lost; the next start "
                "restores the last saved state and replays the rest", what, why)
    return False


EXIT_CRASHED = 70
"""``llmpulse up``'s exit status when its worker crashed (``EX_SOFTWARE``): a signal
engine process killed (the OOM killer), a timer that raised."""


async def crashed(app: Any, poll_s: float = 0.5) -> BaseException:
    """Returns once the Faust app ``app`` has crashed, with the reason. Faust marks the
    app crashed when one of its own tasks (a timer, the signal engine's poll) raised,
    and runs on without it: ingest goes on while no signal is computed any more.

    >>> import asyncio
    >>> class App:
    ...     crashed, crash_reason = False, None
    >>> app = App()
    >>> async def demo():
    ...     watch = asyncio.ensure_future(crashed(app, poll_s=0.01))
    ...     await asyncio.sleep(0.05)
    ...     assert not watch.done()
    ...     app.crashed, app.crash_reason = True, RuntimeError("engine process died")
    ...     return await watch
    >>> asyncio.run(demo())
    RuntimeError('engine process died')
    """
    while not app.crashed:
        await asyncio.sleep(poll_s)
    reason = app.crash_reason
    return reason if isinstance(reason, BaseException) else RuntimeError(str(reason))


async def _start_otlp_grpc(settings: Settings, ingest: Any, guard: ApiGuard) -> Any:
    """The OTLP/gRPC receiver on ``http.host``, behind the HTTP API's guard."""
    from llmpulse.auth import INGEST
    from llmpulse.streams.otlp_grpc import OtlpGrpcServer

    def authorize(authorization: str | None, method: str, peer: str) -> tuple[int, str]:
        return guard.check_bearer(authorization, INGEST, target=method, remote=peer)

    server = OtlpGrpcServer(ingest, feedback_topic=TOPIC_FEEDBACK, authorize=authorize)
    try:
        await server.start(settings.http.host, settings.otlp.grpc_port)
    except OSError as exc:
        raise StackError(f"otlp.grpc_port: {exc}; pick another port, 0 for a free one, "
                         "or turn it off with otlp.grpc: false") from None
    return server


async def _wait_assigned(app: Any, timeout: float, partitions: int) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if app.consumer.assignment():
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise StackError(no_partitions_message(timeout, partitions, joined=bool(app.unassigned)))


def no_partitions_message(timeout: float, partitions: int, *, joined: bool) -> str:
    """Why a worker got no partitions: ``joined`` = the consumer group answered with an
    empty assignment (Faust's ``app.unassigned``), so the broker works and every
    partition is held by another worker.

    >>> print(no_partitions_message(50, 4, joined=False))
    the worker got no partitions within 50 s: is the broker healthy?
    >>> print(no_partitions_message(50, 4, joined=True))  # doctest: +NORMALIZE_WHITESPACE
    the worker joined consumer group 'llmpulse' but got no partitions within 50 s: the
    group has more workers than the topics have partitions (4), so this one has nothing
    to read; run at most 4 workers, or more partitions (ingest.partitions, for topics
    created anew)
    """
    if not joined:
        return f"the worker got no partitions within {timeout:g} s: is the broker healthy?"
    return (f"the worker joined consumer group 'llmpulse' but got no partitions within "
            f"{timeout:g} s: the group has more workers than the topics have partitions "
            f"({partitions}), so this one has nothing to read; run at most {partitions} "
            "workers, or more partitions (ingest.partitions, for topics created anew)")


def main_up(settings: Settings) -> int:
    try:
        return run_stack(
            settings,
            on_ready=lambda ep: print(
                f"llmpulse up: kafka {ep['kafka']}  http {ep['http']}  store {ep['clickhouse']}"
                + (f"  otlp-grpc {ep['otlp_grpc']}" if "otlp_grpc" in ep else ""),
                flush=True,
            ),
        )
    except StackError as exc:
        print(f"llmpulse up: {exc}", file=sys.stderr)
        return 2
