"""The regex redactor that llmpulse shipped before libphonenumber, kept only as
the baseline that ``llmpulse bench redact`` measures the current one against.

>>> baseline_redact("call +44 20 7946 0958, card 4111 1111 1111 1111")
'call [PHONE], card [CARD]'
"""

from __future__ import annotations

import re
from collections.abc import Callable

from llmpulse.pii import luhn_valid

__all__ = ["baseline_redact"]


def _iban_valid(iban: str) -> bool:
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
    return "[IBAN]" if _iban_valid(m.group()) else m.group()


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


BASELINE_RULES: dict[str, Callable[[str], str]] = {
    "email": _sub(_EMAIL, "[EMAIL]"),
    "iban": _sub(_IBAN, _iban),
    "card": _sub(_CARD, _card),
    "phone": _sub(_PHONE, _phone),
}


def baseline_redact(text: str) -> str:
    for rule in BASELINE_RULES.values():
        text = rule(text)
    return text
