"""The client shim: :class:`Monitor` sends inference and feedback events.

Applications create one Monitor per process and call :meth:`Monitor.inference`,
:meth:`Monitor.feedback` or :meth:`Monitor.track`. The call validates the event
(:func:`llmpulse.events.validate_inference` / ``validate_feedback``, so the app
sees at once the error the pipeline would dead-letter), serialises it with
orjson and appends it to a hand-off queue. Everything else happens on one
background thread: batching, delivery through a confluent-kafka producer
(``enable.idempotence``, ``acks=all``, lz4), the on-disk journal and replay.
Transport problems never raise into the app.

Envelopes and keys
------------------
Events travel in *envelopes*: one Kafka message carries many events as
newline-delimited JSON (one event per line; split with
:func:`llmpulse.events.split_envelope`). An envelope is sealed when it holds
``envelope_max_events`` events, when the next event would take it past
``envelope_max_bytes``, or ``linger_ms`` after its first event, whichever
comes first (and on :meth:`Monitor.flush`).

Each event goes to one of ``buckets`` buckets (default 64) by CRC-32 of its
``request_id``; an envelope holds events of one topic and one bucket, and its
Kafka key is the bucket number as ASCII digits (``b"17"``). librdkafka's
partitioner maps equal keys to equal partition numbers, so an inference and its
feedback (same ``request_id``, same bucket, same key) land on the same
partition number of ``llmpulse.inference`` and ``llmpulse.feedback`` whenever
both topics have the same partition count, which the join relies on. CRC-32 is
stable across processes, so feedback sent later from another worker agrees.

Delivery and loss
-----------------
Up to ``buffer_events`` events are held in memory (the hand-off queue, the
envelopes being built, and up to half of it handed to librdkafka and awaiting
the broker's acknowledgement). With a ``journal_dir``, what does not fit, and
every envelope librdkafka gives back as failed (including messages it held
while the broker was down and timed out after ``delivery_timeout_s``), is
appended to an on-disk :class:`~llmpulse.journal.Journal`; from then on new
envelopes also go to the journal, and it is replayed oldest first as the broker
acknowledges, until it is empty and live sending resumes. So an outage loses
nothing while the journal has room (``journal_max_bytes``). Without a journal,
failed envelopes are retried from memory and, once memory is full, new events
are dropped. Drops are counted and logged at most once per ``log_interval_s``.
Delivery is at-least-once: an envelope written by the broker whose
acknowledgement was lost is sent again.

Counters (:meth:`Monitor.stats`)
--------------------------------
``sent``
    events accepted (valid) by ``inference``/``feedback``/``track`` since start.
``delivered``
    events acknowledged by the broker (``acks=all``).
``failed``
    events in delivery attempts that failed; each was then journaled, retried
    from memory or dropped, so this counts attempts, not losses.
``dropped``
    events given up: memory full without a journal, journal full, the Monitor
    closed, or a message the broker will never accept.
``queued``
    events in memory now (hand-off queue, envelopes, awaiting acknowledgement).
``journaled``
    events in the on-disk journal now, including those being replayed.
``invalid``
    events rejected by validation with ``strict=False`` (not part of ``sent``).
``recovered``
    events found in ``journal_dir`` at start, left there by an earlier process.

At every moment ``sent + recovered == delivered + dropped + queued + journaled``.

>>> mon = Monitor(app="support", bootstrap="127.0.0.1:9", model="m", model_version="1",
...               clock=lambda: 1_700_000_000.0)
>>> rid = mon.inference(request_id="r1", latency_ms=812.5, status="ok",
...                     input_tokens=120, output_tokens=40)
>>> rid
'r1'
>>> mon.inference(request_id="r2", latency_ms="slow", status="ok",
...               input_tokens=1, output_tokens=1)
Traceback (most recent call last):
...
llmpulse.events.EventError: latency_ms: must be a number, got str
>>> mon.close(timeout=0)
>>> s = mon.stats(); s["sent"], s["dropped"], s["queued"]
(1, 1, 0)
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from llmpulse.events import (
    DEFAULT_LIMITS,
    TOPIC_FEEDBACK,
    TOPIC_INFERENCE,
    EventError,
    Limits,
    validate_feedback,
    validate_inference,
)
from llmpulse.journal import Journal, JournalRecord
from llmpulse.kafka_security import KafkaSecurity, describe_transport_error
from llmpulse.redact import Redactor, TextPolicy
from llmpulse.secret import Secret, scrub
from llmpulse.subject import hash_user
from llmpulse.subject import user_key as user_key_bytes

__all__ = ["Call", "Monitor", "current_call", "new_id", "resolve_bootstrap"]

log = logging.getLogger("llmpulse.monitor")

_TOPICS = (TOPIC_INFERENCE, TOPIC_FEEDBACK)
_MAX_EVENT_BYTES = 900_000  # under Kafka's default 1 MB message limit

# Errors for which sending the same bytes again can never succeed.
_FINAL_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)

# Errors after which this producer delivers nothing again: the broker fenced its
# producer id (its state was lost, or it saw a newer epoch). librdkafka reports them
# on each message's delivery, not always as a fatal error: every retry then failed at
# once, for good (19.8 million failed attempts in 3 minutes in a fault test).
_FENCED_ERRORS = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError._FENCED,
    }
)
_RETRY_BACKOFF_S = (0.05, 5.0)
"""First and longest wait before messages whose delivery failed are sent again."""


def delivery_action(code: int) -> str:
    """What a failed delivery leads to: ``"drop"`` (the bytes can never be taken),
    ``"recreate"`` (this producer can never deliver: a new one sends them) or
    ``"retry"``.

    >>> [delivery_action(c) for c in (KafkaError.MSG_SIZE_TOO_LARGE,
    ...     KafkaError.PRODUCER_FENCED, KafkaError._MSG_TIMED_OUT)]
    ['drop', 'recreate', 'retry']
    """
    if code in _FINAL_ERRORS:
        return "drop"
    return "recreate" if code in _FENCED_ERRORS else "retry"


F = TypeVar("F", bound=Callable[..., Any])


# -- ids ----------------------------------------------------------------------

_ID_POOL: list[str] = []
_V4_BYTE6 = bytes((b & 0x0F) | 0x40 for b in range(256))
_V4_BYTE8 = bytes((b & 0x3F) | 0x80 for b in range(256))


def _refill_ids(n: int = 4096) -> None:
    # One urandom call and one hex() for thousands of ids: uuid.uuid4() costs
    # ~2 µs each, a pooled id ~0.05 µs.
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = raw[6::16].translate(_V4_BYTE6)
    raw[8::16] = raw[8::16].translate(_V4_BYTE8)
    h = raw.hex()
    _ID_POOL.extend([h[i : i + 32] for i in range(0, 32 * n, 32)])


def new_id() -> str:
    """A random UUID version 4 as 32 hex digits (what ``uuid.uuid4().hex`` gives).

    >>> import uuid
    >>> i = new_id(); len(i), uuid.UUID(i).version, uuid.UUID(i).variant == uuid.RFC_4122
    (32, 4, True)
    """
    try:
        return _ID_POOL.pop()
    except IndexError:
        _refill_ids()
        return _ID_POOL.pop()


os.register_at_fork(after_in_child=_ID_POOL.clear)  # a child must not reuse the parent's ids


# -- configuration --------------------------------------------------------------


def resolve_bootstrap(bootstrap: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Kafka bootstrap servers: the argument, else ``$LLMPULSE_KAFKA``, else the
    ``"kafka"`` entry of ``<$LLMPULSE_DATA_DIR or ./.llmpulse>/endpoints.json``
    (written by ``llmpulse up``), else a :class:`RuntimeError` saying how to fix it.

    >>> resolve_bootstrap(environ={"LLMPULSE_KAFKA": "kafka:9092"})
    'kafka:9092'
    >>> resolve_bootstrap(environ={"LLMPULSE_DATA_DIR": "/nonexistent"})
    Traceback (most recent call last):
    ...
    RuntimeError: no Kafka bootstrap servers: pass Monitor(bootstrap=...), set LLMPULSE_KAFKA, or start the embedded stack with `llmpulse up` (looked for /nonexistent/endpoints.json)
    """
    if bootstrap:
        return bootstrap
    env = os.environ if environ is None else environ
    if env.get("LLMPULSE_KAFKA"):
        return env["LLMPULSE_KAFKA"]
    path = Path(env.get("LLMPULSE_DATA_DIR") or ".llmpulse") / "endpoints.json"
    try:
        endpoints = json.loads(path.read_text())
    except FileNotFoundError:
        endpoints = None
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read {path}: {e}; restart `llmpulse up` or set LLMPULSE_KAFKA") from e
    if isinstance(endpoints, dict) and isinstance(endpoints.get("kafka"), str) and endpoints["kafka"]:
        return str(endpoints["kafka"])
    raise RuntimeError(
        "no Kafka bootstrap servers: pass Monitor(bootstrap=...), set LLMPULSE_KAFKA, "
        f"or start the embedded stack with `llmpulse up` (looked for {path})"
    )


class _RateLimitedLog:
    """Warn at most once per interval per key; say how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float]) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, msg: str, level: int = logging.WARNING) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            msg = f"{msg} ({n} similar messages suppressed)"
        self.logger.log(level, msg)


class _KafkaLog:
    """librdkafka's log lines, rate limited per facility (a down broker is chatty)."""

    def __init__(self, limiter: _RateLimitedLog, secrets: Sequence[Secret] = ()) -> None:
        self.limiter = limiter
        self.secrets = list(secrets)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        fac = str(args[0]) if args else fmt
        text = "kafka: " + (fmt % args if args else fmt)
        if self.secrets:
            text = scrub(text, self.secrets)
        self.limiter(f"kafka:{fac}", text, min(level, logging.WARNING))


# -- track() ----------------------------------------------------------------------


class Call:
    """The handle :meth:`Monitor.track` yields: set event fields as attributes
    (``call.response = text``, ``call.output_tokens = 40``) or with :meth:`set`.

    >>> c = Call({"request_id": "r1"})
    >>> c.response = "hello"; c.set(input_tokens=3).fields
    {'request_id': 'r1', 'response': 'hello', 'input_tokens': 3}
    >>> c.request_id
    'r1'
    """

    __slots__ = ("fields",)
    fields: dict[str, Any]

    def __init__(self, fields: dict[str, Any]) -> None:
        object.__setattr__(self, "fields", fields)

    def __setattr__(self, name: str, value: Any) -> None:
        self.fields[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def set(self, **fields: Any) -> Call:
        """Set several fields at once; returns the handle."""
        self.fields.update(fields)
        return self


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("llmpulse_call", default=None)


def current_call() -> Call | None:
    """The handle of the innermost :meth:`Monitor.track` running in this context
    (thread or asyncio task), so a decorated function can set its own fields.

    >>> current_call() is None
    True
    """
    return _CURRENT.get()


class _Track:
    """What :meth:`Monitor.track` returns: a (sync or async) context manager,
    and a decorator that tracks each call of the function it wraps."""

    __slots__ = ("_monitor", "_fields", "_call", "_start", "_token")

    def __init__(self, monitor: Monitor, fields: dict[str, Any]) -> None:
        self._monitor = monitor
        self._fields = fields
        self._call: Call | None = None
        self._start = 0.0
        self._token: contextvars.Token[Call | None] | None = None

    def __enter__(self) -> Call:
        fields = dict(self._fields)
        if "request_id" not in fields:
            fields["request_id"] = new_id()
        self._call = Call(fields)
        self._token = _CURRENT.set(self._call)
        self._start = self._monitor._timer()
        return self._call

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        elapsed_ms = (self._monitor._timer() - self._start) * 1000.0
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        call = self._call
        assert call is not None, "track() exited without entering"
        fields = call.fields
        fields.setdefault("latency_ms", max(elapsed_ms, 0.0))
        fields.setdefault("input_tokens", 0)
        fields.setdefault("output_tokens", 0)
        if exc_type is None:
            fields.setdefault("status", "ok")
            self._monitor.inference(**fields)
            return False
        # TimeoutError is also asyncio.TimeoutError (3.11+).
        fields.setdefault("status", "timeout" if issubclass(exc_type, TimeoutError) else "error")
        fields.setdefault("error_type", exc_type.__name__)
        try:
            self._monitor.inference(**fields)
        except EventError as e:
            # Never mask the app's own exception with ours.
            self._monitor._invalid_event(e, strict=False)
        return False  # re-raise the app's exception unchanged

    async def __aenter__(self) -> Call:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        monitor, fields = self._monitor, self._fields
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                async with _Track(monitor, fields):
                    return await fn(*args, **kwargs)

            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _Track(monitor, fields):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


# -- the monitor --------------------------------------------------------------------


# -- constructing a Monitor ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    """A :class:`Monitor`'s identity, transport and sizes, checked.

    >>> _Settings.of("a", "127.0.0.1:9", None, buckets=8).buckets
    8
    >>> _Settings.of("", "127.0.0.1:9", None)
    Traceback (most recent call last):
    ...
    ValueError: app: must be a non-empty string
    """

    app: str
    bootstrap: str
    security: KafkaSecurity
    model: str | None
    model_version: str | None
    strict: bool
    buffer_events: int
    buckets: int
    envelope_max_events: int
    envelope_max_bytes: int
    linger_ms: float
    delivery_timeout_s: float

    @classmethod
    def of(
        cls,
        app: str,
        bootstrap: str | None,
        security: KafkaSecurity | Mapping[str, Any] | None,
        *,
        model: str | None = None,
        model_version: str | None = None,
        strict: bool = True,
        buffer_events: int = 100_000,
        buckets: int = 64,
        envelope_max_events: int = 1000,
        envelope_max_bytes: int = 512 << 10,
        linger_ms: float = 50.0,
        delivery_timeout_s: float = 30.0,
    ) -> _Settings:
        """Check the arguments in the constructor's order; the error names the argument."""
        if type(app) is not str or not app:
            raise ValueError("app: must be a non-empty string")
        if buckets < 1 or envelope_max_events < 1 or envelope_max_bytes < 1 or buffer_events < 2:
            raise ValueError("buckets, envelope_max_events, envelope_max_bytes must be >= 1, buffer_events >= 2")
        bootstrap = resolve_bootstrap(bootstrap)
        return cls(
            app=app,
            bootstrap=bootstrap,
            security=KafkaSecurity.coerce(security),
            model=model,
            model_version=model_version,
            strict=strict,
            buffer_events=int(buffer_events),
            buckets=int(buckets),
            envelope_max_events=int(envelope_max_events),
            envelope_max_bytes=int(envelope_max_bytes),
            linger_ms=float(linger_ms),
            delivery_timeout_s=float(delivery_timeout_s),
        )


def _redactor(redact: bool | Callable[[str], str] | None) -> Callable[[str], str] | None:
    """``redact=True`` is the built-in :class:`~llmpulse.redact.Redactor` (which says
    here, when its extra is missing, how to install it); a callable is used as is."""
    if redact is True:
        return Redactor()
    if redact is None or redact is False:
        return None
    return redact


def _text_policy(
    redact: bool | Callable[[str], str] | None,
    text: str,
    text_sample_rate: float,
    embed: Callable[[str], Sequence[float]] | None,
) -> TextPolicy:
    """The :class:`~llmpulse.redact.TextPolicy` of the text arguments (it checks them).

    >>> _text_policy(None, "full", 1.0, None).is_noop
    True
    """
    return TextPolicy(mode=text, sample_rate=text_sample_rate, redactor=_redactor(redact), embed=embed)


def _open_journal(
    journal_dir: str | os.PathLike[str] | None, max_bytes: int, fsync: str
) -> Journal | None:
    """The journal in ``journal_dir``, or None without one."""
    if journal_dir is None:
        return None
    return Journal(journal_dir, max_bytes=max_bytes, fsync=fsync)


def _producer_config(
    cfg: _Settings,
    on_error: Callable[[KafkaError], None],
    logger: _KafkaLog,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """librdkafka settings: ours, then the transport security's, then ``extra``.

    >>> kafka_log = _KafkaLog(_RateLimitedLog(log, 60.0, time.monotonic))
    >>> conf = _producer_config(_Settings.of("a", "h:9", None), print, kafka_log, {"linger.ms": 1})
    >>> conf["client.id"], conf["acks"], conf["linger.ms"], conf["message.timeout.ms"]
    ('llmpulse-a', 'all', 1, 30000)
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap,
        "client.id": f"llmpulse-{cfg.app}",
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "message.timeout.ms": max(1, int(cfg.delivery_timeout_s * 1000)),
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1 << 20,
        "message.max.bytes": max(1_000_000, cfg.envelope_max_bytes + _MAX_EVENT_BYTES),
        "error_cb": on_error,
        "logger": logger,
    }
    conf.update(cfg.security.librdkafka())
    conf.update(extra or {})
    return conf


class Monitor:
    """Send ``inference/v1`` and ``feedback/v1`` events to llmpulse.

    Configuration (all keyword arguments but ``app``):

    * identity: ``app``; ``model`` and ``model_version`` fill events that lack them.
    * ``bootstrap``: Kafka servers; None resolves with :func:`resolve_bootstrap`.
    * ``strict``: invalid fields raise :class:`~llmpulse.events.EventError`
      (a ``ValueError`` naming the field); with ``strict=False`` the event is
      logged (rate limited), counted as ``invalid`` and dropped.
    * text: ``redact`` (True for the built-in :class:`~llmpulse.redact.Redactor`,
      which needs ``pip install 'llmpulse[redact]'`` and says so here, at
      construction, when it is missing; or any ``str -> str`` callable, such as
      ``Redactor(regions=("DE", "AT"))``), ``text`` (``"full"`` or ``"none"``),
      ``text_sample_rate``, ``embed`` (see :class:`~llmpulse.redact.TextPolicy`).
    * subject: an event's optional ``user`` (whom it is about, for erasure) is
      sent as :func:`~llmpulse.subject.hash_user` of it when ``redact`` is set,
      keyed by ``user_key`` (default ``$LLMPULSE_USER_KEY``).
    * delivery: ``buffer_events``, ``journal_dir``, ``journal_max_bytes``,
      ``journal_fsync``, ``delivery_timeout_s``, ``producer_config`` (extra
      librdkafka settings, applied last).
    * transport security: ``security``, a :class:`~llmpulse.kafka_security.KafkaSecurity`
      or a dict of its fields (``{"security_protocol": "SSL", "ca_file": ...}``);
      the ``LLMPULSE_KAFKA_*`` variables override it, and without it they alone
      apply. An authentication or TLS failure keeps the events (in memory and
      the journal) and is told by :attr:`transport_error` and an error log line.
    * envelopes: ``buckets``, ``envelope_max_events``, ``envelope_max_bytes``, ``linger_ms``.
    * injected for tests: ``clock`` (epoch seconds, for ``ts``), ``timer``
      (monotonic seconds, for ``track`` latencies).

    See the module docstring for envelopes, keys, the journal and the counters.

    >>> mon = Monitor(app="a", bootstrap="127.0.0.1:9", clock=lambda: 1_700_000_000.0)
    >>> rid = mon.inference(request_id="r9", model="m", model_version="2", latency_ms=5,
    ...                     status="ok", input_tokens=1, output_tokens=1)
    >>> fid = mon.feedback(request_id=rid, score=1.0)
    >>> mon.stats()["sent"]
    2
    >>> mon.close(timeout=0)  # no broker at that address: both events are dropped
    >>> mon.stats()["dropped"]
    2
    """

    def __init__(
        self,
        app: str,
        bootstrap: str | None = None,
        *,
        model: str | None = None,
        model_version: str | None = None,
        strict: bool = True,
        redact: bool | Callable[[str], str] | None = None,
        text: str = "full",
        text_sample_rate: float = 1.0,
        embed: Callable[[str], Sequence[float]] | None = None,
        user_key: bytes | str | None = None,
        buffer_events: int = 100_000,
        journal_dir: str | os.PathLike[str] | None = None,
        journal_max_bytes: int = 256 << 20,
        journal_fsync: str = "interval",
        delivery_timeout_s: float = 30.0,
        buckets: int = 64,
        envelope_max_events: int = 1000,
        envelope_max_bytes: int = 512 << 10,
        linger_ms: float = 50.0,
        producer_config: Mapping[str, Any] | None = None,
        security: KafkaSecurity | Mapping[str, Any] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        log_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        cfg = _Settings.of(
            app,
            bootstrap,
            security,
            model=model,
            model_version=model_version,
            strict=strict,
            buffer_events=buffer_events,
            buckets=buckets,
            envelope_max_events=envelope_max_events,
            envelope_max_bytes=envelope_max_bytes,
            linger_ms=linger_ms,
            delivery_timeout_s=delivery_timeout_s,
        )
        self._set_settings(cfg)
        self._transport_error: str | None = None
        self._clock = clock
        self._timer = timer
        self._limits = limits
        self._set_text(_text_policy(redact, text, text_sample_rate, embed), user_key)
        self._warn = _RateLimitedLog(log, log_interval_s, clock)
        self._init_hand_off()
        self._init_delivery()
        self._set_journal(_open_journal(journal_dir, journal_max_bytes, journal_fsync))
        self._producer_conf = _producer_config(
            cfg, self._on_error, _KafkaLog(self._warn, cfg.security.secrets()), producer_config
        )
        self._producer = Producer(self._producer_conf)
        self._thread = threading.Thread(target=self._run, name=f"llmpulse-monitor-{app}", daemon=True)
        self._thread.start()

    # -- construction steps (in this order) ------------------------------------

    def _set_settings(self, cfg: _Settings) -> None:
        """The checked settings, under the constructor arguments' names."""
        self.app = cfg.app
        self.bootstrap = cfg.bootstrap
        self.security = cfg.security
        self.model = cfg.model
        self.model_version = cfg.model_version
        self.strict = cfg.strict
        self.buffer_events = cfg.buffer_events
        self.buckets = cfg.buckets
        self.envelope_max_events = cfg.envelope_max_events
        self.envelope_max_bytes = cfg.envelope_max_bytes
        self.linger_ms = cfg.linger_ms
        self.delivery_timeout_s = cfg.delivery_timeout_s

    def _set_text(self, policy: TextPolicy, user_key: bytes | str | None) -> None:
        """What happens to text fields and to ``user``: redaction, sampling, embedding."""
        self.text_policy = policy
        redacting = policy.redactor is not None
        self._user_key: bytes | None = user_key_bytes(user_key) if redacting else None
        self._text: TextPolicy | None = None if policy.is_noop and policy.embed is None else policy

    def _init_hand_off(self) -> None:
        """State shared with the app threads without a lock: the deque (append and
        len are atomic), ``_cap`` and ``_mem`` (plain int reads)."""
        self._dq: deque[tuple[int, str, bytes]] = deque()
        self._cap = self.buffer_events
        self._mem = 0  # events taken off the deque and not yet delivered/journaled/dropped
        self._drop_lock = threading.Lock()
        self._dropped_app = 0
        self._invalid = 0

    def _init_delivery(self) -> None:
        """State owned by the background thread; read by stats()/flush() under ``_lock``."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._taken = 0
        self._delivered = 0
        self._failed = 0
        self._dropped = 0
        self._unacked = 0  # events handed to librdkafka, live or replayed
        self._max_unacked = max(1, self.buffer_events // 2)
        self._pending: dict[int, list[Any]] = {}  # kind*buckets+bucket -> [parts, nbytes, t0]
        self._held: deque[tuple[str, bytes, bytes, int]] = deque()
        self._backoff = 0.0  # grows while deliveries fail, back to 0 on a success
        self._retry_at = 0.0  # monotonic time before which failed messages wait
        self._replay_retry: deque[JournalRecord] = deque()  # read from the journal, to send again
        self._journal_mode = False
        self._flushing = 0
        self._stopping = False
        self._closed = False
        self._fatal = False
        self._keys = [str(b).encode() for b in range(self.buckets)]

    def _set_journal(self, journal: Journal | None) -> None:
        """The on-disk journal, if any; what an earlier process left there is replayed first."""
        self._journal = journal
        self._recovered = journal.recovered_events if journal else 0
        self._journal_mode = bool(journal and journal.has_unread())

    # -- the app's side: cheap ------------------------------------------------

    def inference(self, **fields: Any) -> str:
        """Record one model call; returns its ``request_id`` (a new id if not given)
        so the app can send :meth:`feedback` for it later.

        Fills ``event_id``, ``ts`` (now, epoch ms), ``app``, ``model`` and
        ``model_version`` when absent. Raises :class:`~llmpulse.events.EventError`
        for a bad field unless ``strict=False``.

        Prompt rollouts and A/B tests: pass ``prompt_version="v7"`` and, in an
        experiment, ``experiment="tone"`` and ``variant="B"``; the variants are
        compared per window (``ab.*`` signals).
        """
        ev = fields
        if "request_id" not in ev:
            ev["request_id"] = new_id()
        if "event_id" not in ev:
            ev["event_id"] = new_id()
        if "app" not in ev:
            ev["app"] = self.app
        if "model" not in ev and self.model is not None:
            ev["model"] = self.model
        if "model_version" not in ev and self.model_version is not None:
            ev["model_version"] = self.model_version
        now = int(self._clock() * 1000)
        if "ts" not in ev:
            ev["ts"] = now
        self._submit(0, ev, validate_inference, now)
        return str(ev.get("request_id") or "")

    def feedback(self, **fields: Any) -> str:
        """Record feedback for an earlier ``request_id``; returns the event's ``event_id``.

        Fills ``event_id``, ``ts`` and ``app`` when absent; validation as for
        :meth:`inference`. ``reference="..."`` (a corrected answer) with
        ``source="reviewer"`` scores the response with ROUGE-L, BLEU and chrF.
        """
        ev = fields
        if "event_id" not in ev:
            ev["event_id"] = new_id()
        if "app" not in ev:
            ev["app"] = self.app
        now = int(self._clock() * 1000)
        if "ts" not in ev:
            ev["ts"] = now
        self._submit(1, ev, validate_feedback, now)
        return str(ev.get("event_id") or "")

    def _submit(self, kind: int, ev: dict[str, Any], validate: Callable[..., Any],
                now: int) -> None:
        """Validate, apply the text policy, encode and enqueue one event (kind 0
        inference, 1 feedback); a bad event is counted and logged, or raised when strict."""
        try:
            validate(ev, now_ms=now, limits=self._limits)
            if self._text is not None:
                self._text.apply(ev)
            if self._user_key is not None and ev.get("user"):
                ev["user"] = hash_user(ev["user"], self._user_key)
            payload = orjson.dumps(ev)
            if len(payload) > _MAX_EVENT_BYTES:
                raise EventError("event", f"{len(payload)} bytes serialised, over the {_MAX_EVENT_BYTES}-byte limit")
        except EventError as e:
            self._invalid_event(e)
            return
        except TypeError as e:  # orjson: a field value that JSON cannot hold
            self._invalid_event(EventError("event", f"not JSON-serialisable: {e}"))
            return
        item = (kind, ev["request_id"], payload)
        if len(self._dq) + self._mem < self._cap:
            self._dq.append(item)
        else:
            self._overflow(item)

    def track(self, **fields: Any) -> _Track:
        """Time a model call and record it as an inference event.

        A context manager (``with`` or ``async with``) yielding a :class:`Call`
        on which the app sets ``response``, ``input_tokens``, ``output_tokens``,
        ``context``, ``prediction``… (tokens default to 0), and a decorator
        (sync or async functions; inside, :func:`current_call` gives the handle).
        ``latency_ms`` is the elapsed time; ``status`` is ``ok``, ``timeout`` for
        ``TimeoutError``/``asyncio.TimeoutError``, else ``error`` with
        ``error_type`` = the exception class name. App exceptions propagate
        unchanged; an invalid event never replaces them.

        >>> mon = Monitor(app="a", bootstrap="127.0.0.1:9", model="m", model_version="1",
        ...               clock=lambda: 1_700_000_000.0, timer=iter([10.0, 10.25]).__next__)
        >>> with mon.track(prompt="2+2?") as call:
        ...     call.response = "4"
        >>> mon.close(timeout=0)
        >>> @mon.track()
        ... def slow():
        ...     raise TimeoutError("upstream")
        """
        return _Track(self, fields)

    def _invalid_event(self, e: EventError, strict: bool | None = None) -> None:
        if self.strict if strict is None else strict:
            raise e
        with self._drop_lock:
            self._invalid += 1
        self._warn("invalid", f"invalid event dropped ({e}); further ones are counted in stats()['invalid']")

    def _overflow(self, item: tuple[int, str, bytes]) -> None:
        """Memory is full. With a journal, the app thread moves the backlog to
        disk itself (the only case where it waits for the lock); without one,
        the event is dropped."""
        if self._journal is None or self._cap == 0:
            self._drop_app()
            return
        with self._lock:
            if self._stopping:
                self._drop_app()
                return
            self._journal_mode = True  # keep order: the backlog goes behind what is on disk
            self._dq.append(item)
            while self._dq:
                self._drain(self._dq, time.monotonic())
            for k, slot in list(self._pending.items()):
                del self._pending[k]
                self._seal(k, slot)

    def _drop_app(self) -> None:
        with self._drop_lock:
            self._dropped_app += 1
        if self._closed:
            self._warn("closed", "event dropped: the Monitor is closed")
        else:
            self._warn(
                "buffer",
                f"event dropped: {self.buffer_events} events already buffered in memory "
                "(broker unreachable or too slow; set journal_dir to spill to disk)",
            )

    # -- status -------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A consistent snapshot of the counters (see the module docstring)."""
        with self._lock:
            in_dq = len(self._dq)
            with self._drop_lock:
                dropped_app, invalid = self._dropped_app, self._invalid
            return {
                "sent": self._taken + in_dq + dropped_app,
                "delivered": self._delivered,
                "failed": self._failed,
                "dropped": self._dropped + dropped_app,
                "queued": in_dq + self._mem,
                "journaled": self._journal.pending_events if self._journal else 0,
                "invalid": invalid,
                "recovered": self._recovered,
            }

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything accepted so far, including the journal's backlog; True
        if it was all delivered within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._wake.set()  # seal the envelopes being built now, not after linger_ms
            try:
                while True:
                    if self._drained():
                        return True
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        return False
                    self._cond.wait(min(remaining, 0.05))
            finally:
                self._flushing -= 1

    def _drained(self) -> bool:
        return (
            not self._dq
            and self._mem == 0
            and (self._journal is None or self._journal.pending_events == 0)
        )

    def close(self, timeout: float = 10.0) -> None:
        """Flush for up to ``timeout`` seconds, then stop. Whatever is still
        undelivered goes to the journal (or, without one, is counted dropped).
        Later calls of ``inference``/``feedback`` count their events as dropped."""
        if self._closed:
            return
        self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._cap = 0  # new events are dropped from now on
        self._wake.set()
        self._thread.join()
        with self._lock:
            self._closed = True
            self._shutdown()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Monitor(app={self.app!r}, bootstrap={self.bootstrap!r})"

    # -- the background thread ------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                try:
                    self._step()
                except Exception:  # never let the delivery thread die
                    log.exception("llmpulse monitor: delivery step failed")
                if self._flushing:
                    self._cond.notify_all()
                if self._stopping:
                    return
                busy = len(self._dq) > 0
            if not busy:
                self._wake.wait(0.005)
                self._wake.clear()

    def _step(self) -> None:
        if self._fatal:
            self._reset_producer()
        now = time.monotonic()
        dq = self._dq
        if dq:
            self._drain(dq, now)
        if self._pending:
            linger = self.linger_ms / 1000.0
            flushing = self._flushing > 0 or self._stopping
            for k, slot in list(self._pending.items()):
                if flushing or now - slot[2] >= linger:
                    del self._pending[k]
                    self._seal(k, slot)
        while self._held and now >= self._retry_at and (
                self._unacked == 0 or self._unacked + self._held[0][3] <= self._max_unacked):
            topic, key, payload, n = self._held[0]
            if not self._produce(topic, key, payload, n, None):
                break
            self._held.popleft()
        if self._journal is not None:
            if self._journal_mode and now >= self._retry_at:
                self._replay()
            self._journal.maybe_sync()
        try:
            self._producer.poll(0)
        except KafkaException as e:
            # confluent-kafka raises a fatal producer error from poll() too.
            self._note_error(e.args[0])

    def _drain(self, dq: deque[tuple[int, str, bytes]], now: float) -> None:
        pending = self._pending
        nb = self.buckets
        max_ev = self.envelope_max_events
        max_bytes = self.envelope_max_bytes
        crc = zlib.crc32
        spill = self._journal is not None
        cap = self.buffer_events
        budget = 50_000  # bound the time the lock is held
        taken = 0  # popped but not yet added to _taken/_mem
        while dq and budget and (spill or self._mem + taken < cap):
            kind, rid, payload = dq.popleft()
            taken += 1
            budget -= 1
            k = kind * nb + crc(rid.encode()) % nb
            slot = pending.get(k)
            n = len(payload) + 1
            if slot is None:
                pending[k] = [[payload], n, now]
                continue
            if slot[1] + n > max_bytes:
                self._taken += taken
                self._mem += taken
                taken = 0
                del pending[k]
                self._seal(k, slot)
                pending[k] = [[payload], n, now]
                continue
            slot[0].append(payload)
            slot[1] += n
            if len(slot[0]) >= max_ev:
                self._taken += taken
                self._mem += taken
                taken = 0
                del pending[k]
                self._seal(k, slot)
        self._taken += taken
        self._mem += taken

    def _seal(self, k: int, slot: list[Any]) -> None:
        parts: list[bytes] = slot[0]
        kind, bucket = divmod(k, self.buckets)
        self._dispatch(_TOPICS[kind], self._keys[bucket], b"\n".join(parts), len(parts))

    def _dispatch(self, topic: str, key: bytes, payload: bytes, n: int) -> None:
        """Route a sealed envelope whose events are counted in ``_mem``."""
        j = self._journal
        if j is not None and (
            self._journal_mode or (self._unacked and self._unacked + n > self._max_unacked)
        ):
            self._to_journal(topic, key, payload, n)
            self._mem -= n
            return
        if self._held or (self._unacked and self._unacked + n > self._max_unacked):
            self._held.append((topic, key, payload, n))
            return
        if not self._produce(topic, key, payload, n, None):
            if j is not None:
                self._to_journal(topic, key, payload, n)
                self._mem -= n
            else:
                self._held.append((topic, key, payload, n))

    def _to_journal(self, topic: str, key: bytes | None, payload: bytes, n: int) -> None:
        assert self._journal is not None
        self._journal_mode = True
        if not self._journal.append(topic, key, payload, n):
            self._dropped += n
            self._warn(
                "journal-full",
                f"{n} events dropped: journal {self._journal.directory} is full "
                f"({self._journal.max_bytes} bytes); the broker has been unreachable for a while",
            )

    def _produce(self, topic: str, key: bytes | None, payload: bytes, n: int, rec: JournalRecord | None) -> bool:
        try:
            self._producer.produce(topic, payload, key, on_delivery=functools.partial(self._on_delivery, n, rec))
        except BufferError:
            return False
        except KafkaException as e:
            self._note_error(e.args[0])
            return False
        self._unacked += n
        return True

    def _replay(self) -> None:
        j = self._journal
        assert j is not None
        retry = self._replay_retry
        while self._unacked < self._max_unacked:
            rec = retry.popleft() if retry else j.next_record()
            if rec is None:
                self._journal_mode = False
                return
            if not self._produce(rec.topic, rec.key, rec.payload, rec.n_events, rec):
                retry.appendleft(rec)
                return

    def _on_delivery(self, n: int, rec: JournalRecord | None, err: KafkaError | None, msg: Any) -> None:
        self._unacked -= n
        if err is None:
            self._delivered += n
            self._transport_error = None
            self._backoff = 0.0
            if rec is None:
                self._mem -= n
            else:
                assert self._journal is not None
                self._journal.ack(rec)
            return
        self._failed += n
        code = err.code()
        action = delivery_action(code)
        if action != "drop":  # sent again, after a wait that grows while failures go on
            first, most = _RETRY_BACKOFF_S
            self._backoff = min(most, self._backoff * 2 if self._backoff else first)
            self._retry_at = time.monotonic() + self._backoff
        if action == "recreate" and not self._fatal:
            self._fatal = True
            self._warn("fenced", f"the broker fenced this producer ({err.str()}); recreating it, "
                                 "events kept", logging.ERROR)
        if action == "drop":
            self._dropped += n
            self._warn("final", f"{n} events dropped: the broker refuses the message ({err.str()})")
            if rec is None:
                self._mem -= n
            else:
                assert self._journal is not None
                self._journal.ack(rec)
            return
        self._warn("delivery", f"delivery failed ({err.str()}); events kept for another attempt")
        if rec is not None:
            # Still in the journal, unacknowledged: send it again, or a restart will.
            self._replay_retry.append(rec)
            self._journal_mode = True
        elif self._journal is not None:
            self._to_journal(msg.topic(), msg.key(), msg.value(), n)
            self._mem -= n
        else:
            self._held.append((msg.topic(), msg.key(), msg.value(), n))

    def _note_error(self, err: Any) -> None:
        if isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL):
            self._on_error(err)
        else:
            self._warn("produce", f"kafka produce failed: {err}")

    @property
    def transport_error(self) -> str | None:
        """The last authentication or TLS failure, naming the ``kafka_security``
        setting to fix (never the password); None once a delivery succeeds."""
        return self._transport_error

    def _on_error(self, err: KafkaError) -> None:
        problem = describe_transport_error(err.name(), err.str(), self.security)
        if problem is not None:
            # events stay queued (and journaled) until the credentials are fixed
            self._transport_error = problem
            self._warn("security", f"kafka: {problem}; events are kept", logging.ERROR)
            return
        if err.fatal() or err.code() == KafkaError._FATAL:
            self._fatal = True
            self._warn("fatal", f"kafka producer fatal error, recreating it: {err.str()}", logging.ERROR)
        else:
            self._warn(f"error:{err.code()}", f"kafka: {err.str()}")

    def _purge(self) -> None:
        p = self._producer
        try:
            p.purge(in_queue=True, in_flight=True, blocking=False)
        except KafkaException as e:
            self._warn("purge", f"kafka purge failed: {e}")
        deadline = time.monotonic() + 5.0
        while self._unacked and time.monotonic() < deadline:
            p.poll(0.01)

    def _reset_producer(self) -> None:
        self._purge()  # the old producer's last reports may say "fenced" again
        self._producer = Producer(self._producer_conf)
        self._fatal = False

    def _shutdown(self) -> None:
        """After the thread stopped: put everything undelivered in the journal or count it dropped."""
        dq = self._dq
        if self._journal is not None:
            self._drain(dq, time.monotonic())
        self._dropped += len(dq)
        self._taken += len(dq)
        dq.clear()
        for k, slot in list(self._pending.items()):
            del self._pending[k]
            self._seal(k, slot)
        self._purge()
        self._replay_retry.clear()  # unacknowledged in the journal: the next process replays them
        if self._unacked:
            # librdkafka would not give these back: count them as lost, loudly.
            self._dropped += self._unacked
            self._mem -= min(self._mem, self._unacked)
            log.error("llmpulse monitor: %d events in flight at close were not confirmed", self._unacked)
            self._unacked = 0
        while self._held:
            topic, key, payload, n = self._held.popleft()
            if self._journal is not None:
                self._to_journal(topic, key, payload, n)
            else:
                self._dropped += n
            self._mem -= n
        if self._dropped and self._journal is None:
            self._warn("close", f"{self._dropped} events dropped in total (no journal_dir configured)")
        if self._journal is not None:
            self._journal.close()
        self._producer.flush(0)
