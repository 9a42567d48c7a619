from __future__ import annotations

import random
import re

import pytest

from llmpulse.redact import BUILTIN_RULES, Redactor, TextPolicy, iban_valid, luhn_valid

# Published test numbers of the card networks.
CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117", "4012888888881881"]
# Example IBANs from the national formats (ISO 13616 registry examples).
IBANS = ["DE89370400440532013000", "FR1420041010050500013M02606", "GB82WEST12345698765432", "NL91ABNA0417164300"]


def _luhn_reference(number: str) -> bool:
    # Textbook formulation: double every second digit from the right, sum the digits.
    digits = [int(c) for c in number]
    checksum = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = sum(int(c) for c in str(2 * d))
        checksum += d
    return checksum % 10 == 0


def test_luhn_matches_reference_on_random_numbers():
    rng = random.Random(7)
    for _ in range(2000):
        n = "".join(rng.choice("0123456789") for _ in range(rng.randint(12, 19)))
        assert luhn_valid(n) == _luhn_reference(n), n
    assert all(luhn_valid(c) for c in CARDS)


def test_iban_check_digits():
    assert all(iban_valid(i) for i in IBANS)
    rng = random.Random(3)
    for iban in IBANS:
        for _ in range(20):
            pos = rng.randrange(4, len(iban))
            ch = iban[pos]
            repl = rng.choice([c for c in "0123456789" if c != ch]) if ch.isdigit() else "Q"
            mutated = iban[:pos] + repl + iban[pos + 1 :]
            if mutated != iban:
                assert not iban_valid(mutated), mutated  # mod 97 catches every single substitution


@pytest.mark.parametrize("card", CARDS)
@pytest.mark.parametrize("sep", ["", " ", "-"])
def test_cards_redacted_with_separators(card, sep):
    grouped = sep.join(card[i : i + 4] for i in range(0, len(card), 4))
    assert Redactor()(f"pay with {grouped} today") == "pay with [CARD] today"


def test_non_luhn_digit_runs_survive():
    r = Redactor(builtins=("card",))
    assert r("order 4111111111111112 ok") == "order 4111111111111112 ok"


@pytest.mark.parametrize("iban", IBANS)
def test_ibans_redacted_plain_and_grouped(iban):
    grouped = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    r = Redactor()
    assert r(f"to {iban}.") == "to [IBAN]."
    assert r(f"to {grouped}.") == "to [IBAN]."


@pytest.mark.parametrize(
    "text",
    ["Reach me at jane.doe@example.com", "x: a+b@mail.co.uk", "first_last@sub.example.org!"],
)
def test_emails(text):
    out = Redactor()(text)
    assert "[EMAIL]" in out and "@" not in out


@pytest.mark.parametrize("phone", ["+1 (415) 555-2671", "+44 20 7946 0958", "020 7946 0958", "415.555.2671", "+4915123456789"])
def test_phones(phone):
    assert Redactor()(f"call {phone} now") == "call [PHONE] now"


@pytest.mark.parametrize(
    "text",
    ["released 2024-05-01", "version 1.2.3", "order 123456", "it costs 1 250 EUR", "port 8080"],
)
def test_not_phones(text):
    assert Redactor()(text) == text


def test_user_rules_in_order():
    r = Redactor(builtins=(), extra=[re.compile(r"\bACME-\d+\b"), (r"tok_[a-z]+", "<tok>"), str.upper])
    assert r("ACME-42 uses tok_abc") == "[REDACTED] USES <TOK>"


def test_unknown_builtin_and_bad_rule():
    with pytest.raises(ValueError, match="unknown built-in"):
        Redactor(builtins=("ssn",))
    with pytest.raises(TypeError):
        Redactor(extra=[42])  # type: ignore[list-item]
    assert list(BUILTIN_RULES) == ["email", "iban", "card", "phone"]


def test_text_none_keeps_lengths_and_hashes():
    import hashlib

    ev = {"request_id": "r", "prompt": "héllo", "response": "ok", "context": ["a", "bc"], "latency_ms": 1}
    TextPolicy(mode="none").apply(ev)
    assert "prompt" not in ev and "response" not in ev and "context" not in ev
    assert ev["text_meta"]["prompt"] == {"chars": 5, "sha256": hashlib.sha256("héllo".encode()).hexdigest()}
    assert [m["chars"] for m in ev["text_meta"]["context"]] == [1, 2]
    assert "embeddings" not in ev
    assert ev["latency_ms"] == 1


def test_text_none_hashes_redacted_text_and_embeds():
    import hashlib

    ev = {"request_id": "r", "prompt": "mail bob@x.io"}
    TextPolicy(mode="none", redactor=Redactor(), embed=lambda s: [len(s)]).apply(ev)
    assert ev["text_meta"]["prompt"]["sha256"] == hashlib.sha256(b"mail [EMAIL]").hexdigest()
    assert ev["embeddings"] == {"prompt": [12.0]}


def test_sampling_is_deterministic_and_near_the_rate():
    p = TextPolicy(sample_rate=0.3)
    ids = [f"req-{i}" for i in range(20_000)]
    kept = [p.keeps_text(i) for i in ids]
    assert kept == [p.keeps_text(i) for i in ids]
    share = sum(kept) / len(kept)
    # Binomial sd at n=20000, p=0.3 is 0.0032; 5 sd.
    assert abs(share - 0.3) < 0.016
    assert not TextPolicy(sample_rate=0.0).keeps_text("x")
    assert TextPolicy(sample_rate=1.0).keeps_text("x")


def test_full_mode_redacts_fields_in_place():
    ev = {"request_id": "r", "prompt": "card 4111 1111 1111 1111", "context": ["iban DE89370400440532013000"], "comment": None}
    TextPolicy(redactor=Redactor()).apply(ev)
    assert ev["prompt"] == "card [CARD]" and ev["context"] == ["iban [IBAN]"]


def test_policy_validation():
    with pytest.raises(ValueError, match="mode"):
        TextPolicy(mode="some")
    with pytest.raises(ValueError, match="text_sample_rate"):
        TextPolicy(sample_rate=1.5)


def test_no_text_mode_leaves_out_the_reference_and_redacts_the_short_fields() -> None:
    # the reference answer is free text like the comment: sent as its length and hash in
    # mode "none"; a label or error type is kept in any mode, and redacted
    fb = {"request_id": "r1", "comment": "see ref", "label": "escalate jane@example.com",
          "reference": "Corrected answer for jane@example.com, card 4111 1111 1111 1111"}
    TextPolicy(mode="none", redactor=Redactor()).apply(fb)
    assert "reference" not in fb and set(fb["text_meta"]) == {"comment", "reference"}
    assert fb["label"] == "escalate [EMAIL]"
    inf = {"request_id": "r2", "error_type": "SMTPRecipientRefused: jane@example.com"}
    TextPolicy(redactor=Redactor()).apply(inf)
    assert inf["error_type"] == "SMTPRecipientRefused: [EMAIL]"
    untouched = {"request_id": "r3", "label": "jane@example.com"}
    TextPolicy(mode="none").apply(untouched)  # no redactor: short fields are kept as sent
    assert untouched["label"] == "jane@example.com"
