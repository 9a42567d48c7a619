"""PII redaction and text policies for the client shim.

A :class:`Redactor` replaces personal data in free text before it leaves the
application. The built-in detectors (see :mod:`llmpulse.pii`) decide from real
checks, not from the shape of the text: e-mail addresses that
``email-validator`` accepts, phone numbers that Google's libphonenumber finds
valid for one of the configured regions (or possible, when written with a
``+`` country code), payment card numbers that pass the Luhn check and carry a
card network's issuer prefix, and IBANs of a registered country, of its
length, that pass the ISO 13616 mod-97 check. So order numbers, meeting IDs,
versions and timestamps survive. E-mail and phone detection need the
``redact`` extra (``pip install 'llmpulse[redact]'``); without it,
constructing a :class:`Redactor` that uses them fails with that install line.
Users add their own rules: a compiled regex or pattern string (replaced by
``[REDACTED]``), a ``(pattern, replacement)`` pair, or any callable
``str -> str``.

>>> r = Redactor()
>>> r("Mail jane.doe@example.com or call +44 (0)20 7946 0958, card 4111 1111 1111 1111.")
'Mail [EMAIL] or call [PHONE], card [CARD].'
>>> r("Order 1234 5678 9012 3456 shipped on 2024-05-01, Zoom 845 2391 0274")
'Order 1234 5678 9012 3456 shipped on 2024-05-01, Zoom 845 2391 0274'
>>> r("IBAN GB82 WEST 1234 5698 7654 32, not GB00WEST12345698765432")
'IBAN [IBAN], not GB00WEST12345698765432'

Numbers written without a country code are tried in ``regions`` (default
:data:`~llmpulse.pii.DEFAULT_PHONE_REGIONS`); put your users' countries there:

>>> Redactor(regions=("PL",))("Biuro: 22 123 45 67")
'Biuro: [PHONE]'

:class:`TextPolicy` decides, per event, whether text is sent at all: in mode
``"none"`` (or for events outside the ``sample_rate`` share) the prompt,
response, context passages and feedback comment are replaced by their lengths
and SHA-256 hashes (``text_meta``) and, if an ``embed`` callable is given, by
their embeddings (``embeddings``), so drift and volume metrics still work.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from llmpulse.events import EventError
from llmpulse.pii import (
    DEFAULT_PHONE_REGIONS,
    PHONE_BUDGET,
    PhoneFinder,
    could_hold_pii,
    find_cards,
    find_emails,
    find_ibans,
    iban_valid,
    luhn_valid,
    merge_spans,
    plain_view,
    require_extra,
    shared_budget,
)

__all__ = [
    "BUILTIN_RULES",
    "Redactor",
    "find_spans",
    "redact_short",
    "TextPolicy",
    "iban_valid",
    "luhn_valid",
]

TEXT_FIELDS: tuple[str, ...] = ("prompt", "response", "comment", "reference")
"""Free text: redacted, or left out (``text_meta``) when no text is sent."""
SHORT_FIELDS: tuple[str, ...] = ("label", "error_type")
"""Short strings that are kept whatever the text mode (a label, an error's type), but
redacted: they carry what the app put there (``"SMTPRecipientRefused: jane@..."``)."""

Finder = Callable[[str], list[tuple[int, int]]]


@functools.cache
def _default_phones() -> PhoneFinder:
    return PhoneFinder(DEFAULT_PHONE_REGIONS)


def _phones(text: str) -> list[tuple[int, int]]:
    return _default_phones()(text)


# name -> (placeholder, finder, optional package it needs), in priority order:
# where two findings overlap, the earlier kind wins (an IBAN's digits are no
# phone number, a card number is no phone number).
_BUILTINS: dict[str, tuple[str, Finder, str | None]] = {
    "email": ("[EMAIL]", find_emails, "email_validator"),
    "iban": ("[IBAN]", find_ibans, None),
    "card": ("[CARD]", find_cards, None),
    "phone": ("[PHONE]", _phones, "phonenumbers"),
}


def _replace(text: str, spans: list[tuple[int, int, str]]) -> str:
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for a, b, label in spans:
        parts.append(text[pos:a])
        parts.append(label)
        pos = b
    parts.append(text[pos:])
    return "".join(parts)


def find_spans(text: str, finders: Sequence[tuple[str, Finder]], *,
               disguises: bool = True) -> list[tuple[int, int, str]]:
    """Labelled, non-overlapping spans of what ``finders`` find in ``text`` and, with
    ``disguises``, in its plain view (:func:`~llmpulse.pii.plain_view`: an address
    percent-escaped in a link, full-width, split by a zero-width space, spelled
    ``(at)``), mapped back onto ``text``. Where findings overlap, those in the text as
    written win, then earlier finders.

    >>> find_spans("reset?u=jane%40example.com", [("[EMAIL]", find_emails)])
    [(8, 26, '[EMAIL]')]
    >>> find_spans("reset?u=jane%40example.com", [("[EMAIL]", find_emails)], disguises=False)
    []
    """
    hold = could_hold_pii(text)
    view = plain_view(text) if disguises else None
    if view is not None and not could_hold_pii(view.text):
        view = None
    if not hold and view is None:
        return []
    with shared_budget():  # the text and its plain view share one budget
        found = [(label, find(text)) for label, find in finders] if hold else []
        if view is not None:
            # after every finding in the text as written, so the view only ever adds
            found += [(label, [view.origin(a, b) for a, b in find(view.text)]) for label, find in finders]
    return merge_spans(found)


def _single(label: str, finder: Finder) -> Callable[[str], str]:
    def rule(text: str) -> str:
        return _replace(text, find_spans(text, [(label, finder)]))

    rule.__name__ = f"redact_{label.strip('[]').lower()}"
    return rule


BUILTIN_RULES: dict[str, Callable[[str], str]] = {
    name: _single(label, finder) for name, (label, finder, _) in _BUILTINS.items()
}
"""Built-in rules by name, each usable alone as ``str -> str`` (phones with the
default regions). A :class:`Redactor` runs the ones it is given together, so
overlapping findings are resolved in this order."""


def _sub(pattern: re.Pattern[str], repl: Callable[[re.Match[str]], str] | str) -> Callable[[str], str]:
    def rule(text: str) -> str:
        return pattern.sub(repl, text)

    return rule


Rule = Callable[[str], str] | re.Pattern[str] | str | tuple[re.Pattern[str] | str, str]


class Redactor:
    """Replace personal data in text: built-in rules, then user rules, in order.

    ``builtins`` names which built-in rules run (default all of
    :data:`BUILTIN_RULES`); ``regions`` are the ISO 3166 region codes tried for
    phone numbers written without a country code; ``extra`` adds user rules: a
    callable ``str -> str``, a regex (compiled or text; matches become
    ``[REDACTED]``), or a ``(regex, replacement)`` pair. With ``disguises`` (the
    default) the built-in rules also read the text with its disguises undone
    (percent-escapes, HTML character references, ``\\u`` / ``\\x`` escapes,
    full-width forms, invisible characters, ``(at)`` / ``[dot]``, spaces on both
    sides of ``@``, a bracketed country code; see :func:`~llmpulse.pii.plain_view`)
    and redact what they find there in the text as written. ``bounded`` (the
    default) caps the work of the e-mail and phone checks
    (:data:`~llmpulse.pii.EMAIL_BUDGET`, :data:`~llmpulse.pii.PHONE_BUDGET`) per
    text, or per block of :func:`~llmpulse.pii.shared_budget` (the text policy
    opens one per event): a text built to be slow to check (a quarter of a
    megabyte of digit groups, or of address-shaped strings) has what exceeds the
    budget redacted unchecked, in tens of milliseconds rather than seconds on the
    caller's thread.

    >>> r = Redactor(builtins=("email",), extra=[r"ACME-\\d{6}", (r"secret\\w*", "***")])
    >>> r("ticket ACME-123456 from bob@corp.io: secretpassword")
    'ticket [REDACTED] from [EMAIL]: ***'
    >>> Redactor()("reset: https://x.io/r?u=jane%40example.com, or jane (at) example [dot] com")
    'reset: https://x.io/r?u=[EMAIL], or [EMAIL]'
    """

    def __init__(
        self,
        builtins: Iterable[str] = tuple(BUILTIN_RULES),
        extra: Sequence[Rule] = (),
        regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
        disguises: bool = True,
        bounded: bool = True,
    ) -> None:
        self.disguises = disguises
        self.bounded = bounded
        if isinstance(regions, str):
            raise TypeError(f"regions: a sequence of region codes such as ('DE', 'AT'), got the string {regions!r}")
        self.builtins = tuple(builtins)
        self.extra = tuple(extra)
        unknown = set(self.builtins) - set(BUILTIN_RULES)
        if unknown:
            raise ValueError(f"unknown built-in rules {sorted(unknown)}; known: {list(BUILTIN_RULES)}")
        finders: list[tuple[str, Finder]] = []
        for name, (label, finder, needs) in _BUILTINS.items():  # canonical order, whatever order was given
            if name not in self.builtins:
                continue
            if needs is not None:
                require_extra(needs)  # fail here, at construction, with the install line
            if name == "phone":
                phones = PhoneFinder(tuple(regions), budget=PHONE_BUDGET if bounded else None)
                self.regions: tuple[str, ...] = phones.regions
                finder = phones
            elif name == "email" and not bounded:
                finder = functools.partial(find_emails, budget=None)
            finders.append((label, finder))
        if "phone" not in self.builtins:
            self.regions = tuple(regions)
        self._finders = tuple(finders)
        rules: list[Callable[[str], str]] = []
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
        if self._finders:
            text = _replace(text, find_spans(text, self._finders, disguises=self.disguises))
        for rule in self._rules:
            text = rule(text)
        return text

    def __repr__(self) -> str:
        return (f"Redactor(builtins={self.builtins!r}, extra={self.extra!r}, regions={self.regions!r}, "
                f"disguises={self.disguises!r}, bounded={self.bounded!r})")


def redact_short(ev: dict[str, Any], red: Callable[[str], str]) -> None:
    """Redact a validated event's short strings in place: :data:`SHORT_FIELDS`, the
    values of ``segment`` and the ``prediction``'s label.

    >>> ev = {"label": "escalate: jane@example.com", "segment": {"customer": "jane@example.com"},
    ...       "prediction": {"label": "ok", "score": 0.5}}
    >>> redact_short(ev, Redactor()); ev["label"], ev["segment"]
    ('escalate: [EMAIL]', {'customer': '[EMAIL]'})
    """
    for name in SHORT_FIELDS:
        v = ev.get(name)
        if type(v) is str and v:
            ev[name] = red(v)
    seg = ev.get("segment")
    if type(seg) is dict and seg:
        ev["segment"] = {red(k): red(v) if type(v) is str else v for k, v in seg.items()}
    pred = ev.get("prediction")
    if type(pred) is dict and type(pred.get("label")) is str:
        pred["label"] = red(pred["label"])


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
    max_redacted_chars: int = 1_000_000
    """With a redactor, an event whose texts hold more characters than this is
    refused (:class:`~llmpulse.events.EventError`) before any is redacted: the
    shim sends events of at most 900,000 bytes, so redacting more would be work
    thrown away, on the application's thread."""

    def __post_init__(self) -> None:
        if self.mode not in ("full", "none"):
            raise ValueError(f"text: mode must be 'full' or 'none', got {self.mode!r}")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"text_sample_rate: must be in 0..1, got {self.sample_rate!r}")
        if type(self.max_redacted_chars) is not int or self.max_redacted_chars < 0:
            raise ValueError(f"max_redacted_chars: a number of characters >= 0, got {self.max_redacted_chars!r}")

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
        """Rewrite the text fields of a validated event in place. The redactor's
        budgets (:func:`~llmpulse.pii.shared_budget`) are shared by all of the
        event's texts. With a redactor, the short strings (:data:`SHORT_FIELDS`, the
        segment's values, the prediction's label) are redacted too, in any mode."""
        if self.redactor is not None:
            chars = 0
            for name in TEXT_FIELDS + SHORT_FIELDS:
                v = ev.get(name)
                if type(v) is str:
                    chars += len(v)
            ctx = ev.get("context")
            if ctx:
                chars += sum(map(len, ctx))  # a validated event's passages are strings
            if chars > self.max_redacted_chars:
                raise EventError("event", f"texts of {chars} characters, over the {self.max_redacted_chars} "
                                          "that are redacted per event")
        with shared_budget():
            self._apply(ev)
            if self.redactor is not None:
                redact_short(ev, self.redactor)

    def _apply(self, ev: dict[str, Any]) -> None:
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
