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
  dates, ages, street numbers taken for phone numbers or cards).

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


def run(data: str | Path) -> dict[str, Any]:
    from llmpulse.redact import Redactor

    templates, people = load(data)
    default = Redactor()
    hinted: dict[str, Redactor] = {}
    ways: dict[str, tuple[Callable[[dict[str, str]], str], Callable[[dict[str, str]], Redactor]]] = {
        "national, default regions": (lambda p: p["TelephoneNumber"], lambda p: default),
        "national, the person's country as region": (
            lambda p: p["TelephoneNumber"],
            lambda p: hinted.setdefault(p["Country"], Redactor(regions=(p["Country"],)))),
        "international": (international, lambda p: default),
    }
    result: dict[str, Any] = {"benchmark": "redact_presidio", "templates": len(templates),
                              "people": len(people), "phones": {}}
    emails = [0, 0]
    untouched = [0, 0]
    damaged: list[str] = []
    for way, (phone, redactor_of) in ways.items():
        phones: list[int] = [0, 0]
        leaks: list[str] = []
        for template, person, has_pii in _cases(templates, people):
            text, put = fill(template, person, phone)
            out = redactor_of(person)(text)
            if not has_pii:
                if way == "national, default regions":
                    untouched[0] += out == text
                    untouched[1] += 1
                    if out != text and len(damaged) < 10:
                        damaged.append(f"{text!r} -> {out!r}")
                continue
            for value in put:
                gone = value not in out
                if "@" in value:
                    if way == "national, default regions":
                        emails[0] += gone
                        emails[1] += 1
                else:
                    phones[0] += gone
                    phones[1] += 1
                    if not gone and len(leaks) < 5:
                        leaks.append(f"{person['Country']}: {value}")
        result["phones"][way] = {"removed": phones[0], "of": phones[1],
                                 "share": phones[0] / phones[1] if phones[1] else None,
                                 "leaks": leaks}
    result["emails"] = {"removed": emails[0], "of": emails[1],
                        "share": emails[0] / emails[1] if emails[1] else None}
    result["look_alikes"] = {"untouched": untouched[0], "of": untouched[1],
                             "share": untouched[0] / untouched[1] if untouched[1] else None,
                             "damaged": damaged}
    return result


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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--data", required=True, help="presidio_evaluator/data_generator/raw_data")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    return finish(run(a.data), format_table, a.json)


if __name__ == "__main__":
    sys.exit(main())
