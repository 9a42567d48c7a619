"""Secrets that never show up in a repr, a log line or a recorded error.

A :class:`Secret` holds a webhook signing key, a PagerDuty routing key, an
SMTP password or a Slack webhook URL (the URL *is* the credential). Its
``repr``/``str`` are ``'***'``; the value is read with :meth:`Secret.get`
only where it is sent. :func:`scrub` removes secret values from any text
before it is logged or kept as a channel's last error, because HTTP client
errors quote the URL they failed on.

>>> s = Secret("https://hooks.slack.com/services/T0/B0/abcdefgh")
>>> s, f"{s}"
(Secret('***'), '***')
>>> scrub("POST https://hooks.slack.com/services/T0/B0/abcdefgh failed", [s])
'POST *** failed'
>>> scrub("url='http://proxy/services/T0/B0/abcdefgh'", [s])  # the path alone is secret too
"url='http://proxy***'"
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["MASK", "Secret", "scrub"]

MASK = "***"


class Secret:
    """A string that prints as ``***``; :meth:`get` returns the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = str(value)

    def get(self) -> str:
        return self._value

    def fragments(self) -> list[str]:
        """The value and, for a URL, its path and query (also secret on their own)."""
        out = [self._value] if self._value else []
        if "://" in self._value:
            parts = urlsplit(self._value)
            tail = parts.path + (f"?{parts.query}" if parts.query else "")
            if len(tail) >= 8:
                out.append(tail)
        return out

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __reduce__(self) -> tuple[object, ...]:
        # pickling would write the value to disk in clear: refuse rather than leak
        raise TypeError("Secret values are not picklable")


def scrub(text: str, secrets: Iterable[Secret | None]) -> str:
    """``text`` with every fragment of every secret replaced by ``***``."""
    frags = sorted(
        {f for s in secrets if s for f in s.fragments()}, key=len, reverse=True
    )
    for frag in frags:
        text = text.replace(frag, MASK)
    return text
