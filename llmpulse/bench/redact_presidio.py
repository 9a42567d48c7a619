"""PII redaction on texts nobody here wrote: Presidio's evaluation templates.

Microsoft's ``presidio-evaluator`` package (MIT licence, on PyPI) ships sentence
templates (``templates.txt``: support requests, signatures, forms) and 3,000
fake people from FakeNameGenerator (``FakeNameGenerator.com_3000.csv``: e-mail
addresses, telephone numbers in their country's national notation with the
country code apart, zip codes, birthdays, street addresses, from about 40
countries). Neither was written or seen by the redactor's authors; nothing in
the redactor was tuned on them.

Each template with an ``{{email}}`` or ``{{phone_number}}`` slot is filled with
the next person's values; every other slot with that person's zip code,
birthday, age, street address, city, country, company or domain (so the
look-alikes are someone else's numbers too). Figures:

* e-mail addresses removed (``EmailAddress``);
* telephone numbers removed, written three ways: as the CSV has them
  (national notation) with the default regions, the same with the person's
  country as the region (what ``Redactor(regions=...)`` is for), and
  international (``+<code> <number without its trunk 0>``);
* templates without an e-mail or phone slot that come out changed (zip codes,
  dates, ages, street numbers taken for phone numbers or cards);
* the same for the trivial baseline, the regular-expression redactor llmpulse
  shipped first (:mod:`llmpulse.bench.redact_baseline`).

Cards and IBANs are not scored: the CSV's card numbers were rounded by a
spreadsheet (``5.54563E+15``), and the templates' IBANs come from a generator.

    pip download --no-deps presidio-evaluator==0.3.2 && unzip presidio_evaluator-*.whl
    python -m llmpulse.bench.redact_presidio --data presidio_evaluator/data_generator/raw_data
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmpulse.bench._stack import finish

__all__ = ["fill", "load", "run"]

_PII_SLOTS = ("email", "phone_number")


def load(data: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The templates (one per line, ``\\n`` written as two characters) and the people."""
    d = Path(data)
    templates = [t.replace("\\n", "\n") for t in
                 (d / "templates.txt").read_text(encoding="utf-8", errors="replace").splitlines()
                 if t.strip()]
    with (d / "FakeNameGenerator.com_3000.csv").open(encoding="utf-8-sig", newline="") as f:
        people = list(csv.DictReader(f))
    return templates, people


def _slots(template: str) -> list[str]:
    out, i = [], template.find("{{")
    while i != -1:
        j = template.find("}}", i)
        if j == -1:
            break
        out.append(template[i + 2:j])
        i = template.find("{{", j)
    return out


def international(person: dict[str, str]) -> str:
    """``+<code> <national number without a leading trunk 0>``.

    >>> international({"TelephoneCountryCode": "41", "TelephoneNumber": "061 947 83 90"})
    '+41 61 947 83 90'
    """
    national = person["TelephoneNumber"].strip()
    return f"+{person['TelephoneCountryCode']} {national[1:] if national.startswith('0') else national}"


def fill(template: str, person: dict[str, str], phone: Callable[[dict[str, str]], str]
         ) -> tuple[str, list[str]]:
    """``template`` filled from ``person``; and the PII values put in it.

    >>> p = {"EmailAddress": "a@b.io", "TelephoneNumber": "0123", "TelephoneCountryCode": "1",
    ...      "ZipCode": "9", "Birthday": "1/2/1990", "Age": "3", "StreetAddress": "4 Elm St",
    ...      "City": "X", "CountryFull": "Y", "Company": "Z", "Domain": "d.io",
    ...      "GivenName": "Ann", "Surname": "Lee", "Occupation": "cook"}
    >>> fill("Mail {{email}}, zip {{postcode}}, {{first_name}}", p, lambda q: q["TelephoneNumber"])
    ('Mail a@b.io, zip 9, Ann', ['a@b.io'])
    """
    values = {
        "email": person["EmailAddress"], "phone_number": phone(person),
        "postcode": person["ZipCode"], "zipcode": person["ZipCode"],
        "date_of_birth": person["Birthday"], "date_time": person["Birthday"],
        "year": person["Birthday"].rsplit("/", 1)[-1], "age": person["Age"],
        "address": f"{person['StreetAddress']}, {person['City']}",
        "street_name": person["StreetAddress"], "building_number":
            person["StreetAddress"].split(" ")[0], "city": person["City"],
        "country": person["CountryFull"], "organization": person["Company"],
        "url": "https://" + person["Domain"], "job": person["Occupation"],
    }
    name = f"{person['GivenName']} {person['Surname']}"
    put: list[str] = []
    out = template
    for slot in _slots(template):
        if slot in ("email", "phone_number"):
            put.append(values[slot])
        value = values.get(slot) or (person["GivenName"] if "first_name" in slot else
                                     person["Surname"] if "last_name" in slot else name)
        out = out.replace("{{" + slot + "}}", value, 1)
    return out, put


def _cases(templates: list[str], people: list[dict[str, str]]
           ) -> Iterator[tuple[str, dict[str, str], bool]]:
    """(template, person, has a PII slot): every template, with people in turn; the
    templates with PII slots once per person up to the number of people."""
    with_pii = [t for t in templates if any(s in _slots(t) for s in _PII_SLOTS)]
    without = [t for t in templates if t not in with_pii]
    for k, person in enumerate(people):
        yield with_pii[k % len(with_pii)], person, True
    for k, t in enumerate(without):
        yield t, people[k % len(people)], False


def _share(k: int, n: int) -> dict[str, Any]:
    return {"removed": k, "of": n, "share": k / n if n else None}


def _score(templates: list[str], people: list[dict[str, str]],
           phone: Callable[[dict[str, str]], str],
           redactor_of: Callable[[dict[str, str]], Callable[[str], str]]) -> dict[str, Any]:
    """E-mails and phones removed, and look-alike templates untouched, with phones
    written by ``phone`` and each person's text redacted by ``redactor_of(person)``."""
    emails, phones, untouched = [0, 0], [0, 0], [0, 0]
    leaks: list[str] = []
    damaged: list[str] = []
    for template, person, has_pii in _cases(templates, people):
        text, put = fill(template, person, phone)
        out = redactor_of(person)(text)
        if not has_pii:
            untouched[0] += out == text
            untouched[1] += 1
            if out != text and len(damaged) < 10:
                damaged.append(f"{text!r} -> {out!r}")
            continue
        for value in put:
            count = emails if "@" in value else phones
            count[0] += value not in out
            count[1] += 1
            if "@" not in value and value in out and len(leaks) < 5:
                leaks.append(f"{person['Country']}: {value}")
    return {"emails": _share(*emails), "phones": {**_share(*phones), "leaks": leaks},
            "look_alikes": {"untouched": untouched[0], "of": untouched[1],
                            "share": untouched[0] / untouched[1] if untouched[1] else None,
                            "damaged": damaged}}


def run(data: str | Path) -> dict[str, Any]:
    from llmpulse.bench.redact_baseline import baseline_redact
    from llmpulse.redact import Redactor

    templates, people = load(data)
    default = Redactor()
    hinted: dict[str, Redactor] = {}

    def national(p: dict[str, str]) -> str:
        return p["TelephoneNumber"]

    def regional(p: dict[str, str]) -> Redactor:
        return hinted.setdefault(p["Country"], Redactor(regions=(p["Country"],)))

    ways: dict[str, tuple[Callable[[dict[str, str]], str],
                          Callable[[dict[str, str]], Callable[[str], str]]]] = {
        "national, default regions": (national, lambda p: default),
        "national, the person's country as region": (national, regional),
        "international": (international, lambda p: default),
    }
    scored = {way: _score(templates, people, phone, of) for way, (phone, of) in ways.items()}
    first = scored["national, default regions"]
    # the trivial baseline: the regular-expression redactor llmpulse shipped first
    base = {way: _score(templates, people, phone, lambda p: baseline_redact)
            for way, phone in (("national", national), ("international", international))}
    return {
        "benchmark": "redact_presidio", "templates": len(templates), "people": len(people),
        "emails": first["emails"], "look_alikes": first["look_alikes"],
        "phones": {way: r["phones"] for way, r in scored.items()},
        "baseline": {"emails": base["national"]["emails"],
                     "look_alikes": base["national"]["look_alikes"],
                     "phones": {way: r["phones"] for way, r in base.items()}},
    }


def format_table(r: dict[str, Any]) -> str:
    lines = [f"redaction on Presidio's templates and FakeNameGenerator people "
             f"({r['templates']} templates, {r['people']} people)",
             f"  e-mail addresses removed: {r['emails']['removed']}/{r['emails']['of']} "
             f"({100 * r['emails']['share']:.1f} %)"]
    for way, p in r["phones"].items():
        lines.append(f"  phones removed, {way}: {p['removed']}/{p['of']} ({100 * p['share']:.1f} %)"
                     + (f"; e.g. {', '.join(p['leaks'][:3])}" if p["leaks"] else ""))
    la = r["look_alikes"]
    lines.append(f"  templates without e-mail or phone left untouched: {la['untouched']}/{la['of']} "
                 f"({100 * la['share']:.1f} %)")
    lines += [f"    changed: {d}" for d in la["damaged"][:5]]
    b = r["baseline"]
    lines.append(f"  baseline (the regular-expression redactor shipped first): e-mails "
                 f"{100 * b['emails']['share']:.1f} %, " + ", ".join(
                     f"phones {way} {100 * p['share']:.1f} %" for way, p in b["phones"].items())
                 + f", look-alike templates untouched {100 * b['look_alikes']['share']:.1f} %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", required=True, help="presidio_evaluator/data_generator/raw_data")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    return finish(run(a.data), format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
