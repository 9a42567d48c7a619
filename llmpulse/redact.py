"""PII redaction and text policies for the client shim.

A :class:`Redactor` replaces personal data in free text before it leaves the
application. Built-in detectors cover e-mail addresses, phone numbers,
payment card numbers (only digit runs that pass the Luhn check) and IBANs
(only strings that pass the ISO 13616 mod-97 check), so order numbers and
timestamps survive. Users add their own rules: a compiled regex or pattern
string (replaced by ``[REDACTED]``), a ``(pattern, replacement)`` pair, or any
callable ``str -> str``.

>>> r = Redactor()
>>> r("Mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111.")
'Mail [EMAIL] or call [PHONE], card [CARD].'
>>> r("Order 1234 5678 9012 3456 shipped on 2024-05-01")  # fails Luhn: not a card
'Order 1234 5678 9012 3456 shipped on 2024-05-01'
>>> r("IBAN GB82 WEST 1234 5698 7654 32, not GB00WEST12345698765432")
'IBAN [IBAN], not GB00WEST12345698765432'

:class:`TextPolicy` decides, per event, whether text is sent at all: in mode
``"none"`` (or for events outside the ``sample_rate`` share) the prompt,
response, context passages and feedback comment are replaced by their lengths
and SHA-256 hashes (``text_meta``) and, if an ``embed`` callable is given, by
their embeddings (``embeddings``), so drift and volume metrics still work.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUILTIN_RULES",
    "Redactor",
    "TextPolicy",
    "iban_valid",
    "luhn_valid",
]

TEXT_FIELDS: tuple[str, ...] = ("prompt", "response", "comment")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, read letters
    as numbers (A=10 … Z=35), and the result mod 97 must be 1.

    >>> iban_valid("GB82WEST12345698765432"), iban_valid("GB83WEST12345698765432")
    (True, False)
    """
    s = iban.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# A phone number: optional +country code, then 7-15 digits in groups with
# separators. ISO dates and plain long integers (ids, amounts) are not phones:
# without a leading "+" or "(" we require at least two separators and refuse
# anything shaped like YYYY-MM-DD.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{7,15}|(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4})(?![\w])"
)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}$")


def _card(m: re.Match[str]) -> str:
    digits = m.group().replace(" ", "").replace("-", "")
    return "[CARD]" if luhn_valid(digits) else m.group()


def _iban(m: re.Match[str]) -> str:
    return "[IBAN]" if iban_valid(m.group()) else m.group()


def _phone(m: re.Match[str]) -> str:
    s = m.group()
    digits = sum(c.isdigit() for c in s)
    if not 7 <= digits <= 15:
        return s
    if s[0] in "+(":
        return "[PHONE]"
    seps = sum(c in " .-" for c in s)
    if seps < 2 or _ISO_DATE.match(s):
        return s
    return "[PHONE]"


def _sub(pattern: re.Pattern[str], repl: Callable[[re.Match[str]], str] | str) -> Callable[[str], str]:
    def rule(text: str) -> str:
        return pattern.sub(repl, text)

    return rule


BUILTIN_RULES: dict[str, Callable[[str], str]] = {
    "email": _sub(_EMAIL, "[EMAIL]"),
    "iban": _sub(_IBAN, _iban),
    "card": _sub(_CARD, _card),
    "phone": _sub(_PHONE, _phone),
}
"""Built-in rules by name, applied in this order (cards before phones, so a
card number is not half-eaten as a phone number)."""

Rule = Callable[[str], str] | re.Pattern[str] | str | tuple[re.Pattern[str] | str, str]


class Redactor:
    """Replace personal data in text: built-in rules, then user rules, in order.

    ``builtins`` names which built-in rules run (default all of
    :data:`BUILTIN_RULES`); ``extra`` adds user rules: a callable ``str -> str``,
    a regex (compiled or text; matches become ``[REDACTED]``), or a
    ``(regex, replacement)`` pair.

    >>> r = Redactor(builtins=("email",), extra=[r"ACME-\\d{6}", (r"secret\\w*", "***")])
    >>> r("ticket ACME-123456 from bob@corp.io: secretpassword")
    'ticket [REDACTED] from [EMAIL]: ***'
    """

    def __init__(
        self, builtins: Iterable[str] = tuple(BUILTIN_RULES), extra: Sequence[Rule] = ()
    ) -> None:
        self.builtins = tuple(builtins)
        self.extra = tuple(extra)
        rules: list[Callable[[str], str]] = []
        for name in BUILTIN_RULES:  # canonical order, whatever order was given
            if name in self.builtins:
                rules.append(BUILTIN_RULES[name])
        unknown = set(self.builtins) - set(BUILTIN_RULES)
        if unknown:
            raise ValueError(f"unknown built-in rules {sorted(unknown)}; known: {list(BUILTIN_RULES)}")
        for rule in self.extra:
            if isinstance(rule, tuple):
                pat, repl = rule
                rules.append(_sub(re.compile(pat), repl))
            elif isinstance(rule, re.Pattern | str):
                rules.append(_sub(re.compile(rule), "[REDACTED]"))
            elif callable(rule):
                rules.append(rule)
            else:
                raise TypeError(f"a redaction rule must be a callable, regex or (regex, replacement), got {rule!r}")
        self._rules = tuple(rules)

    def __call__(self, text: str) -> str:
        for rule in self._rules:
            text = rule(text)
        return text

    def __repr__(self) -> str:
        return f"Redactor(builtins={self.builtins!r}, extra={self.extra!r})"


def _meta(text: str) -> dict[str, Any]:
    return {"chars": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()}


@dataclass(frozen=True, slots=True)
class TextPolicy:
    """What happens to prompt, response, context and comment text.

    ``mode`` is ``"full"`` (send text, redacted if ``redactor`` is set) or
    ``"none"`` (send no text: ``text_meta`` with lengths and SHA-256 hashes,
    and ``embeddings`` if ``embed`` is set). ``sample_rate`` sends text for
    that share of requests only, chosen by a hash of ``request_id`` so an
    inference and its feedback agree and reruns choose the same requests;
    the others are treated as mode ``"none"``.

    >>> p = TextPolicy(mode="none", embed=lambda s: [float(len(s)), 1.0])
    >>> ev = {"request_id": "r1", "prompt": "hi", "context": ["ab"]}
    >>> p.apply(ev)
    >>> sorted(ev), ev["text_meta"]["prompt"]["chars"], ev["embeddings"]["prompt"]
    (['embeddings', 'request_id', 'text_meta'], 2, [2.0, 1.0])
    >>> TextPolicy(sample_rate=0.5).keeps_text("r1"), TextPolicy(sample_rate=0.5).keeps_text("r2")
    (True, False)
    """

    mode: str = "full"
    sample_rate: float = 1.0
    redactor: Callable[[str], str] | None = None
    embed: Callable[[str], Sequence[float]] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("full", "none"):
            raise ValueError(f"text: mode must be 'full' or 'none', got {self.mode!r}")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"text_sample_rate: must be in 0..1, got {self.sample_rate!r}")

    @property
    def is_noop(self) -> bool:
        """True when events pass through untouched (the fast path)."""
        return self.mode == "full" and self.sample_rate >= 1.0 and self.redactor is None

    def keeps_text(self, request_id: str) -> bool:
        """Whether this request's text is sent (deterministic in ``request_id``)."""
        if self.mode == "none":
            return False
        if self.sample_rate >= 1.0:
            return True
        # Salted so the sampled share is independent of the partition bucket,
        # which hashes the same request_id with plain CRC-32.
        h = zlib.crc32(b"llmpulse:text:" + request_id.encode())
        return h < self.sample_rate * 4294967296.0

    def apply(self, ev: dict[str, Any]) -> None:
        """Rewrite the text fields of a validated event in place."""
        if self.keeps_text(ev.get("request_id") or ""):
            red = self.redactor
            if red is None:
                return
            for name in TEXT_FIELDS:
                v = ev.get(name)
                if v:
                    ev[name] = red(v)
            ctx = ev.get("context")
            if ctx:
                ev["context"] = [red(p) for p in ctx]
            return
        meta: dict[str, Any] = {}
        emb: dict[str, Any] = {}
        red = self.redactor
        for name in TEXT_FIELDS:
            v = ev.pop(name, None)
            if v is None:
                continue
            # Hash what would have been sent: a hash of raw short PII (a phone
            # number) could be reversed by brute force.
            if red is not None:
                v = red(v)
            meta[name] = _meta(v)
            if self.embed is not None:
                emb[name] = [float(x) for x in self.embed(v)]
        ctx = ev.pop("context", None)
        if ctx is not None:
            passages = [red(p) for p in ctx] if red is not None else ctx
            meta["context"] = [_meta(p) for p in passages]
            if self.embed is not None:
                emb["context"] = [[float(x) for x in self.embed(p)] for p in passages]
        if meta:
            ev["text_meta"] = meta
        if emb:
            ev["embeddings"] = emb
