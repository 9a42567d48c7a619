"""Finders for personal data in free text, each deciding from a real check.

Every finder returns the spans ``(start, end)`` of the values it found; the
:class:`~llmpulse.redact.Redactor` merges them and replaces the text.

* phone numbers: Google's libphonenumber (the ``phonenumbers`` package) finds
  candidates and keeps those that are valid numbers of one of the configured
  regions, written in a grouping that region uses (``STRICT_GROUPING``);
  numbers written with a ``+`` country code are kept when their length is
  possible for that country, so a freshly allocated range is not missed
  because the metadata is older than the number. What libphonenumber accepts
  is then refused when it is an IP address, a calendar date, a decimal, a
  version, part of an identifier (``INV-2024-000123``, ``#5512``; a number
  written with ``+`` and groups is neither: ``1042,+44 20 7946 0958,42``), a bare
  fixed-line digit run without trunk prefix, or a bare run with a GS1
  product-code check digit;
* e-mail addresses: every ``@`` is grown to the longest address-shaped string
  around it and checked by ``email-validator`` (RFC 5321/5322/6531 syntax,
  IDNA domains); inside a link (``…/reset?email=jane@…``) the part after the
  link's last ``/ ? = &`` is tried first;
* payment cards: a digit run of 12 to 19 digits, of any script (single spaces
  or dashes between digits allowed, or groups with wider separators: two or
  three spaces, a tab, a dash with a space beside it), or else the longest run
  of its whole groups (a card written with its expiry date or security code),
  that passes the Luhn check and starts with an issuer prefix that the card
  networks use for that length;
* IBANs: a country code of the ISO 13616 registry, two check digits and
  exactly that country's length (grouped by spaces or dashes, or followed by a
  glued-on BIC), passing the mod-97 check.

:func:`plain_view` undoes the disguises data travels in (percent-escapes, HTML
character references, ``\\u`` escapes, full-width forms, invisible
characters, ``(at)``, a bracketed country code); the redactor runs the finders
on it as well.

``phonenumbers`` and ``email-validator`` are the ``redact`` extra; cards and
IBANs need nothing outside the standard library.

>>> find_cards("card 4111 1111 1111 1111, EAN 5901234123457")
[(5, 24)]
>>> find_ibans("IBAN DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX")
[(5, 32)]
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import html
import importlib
import ipaddress
import itertools
import logging
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = [
    "DEFAULT_PHONE_REGIONS",
    "EMAIL_BUDGET",
    "EXTRA_HINT",
    "IBAN_LENGTHS",
    "PHONE_BUDGET",
    "PhoneFinder",
    "PlainView",
    "card_issuer_known",
    "clear_caches",
    "could_hold_pii",
    "find_cards",
    "find_emails",
    "find_ibans",
    "gs1_valid",
    "iban_valid",
    "luhn_valid",
    "merge_spans",
    "plain_view",
    "require_extra",
    "shared_budget",
]

EXTRA_HINT = "pip install 'llmpulse[redact]'"

DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IN", "BR", "JP", "AU")
"""Regions tried for numbers written without a country code. A national
number is redacted when it is valid in any of them; set your own with
``Redactor(regions=...)`` (your users' countries first)."""


def require_extra(module: str) -> ModuleType:
    """Import a module of the ``redact`` extra, or fail with the install line.

    >>> require_extra("re").__name__
    're'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"PII redaction needs the optional package {module!r}: {EXTRA_HINT}"
        ) from e


def _ascii_digits(group: str) -> str:
    """Digits of any script (Arabic-Indic, Devanagari, full-width …) as ASCII ones."""
    return group if group.isascii() else "".join(str(unicodedata.decimal(c)) for c in group)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112"), luhn_valid("٤١١١١١١١١١١١١١١١")
    (True, False, True)
    """
    total = 0
    for i, ch in enumerate(reversed(_ascii_digits(digits))):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Issuer prefixes (IIN ranges) and the lengths each network issues, from the
# networks' published ranges. A Luhn-valid run outside them is an EAN, an
# account or reference number, not a card.
_CARD_RANGES: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (300, 305, frozenset({14, 16, 17, 18, 19})),  # Diners Club
    (36, 36, frozenset({14, 16, 17, 18, 19})),
    (38, 39, frozenset({14, 16, 17, 18, 19})),
    (6011, 6011, frozenset({16, 17, 18, 19})),  # Discover
    (644, 649, frozenset({16, 17, 18, 19})),
    (65, 65, frozenset({16, 17, 18, 19})),
    (3528, 3589, frozenset({16, 17, 18, 19})),  # JCB
    (62, 62, frozenset({16, 17, 18, 19})),  # UnionPay
    (5018, 5018, frozenset(range(12, 20))),  # Maestro
    (5020, 5020, frozenset(range(12, 20))),
    (5038, 5038, frozenset(range(12, 20))),
    (5893, 5893, frozenset(range(12, 20))),
    (6304, 6304, frozenset(range(12, 20))),
    (6759, 6759, frozenset(range(12, 20))),
    (6761, 6763, frozenset(range(12, 20))),
    (2200, 2204, frozenset({16, 17, 18, 19})),  # Mir
)


# each range with the divisor that cuts a card's first four digits to its prefix
_CARD_PREFIXES = tuple((lo, hi, lengths, 10 ** (4 - len(str(lo)))) for lo, hi, lengths in _CARD_RANGES)


def card_issuer_known(digits: str) -> bool:
    """Whether a card network issues numbers with this prefix and length.

    >>> card_issuer_known("4111111111111111"), card_issuer_known("5901234123457")
    (True, False)
    """
    n = len(digits)
    if n < 4:
        return False
    head = int(_ascii_digits(digits[:4]))
    for lo, hi, lengths, scale in _CARD_PREFIXES:
        if n in lengths and lo <= head // scale <= hi:
            return True
    return False


# Separators written between the groups of a card or an IBAN: spaces (no-break
# ones too, as word processors and French typography write them) and dashes
# (the hyphen and the typographic dashes and minus sign that editors substitute).
_SPACES = " \u00a0\u202f"
_DASH_CHARS = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_DASHES = re.escape(_DASH_CHARS)

# Candidates only: the decision is Luhn plus the issuer table. A candidate is
# a whole digit run: not preceded or followed by more digits, directly or
# across one separator (a 22-digit tracking number holds no card).
# (The lookbehinds follow the first digit so that the scan tries them at
# digits only.)
_CARD_CANDIDATE = re.compile(
    rf"\d(?<![\d{_DASHES}]\d)(?<!\d[{_SPACES}{_DASHES}]\d)(?:[{_SPACES}{_DASHES}]?\d){{11,18}}"
    rf"(?![\d{_DASHES}])(?![{_SPACES}{_DASHES}]\d)")


# Groups of a card written with wider separators: two or three spaces (a form or
# PDF copied, not always the same width twice), a tab, or a dash with a space
# beside it ("4111 - 1111 - 1111 - 1111"). Dots are not taken
# ("4111.1111.1111.1111"): every text with a "." would pay for the scan, for a
# rare way of writing a card. As above, a run that goes on into more digits
# (across spaces too) holds no card.
_WIDE = f"[{_SPACES}\\t]"
_CARD_GROUPED = re.compile(
    rf"\d(?<![\d.{_DASHES}]\d)(?<![\d.{_DASHES}]{_WIDE}\d)(?<![\d.{_DASHES}]{_WIDE}{{2}}\d)"
    rf"(?<![\d.{_DASHES}]{_WIDE}{{3}}\d)"
    rf"\d{{3}}(?:(?:{_WIDE}{{1,3}}|{_WIDE}?[{_DASHES}]{_WIDE}?)\d{{3,6}}){{2,4}}"
    rf"(?!\d|[{_DASHES}.]\d|{_WIDE}{{1,3}}[{_DASHES}.]?\d)")

# Separators outside ASCII: a text without them and without the ASCII ones
# above ("  ", a tab, a hyphen beside a space) skips that scan.
_WIDE_NON_ASCII = re.compile("[\u00a0\u202f\u2010-\u2015\u2212]")


def _card_in(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The card number in the digit groups of ``text[start:end]``: all of them or,
    when they are none, the longest run of whole groups (the earliest of equal
    length) that is one. A card is often written with its expiry date or security
    code right after it ("4111 1111 1111 1111 12/25", "… 1111 737"), and a group
    is never split: a card is not cut out of the middle of a longer number."""
    digits = [_ascii_digits(g) for g in _GROUPS.findall(text, start, end)]
    number = "".join(digits)
    if 12 <= len(number) <= 19 and luhn_valid(number) and card_issuer_known(number):
        return start, end
    if len(number) <= 12:  # no shorter run of groups is long enough
        return None
    groups = [m.span() for m in _GROUPS.finditer(text, start, end)]
    upto = list(itertools.accumulate(map(len, digits), initial=0))  # digits before each group
    for size in range(len(groups) - 1, 0, -1):
        for i in range(len(groups) - size + 1):
            if 12 <= upto[i + size] - upto[i] <= 19:
                number = "".join(digits[i : i + size])
                if luhn_valid(number) and card_issuer_known(number):
                    return groups[i][0], groups[i + size - 1][1]
    return None


def find_cards(text: str) -> list[tuple[int, int]]:
    """Spans of payment card numbers (Luhn and issuer range both hold).

    >>> find_cards("card 4111  1111  1111  1111 or 4111 - 1111 - 1111 - 1111")
    [(5, 27), (31, 56)]
    >>> find_cards("table 4111  1111  1111  1112, 1234  5678  9012  3456")
    []
    >>> t = "card 5555 5555 5555 4444 737, 4111111111111111 12/25"
    >>> [t[a:b] for a, b in find_cards(t)]
    ['5555 5555 5555 4444', '4111111111111111']
    """
    out = []
    for m in _CARD_CANDIDATE.finditer(text):
        if (span := _card_in(text, *m.span())) is not None:
            out.append(span)
    if ("  " in text or "\t" in text or "- " in text or " -" in text
            or (not text.isascii() and _WIDE_NON_ASCII.search(text) is not None)):
        for m in _CARD_GROUPED.finditer(text):
            span = _card_in(text, *m.span())
            if span is not None and all(b <= span[0] or a >= span[1] for a, b in out):
                out.append(span)
        out.sort()
    return out


IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
"""IBAN length per country (ISO 13616 registry)."""


_IBAN_SEPARATORS = frozenset(_SPACES + _DASH_CHARS)
_DROP_SEPARATORS = str.maketrans("", "", _SPACES + _DASH_CHARS)


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: a registered country, its length, and mod 97 == 1 after
    moving the first four characters to the end and reading letters as numbers
    (A=10 … Z=35).

    >>> iban_valid("GB82WEST12345698765432"), iban_valid("GB83WEST12345698765432")
    (True, False)
    >>> iban_valid("DE89 3704–0044–0532–0130–00")
    True
    """
    s = iban.translate(_DROP_SEPARATORS).upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s[2:4].isdigit() or not s.isalnum() or not s.isascii():
        return False
    rearranged = s[4:] + s[:4]
    number = int("".join(str(int(c, 36)) for c in rearranged))
    return number % 97 == 1


# The check digits, preceded by a country code that starts a word: matched
# from the digits so that the scan does not stop at every letter of prose.
_IBAN_CHECK = re.compile(r"\d\d(?<=(?<![A-Za-z0-9])[A-Za-z]{2}\d\d)")

# A BIC (ISO 9362: bank, country, location, optional branch) written right after
# an IBAN without a space, as some forms and exports join the two fields.
_BIC_AFTER = re.compile(r"[A-Za-z]{6}[A-Za-z0-9]{2}(?:[A-Za-z0-9]{3})?(?![A-Za-z0-9])")


def find_ibans(text: str) -> list[tuple[int, int]]:
    """Spans of IBANs, grouped by single spaces or dashes or not, in either letter
    case; one with a BIC glued to its end is found without it.

    >>> find_ibans("IBAN: GB82-WEST-1234-5698-7654-32, not GB82-WEST-1234-5698-7654-33")
    [(6, 33)]
    >>> find_ibans("DE89370400440532013000COBADEFFXXX, DE89370400440532013000COBA")
    [(0, 22)]
    """
    out: list[tuple[int, int]] = []
    for m in _IBAN_CHECK.finditer(text):
        start = m.start() - 2
        if out and start < out[-1][1]:
            continue
        want = IBAN_LENGTHS.get(text[start : start + 2].upper())
        if want is None:
            continue
        i, n = m.end(), 4
        while n < want and i < len(text):
            ch = text[i]
            if ch.isascii() and ch.isalnum():
                n += 1
                i += 1
            elif ch in _IBAN_SEPARATORS and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum():
                i += 1
            else:
                break
        if n != want or (i < len(text) and text[i].isascii() and text[i].isalnum()
                         and _BIC_AFTER.match(text, i) is None):
            continue
        if iban_valid(text[start:i]):
            out.append((start, i))
    return out


# Characters an address may hold around its "@": RFC 5322 atext plus dots and
# any non-ASCII letter (RFC 6531), and a domain's letters, digits, hyphens and
# dots (IDNA labels included). Combining marks count too: decomposed text (NFD,
# as macOS file names and some keyboards write it) spells "é" as "e" and a
# combining acute accent. The validator decides; this only bounds it.
_LOCAL_CHARS = frozenset("!#$%&'*+-/=?^_`{|}~.")
_MARKS = frozenset({"Mn", "Mc", "Me"})


def _combining(ch: str) -> bool:
    return not ch.isascii() and unicodedata.category(ch) in _MARKS


def _local_char(ch: str) -> bool:
    return ch.isalnum() or ch in _LOCAL_CHARS or _combining(ch)


def _domain_char(ch: str) -> bool:
    return ch.isalnum() or ch in "-." or _combining(ch)


_log = logging.getLogger(__name__)
_warned_at = [-1e9]


def _over_budget(kind: str, chars: int, unchecked: int) -> None:
    """Say (at most once a minute) that a finder ran out of budget on a text."""
    now = time.monotonic()
    if now - _warned_at[0] >= 60.0:
        _warned_at[0] = now
        _log.warning("%s finder: a text of %d characters exceeds its budget; %d candidates redacted "
                     "unchecked (over-redaction; raise the budget to check them)", kind, chars, unchecked)


_SPENT: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("llmpulse_pii_spent", default=None)


class shared_budget:  # noqa: N801 - used as a function: ``with shared_budget():``
    """Within the block, the finders' budgets are shared by every text they read
    instead of given anew per text: the redactor opens one for a text and its plain
    view, the text policy one per event (its prompt, response and every context
    passage), so one event costs at most one budget however many texts it holds.
    Nested blocks share the outer one.

    >>> f = PhoneFinder(budget=200)
    >>> f("call 0171 1234567 now"), f("order 4711 081547 shipped")  # each fits: checked
    ([(5, 17)], [])
    >>> with shared_budget():  # together they do not: the second run goes unchecked
    ...     f("call 0171 1234567 now"), f("order 4711 081547 shipped")
    ([(5, 17)], [(6, 17)])
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _SPENT.set({}) if _SPENT.get() is None else None

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _SPENT.reset(self._token)


def _remaining(kind: str, budget: int | None) -> int | None:
    spent = _SPENT.get()
    return budget if budget is None or spent is None else max(0, budget - spent.get(kind, 0))


def _spend(kind: str, amount: int) -> None:
    spent = _SPENT.get()
    if spent is not None and amount:
        spent[kind] = spent.get(kind, 0) + amount


EMAIL_BUDGET = 256
"""How many candidates :func:`find_emails` hands to ``email-validator`` per text
(about 0.3 ms each). Beyond it, every further address-shaped candidate is
redacted unchecked, so a text of a hundred thousand ``a@b.c`` costs tens of
milliseconds, not seconds, and leaks nothing."""


def find_emails(text: str, budget: int | None = EMAIL_BUDGET) -> list[tuple[int, int]]:
    """Spans of e-mail addresses that ``email-validator`` accepts. After
    ``budget`` checks (None: no limit), every further candidate (text around an
    ``@`` that an address may hold, with something on both sides) is taken
    without a check: an over-redaction, never a leak.

    >>> find_emails("mail müller@bücher.de, not lodash@4.17.21 or @dataclass")
    [(5, 21)]
    >>> find_emails("mail müller@bücher.de, not lodash@4.17.21 or @dataclass", budget=1)
    [(5, 21), (27, 41)]
    >>> find_emails("mail mu\u0308ller@bu\u0308cher.de (decomposed)")
    [(5, 23)]
    """
    if "@" not in text:
        return []
    ev = require_extra("email_validator")
    out: list[tuple[int, int]] = []
    left = initial = _remaining("email", budget)
    unchecked = 0
    at = text.find("@")
    while at != -1:
        i = at
        while i > 0 and _local_char(text[i - 1]):
            i -= 1
        j = at + 1
        while j < len(text) and _domain_char(text[j]):
            j += 1
        while i < at and (text[i] in ".-" or _combining(text[i])):  # a mark continues what it follows
            i += 1
        while j > at + 1 and text[j - 1] in ".-":
            j -= 1
        if i < at < j - 1:
            for start in _local_starts(text, i, at):
                if left is not None:
                    if left <= 0:
                        out.append((i, j))
                        unchecked += 1
                        break
                    left -= 1
                try:
                    ev.validate_email(text[start:j], check_deliverability=False)
                except ev.EmailNotValidError:
                    continue
                out.append((start, j))
                break
        at = text.find("@", at + 1)
    if left is not None and initial is not None:
        _spend("email", initial - left)
    if unchecked:
        _over_budget("e-mail", len(text), unchecked)
    return out


def _local_starts(text: str, i: int, at: int) -> list[int]:
    """Where the local part of an address before ``text[at]`` may start: at ``i``
    and, when ``text[i:at]`` reads like a link's path or query (it holds ``/`` or
    ``?``), first after its last ``/ ? = &`` (``…/reset?email=jane@…`` is jane's
    address, not the link's).

    >>> t = "https://x.io/r?email=jane@example.com"
    >>> [t[k:t.index("@")] for k in _local_starts(t, 6, t.index("@"))]
    ['jane', '//x.io/r?email=jane']
    """
    local = text[i:at]
    if "/" not in local and "?" not in local:
        return [i]
    cut = max(local.rfind(c) for c in "/?=&") + 1
    return [i + cut, i] if 0 < cut < len(local) else [i]


# Digits joined by the punctuation phone numbers are written with (ASCII and
# full-width dashes, dots, slashes, brackets, spaces). A run with fewer than
# seven digits is taken for no phone number (versions, times, short codes look
# the same; the few national numbers that short are missed); blanking it (same length, so offsets hold)
# spares libphonenumber from parsing every time, price and small count once
# per region, which is most of its cost on ordinary text.
_PHONE_PUNCT = "\\-\u2010-\u2015\u2212\u30fc\uff0d-\uff0f \t\u00a0\u00ad\u200b\u2060\u3000().\\[\\]/~\u2053\u223c\uff5e\uff08\uff09\uff3b\uff3d"
_DIGIT_RUN = re.compile(f"\\d(?:[{_PHONE_PUNCT}]*\\d)*")  # and a "+" right before it
_MIN_PHONE_DIGITS = 7


def _digit_runs(text: str) -> list[tuple[int, int, bool]]:
    """Digit runs ``(start, end, long)``, with a ``+`` right before them;
    ``long`` when the run has enough digits for a phone number.

    >>> _digit_runs("call +49 171 1234567 at 10:45, 1+2")
    [(5, 20, True), (24, 26, False), (27, 29, False), (31, 32, False), (32, 34, False)]
    """
    out = []
    for m in _DIGIT_RUN.finditer(text):
        a, g = m.start(), m.group()
        if a and text[a - 1] in "+\uff0b":
            a -= 1
        out.append((a, m.end(), len(g) >= _MIN_PHONE_DIGITS and sum(map(str.isdigit, g)) >= _MIN_PHONE_DIGITS))
    return out


def _context_runs(runs: list[tuple[int, int, bool]]) -> list[bool]:
    """Which runs libphonenumber must see: the long ones, and short ones right
    next to a kept one (the ``10:45`` after a date is what tells it the date
    is a timestamp, not a number)."""
    keep = [long for _, _, long in runs]
    for i in range(1, len(runs)):  # forwards, then backwards: chains glued to a long run
        if not keep[i] and keep[i - 1] and runs[i][0] - runs[i - 1][1] <= 1:
            keep[i] = True
    for i in range(len(runs) - 2, -1, -1):
        if not keep[i] and keep[i + 1] and runs[i + 1][0] - runs[i][1] <= 1:
            keep[i] = True
    return keep


def _blank(text: str, runs: list[tuple[int, int, bool]], keep: list[bool]) -> str:
    """``text`` with the runs not kept replaced by spaces (offsets hold).

    >>> t = "at 10:45 call 0171 1234567, 2024-05-01 10:45:12"
    >>> runs = _digit_runs(t)
    >>> _blank(t, runs, _context_runs(runs))
    'at   :   call 0171 1234567, 2024-05-01 10:45:12'
    """
    parts: list[str] = []
    pos = 0
    for (a, b, _), k in zip(runs, keep, strict=True):
        if not k:
            parts.append(text[pos:a])
            parts.append(" " * (b - a))
            pos = b
    parts.append(text[pos:])
    return "".join(parts)


PHONE_BUDGET = 40_000
"""Characters times matcher passes that :class:`PhoneFinder` spends per text
(about 4 us each: some 0.15 s at most). An ordinary message with a few numbers
spends a few hundred."""

_GATE_SHARE = 4
"""A region gate costs about a quarter of a matcher pass per character."""

_GROUPS = re.compile(r"\d+")
_MAX_GROUPS = 8


@functools.cache
def _region_gate(region: str) -> re.Pattern[str] | None:
    """A necessary condition for a digit string to hold a valid national number
    of ``region``, from the region's metadata: an optional country code, an
    optional national prefix (as the parser strips it), then the region's
    general number pattern; or an international call prefix first (then the
    number is another country's, and the matcher decides). None when the
    region rewrites numbers while parsing, so that no such rule holds."""
    pn = require_extra("phonenumbers")
    md = pn.PhoneMetadata.metadata_for_region(region)
    if md is None:
        return None
    rule = md.national_prefix_transform_rule
    if rule and not re.fullmatch(r"(?:\\\d)+", rule):
        return None
    npfp = md.national_prefix_for_parsing or md.national_prefix
    # A transform rule keeps a captured part: the kept number is a suffix of
    # what precedes it, so any short prefix may have been stripped.
    prefix = r"\d{0,7}" if rule else (f"(?:{npfp})?" if npfp else "")
    idd = f"(?:{md.international_prefix})\\d*|" if md.international_prefix else ""
    return re.compile(f"{idd}(?:{md.country_code})?{prefix}(?:{md.general_desc.national_number_pattern})")


def _plausible(run: str, gate: re.Pattern[str]) -> bool:
    """Whether some run of consecutive digit groups could be a number that the
    gate's region accepts."""
    groups = [_ascii_digits(g) for g in _GROUPS.findall(run)]
    if len(groups) > _MAX_GROUPS:
        return True
    for i in range(len(groups)):
        digits = ""
        for g in groups[i:]:
            digits += g
            if len(digits) >= _MIN_PHONE_DIGITS and gate.fullmatch(digits):
                return True
    return False


# A digit group glued to letters or digits by one of these is part of an
# identifier (INV-2024-000123, zoom.us/j/845..., build_2024_0501), not a phone.
_JOINERS = "-_/"


_ADDRESS_CHARS = frozenset("0123456789abcdefABCDEF.:")
_MAX_ADDRESS_CHARS = 64  # an IPv6 address with an embedded IPv4 one and a port is shorter


def _in_ip_address(text: str, start: int, end: int) -> bool:
    """Whether the span lies in a token that the stdlib parses as an IP address."""
    a, b = start, end
    floor, ceiling = max(0, start - _MAX_ADDRESS_CHARS), min(len(text), end + _MAX_ADDRESS_CHARS)
    while a > floor and text[a - 1] in _ADDRESS_CHARS:
        a -= 1
    while b < ceiling and text[b] in _ADDRESS_CHARS:
        b += 1
    if (a == floor and a > 0 and text[a - 1] in _ADDRESS_CHARS) or (
        b == ceiling and b < len(text) and text[b] in _ADDRESS_CHARS
    ):
        return False  # longer than any address: no need to read further
    token = text[a:b].strip(".:")
    candidates = [token]
    if token.count(":") == 1:  # 10.0.0.5:5432
        candidates.append(token.split(":", 1)[0])
    for t in candidates:
        try:
            ipaddress.ip_address(t)
        except ValueError:
            continue
        return True
    return False


_DATE_FORMATS = (
    "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y", "%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d",
    "%d.%m.%y", "%d/%m/%y", "%m/%d/%y",
)


@functools.lru_cache(maxsize=4096)
def _is_date(span: str) -> bool:
    """Whether the span reads as a calendar date in a common numeric notation."""
    for fmt in _DATE_FORMATS:
        try:
            datetime.datetime.strptime(span, fmt)
        except ValueError:
            continue
        return True
    return False


def _international(groups: list[str]) -> bool:
    """Whether a span that starts with "+" is written as an international number:
    a country code and more groups, not a signed amount with thousands grouped by
    three ("+1 234 567")."""
    return len(groups) > 1 and any(len(g) != 3 for g in groups[1:])


def _country_code_first(groups: list[str]) -> bool:
    """Whether the one-digit group that leads a dotted number ("1.650.253.0000")
    is its country calling code: with a "+" in front the digits are a valid number
    that libphonenumber writes in the same groups, in its international format.
    A version number has other one-digit groups, or no such reading.

    >>> _country_code_first(["1", "650", "253", "0000"]), _country_code_first(["1", "650", "2530", "000"])
    (True, False)
    """
    if len(groups[0]) != 1 or any(len(g) == 1 for g in groups[1:]):
        return False
    pn = require_extra("phonenumbers")
    digits = [_ascii_digits(g) for g in groups]
    try:
        number = pn.parse("+" + "".join(digits), None)
    except pn.NumberParseException:
        return False
    written = pn.format_number(number, pn.PhoneNumberFormat.INTERNATIONAL)
    return pn.is_valid_number(number) and _GROUPS.findall(written) == digits


def _is_glued(text: str, start: int, end: int) -> bool:
    if _in_ip_address(text, start, end):
        return True
    span = text[start:end]
    if _is_date(span.strip()):
        return True
    groups = _GROUPS.findall(span)
    # A number in international notation is glued to nothing by a comma or a
    # slash: a CSV field ("1042,+44 20 7946 0958,42"), alternatives
    # ("+44 20 7946 0958/0959"). The "+" tells it from a decimal or an identifier.
    international = span.startswith(("+", "\uff0b")) and _international(groups)
    # A run continued by a dot or comma and digits is a decimal or a list
    # (1714567890.123456); dotted groups with a one-digit group are version
    # numbers (0.1.1000: phone numbers written with dots group two digits or
    # more, after a one-digit country code at most), and a single dot between
    # two groups is a decimal (16800.10).
    if not international and (
        (end + 1 < len(text) and text[end] in ".," and text[end + 1].isdigit())
        or (start > 1 and text[start - 1] in ".," and text[start - 2].isdigit())
    ):
        return True
    if "." in span and not span.startswith(("+", "\uff0b")) and (
        (any(len(g) == 1 for g in groups) and not _country_code_first(groups))
        or (len(groups) == 2 and span.count(".") == 1)
    ):
        return True
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if before == "#" or after == "#":  # order #5512 3398 7741, conference 719 448 203#
        return True
    if international and "/" in (before, after):
        return False
    if before and before in _JOINERS and start > 1 and text[start - 2].isalnum():
        return True
    # "+372 329 3803-Office": a number in international notation followed by a
    # label is no identifier (those do not start with "+"); followed by digits it may be
    if span.startswith(("+", "\uff0b")) and end + 1 < len(text) and text[end + 1].isalpha():
        return False
    return bool(after and after in _JOINERS and end + 1 < len(text) and text[end + 1].isalnum())


_GS1_LENGTHS = frozenset({12, 13, 14, 18})


def gs1_valid(digits: str) -> bool:
    """The GS1 check digit of UPC-A, EAN-13, GTIN-14 and SSCC codes.

    >>> gs1_valid("036000291452"), gs1_valid("4006381333931"), gs1_valid("4006381333932")
    (True, True, False)
    """
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def _bare_run_is_phone(pn: ModuleType, number: object, raw: str, region: str) -> bool:
    """A number written as one unbroken digit run, without a country code, is
    an identifier (an order or account number, an epoch time) more often than
    a phone number: it counts only as a mobile number, or with the region's
    trunk prefix in front, and never when it carries a valid product-code
    check digit at a product-code length."""
    if len(raw) in _GS1_LENGTHS and gs1_valid(raw):
        return False
    kind = pn.number_type(number)
    if kind in (pn.PhoneNumberType.MOBILE, pn.PhoneNumberType.FIXED_LINE_OR_MOBILE):
        return True
    prefix = pn.PhoneMetadata.metadata_for_region(region).national_prefix
    return bool(prefix) and raw.startswith(prefix)


@dataclass(frozen=True, slots=True)
class PhoneFinder:
    """Phone numbers found by libphonenumber's matcher.

    ``regions`` are tried in turn for numbers written without a country code
    (a number valid and grouped as ``leniency`` requires in any of them is
    found; each extra region costs a matcher pass over the digit runs that
    could hold one of its numbers); numbers that start with ``+`` and a
    country code are found whatever the regions, when their length is
    possible for that country.

    The matcher reads only the pieces of the text around digit runs, split
    where no candidate can reach across (see :func:`_pieces`), and what it
    finds in a piece is remembered (a bounded LRU cache shared by all
    finders, :func:`clear_caches` empties it): texts that repeat numbers,
    templates or whole messages cost a few scans. The result is the same as
    the matcher's over the whole text (a test compares the two on the
    evaluation set and on generated texts).

    The matcher's work is bounded by ``budget`` (None: no bound): each piece
    costs its length times the passes it needs (one per region with a
    plausible run in it, one more for numbers with a ``+``), pieces are
    matched in text order while the budget lasts, and in every piece that no
    longer fits, each digit run of seven digits or more is taken unchecked: an
    over-redaction of that piece, never a leak. So no text stalls the caller
    however it is built (256 KB of ``1234 1234 …`` took 12 s unbounded).

    >>> f = PhoneFinder(regions=("DE", "FR"))
    >>> text = "Ruf 0171 1234567 oder +33 6 12 34 56 78 an, Version 2.14.3, 10:45 Uhr"
    >>> [text[a:b] for a, b in f(text)]
    ['0171 1234567', '+33 6 12 34 56 78']
    >>> text += ", Bestellung 4711 0815"
    >>> [text[a:b] for a, b in PhoneFinder(regions=("DE", "FR"), budget=0)(text)]
    ['0171 1234567', '+33 6 12 34 56 78', '4711 0815']
    """

    regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    leniency: str = "STRICT_GROUPING"
    budget: int | None = PHONE_BUDGET

    def __post_init__(self) -> None:
        pn = require_extra("phonenumbers")
        if self.leniency not in ("VALID", "STRICT_GROUPING", "EXACT_GROUPING"):
            raise ValueError(f"leniency: one of VALID, STRICT_GROUPING, EXACT_GROUPING, got {self.leniency!r}")
        if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                        or self.budget < 0):
            raise ValueError(f"budget: a number of characters >= 0, or None for no bound, got {self.budget!r}")
        if isinstance(self.regions, str):
            raise TypeError(f"regions: a sequence of region codes, got the string {self.regions!r}")
        known = pn.SUPPORTED_REGIONS
        bad = [r for r in self.regions if r not in known]
        if bad:
            raise ValueError(f"regions: unknown region codes {bad}; use ISO 3166 codes such as 'US', 'DE'")
        object.__setattr__(self, "regions", tuple(self.regions))

    def __call__(self, text: str) -> list[tuple[int, int]]:
        runs = _digit_runs(text)
        if not any(long for _, _, long in runs):
            return []
        context = _context_runs(runs)
        left = initial = _remaining("phone", self.budget)
        regions = self.regions
        spans: set[tuple[int, int]] = set()
        unchecked: list[tuple[int, int]] = []
        for lo, hi, idx in _pieces(text, runs, context):
            mask = tuple(context[i] for i in idx)
            if not any(mask):
                continue  # no digits left: nothing to find
            # The numbers with a "+" get a pass of their own; the others are
            # matched in each region that one of the piece's runs is plausible
            # for (a bit per region), and the piece is skipped when none is.
            longs: list[tuple[int, int]] = []
            plus_pass = False
            national = 0  # characters of the runs without a "+"
            for i in idx:
                a, b, long = runs[i]
                if long:
                    longs.append((a, b))
                    if text[a] in "+\uff0b":
                        plus_pass = True
                    else:
                        national += b - a
            if left is not None:
                gates = national * len(regions) // _GATE_SHARE
                if gates > left:
                    unchecked += longs
                    continue
                left -= gates
            active = 0
            if national:
                for a, b in longs:
                    if text[a] not in "+\uff0b":
                        active |= _plausible_bits(text[a:b], regions)
            if left is not None:
                cost = (hi - lo) * (plus_pass + active.bit_count())
                if cost > left:
                    unchecked += longs
                    continue
                left -= cost
            find = _find_in_piece_cached if hi - lo <= _PIECE_CACHE_MAX_CHARS else _find_in_piece
            found = find(text[lo:hi], mask, plus_pass, active, regions, self.leniency)
            spans.update((lo + a, lo + b) for a, b in found)
        if left is not None and initial is not None:
            _spend("phone", initial - left)
        if unchecked:
            _over_budget("phone", len(text), len(unchecked))
        return sorted([s for s in spans if not _is_glued(text, *s)] + unchecked)


# libphonenumber's matcher reads a text as candidates (digits, the punctuation
# between them, a leading "+" or bracket, an extension such as "ext. 12" or
# "#12") and looks one character beyond each end. A candidate can therefore not
# reach across a character that none of these may hold: such a character splits
# the text into pieces that the matcher reads independently, with the same
# result. Every character of the extension pattern counts as one a candidate
# may hold (a few more than needed, which only means fewer splits).
@functools.cache
def _hard_class() -> re.Pattern[str]:
    """Characters that no matcher candidate holds: not a digit, and not a
    character of libphonenumber's punctuation, plus signs, brackets or
    extension pattern, case-insensitively as it reads them.

    >>> h = _hard_class()
    >>> [c for c in "call 0171, ext. 12 (x) – or" if h.match(c)]
    ['c', 'l', 'l', 'r']
    """
    pn = require_extra("phonenumbers")
    util = pn.phonenumberutil
    literal = set(util._EXTN_PATTERNS_FOR_MATCHING) | set(util._PLUS_CHARS) | set("()[]\uff08\uff09\uff3b\uff3d")
    literal |= set(" \t\u00a0,;=:.\uff0e#\uff03~\uff5e-")
    body = util._VALID_PUNCTUATION + "".join(re.escape(c) for c in sorted(literal))
    return re.compile(f"[^{body}\\d]", re.IGNORECASE)


Piece = tuple[int, int, range]
"""``(start, end, runs)``: a piece of the text and the indices of the digit
runs in it."""


def _pieces(text: str, runs: list[tuple[int, int, bool]], keep: list[bool]) -> list[Piece]:
    """Pieces of ``text`` around the kept runs, split where no candidate can
    reach across (at a character of :func:`_hard_class`). A piece starts at
    the last such character before its first run (or at the text's start) and
    ends just after the first one after its last run (or at the text's end),
    so it sees the characters beyond its candidates as the whole text does.
    A split holds for any subset of the kept runs: the others are blanked.

    >>> t = "Ruf 0171 1234567 an, Fax 030 1234567 ext. 12"
    >>> runs = _digit_runs(t)
    >>> [(t[a:b], list(i)) for a, b, i in _pieces(t, runs, _context_runs(runs))]
    [('f 0171 1234567 an, F', [0]), ('Fax 030 1234567 ext. 12', [1, 2])]
    """
    hard = _hard_class()
    kept = [i for i, k in enumerate(keep) if k]
    if not kept:
        return []
    bounds: list[tuple[int, int]] = []
    before = hard.search(text[: runs[kept[0]][0]][::-1])
    lo = 0 if before is None else runs[kept[0]][0] - 1 - before.start()
    for i, j in itertools.pairwise(kept):
        prev_end, a = runs[i][1], runs[j][0]
        first = hard.search(text, prev_end, a)
        if first is not None:
            last = hard.search(text[prev_end:a][::-1])
            assert last is not None
            bounds.append((lo, first.start() + 1))
            lo = a - 1 - last.start()
    after = hard.search(text, runs[kept[-1]][1])
    bounds.append((lo, len(text) if after is None else after.start() + 1))
    # The runs inside each piece (a run never holds a hard character).
    out: list[Piece] = []
    r = 0
    for lo, hi in bounds:
        while runs[r][0] < lo:
            r += 1
        e = r
        while e < len(runs) and runs[e][0] < hi:
            e += 1
        out.append((lo, hi, range(r, e)))
        r = e
    return out


_PIECE_CACHE_MAX_CHARS = 512
"""Pieces longer than this are matched without being remembered, so the cache
holds at most a few megabytes whatever the traffic."""


def _find_in_piece(
    piece: str, context: tuple[bool, ...], plus_pass: bool, active: int, regions: tuple[str, ...], leniency: str
) -> tuple[tuple[int, int], ...]:
    """The phone spans in one piece, as :class:`PhoneFinder` finds them in the
    whole text: ``context`` says which of the piece's digit runs the matcher
    sees, ``plus_pass`` whether the piece has a long run with a ``+``,
    ``active`` which regions (a bit each) have a plausible run in the piece.
    It depends on its arguments alone, so it may be remembered."""
    runs = _digit_runs(piece)
    found: set[tuple[int, int]] = set()
    if plus_pass:
        found.update(_match_piece(piece, runs, list(context), regions[0] if regions else "US", "POSSIBLE", True))
    gates = [
        _plausible_bits(piece[a:b], regions) if long and piece[a] not in "+\uff0b" else 0
        for a, b, long in runs
    ]
    for r, region in enumerate(regions):
        if not active >> r & 1:
            continue
        keep = [k and (not long or bool(g >> r & 1)) for k, (_, _, long), g in zip(context, runs, gates, strict=True)]
        if not any(keep):
            continue
        # Where parsing rewrites the digits (Argentina's mobile "15"), the
        # grouping check cannot see the written groups: validity only.
        lenient = leniency if _region_gate(region) is not None else "VALID"
        found.update(_match_piece(piece, runs, keep, region, lenient, False))
    return tuple(sorted(found))


_find_in_piece_cached = functools.lru_cache(maxsize=4096)(_find_in_piece)


def _match_piece(
    piece: str, runs: list[tuple[int, int, bool]], keep: list[bool], region: str, leniency: str, plus_only: bool
) -> list[tuple[int, int]]:
    """Spans of ``piece`` (its runs blanked where ``keep`` is false) that
    libphonenumber's matcher finds for ``region`` and that the finder keeps:
    with a ``+`` only (``plus_only``), or numbers of at least seven digits
    that are not bare identifier-like runs."""
    # (The one difference from a whole-text pass: the matcher gives up after
    # 65,535 rejected candidates, here per piece rather than per text.)
    pn = require_extra("phonenumbers")
    masked = piece if all(keep) else _blank(piece, runs, keep)
    found: list[tuple[int, int]] = []
    for m in pn.PhoneNumberMatcher(masked, region, leniency=getattr(pn.Leniency, leniency)):
        raw = m.raw_string
        if plus_only:
            if raw.startswith(("+", "\uff0b")):
                found.append((m.start, m.end))
            continue
        # The matcher also tries the inner groups of a long run; a
        # short group found that way (1680 in 0.60.1680) is no phone.
        if sum(c.isdigit() for c in raw) < _MIN_PHONE_DIGITS:
            continue
        if raw.isdigit() and not _bare_run_is_phone(pn, m.number, raw, region):
            continue
        found.append((m.start, m.end))
    return found


def _plausible_regions(run: str, regions: tuple[str, ...]) -> int:
    """A bit per region: whether the run could hold one of its national numbers.

    >>> bin(_plausible_regions("0171 1234567", ("US", "DE", "GB")))
    '0b110'
    """
    bits = 0
    for r, region in enumerate(regions):
        gate = _region_gate(region)
        if gate is None or _plausible(run, gate):
            bits |= 1 << r
    return bits


_plausible_regions_cached = functools.lru_cache(maxsize=8192)(_plausible_regions)


def _plausible_bits(run: str, regions: tuple[str, ...]) -> int:
    # Long runs (a pasted table) are not remembered, to bound the cache.
    return (_plausible_regions_cached if len(run) <= 64 else _plausible_regions)(run, regions)


def clear_caches() -> None:
    """Forget every remembered result (the phone finder's pieces and gates)."""
    _find_in_piece_cached.cache_clear()
    _plausible_regions_cached.cache_clear()
    _is_date.cache_clear()


def could_hold_pii(text: str) -> bool:
    """Whether any built-in finder could find something: the text has a
    digit or an ``@``. Most prose has neither, and is then passed over at
    the cost of a few scans.

    >>> could_hold_pii("Thanks, we will look into it."), could_hold_pii("page 12")
    (False, True)
    """
    if "@" in text:
        return True
    if text.isascii():
        return any(d in text for d in "0123456789")
    return _ANY_DIGIT.search(text) is not None


_ANY_DIGIT = re.compile(r"\d")


def merge_spans(groups: Iterable[tuple[str, list[tuple[int, int]]]]) -> list[tuple[int, int, str]]:
    """Non-overlapping labelled spans that cover every finding: overlapping
    findings are joined into one span (nothing any finder found is left in the
    text), labelled by the earliest group among them. Sorting makes it
    ``O(n log n)`` however many findings a text holds.

    >>> merge_spans([("[CARD]", [(5, 9)]), ("[PHONE]", [(0, 6), (10, 12)])])
    [(0, 9, '[CARD]'), (10, 12, '[PHONE]')]
    >>> merge_spans([("[EMAIL]", [(0, 5), (2, 9), (9, 12)])])
    [(0, 9, '[EMAIL]'), (9, 12, '[EMAIL]')]
    """
    items = sorted((a, b, rank, label) for rank, (label, spans) in enumerate(groups) for a, b in spans if b > a)
    out: list[list[Any]] = []
    for a, b, rank, label in items:
        if out and a < out[-1][1]:
            last = out[-1]
            last[1] = max(last[1], b)
            if rank < last[2]:
                last[2], last[3] = rank, label
        else:
            out.append([a, b, rank, label])
    return [(a, b, label) for a, b, _, label in out]


# -- disguises ---------------------------------------------------------------------------
#
# The finders read the text as written. Personal data also travels disguised: an
# address percent-escaped in a link (``jane%40example.com``), as HTML character
# references (``jane&#64;example.com``), in full-width forms (``ｊａｎｅ＠…``), with an
# invisible zero-width character inside, or spelled ``jane (at) example (dot) com``.
# :func:`plain_view` undoes these into a second text that remembers where each of
# its characters came from; the finders run on it as well and what they find is
# mapped back onto the text as written. Unbracketed ``at`` / ``dot`` are left alone:
# "look at example.com" is no address.

_BRACKETS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_SPELLED = {"at": "@", "dot": "."}
_HEX = frozenset("0123456789abcdefABCDEF")


# Marks that render as nothing of their own, so they hide inside a word as well
# as a format character does: the combining grapheme joiner and Unicode's
# Variation_Selector property (Mongolian free variation selectors, VS1-VS16,
# VS17-VS256).
_INVISIBLE_MARKS = frozenset([0x034F, 0x180B, 0x180C, 0x180D, 0x180F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])


def _char_class(codes: Iterable[int]) -> str:
    """Ascending code points as the inside of a character class, runs as ranges."""
    ranges: list[list[int]] = []
    for c in codes:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)


@functools.cache
def _format_codes() -> tuple[int, ...]:
    """Unicode's invisible format characters (category Cf: zero-width space and
    joiners, word joiner, soft hyphen, byte order mark ...)."""
    return tuple(c for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf")


@functools.cache
def _format_class() -> str:
    """The format characters and the invisible marks, as the inside of a character class."""
    return _char_class(sorted({*_format_codes(), *_INVISIBLE_MARKS}))


@functools.cache
def _invisible() -> re.Pattern[str]:
    return re.compile(f"[{_format_class()}]")


def _hides_something(text: str) -> bool:
    """Whether an invisible character in ``text`` may hide something: a format
    character, or an invisible mark next to a letter or digit. After an emoji a
    variation selector only chooses how it is drawn ("\u2764\ufe0f").

    >>> _hides_something("thanks \u2764\ufe0f"), _hides_something("jo\u034fse@example.com")
    (False, True)
    """
    for m in _invisible().finditer(text):
        i = m.start()
        if ord(text[i]) not in _INVISIBLE_MARKS or (i and text[i - 1].isalnum()) or text[i + 1 : i + 2].isalnum():
            return True
    return False


_ASCII_MARKS = "%&@([{<\\"


@functools.cache
def _marks(normalized: bool) -> re.Pattern[str]:
    """Where a disguise may start: ``%``, ``&``, ``@``, an opening bracket, an
    invisible format character and, in text that NFKC would change, any other
    non-ASCII character. The view is copied through in between."""
    other = "" if normalized else "|[^\\x00-\\x7f]"
    return re.compile(f"[{re.escape(_ASCII_MARKS)}{_format_class()}]{other}")


@dataclass(frozen=True, slots=True)
class PlainView:
    """A text with its disguises undone; character ``i`` of :attr:`text` came from
    ``original[starts[i]:ends[i]]``."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def origin(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that ``text[start:end]`` came from."""
        return self.starts[start], self.ends[end - 1]


def _spelled_at(text: str, i: int) -> tuple[str, int] | None:
    """``("@" or ".", end)`` when ``text[i:end]`` is a bracketed ``at`` or ``dot``
    (any case, spaces inside the brackets allowed)."""
    close = _BRACKETS.get(text[i])
    if close is None:
        return None
    j = i + 1
    while j < len(text) and text[j] == " ":
        j += 1
    k = j
    while k < len(text) and text[k].isalpha() and k - j <= 3:
        k += 1
    sign = _SPELLED.get(text[j:k].lower())
    while k < len(text) and text[k] == " ":
        k += 1
    if sign is None or k >= len(text) or text[k] != close:
        return None
    return sign, k + 1


# a bracketed "at" or "dot" somewhere: only a hint, :func:`_spelled_at` decides
_SPELLED_HINT = re.compile(r"[(\[{<] *(?:at|dot) *[)\]}>]", re.IGNORECASE)


def _may_be_disguised(text: str) -> bool:
    if "%" in text or "&" in text or " @ " in text or "(+" in text or "\\u" in text or "\\x" in text:
        return True
    if ("(" in text or "[" in text or "{" in text or "<" in text) and _SPELLED_HINT.search(text):
        return True
    return not text.isascii() and (not unicodedata.is_normalized("NFKC", text)
                                   or _hides_something(text))


def _unicode_escape(text: str, i: int) -> tuple[str, int, int] | None:
    """``(character, i, end)`` when ``text[i:end]`` is a ``\\uXXXX`` escape (a
    surrogate pair of two taken together) or ``\\xXX``; None otherwise.

    >>> _unicode_escape(r"a\\u0040b", 1), _unicode_escape(r"\\ud83d\\ude00", 0)
    (('@', 1, 7), ('😀', 0, 12))
    >>> _unicode_escape(r"\\ud83d alone", 0), _unicode_escape(r"\\u00zz", 0)
    (None, None)
    """
    def hex_at(k: int, width: int) -> int | None:
        digits = text[k:k + width]
        return int(digits, 16) if len(digits) == width and all(c in _HEX for c in digits) else None

    kind = text[i + 1:i + 2]
    if kind == "x" and (code := hex_at(i + 2, 2)) is not None:
        return chr(code), i, i + 4
    if kind != "u" or (code := hex_at(i + 2, 4)) is None:
        return None
    if 0xD800 <= code < 0xDC00:  # high surrogate: needs its low half
        low = hex_at(i + 8, 4) if text[i + 6:i + 8] == "\\u" else None
        if low is None or not 0xDC00 <= low < 0xE000:
            return None
        return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), i, i + 12
    if 0xDC00 <= code < 0xE000:
        return None
    return chr(code), i, i + 6


def _percent_utf8(text: str, i: int) -> tuple[str, int, int] | None:
    """The character that the percent-escaped UTF-8 bytes at ``text[i]`` stand for
    (what ``urllib.parse.quote`` writes for non-ASCII), with its span; None unless
    they are one well-formed character.

    >>> _percent_utf8("m%C3%BCller", 1), _percent_utf8("%E2%82%AC5", 0), _percent_utf8("%C3%28", 0)
    (('ü', 1, 7), ('€', 0, 9), None)
    """
    lead = int(text[i + 1:i + 3], 16)
    size = 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead <= 0xF4 else 0
    end = i + 3 * size
    if not size or end > len(text):
        return None
    raw = bytearray([lead])
    for k in range(i + 3, end, 3):
        if text[k] != "%" or text[k + 1] not in _HEX or text[k + 2] not in _HEX:
            return None
        raw.append(int(text[k + 1:k + 3], 16))
    try:
        return raw.decode("utf-8"), i, end
    except UnicodeDecodeError:
        return None


def plain_view(text: str) -> PlainView | None:
    """``text`` with percent-escapes (of ASCII, and of UTF-8 characters), HTML
    character references, ``\\u`` / ``\\x`` escapes (JSON, Python), compatibility
    forms (NFKC), invisible format characters, bracketed ``at`` / ``dot``, spaces
    on both sides of ``@`` and a bracketed country code (``(+44)``) undone; None
    when there is nothing to undo.

    >>> v = plain_view("mail jane%40example.com or bob (at) corp [dot] io")
    >>> v.text
    'mail jane@example.com or bob@corp.io'
    >>> v.origin(5, 21), v.origin(25, 36)
    ((5, 23), (27, 49))
    >>> plain_view("ｊｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ").text, plain_view("plain text, 50 % off")
    ('joe@example.com', None)
    """
    if not _may_be_disguised(text):
        return None
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    marks = _marks(text.isascii() or unicodedata.is_normalized("NFKC", text))
    changed = False

    def emit(chars: str, a: int, b: int) -> None:
        for c in chars:
            out.append(c)
            starts.append(a)
            ends.append(b)

    def sign(c: str, a: int, b: int) -> int:
        """Emit an "@" (or a spelled "."), with the spaces around it gone; where
        the text goes on after them."""
        nonlocal changed
        while out and out[-1] == " ":  # "jane @ example.com"
            del out[-1], starts[-1], ends[-1]
            changed = True
        emit(c, a, b)
        while b < n and text[b] == " ":
            b += 1
            changed = True
        return b

    def put(dec: str, a: int, b: int) -> int:
        """Emit the character ``text[a:b]`` stands for (escaped, or itself when
        non-ASCII), normalised: invisible ones dropped, NFKC applied; where the
        text goes on."""
        nonlocal changed
        plain = dec if dec.isascii() else "" if _invisible().match(dec) else unicodedata.normalize("NFKC", dec)
        if plain == text[a:b]:
            emit(plain, a, b)
            return b
        changed = True
        if plain == "@":
            return sign(plain, a, b)
        emit(plain, a, b)
        return b

    i, n = 0, len(text)
    while i < n:
        m = marks.search(text, i)
        j = m.start() if m is not None else n
        if j > i:  # copied through
            out.extend(text[i:j])
            starts.extend(range(i, j))
            ends.extend(range(i + 1, j + 1))
        if m is None:
            break
        i = j
        ch = text[i]
        if ch == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            dec = chr(int(text[i + 1:i + 3], 16))
            if " " < dec <= "~":  # printable ASCII: "%40" is "@", "%2B" is "+"
                i = put(dec, i, i + 3)
                continue
            if (utf8 := _percent_utf8(text, i)) is not None:  # "m%C3%BCller": one character
                i = put(*utf8)
                continue
        if ch == "&" and (end := text.find(";", i + 2, i + 12)) != -1:
            dec = html.unescape(text[i:end + 1])
            if len(dec) == 1 and dec != "&":  # "&#64;", "&#x40;", "&commat;"
                i = put(dec, i, end + 1)
                continue
        if ch == "\\" and (esc := _unicode_escape(text, i)) is not None:
            i = put(*esc)  # "m\\u00fcller": JSON's and Python's escapes
            continue
        if ch == "(" and text[i + 1:i + 2] == "+":  # "(+44) 20 7946 0958": a country code
            k = i + 2
            while k < n and k - i <= 5 and text[k].isdigit():
                k += 1
            if i + 2 < k < n and text[k] == ")":
                changed = True
                emit("+", i, i + 2)
                for d in range(i + 2, k):
                    emit(text[d], d, d + 1)
                i = k + 1
                continue
        if ch in _BRACKETS and (spelled := _spelled_at(text, i)) is not None:
            changed = True
            i = sign(spelled[0], i, spelled[1])
            continue
        if ch == "@":
            if out and out[-1] == " " and text[i + 1:i + 2] == " ":
                i = sign(ch, i, i + 1)  # "jane @ example.com"; "thanks @jane.doe" stays
            else:
                emit(ch, i, i + 1)
                i += 1
            continue
        if not ch.isascii():
            i = put(ch, i, i + 1)
            continue
        emit(ch, i, i + 1)
        i += 1
    if not changed:
        return None
    return PlainView("".join(out), tuple(starts), tuple(ends))

