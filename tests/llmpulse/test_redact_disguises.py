"""Personal data in disguise: percent-escaped in a link, as HTML character
references, full-width, split by an invisible character, spelled ``(at)``.

The redactor reads a plain view of the text as well (:func:`llmpulse.pii.plain_view`)
and redacts what it finds there in the text as written. The addresses and numbers
below are generated or taken from the libraries' own examples; each disguise is
applied by the standard library (``urllib.parse.quote``, ``html`` character
references, ``unicodedata``), not written by hand.
"""

from __future__ import annotations

import html
import json
import unicodedata
import urllib.parse

import phonenumbers as pn
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmpulse.pii import find_emails, plain_view
from llmpulse.redact import Redactor, find_spans

DEFAULT = Redactor()
PLAIN = Redactor(disguises=False)

_ADDRESSES = ["jane.doe@example.com", "k.mayer@beispiel.de", "o'brien+news@mail.example.co.uk",
              "x_y-z@sub.domain.io", "support@company.org"]
_PHONES = [pn.format_number(pn.example_number(r), pn.PhoneNumberFormat.E164) for r in ("US", "GB", "DE", "IN")]


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


def _entities(s: str) -> str:
    return s.replace("@", "&#64;").replace(".", "&#x2E;")


def _named(s: str) -> str:
    return s.replace("@", "&commat;").replace(".", "&period;")


def _zero_width(s: str) -> str:
    at = s.index("@")
    return s[: at + 3] + "\u200b" + s[at + 3:]


def _soft_hyphen(s: str) -> str:
    return s[:2] + "\u00ad" + s[2:]


def _spelled(s: str) -> str:
    local, domain = s.split("@")
    return f"{local} (at) {domain.replace('.', ' [dot] ')}"


def _spelled_tight(s: str) -> str:
    local, domain = s.split("@")
    return f"{local}(AT){domain.replace('.', '(DOT)')}"


def _spaced(s: str) -> str:
    return s.replace("@", " @ ")


def _in_link(s: str) -> str:
    return "https://shop.example/reset?" + urllib.parse.urlencode({"email": s, "t": "42"})


def _in_link_quoted(s: str) -> str:
    return "https://shop.example/u/" + urllib.parse.quote(s, safe="")


DISGUISES = {f.__name__.strip("_"): f for f in (
    _fullwidth, _entities, _named, _zero_width, _soft_hyphen, _spelled, _spelled_tight, _spaced,
    _in_link, _in_link_quoted)}


@pytest.mark.parametrize("disguise", list(DISGUISES))
@pytest.mark.parametrize("address", _ADDRESSES)
def test_disguised_addresses_are_redacted(disguise, address):
    shown = DISGUISES[disguise](address)
    text = f"Write to {shown} today."
    out = DEFAULT(text)
    assert "[EMAIL]" in out, (shown, out)
    assert out.startswith("Write to ") and out.endswith(" today."), out
    local = address.split("@")[0]
    assert local not in out and _fullwidth(local) not in out, out
    # read as written, the disguise hid it (except where the "@" survives as is)
    if "@" not in shown:
        assert "[EMAIL]" not in PLAIN(text)


@pytest.mark.parametrize("address", ["müller@bücher.de", "иван@пример.рф", "jane.doe@example.com", "山田@例え.jp"])
@pytest.mark.parametrize("escape", ["json", "ascii", "json_full"])
def test_escaped_addresses_in_json_and_reprs(address, escape):
    if escape == "json":  # what json.dumps writes by default: non-ASCII escaped
        shown = json.dumps({"to": address})
    elif escape == "ascii":  # Python's repr of the string, as logs print it
        shown = ascii(address)
    else:  # every character escaped, "@" too
        shown = "".join(f"\\u{ord(c):04x}" for c in address)
    text = f"tool call: {shown} sent"
    out = DEFAULT(text)
    assert "[EMAIL]" in out, (shown, out)
    assert out.startswith("tool call: ") and out.endswith(" sent"), out


_NON_ASCII = ["müller@bücher.de", "иван@пример.рф", "山田@例え.jp", "josé.garcía@correo.es"]


@pytest.mark.parametrize("address", _NON_ASCII)
@pytest.mark.parametrize("how", ["quote", "urlencode"])
def test_non_ascii_addresses_percent_escaped_as_utf8(address, how):
    if how == "quote":
        shown = "https://shop.example/u/" + urllib.parse.quote(address, safe="")
    else:
        shown = "https://shop.example/reset?" + urllib.parse.urlencode({"email": address, "t": "42"})
    assert urllib.parse.unquote(shown.split("/u/")[-1].split("email=")[-1].split("&")[0]) == address
    out = DEFAULT(f"Open {shown} now")
    assert "[EMAIL]" in out and out.startswith("Open https://shop.example/"), out
    assert "[EMAIL]" not in PLAIN(f"Open {shown} now")  # read as written, the escapes hid it


@pytest.mark.parametrize("address", [a for a in [*_NON_ASCII, "rené.müller@example.de", "info@bücher.de"]
                                     if unicodedata.normalize("NFD", a) != a])
def test_decomposed_addresses(address):
    # NFD, as macOS writes file names and some keyboards type: "é" is "e" and a
    # combining accent, which continues the name it follows.
    shown = unicodedata.normalize("NFD", address)
    assert DEFAULT(f"Write to {shown} today.") == "Write to [EMAIL] today."


# The combining grapheme joiner and variation selectors show nothing, like a zero-width space.
@pytest.mark.parametrize("mark", ["\u034f", "\ufe0f", "\ufe00", "\U000e0100", "\u180b"])
@pytest.mark.parametrize("where", [2, -3])
@pytest.mark.parametrize("address", _ADDRESSES)
def test_invisible_marks_inside_an_address(mark, where, address):
    shown = address[:where] + mark + address[where:]
    assert DEFAULT(f"Write to {shown} today.") == "Write to [EMAIL] today."


@pytest.mark.parametrize("text", ["caf%C3%A9 menu, 50%C3 off", "100%25 sure, %E2%82%AC 5", "broken %C3%28 byte",
                                  "%F0%9F%98%80 smile", "%ED%A0%80 lone surrogate"])
def test_utf8_escapes_without_personal_data_stay(text):
    assert DEFAULT(text) == text


def test_the_link_around_an_address_stays():
    url = "https://shop.example/reset?" + urllib.parse.urlencode({"email": "jane@example.com", "t": "42"})
    assert DEFAULT(f"Open {url} now") == "Open https://shop.example/reset?email=[EMAIL]&t=42 now"
    assert DEFAULT("https://shop.example/reset?email=jane@example.com") == \
        "https://shop.example/reset?email=[EMAIL]"


@pytest.mark.parametrize("phone", _PHONES)
def test_percent_escaped_phone_in_a_tel_link(phone):
    link = "tel:" + urllib.parse.quote(phone, safe="")
    assert "%2B" in link
    out = DEFAULT(f"Call {link}")
    assert "[PHONE]" in out and phone[2:] not in out, out


@pytest.mark.parametrize("text", [
    "AT&T, R&D and Q&A; 50% off, 100%; tom &amp; jerry",
    "prices (at) cost, look at example.com, see <at> tag, the [dot] product",
    "thanks @jane.doe for the fix; use the @dataclass decorator",
    "déjà vu café — ½ price, ² and ﬁne print, Ｔｏｋｙｏ ２０２４",
    "progress 100%25, width%3A 40%, discount 50%40 items",
    "zero\u200bwidth and soft\u00adhyphen in plain words",
    "name&#64;host has no domain; user (at) localhost neither",
    r"C:\Users\x64\data and \u00e9t\u00e9 and a lone \ud83d half",
])
def test_look_alikes_stay(text):
    assert DEFAULT(text) == text


_WORDS = st.sampled_from(["at", "dot", "(at)", "[dot]", "%", "%40", "&", "&#64;", "@", " @ ", "(", ")",
                          "example", "com", ".", "price", "50", "½", "Ｔｏｋｙｏ", "\u200b", "café",
                          "\u00ad", "%2E", "&period;", "org", "user", "-", "_"])


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_WORDS, min_size=1, max_size=14), st.lists(st.sampled_from([" ", "", ", "]), min_size=14,
                                                           max_size=14))
def test_the_view_maps_back_and_never_redacts_less(words, gaps):
    text = "".join(w + g for w, g in zip(words, gaps, strict=False))
    view = plain_view(text)
    if view is not None:
        assert len(view.starts) == len(view.ends) == len(view.text)
        assert all(0 <= a < b <= len(text) for a, b in zip(view.starts, view.ends, strict=True))
        assert list(view.starts) == sorted(view.starts)
        for a, b in find_emails(view.text):
            lo, hi = view.origin(a, b)
            assert "@" in html.unescape(urllib.parse.unquote(text[lo:hi])) or "at" in text[lo:hi].lower() \
                or "＠" in text[lo:hi]
    # every span found in the text as written is still redacted: the view only adds
    plain = find_spans(text, DEFAULT._finders, disguises=False)
    full = find_spans(text, DEFAULT._finders)
    assert set(plain) <= set(full)


def test_plain_view_is_none_for_ordinary_text():
    for text in ["Thanks, we will look into it.", "Order 1234 shipped on 2024-05-01", "Grüße aus München",
                 "日本語のテキストです", "thanks \u2764\ufe0f see you at 10:45 \u263a\ufe0f", ""]:
        assert plain_view(text) is None, text


@pytest.mark.parametrize("region", ["GB", "FR", "DE", "IT", "ES", "NL", "AU", "CH"])
def test_country_code_in_brackets(region):
    n = pn.example_number_for_type(region, pn.PhoneNumberType.FIXED_LINE)
    national = pn.format_number(n, pn.PhoneNumberFormat.NATIONAL).lstrip("0").strip()
    text = f"Office: (+{n.country_code}) {national}, ask for Sam"
    out = DEFAULT(text)
    assert out.startswith("Office: [PHONE]") and out.endswith(", ask for Sam"), (text, out)


_CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"]


def _grouped(card: str, sep: str) -> str:
    sizes = (4, 6, 5) if len(card) == 15 else (4, 4, 4, 4)
    parts, k = [], 0
    for size in sizes:
        parts.append(card[k:k + size])
        k += size
    return sep.join(parts)


@pytest.mark.parametrize("sep", ["  ", "   ", "\t", " - ", "-", "- ", " -"])
@pytest.mark.parametrize("card", _CARDS)
def test_cards_with_wider_separators(card, sep):
    text = f"my card is {_grouped(card, sep)}, thanks"
    assert DEFAULT(text) == "my card is [CARD], thanks"


@pytest.mark.parametrize("seps", [["\u2013"], [" \u2013 "], ["\u2212"], ["\u2010"], ["\u00a0"], ["\u202f"],
                                  ["  ", "   ", "  "], [" ", "  ", "\t"]])
@pytest.mark.parametrize("card", _CARDS)
def test_cards_with_typographic_or_uneven_separators(card, seps):
    shown = _grouped(card, "|")
    for sep in seps * 3:
        shown = shown.replace("|", sep, 1)
    assert "|" not in shown
    assert DEFAULT(f"my card is {shown}, thanks") == "my card is [CARD], thanks"


@pytest.mark.parametrize("zero", ["\u0660", "\u06f0", "\u0966", "\u09e6"])
@pytest.mark.parametrize("card", _CARDS)
def test_cards_in_other_digits(card, zero):
    # Arabic-Indic, Extended Arabic-Indic, Devanagari, Bengali digits
    shown = _grouped(card, " ").translate({48 + d: ord(zero) + d for d in range(10)})
    assert DEFAULT(f"my card is {shown}, thanks") == "my card is [CARD], thanks"


@pytest.mark.parametrize("sep", ["  ", "\t", " - ", "\u2013", " \u2013 "])
def test_grouped_numbers_that_fail_luhn_stay(sep):
    for n in ["4111111111111112", "1234567890123456", "9999888877776666"]:
        text = f"ref {_grouped(n, sep)} ok"
        assert DEFAULT(text) == text


@pytest.mark.parametrize("sep", ["-", "\u2013", "\u2011", "\u2212", "\u00a0", "\u202f"])
@pytest.mark.parametrize("iban", ["GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606"])
def test_ibans_grouped_by_hyphens(iban, sep):
    # dashes as editors substitute them, no-break spaces as word processors write them
    shown = sep.join(iban[k:k + 4] for k in range(0, len(iban), 4))
    assert DEFAULT(f"IBAN {shown}.") == "IBAN [IBAN]."


@pytest.mark.parametrize("label", ["-Office", "-Fax", "/mobile", "_home"])
def test_an_international_number_followed_by_a_label(label):
    text = f"Sam Lee\n+372 5123 4567{label}, +44 20 7946 0958{label}"
    assert DEFAULT(text) == f"Sam Lee\n[PHONE]{label}, [PHONE]{label}"


@pytest.mark.parametrize("text", ["invoice INV-2024-000123-final", "order 2024-000123-Office",
                                  "+44 20 7946 0958-12 is a ticket"])
def test_identifiers_glued_to_labels_stay(text):
    assert DEFAULT(text) == text


def test_the_external_benchmark_counts(tmp_path):
    from llmpulse.bench.redact_presidio import run

    (tmp_path / "templates.txt").write_text(
        "Mail {{email}} or call {{phone_number}}\\nthanks\nI live at {{address}}, zip {{postcode}}\n")
    (tmp_path / "FakeNameGenerator.com_3000.csv").write_text(
        "\ufeffGivenName,Surname,StreetAddress,City,Country,CountryFull,ZipCode,EmailAddress,"
        "TelephoneNumber,TelephoneCountryCode,Birthday,Age,Company,Domain,Occupation\n"
        "Ann,Lee,12 Elm St,Leeds,GB,United Kingdom,LS1 4AP,ann@example.co.uk,020 7946 0958,44,"
        "1/2/1990,34,Acme,acme.co.uk,cook\n"
        "Bo,Ek,Storgatan 3,Lund,SE,Sweden,223 50,bo@example.se,12 34,46,3/4/1980,44,Ab,ab.se,smith\n",
        encoding="utf-8")
    r = run(tmp_path)
    assert (r["templates"], r["people"]) == (2, 2)
    assert r["emails"] == {"removed": 2, "of": 2, "share": 1.0}
    intl = r["phones"]["international"]
    assert (intl["removed"], intl["of"]) == (1, 2) and intl["leaks"] == ["SE: +46 12 34"]
    assert r["look_alikes"]["of"] == 1
    assert r["baseline"]["emails"]["of"] == 2 and set(r["baseline"]["phones"]) == {
        "national", "international"}
