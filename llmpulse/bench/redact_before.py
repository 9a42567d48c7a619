"""The redactor's finders as they were before the phone finder read pieces and
remembered them: libphonenumber's matcher over the whole (masked) text, once
per region, nothing remembered; IBAN and digit-run scans that stop at every
letter; no skipping of text without digits or ``@``. What decides stays
today's: the card finder and the rule that a number glued to other text is no
phone are imported from :mod:`llmpulse.pii` (fixed since, as leaks were found),
so the two differ only in how they scan.

Kept for two jobs: ``llmpulse bench redact`` measures the current redactor's
cost against it in the same process, and the tests check that the current one
gives byte-identical results.

>>> r = before_redactor(("DE", "FR"))
>>> r("Ruf 0171 1234567 oder +33 6 12 34 56 78 an, Version 2.14.3")
'Ruf [PHONE] oder [PHONE] an, Version 2.14.3'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from llmpulse.pii import (
    _MIN_PHONE_DIGITS,
    _PHONE_PUNCT,
    DEFAULT_PHONE_REGIONS,
    IBAN_LENGTHS,
    PhoneFinder,
    _bare_run_is_phone,
    _blank,
    _context_runs,
    _is_glued,
    _plausible,
    _region_gate,
    find_cards,
    find_emails,
    iban_valid,
    merge_spans,
    require_extra,
)

__all__ = ["BeforeRedactor", "before_phones", "before_redactor"]

_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}")


def find_ibans(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for m in _IBAN_START.finditer(text):
        start = m.start()
        if out and start < out[-1][1]:
            continue
        want = IBAN_LENGTHS.get(m.group()[:2].upper())
        if want is None:
            continue
        i, n = m.end(), 4
        while n < want and i < len(text):
            ch = text[i]
            if ch.isascii() and ch.isalnum():
                n += 1
                i += 1
            elif ch == " " and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum():
                i += 1
            else:
                break
        if n != want or (i < len(text) and text[i].isascii() and text[i].isalnum()):
            continue
        if iban_valid(text[start:i]):
            out.append((start, i))
    return out


_DIGIT_RUN = re.compile(f"[+\uff0b]?\\d(?:[{_PHONE_PUNCT}]*\\d)*")


def _digit_runs(text: str) -> list[tuple[int, int, bool]]:
    return [(m.start(), m.end(), sum(c.isdigit() for c in m.group()) >= _MIN_PHONE_DIGITS)
            for m in _DIGIT_RUN.finditer(text)]


# The decisions that follow a found span (is it glued to an identifier, a
# decimal, a version? which run of groups is a card?) are the current ones:
# the tests compare the matchers alone.


def before_phones(finder: PhoneFinder, text: str) -> list[tuple[int, int]]:
    """The phone spans the whole-text matcher finds with ``finder``'s settings."""
    runs = _digit_runs(text)
    if not any(long for _, _, long in runs):
        return []
    pn = require_extra("phonenumbers")
    context = _context_runs(runs)
    spans: set[tuple[int, int]] = set()
    plus = [text[a] in "+\uff0b" for a, _, _ in runs]
    if any(p and long for p, (_, _, long) in zip(plus, runs, strict=True)):
        first = finder.regions[0] if finder.regions else "US"
        masked = _blank(text, runs, context)
        for m in pn.PhoneNumberMatcher(masked, first, leniency=pn.Leniency.POSSIBLE):
            if m.raw_string.startswith(("+", "\uff0b")):
                spans.add((m.start, m.end))
    for region in finder.regions:
        gate = _region_gate(region)
        leniency = getattr(pn.Leniency, finder.leniency if gate is not None else "VALID")
        keep = list(context)
        for i, (a, b, long) in enumerate(runs):
            if long and keep[i] and (plus[i] or (gate is not None and not _plausible(text[a:b], gate))):
                keep[i] = False
        if not any(k and runs[i][2] for i, k in enumerate(keep)):
            continue
        masked = _blank(text, runs, keep)
        for m in pn.PhoneNumberMatcher(masked, region, leniency=leniency):
            raw = m.raw_string
            if sum(c.isdigit() for c in raw) < _MIN_PHONE_DIGITS:
                continue
            if raw.isdigit() and not _bare_run_is_phone(pn, m.number, raw, region):
                continue
            spans.add((m.start, m.end))
    return sorted(s for s in spans if not _is_glued(text, *s))


class BeforeRedactor:
    """All four built-in finders, as ``Redactor(regions=...)`` ran them before."""

    def __init__(self, regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> None:
        self.phones = PhoneFinder(tuple(regions))

    def __call__(self, text: str) -> str:
        spans = merge_spans([
            ("[EMAIL]", find_emails(text)),
            ("[IBAN]", find_ibans(text)),
            ("[CARD]", find_cards(text)),
            ("[PHONE]", before_phones(self.phones, text)),
        ])
        parts: list[str] = []
        pos = 0
        for a, b, label in spans:
            parts.append(text[pos:a])
            parts.append(label)
            pos = b
        parts.append(text[pos:])
        return "".join(parts)


def before_redactor(regions: Sequence[str] | None = None) -> BeforeRedactor:
    """The old redactor with these phone regions (default: the defaults)."""
    return BeforeRedactor(DEFAULT_PHONE_REGIONS if regions is None else regions)
