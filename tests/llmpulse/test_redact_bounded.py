"""The redactor's work per text is bounded, and the bound never lets anything through.

The shim redacts on the application's thread; a text built to be slow to check
(a quarter of a megabyte of digit groups, or of address-shaped strings) took
seconds there. The e-mail and phone checks now have a budget per text, and what
does not fit in it is redacted unchecked. These tests count the work the real
libraries are handed (``phonenumbers.PhoneNumberMatcher``,
``email_validator.validate_email``, wrapped, not replaced) and compare with the
unbounded redactor: every span it removes, the bounded one removes too, and on
ordinary texts the two agree exactly.
"""

from __future__ import annotations

import logging

import email_validator
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmpulse import pii
from llmpulse.bench.redact import DATA_HELDOUT2, PROMPTS, RESPONSES, load_cases
from llmpulse.bench.redact_hostile import FAMILIES, covered, family
from llmpulse.events import EventError
from llmpulse.pii import EMAIL_BUDGET, PHONE_BUDGET, PhoneFinder, find_emails, merge_spans
from llmpulse.redact import Redactor, TextPolicy, find_spans

BOUNDED, UNBOUNDED = Redactor(), Redactor(bounded=False)
HOSTILE = [n for n in FAMILIES if n != "ordinary prompt"]


@pytest.fixture
def matcher_chars(monkeypatch):
    """Characters handed to libphonenumber's matcher, summed over its passes."""
    seen = [0]
    real = phonenumbers.PhoneNumberMatcher

    def counting(text, *args, **kwargs):
        seen[0] += len(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(phonenumbers, "PhoneNumberMatcher", counting)
    pii.clear_caches()  # a remembered piece would not reach the matcher
    yield seen
    pii.clear_caches()


@pytest.fixture
def validations(monkeypatch):
    seen = [0]
    real = email_validator.validate_email

    def counting(*args, **kwargs):
        seen[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(email_validator, "validate_email", counting)
    yield seen


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_text_loses_nothing_to_the_budget(name):
    text = family(name, 6000)
    bounded, unbounded = find_spans(text, BOUNDED._finders), find_spans(text, UNBOUNDED._finders)
    assert covered(bounded, unbounded), name


@pytest.mark.parametrize("name", ["distinct national numbers", "distinct addresses", "percent-escaped addresses"])
def test_families_of_real_data_hold_more_than_the_budget_checks(name):
    text = family(name, 64 * 1024)
    unbounded = find_spans(text, UNBOUNDED._finders)
    assert len(unbounded) > 1000
    assert covered(find_spans(text, BOUNDED._finders), unbounded)


@pytest.mark.parametrize("name", ["digit groups", "hyphenated digits", "card-shaped groups",
                                  "distinct national numbers", "full-width digits"])
def test_the_phone_matcher_reads_no_more_than_its_budget(name, matcher_chars):
    text = family(name, 64 * 1024)
    PhoneFinder(budget=PHONE_BUDGET)(text)
    assert matcher_chars[0] <= PHONE_BUDGET
    PhoneFinder(budget=None)(text[:1000])
    assert matcher_chars[0] > 1000, "the count should see the matcher's work"


def test_over_the_budget_every_long_digit_run_goes():
    text = "1234 " * 20_000  # one digit run, 100,000 characters
    assert Redactor(builtins=("phone",))(text) == "[PHONE] "
    # seven-digit item numbers: identifiers while checked, redacted once the budget is spent
    lines = Redactor(builtins=("phone",))("".join(f"item {i:07d}\n" for i in range(5000))).splitlines()
    first = next(i for i, line in enumerate(lines) if line == "item [PHONE]")
    assert first > 0 and lines[first - 1] == f"item {first - 1:07d}"
    assert lines[first:] == ["item [PHONE]"] * (5000 - first)


def test_within_the_budget_bounded_and_unbounded_agree_on_ordinary_texts():
    texts = [c["text"] for c in load_cases() + load_cases(DATA_HELDOUT2)] + list(PROMPTS) + list(RESPONSES)
    texts.append(family("ordinary prompt", 2000))
    assert [BOUNDED(t) for t in texts] == [UNBOUNDED(t) for t in texts]


def test_the_email_checks_stop_at_the_budget_and_redact_the_rest(validations):
    text = " ".join(f"u{i}@ex{i}.com" for i in range(2 * EMAIL_BUDGET))
    spans = find_emails(text)
    assert validations[0] == EMAIL_BUDGET
    assert len(spans) == 2 * EMAIL_BUDGET
    assert Redactor(builtins=("email",), disguises=False)(text) == " ".join(["[EMAIL]"] * 2 * EMAIL_BUDGET)
    validations[0] = 0
    assert find_emails(text, budget=None) == spans  # every one of them was an address
    assert validations[0] == 2 * EMAIL_BUDGET


def test_unchecked_candidates_are_over_redacted_not_kept():
    text = "lodash@4.17.21 and jane@example.com"
    assert find_emails(text) == [(19, 35)]
    assert find_emails(text, budget=0) == [(0, 14), (19, 35)]


def test_a_budget_exceeded_is_logged_at_most_once_a_minute(caplog, monkeypatch):
    monkeypatch.setattr(pii, "_warned_at", [-1e9])
    with caplog.at_level(logging.WARNING, logger="llmpulse.pii"):
        PhoneFinder(budget=10)("call 0171 1234567 or 0171 7654321 or 030 1234567")
        PhoneFinder(budget=10)("call 0171 1234567 or 0171 7654321 or 030 1234567")
    records = [r for r in caplog.records if "exceeds its budget" in r.getMessage()]
    assert len(records) == 1 and "phone finder" in records[0].getMessage()


@pytest.mark.parametrize("bad", [-1, 1.5, "100", True])
def test_a_bad_budget_is_refused(bad):
    with pytest.raises(ValueError, match="budget"):
        PhoneFinder(budget=bad)


def test_the_ip_address_check_reads_a_bounded_neighbourhood():
    assert pii._in_ip_address("host 10.0.0.5:5432 ok", 5, 13)
    assert pii._in_ip_address("at 2001:db8::ff00:42:8329 now", 3, 12)
    # inside a token longer than any address: no address, decided without reading it all
    assert not pii._in_ip_address("0." * 100_000 + "1", 100_000, 100_010)


_spans = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 12)).map(lambda t: (t[0], t[0] + t[1])), max_size=12)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_spans, min_size=1, max_size=4))
def test_merged_spans_cover_every_finding_without_overlap(groups):
    labelled = [(f"[K{k}]", spans) for k, spans in enumerate(groups)]
    merged = merge_spans(labelled)
    assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(merged, merged[1:], strict=False))
    assert covered(merged, [(a, b, "") for _, spans in labelled for a, b in spans])
    for a, b, label in merged:  # labelled by the earliest group among the findings it joins
        inside = [k for k, (_, spans) in enumerate(labelled) for x, y in spans if a <= x and y <= b]
        assert label == f"[K{min(inside)}]"


# -- one budget per event, per span ---------------------------------------------------


def _hostile_event(passages: int = 60) -> dict:
    return {"request_id": "r1", "prompt": family("distinct national numbers", 3000, seed=1),
            "context": [family("distinct national numbers", 3000, seed=s) for s in range(2, passages + 2)]}


def test_an_events_texts_share_one_budget(matcher_chars):
    ev = _hostile_event()
    raw = [ev["prompt"], *ev["context"]]
    TextPolicy(redactor=Redactor()).apply(ev)
    assert matcher_chars[0] <= PHONE_BUDGET
    # every number of the generator ("ruf 0171 NNNNNNN", valid German mobiles) is gone,
    # checked or not
    assert all("0171 " not in text for text in [ev["prompt"], *ev["context"]])
    # each text alone would have spent a budget of its own
    matcher_chars[0] = 0
    for text in raw[:8]:
        Redactor()(text)
    assert matcher_chars[0] > PHONE_BUDGET


def test_the_generated_numbers_are_phone_numbers_to_the_unbounded_redactor():
    text = family("distinct national numbers", 3000, seed=3)
    assert "0171 " in text and "0171 " not in UNBOUNDED(text)


def test_an_event_too_long_to_redact_is_refused_before_any_work(matcher_chars):
    ev = {"request_id": "r1", "prompt": "call 0171 1234567", "context": ["x" * 200_000] * 5 + ["0171 7654321"]}
    with pytest.raises(EventError, match="over the 1000000"):
        TextPolicy(redactor=Redactor()).apply(ev)
    assert matcher_chars[0] == 0 and ev["prompt"] == "call 0171 1234567"
    TextPolicy(redactor=Redactor(), max_redacted_chars=2_000_000).apply(ev)
    assert ev["prompt"] == "call [PHONE]" and ev["context"][-1] == "[PHONE]"
    small = {"request_id": "r2", "prompt": "x" * 2_000_000}
    TextPolicy().apply(small)  # without a redactor nothing is redacted, so nothing is refused
    assert len(small["prompt"]) == 2_000_000


def test_the_shim_drops_only_the_event_too_long_to_redact(tmp_path):
    from llmpulse.monitor import Monitor

    mon = Monitor(app="a", bootstrap="127.0.0.1:9", model="m", model_version="1", redact=True,
                  journal_dir=tmp_path / "j", strict=False)
    mon.inference(request_id="big", prompt="x" * 250_000, context=["y" * 250_000] * 4, latency_ms=5.0,
                  input_tokens=1, output_tokens=1, status="ok")
    mon.inference(request_id="ok", prompt="mail jane.doe@example.com", latency_ms=5.0,
                  input_tokens=1, output_tokens=1, status="ok")
    assert mon.stats()["invalid"] == 1
    mon.close(timeout=0)
    strict = Monitor(app="a", bootstrap="127.0.0.1:9", model="m", model_version="1", redact=True, strict=True)
    try:
        with pytest.raises(EventError, match="redacted per event"):
            strict.inference(prompt="x" * 250_000, context=["y" * 250_000] * 4, latency_ms=5.0,
                             input_tokens=1, output_tokens=1, status="ok")
    finally:
        strict.close(timeout=0)


def test_a_spans_texts_share_one_budget_at_the_receiver(matcher_chars):
    from llmpulse.streams.otlp_redact import redact_span, redactor

    row = {"name": "call", "attributes": {f"a{i}": family("distinct national numbers", 3000, seed=i)
                                          for i in range(40)}}
    ev = _hostile_event(passages=10)
    redact_span(row, ev, redactor(()))
    assert matcher_chars[0] <= PHONE_BUDGET
    assert all("0171 " not in v for v in row["attributes"].values())
    assert all("0171 " not in v for v in [ev["prompt"], *ev["context"]])


def test_a_shared_budget_counts_what_each_finder_spent():
    from llmpulse import pii

    with pii.shared_budget():
        find_emails("mail https://x.io/r?email=jane@example.com and bob@corp.io, or a@b")
        assert pii._SPENT.get() == {"email": 3}  # one check per candidate, links included
        PhoneFinder(budget=10**6)("call 0171 1234567 now")
        spent = dict(pii._SPENT.get() or {})
    assert spent["email"] == 3 and spent["phone"] > 0
    assert pii._SPENT.get() is None  # the block is closed
    with pii.shared_budget():
        find_emails(" ".join(f"u{i}@ex{i}.com" for i in range(EMAIL_BUDGET - 1)))
        assert find_emails("a@b.co c@d.co") == [(0, 6), (7, 13)]  # one checked, one not
        assert pii._SPENT.get() == {"email": EMAIL_BUDGET}
