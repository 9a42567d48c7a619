"""The raw sink: store validated rows, never wedge, never lose.

Two kinds of failure, told apart by the error:

* the store is unreachable or refuses every statement (an outage): retry the
  same rows with capped exponential backoff for as long as it takes; nothing
  is acked meanwhile, so the broker keeps the rest;
* the store rejects the data (a row the validator let through but ClickHouse
  cannot parse): bisect the batch, store every good row, and return each bad
  row with the store's reason so it goes to the dead-letter topic. One bad row
  never blocks the partition behind it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RawSink", "is_data_error"]

log = logging.getLogger(__name__)

_DATA_ERROR = re.compile(
    r"CANNOT_PARSE|Cannot parse|INCORRECT_DATA|TYPE_MISMATCH|CANNOT_READ|ILLEGAL_|"
    r"VALUE_IS_OUT_OF_RANGE|TOO_LARGE|Code: (6|26|27|38|41|53|62|69|70|72|117|130|131|321)\b"
)


def is_data_error(exc: BaseException) -> bool:
    """True when the store refused the rows themselves, not the connection.

    >>> is_data_error(RuntimeError("Code: 27. DB::Exception: Cannot parse input"))
    True
    >>> is_data_error(ConnectionRefusedError("[Errno 111] Connection refused"))
    False
    """
    return bool(_DATA_ERROR.search(str(exc)))


@dataclass
class RawSink:
    """``write(table, lines)`` stores JSONEachRow lines through ``insert``.

    ``insert(table, data, count)`` is the blocking store call (run in a
    thread); ``should_stop`` ends the outage retry loop when the app stops.
    """

    insert: Callable[[str, bytes, int], Any]
    should_stop: Callable[[], bool] = lambda: False
    retry_max_s: float = 5.0
    sleep: Callable[[float], Any] = asyncio.sleep
    errors: int = 0
    last_store_s: float = 0.0
    rejected: int = 0
    _warned: float = field(default=0.0, repr=False)

    async def write(self, table: str, lines: list[bytes]) -> list[tuple[int, str]]:
        """Store ``lines``; returns (index, reason) for each line the store rejected.

        Raises ``asyncio.CancelledError`` only if the app stops during an outage.
        """
        if not lines:
            return []
        rejected: list[tuple[int, str]] = []
        await self._write_range(table, lines, 0, len(lines), rejected)
        self.rejected += len(rejected)
        return rejected

    async def _write_range(
        self, table: str, lines: list[bytes], lo: int, hi: int, rejected: list[tuple[int, str]]
    ) -> None:
        delay = 0.1
        while True:
            t0 = time.perf_counter()
            try:
                await asyncio.to_thread(self.insert, table, b"\n".join(lines[lo:hi]), hi - lo)
                self.last_store_s = time.perf_counter() - t0
                return
            except Exception as exc:
                self.errors += 1
                if is_data_error(exc):
                    if hi - lo == 1:
                        rejected.append((lo, "store rejected: " + str(exc).splitlines()[0][:300]))
                        return
                    mid = (lo + hi) // 2
                    await self._write_range(table, lines, lo, mid, rejected)
                    await self._write_range(table, lines, mid, hi, rejected)
                    return
                now = time.monotonic()
                if now - self._warned > 10:
                    log.warning("store unavailable (%s); retrying every <= %g s",
                                str(exc).splitlines()[0][:200], self.retry_max_s)
                    self._warned = now
                if self.should_stop():
                    raise asyncio.CancelledError("stopping during a store outage") from exc
                await self.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
