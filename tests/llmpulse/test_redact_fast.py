"""The phone finder reads pieces of the text and remembers them; the result
must be byte-identical to libphonenumber's matcher over the whole text
(:mod:`llmpulse.bench.redact_before`), cached or not. The matcher alone is compared:
the redactors here read the text as written (``disguises=False``); the plain view
adds findings on top (``test_redact_disguises.py``)."""

from __future__ import annotations

import phonenumbers as pn
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmpulse import pii
from llmpulse.bench.redact import DATA_HELDOUT2, PROMPTS, RESPONSES, load_cases
from llmpulse.bench.redact_before import before_redactor
from llmpulse.pii import DEFAULT_PHONE_REGIONS, _hard_class, _pieces, clear_caches
from llmpulse.redact import Redactor

CASES = load_cases() + load_cases(DATA_HELDOUT2)
TEXTS = [c["text"] for c in CASES] + list(PROMPTS) + list(RESPONSES)
_CONFIGS = {
    "default": DEFAULT_PHONE_REGIONS,
    "one": ("DE",),
    "rewriting": ("AR", "MX", "BR"),  # regions whose parsing rewrites digits
    "all hints": tuple(sorted({c["region"] for c in CASES if c.get("region")})),
}


@pytest.mark.parametrize("config", list(_CONFIGS))
def test_identical_to_the_whole_text_matcher_on_the_evaluation_set(config):
    regions = _CONFIGS[config]
    new, old = Redactor(regions=regions, disguises=False), before_redactor(regions)
    expected = [old(t) for t in TEXTS]
    clear_caches()
    assert [new(t) for t in TEXTS] == expected  # cold
    assert [new(t) for t in reversed(TEXTS)] == expected[::-1]  # remembered


def test_identical_per_case_hint():
    for c in CASES:
        regions = (c["region"],) if c.get("region") else DEFAULT_PHONE_REGIONS
        assert Redactor(regions=regions, disguises=False)(c["text"]) == before_redactor(regions)(c["text"]), c["id"]


_EXAMPLES = [
    pn.format_number(n, f)
    for r in ("US", "GB", "DE", "FR", "IN", "BR", "JP", "AR", "PL")
    for t in (pn.PhoneNumberType.MOBILE, pn.PhoneNumberType.FIXED_LINE)
    if (n := pn.example_number_for_type(r, t)) is not None
    for f in (pn.PhoneNumberFormat.NATIONAL, pn.PhoneNumberFormat.INTERNATIONAL, pn.PhoneNumberFormat.E164)
]
_OTHER_PII = ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "GB82 WEST 1234 5698 7654 32",
              "DE89370400440532013000", "de89 3704 0044 0532 0130 00", "FR1420041010050500013M02606",
              "jane.doe@example.com", "müller@bücher.de", "a@b", "@dataclass", "AB12CD34", "5901234123457"]
_GLUE = [" ", ", ", " ext. ", " x", "#", " (", ") ", "-", "/", ".", ":", " or ", " und ", "\n", " anexo ",
         " int ", " доб ", "；", " – ", "abc", "\u00a0", "  ", "+", "ｘ", " EXT "]


@st.composite
def _fragment(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["example", "digits", "grouped", "word", "noise", "other"]))
    if kind == "example":
        return draw(st.sampled_from(_EXAMPLES))
    if kind == "other":
        return draw(st.sampled_from(_OTHER_PII))
    if kind == "digits":
        return draw(st.text(alphabet="0123456789", min_size=1, max_size=14))
    if kind == "grouped":
        groups = draw(st.lists(st.text(alphabet="0123456789", min_size=1, max_size=5), min_size=2, max_size=5))
        return draw(st.sampled_from([" ", "-", ".", "/", " - "])).join(groups)
    if kind == "word":
        return draw(st.sampled_from(["call", "order", "tel", "at", "on", "Nr.", "version", "ext", "x", "den"]))
    return draw(st.text(alphabet="0123456789 +-().x#,:/extnaoдб–\u00a0Ａ１", min_size=1, max_size=12))


@st.composite
def _corpus_text(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_fragment(), min_size=1, max_size=8))
    glue = draw(st.lists(st.sampled_from(_GLUE), min_size=len(parts), max_size=len(parts)))
    return "".join(g + p for g, p in zip(glue, parts, strict=True))


_DEFAULT_NEW = Redactor(disguises=False)
_DEFAULT_OLD = before_redactor()
_US_NEW = Redactor(regions=("US",), disguises=False)
_US_OLD = before_redactor(("US",))


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(_corpus_text())
def test_identical_on_generated_texts(text):
    assert _DEFAULT_NEW(text) == _DEFAULT_OLD(text)
    assert _US_NEW(text) == _US_OLD(text)


def test_pieces_split_only_at_characters_no_candidate_holds():
    hard = _hard_class()
    for c in "0123456789+()[]-./ ,:;#~xXeEtTnN\u00a0\uff0b\uff08\u2013":
        assert not hard.match(c), c
    text = "call 0171 1234567 or 030 1234567, ext. 12 then 089 123456"
    runs = pii._digit_runs(text)
    keep = [True] * len(runs)
    pieces = [(text[a:b], list(i)) for a, b, i in _pieces(text, runs, keep)]
    # split at "l", "r" and "h" only; ", ext. 12" stays with its number
    assert pieces == [("l 0171 1234567 or", [0]), ("r 030 1234567, ext. 12 th", [1, 2]), ("hen 089 123456", [3])]


def test_long_pieces_are_not_remembered():
    clear_caches()
    text = "numbers: " + " ".join(["0171 1234567"] * 60)  # one piece of 700+ characters
    assert _DEFAULT_NEW(text) == _DEFAULT_OLD(text)
    assert pii._find_in_piece_cached.cache_info().currsize == 0
    _DEFAULT_NEW("call 0171 1234567 today")
    assert pii._find_in_piece_cached.cache_info().currsize > 0
