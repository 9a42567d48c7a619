"""The phone finder as it was before chunking and caching: libphonenumber's
matcher over the whole (masked) text, once per region, nothing remembered.

Kept for two jobs: ``llmpulse bench redact`` measures the current finder's cost
against it in the same process, and the tests check that the current finder
gives byte-identical results.

>>> r = before_redactor(("DE", "FR"))
>>> r("Ruf 0171 1234567 oder +33 6 12 34 56 78 an, Version 2.14.3")
'Ruf [PHONE] oder [PHONE] an, Version 2.14.3'
"""

from __future__ import annotations

from collections.abc import Sequence

from llmpulse.pii import (
    _MIN_PHONE_DIGITS,
    PhoneFinder,
    _bare_run_is_phone,
    _blank,
    _context_runs,
    _digit_runs,
    _is_glued,
    _plausible,
    _region_gate,
    require_extra,
)
from llmpulse.redact import Redactor

__all__ = ["before_phones", "before_redactor"]


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


def before_redactor(regions: Sequence[str] | None = None) -> Redactor:
    """A :class:`~llmpulse.redact.Redactor` whose phone finder is the old one."""
    r = Redactor() if regions is None else Redactor(regions=regions)
    finder = PhoneFinder(r.regions)

    def phones(text: str) -> list[tuple[int, int]]:
        return before_phones(finder, text)

    # Bench and test code only: swap the phone finder, keep everything else.
    r._finders = tuple((label, phones if label == "[PHONE]" else f) for label, f in r._finders)
    return r
