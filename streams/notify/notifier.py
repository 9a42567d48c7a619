"""Fan-out of alert events to on-call channels: dedup, retries, bookkeeping.

:meth:`Notifier.send` never raises into the stream agent that calls it. Each
channel that accepts the event (severity, rule filters, the rule's
``notify`` action) gets it concurrently; a failed delivery is retried with
exponential backoff (:class:`Retry`) when the failure may be transient, then
recorded in :meth:`Notifier.stats` (counter, last error with secrets
scrubbed). The same alert state (``alert_id`` + firing/resolved) is sent
once per channel: a replayed event after a worker restart is a duplicate,
counted and skipped.

Sleep is injectable so tests run retries without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from llmpulse.secret import scrub
from llmpulse.streams.notify.channels import Channel, DeliveryError, build_channels

if TYPE_CHECKING:
    from llmpulse.streams.alerting import AlertEvent
    from llmpulse.streams.rules import Rules

__all__ = ["ChannelStats", "Notifier", "Retry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how patiently a delivery is tried.

    ``attempts`` tries in all; before try ``k`` (k >= 1) the notifier waits
    ``min(backoff_s * factor ** (k - 1), max_backoff_s)``.

    >>> Retry(attempts=5, backoff_s=0.5).delays()
    [0.5, 1.0, 2.0, 4.0]
    """

    attempts: int = 4
    backoff_s: float = 0.5
    factor: float = 2.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts must be >= 1")
        if self.backoff_s < 0 or self.factor < 1:
            raise ValueError("Retry.backoff_s must be >= 0 and factor >= 1")

    def delays(self) -> list[float]:
        return [
            min(self.backoff_s * self.factor**k, self.max_backoff_s)
            for k in range(self.attempts - 1)
        ]


@dataclass(slots=True)
class ChannelStats:
    """Delivery counters of one channel."""

    sent: int = 0
    failed: int = 0
    retries: int = 0
    duplicates: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    last_sent_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "retries": self.retries,
            "duplicates": self.duplicates,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_sent_at": self.last_sent_at,
        }


@dataclass
class Notifier:
    """Sends alert events to ``channels``; see the module docstring.

    ``session`` is an :class:`aiohttp.ClientSession` to share; by default one
    is created on first use and closed by :meth:`close`. ``clock`` stamps
    ``last_sent_at``/``last_error_at`` in the stats (wall time is right here:
    it says when delivery happened, not when the problem did).

    >>> n = Notifier([])
    >>> n
    Notifier(channels=[], retry=Retry(attempts=4, backoff_s=0.5, factor=2.0, max_backoff_s=30.0))
    >>> n.stats()
    {}
    """

    channels: Sequence[Channel]
    retry: Retry = field(default_factory=Retry)
    sleep: Callable[[float], Awaitable[Any]] = field(default=asyncio.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False)
    session: aiohttp.ClientSession | None = field(default=None, repr=False)
    dedup_size: int = field(default=50_000, repr=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique: {', '.join(dupes)}")
        self.channels = list(self.channels)
        self._stats: dict[str, ChannelStats] = {c.name: ChannelStats() for c in self.channels}
        self._sent: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._inflight: set[tuple[str, str, str]] = set()
        self._own_session = self.session is None
        self._secrets = [s for c in self.channels for s in c.secrets()]

    @classmethod
    def from_rules(cls, rules: Rules, **kwargs: Any) -> Notifier:
        """The channels of the rules file's ``notify`` section (:class:`RulesError` on a bad one)."""
        return cls(list(build_channels(rules)), **kwargs)

    async def send(self, event: AlertEvent) -> dict[str, bool]:
        """Deliver ``event`` to every accepting channel; ``{channel: delivered}``
        (duplicates count as delivered). Never raises."""
        try:
            if "notify" not in event.rule.actions:
                return {}
            targets = [c for c in self.channels if c.accepts(event)]
            if not targets:
                return {}
            results = await asyncio.gather(*(self._send_one(c, event) for c in targets))
            return dict(zip((c.name for c in targets), results, strict=True))
        except Exception as exc:  # a bug here must not stop the stream
            log.exception("notifier: unexpected error: %s", self._scrub(repr(exc)))
            return {}

    async def _send_one(self, channel: Channel, event: AlertEvent) -> bool:
        key = (channel.name, event.row["alert_id"], event.kind)
        st = self._stats[channel.name]
        if key in self._sent or key in self._inflight:
            st.duplicates += 1
            return True
        self._inflight.add(key)
        try:
            session = await self._session()
            delays = self.retry.delays()
            for attempt in range(self.retry.attempts):
                try:
                    await channel.deliver(event, session)
                except Exception as exc:
                    err = self._describe(exc)
                    retryable = not isinstance(exc, DeliveryError) or exc.retryable
                    if retryable and attempt < len(delays):
                        st.retries += 1
                        log.info("notify %s: attempt %d failed (%s), retrying",
                                 channel.name, attempt + 1, err)
                        await self.sleep(delays[attempt])
                        continue
                    st.failed += 1
                    st.last_error = err
                    st.last_error_at = self.clock()
                    log.warning("notify %s: %s of alert %s not delivered after %d attempt(s): %s",
                                channel.name, event.kind, event.row["alert_id"], attempt + 1, err)
                    return False
                st.sent += 1
                st.last_sent_at = self.clock()
                self._remember(key)
                return True
            return False  # pragma: no cover - the loop always returns
        finally:
            self._inflight.discard(key)

    def _remember(self, key: tuple[str, str, str]) -> None:
        self._sent[key] = None
        while len(self._sent) > self.dedup_size:
            self._sent.popitem(last=False)

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if not isinstance(exc, DeliveryError):
            text = f"{type(exc).__name__}: {text}"
        return self._scrub(text)[:500]

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)

    async def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
            self._own_session = True
        return self.session

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per channel: sent, failed, retries, duplicates, last error (scrubbed)."""
        return {name: st.as_dict() for name, st in self._stats.items()}

    def snapshot(self) -> dict[str, Any]:
        """Which alert states were delivered, so a restarted worker does not resend."""
        return {"sent": [list(k) for k in self._sent]}

    def restore(self, state: Mapping[str, Any]) -> None:
        known = {c.name for c in self.channels}
        for item in state.get("sent", []):
            key = (str(item[0]), str(item[1]), str(item[2]))
            if key[0] in known:
                self._remember(key)

    async def close(self) -> None:
        if self.session is not None and self._own_session and not self.session.closed:
            await self.session.close()

    async def __aenter__(self) -> Notifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
