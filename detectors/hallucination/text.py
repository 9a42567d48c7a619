"""Sentences, content words and *specifics* of a text, normalised for comparison.

A hallucinated answer usually copies its context and changes one detail: a
number, an amount, a date, a name, a condition ("at least" for "at most") or
a negation. So the groundedness scorer does not compare texts as bags of
words only: it pulls out those details as :class:`Specific` values with a
canonical key, so that "30", "thirty" and "30.0" are the same number,
"$1,200" and "1200 dollars" the same amount, "two weeks" and "14 days" the
same duration, and "2024-03-05", "March 5, 2024" and "5th of March 2024" the
same date.

What is extracted, and the canonical key of each kind:

* ``money``: value and currency (``$ € £``, ISO codes, "dollars", "cents");
* ``percent``: value;
* ``duration``: value in hours (a month counts 30 days, a year 365), so a
  swapped unit ("14 days" -> "14 weeks") changes the key;
* ``date``: (year, month, day), any part may be unknown; ``weekday``;
  ``time`` (minutes after midnight; "5 pm" = "17:00");
* ``period``: how often ("monthly" = "per month" = "every month");
* ``number``: any other number, numerals or words ("twenty-five");
* ``code``: version-like strings ("3.2.1");
* ``entity``: capitalised names and acronyms not at the start of a sentence
  (or several capitalised words in a row), lower-cased.

Negation cues and condition words ("only", "unless", "at least", "within",
"before" ...) are returned per clause by :func:`negated` and
:func:`conditions`, each condition mapped to one class so that paraphrases
agree ("no later than" and "within" are both ``deadline``).

>>> [s.key for s in specifics("Refunds of up to $1,200 take ten business days.")]
[('money', 1200.0, 'USD'), ('duration', 240.0)]
>>> [s.key for s in specifics("Book before 5 March 2024 at 5 pm with Dr. Okafor.")]
[('date', 2024, 3, 5), ('time', 1020), ('entity', 'dr okafor')]
>>> conditions("Refunds take no later than 14 days, unless the item is damaged.")
['deadline', 'unless']
>>> negated("Gift cards can't be refunded."), negated("Gift cards can be refunded.")
(True, False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "Specific",
    "antonyms",
    "clauses",
    "conditions",
    "content_stems",
    "negated",
    "normalise",
    "refusal",
    "sentences",
    "specifics",
    "stem",
    "supports",
]

# -- normalisation ----------------------------------------------------------

_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": " - ",
        "\u00a0": " ",
        "\u202f": " ",
    }
)


def normalise(text: str) -> str:
    """Typographic quotes, dashes and non-breaking spaces made plain.

    >>> normalise("It\u2019s \u201cfree\u201d\u00a0\u2013 today")
    'It\\'s "free" - today'
    """
    return text.translate(_TRANSLATE)


_SMALL = {
    w: i
    for i, w in enumerate(
        ["naught", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
    )
}
_TENS = {
    w: 10 * (i + 2)
    for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"])
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMWORD = "|".join(sorted([*_SMALL, *_TENS, *_SCALES, "dozen", "twice", "thrice"], key=len, reverse=True))
_NUMWORD_RUN = re.compile(
    rf"\b(?:{_NUMWORD})(?:(?:\s+and\s+|[\s-]+)(?:{_NUMWORD}))*\b", re.IGNORECASE
)
_UNIT_WORDS = (
    r"(?:business\s+|working\s+|calendar\s+)?(?:minute|min|hour|hr|day|night|week|month|"
    r"year|yr|quarter|fortnight|decade|century)"
)
# "a week", "an hour", "one month" are numbers only when a unit follows;
# elsewhere "one" is a pronoun ("one of our agents").
_ONE_UNIT = re.compile(rf"\b(?:one|a single)\s+(?={_UNIT_WORDS}s?\b)", re.IGNORECASE)
# After these words "a week" is a duration; elsewhere ("3% a year") it is a rate.
_A_UNIT = re.compile(
    rf"\b(within|for|than|about|around|over|under|least|most|past|last|next|first|after|takes?)\s+an?\s+(?={_UNIT_WORDS}s?\b)",
    re.IGNORECASE,
)


def _words_value(words: list[str]) -> int:
    total = current = 0
    for w in words:
        if w in _SMALL:
            current += _SMALL[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w in ("twice", "thrice"):
            current += 2 if w == "twice" else 3
        elif w == "dozen":
            current = max(current, 1) * 12
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w in _SCALES:
            total += max(current, 1) * _SCALES[w]
            current = 0
    return total + current


def _replace_numwords(match: re.Match[str]) -> str:
    words = [w for w in re.split(r"[\s-]+", match.group(0).lower()) if w and w != "and"]
    if words == ["one"]:
        return match.group(0)
    if all(w in _SCALES for w in words):
        # "1.2 million": a bare scale word multiplies the numeral before it.
        return match.group(0)
    return str(_words_value(words))


def _digits(text: str) -> str:
    text = _ONE_UNIT.sub("1 ", text)
    text = _A_UNIT.sub(lambda m: m.group(1) + " 1 ", text)
    return _NUMWORD_RUN.sub(_replace_numwords, text)


# -- sentences, clauses, words ----------------------------------------------

_ABBREV = re.compile(
    r"\b(Dr|Mr|Mrs|Ms|Prof|St|No|Inc|Ltd|Co|Corp|vs|etc|approx|incl|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.",
)
_INITIALISM = re.compile(r"\b(e\.g|i\.e|a\.m|p\.m|U\.S|U\.K)\.", re.IGNORECASE)
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9$€£])|\n+")
_DOT = "\x00"


@lru_cache(maxsize=4096)
def _sentences(text: str) -> tuple[str, ...]:
    protected = _ABBREV.sub(lambda m: m.group(1) + _DOT, normalise(text))
    protected = _INITIALISM.sub(lambda m: m.group(1).replace(".", _DOT) + _DOT, protected)
    parts = (p.strip().replace(_DOT, ".") for p in _SENT_END.split(protected))
    return tuple(p for p in parts if p)


def sentences(text: str) -> list[str]:
    """Sentences of ``text``; abbreviations ("Dr.", "e.g.", "p.m.") do not end one.

    >>> sentences("Call Dr. Lee before 5 p.m. on Friday. Fees apply! Is it free?")
    ['Call Dr. Lee before 5 p.m. on Friday.', 'Fees apply!', 'Is it free?']
    """
    return list(_sentences(text))


_CLAUSE_SPLIT = re.compile(
    r";|:\s|,\s+(?!\d{4}\b)|\s+-\s+|\b(?:but|while|whereas|although|though|however|so|because)\b",
    re.IGNORECASE,
)


def clauses(sentence: str) -> list[str]:
    """Clauses of one sentence, split at punctuation and contrast words.

    >>> clauses("Refunds are free, but gift cards are not refundable.")
    ['Refunds are free', 'gift cards are not refundable.']
    """
    parts = (p.strip() for p in _CLAUSE_SPLIT.split(sentence))
    return [p for p in parts if p]


# Letters and digits of any script, so non-English text is compared too.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
STOPWORDS = frozenset(
    ["a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "by", "for", "from", "with", "as", "is", "are", "was", "were", "be", "been", "being", "am", "it", "its", "this", "that", "these", "those", "there", "here", "their", "they", "them", "you", "your", "yours", "we", "our", "ours", "us", "i", "me", "my", "he", "she", "his", "her", "him", "do", "does", "did", "doing", "done", "have", "has", "had", "having", "will", "would", "shall", "should", "can", "could", "may", "might", "must", "also", "just", "than", "then", "so", "such", "into", "onto", "about", "over", "per", "via", "if", "when", "where", "which", "who", "whom", "whose", "what", "how", "why", "all", "any", "each", "every", "both", "either", "some", "more", "most", "other", "another", "same", "own", "very", "too", "again", "further", "once", "up", "down", "out", "off", "s", "t", "ll", "re", "ve", "d", "m", "get", "gets", "got", "getting", "please", "let", "lets", "want", "need", "needs", "needed", "make", "makes", "made", "use", "used", "using", "one", "ones", "us", "thing", "things", "way", "able"]
)
"""Function words ignored when comparing content (negations and conditions are
handled separately, so they are not in here)."""
_NEGATION_WORDS = frozenset(
    ["not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot", "can't", "won't", "don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "weren't", "shouldn't", "wouldn't", "couldn't", "mustn't", "hasn't", "haven't", "hadn't", "needn't", "ain't"]
)
_SUFFIXES = (
    "ations", "ation", "ments", "ment", "ness", "ings", "ing", "ities", "ity", "ied",
    "ies", "ers", "er", "ed", "es", "ly", "able", "ible", "al", "s",
)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A crude stem: common English suffixes stripped, then the first 6 letters.

    Good enough to match "refunded"/"refunds"/"refundable"; it never needs to
    be a real word, only to agree between answer and context.

    >>> stem("refundable"), stem("refunded"), stem("processing")
    ('refund', 'refund', 'proces')
    """
    w = word.lower().split("'")[0]
    for suf in _SUFFIXES:
        if len(w) - len(suf) >= 4 and w.endswith(suf):
            w = w[: -len(suf)]
            break
    return w[:6]


@lru_cache(maxsize=16384)
def _content(text: str) -> tuple[str, ...]:
    words = _WORD.findall(normalise(text).lower())
    return tuple(
        stem(w)
        for w in words
        if w not in STOPWORDS and w not in _NEGATION_WORDS and not w.isdigit()
    )


def content_stems(text: str) -> list[str]:
    """Stems of the content words of ``text`` (no function words, negations or numbers).

    >>> content_stems("The refunds were processed within 14 days.")
    ['refund', 'proces', 'within', 'days']
    """
    return list(_content(text))


# -- negation and conditions ------------------------------------------------

# Phrases that contain a negation word but state a bound, not a negation.
_NOT_NEGATION = re.compile(
    r"\b(?:no|not)\s+(?:later|earlier|more|less|fewer|sooner)\s+than\b|\bnot\s+only\b|\bno\s+matter\b"
    r"|\bno\s+(?:extra\s+)?(?:charge|cost)\b",
    re.IGNORECASE,
)
_NEG = re.compile(
    r"\b(?:not|no(?!-)|never|none|nobody|nothing|neither|nor|cannot|zero)\b|n't\b|\bnon-\w",
    re.IGNORECASE,
)


def negated(text: str) -> bool:
    """Whether ``text`` carries a negation cue.

    Bounds such as "no later than" are conditions, not negations, and
    "without" is left to the antonym check (it usually negates a noun, not
    the claim).

    >>> negated("No refunds are given."), negated("Refunds are given no later than May.")
    (True, False)
    >>> negated("It is free without a code.")
    False
    """
    return _NEG.search(_NOT_NEGATION.sub(" ", normalise(text))) is not None


_NUMERIC_AHEAD = r"(?=[\s-]*(?:[$€£]|\d|a\s|an\s|one\s|the\s+(?:first|next)))"
_CONDITION_PATTERNS: tuple[tuple[str, str], ...] = (
    ("at_least", r"at\s+least|a\s+minimum\s+of|minimum|or\s+more|or\s+older|or\s+above|and\s+(?:up|over|above)|no\s+(?:less|fewer)\s+than|not\s+(?:less|fewer)\s+than"),
    ("at_most", r"at\s+most|up\s+to|a\s+maximum\s+of|maximum|no\s+more\s+than|not\s+more\s+than|or\s+(?:less|younger|under)|not\s+exceed\w*"),
    ("more_than", rf"more\s+than|greater\s+than|larger\s+than|older\s+than|in\s+excess\s+of|exceed(?:s|ing)?|above|over{_NUMERIC_AHEAD}"),
    ("less_than", rf"less\s+than|fewer\s+than|smaller\s+than|younger\s+than|below|under{_NUMERIC_AHEAD}"),
    ("deadline", rf"within{_NUMERIC_AHEAD}|no\s+later\s+than|before|prior\s+to|by\s+the\s+end\s+of|ahead\s+of"),
    ("after", r"after|later\s+than|no\s+earlier\s+than|not\s+before"),
    ("only", r"only|solely|exclusively"),
    ("unless", r"unless|except|excluding|other\s+than|apart\s+from"),
    ("universal", r"all|always|any\s*time|regardless|everyone|everybody|everything|every(?!\s+(?:\d|day|week|month|year|night|hour|minute|quarter|other))"),
)
# "15 days after the invoice" names a reference point, not a bound.
_REFERENCE = re.compile(
    r"\b(minutes?|hours?|days?|weeks?|months?|years?)\s+(?:after|following)\b"
    r"|\b(?:after)(\s+\d+(?:\s+to\s+\d+)?\s+(?:working\s+|business\s+)?(?:minutes?|hours?|days?|weeks?|months?|years?))",
    re.IGNORECASE,
)
_CONDITION = re.compile(
    "|".join(rf"(?P<{name}>\b(?:{pat})\b)" for name, pat in _CONDITION_PATTERNS), re.IGNORECASE
)
COMPATIBLE: dict[str, str] = {"deadline": "at_most", "at_most": "deadline"}
"""Condition classes that back each other ("within 2 days" = "in 2 days or less")."""
OPPOSITE: dict[str, str] = {
    "at_least": "at_most",
    "at_most": "at_least",
    "more_than": "less_than",
    "less_than": "more_than",
    "deadline": "after",
    "after": "deadline",
    "only": "universal",
    "universal": "only",
}
"""Condition classes that contradict each other."""


@lru_cache(maxsize=16384)
def _conditions(text: str) -> tuple[str, ...]:
    found: list[str] = []
    plain = _REFERENCE.sub(lambda m: f"{m.group(1) or ''} since{m.group(2) or ''}", _digits(normalise(text)))
    for m in _CONDITION.finditer(plain):
        name = m.lastgroup or ""
        if name not in found:
            found.append(name)
    return tuple(found)


def conditions(text: str) -> list[str]:
    """Condition classes in ``text``, in order of first appearance.

    >>> conditions("Only premium members get at least 3 seats, except on trials.")
    ['only', 'at_least', 'unless']
    """
    return list(_conditions(text))


# -- specifics ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Specific:
    """One checkable detail of a text: ``kind``, surface ``text`` and a canonical ``key``.

    >>> specifics("about fifteen percent")[0]
    Specific(kind='percent', text='15 percent', key=('percent', 15.0))
    """

    kind: str
    text: str
    key: tuple[object, ...]


_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_MULT = r"(?:\s?(?:k|K|bn|million|thousand|billion|m)\b)?"
_MULTS = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6, "bn": 1e9, "billion": 1e9}
_CUR_SYMBOL = {"$": "USD", "€": "EUR", "£": "GBP"}
_CUR_WORD = {
    "dollar": "USD", "dollars": "USD", "usd": "USD", "euro": "EUR", "euros": "EUR",
    "eur": "EUR", "pound": "GBP", "pounds": "GBP", "gbp": "GBP", "chf": "CHF", "cad": "CAD",
    "aud": "AUD", "cent": "", "cents": "",
}
_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [("January", "Jan"), ("February", "Feb"), ("March", "Mar"), ("April", "Apr"), ("May",),
         ("June", "Jun"), ("July", "Jul"), ("August", "Aug"), ("September", "Sep", "Sept"),
         ("October", "Oct"), ("November", "Nov"), ("December", "Dec")]
    )
    for m in names
}
_MONTH = "(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_WEEKDAYS = {d: i for i, d in enumerate(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"])}
_ORD = r"(?:st|nd|rd|th)?"
_DURATION_HOURS = {
    "minute": 1 / 60, "min": 1 / 60, "hour": 1.0, "hr": 1.0, "day": 24.0, "night": 24.0,
    "week": 168.0, "fortnight": 336.0, "month": 720.0, "quarter": 2160.0, "year": 8760.0,
    "yr": 8760.0, "decade": 87600.0, "century": 876000.0,
}
_PERIODS = {
    "hourly": "hour", "daily": "day", "nightly": "day", "weekly": "week", "fortnightly": "fortnight",
    "monthly": "month", "quarterly": "quarter", "annually": "year", "annual": "year", "yearly": "year",
}

# Ordered: earlier patterns consume their text before later ones look at it.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("date_iso", re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")),
    ("date_slash", re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{2,4})\b")),
    ("date_mdy", re.compile(rf"\b({_MONTH})\s+(\d{{1,2}}){_ORD}\b(?:,?\s+(\d{{4}})\b)?")),
    ("date_dmy", re.compile(rf"\b(?:the\s+)?(\d{{1,2}}){_ORD}\s+(?:of\s+)?({_MONTH})(?:,?\s+(\d{{4}})\b)?")),
    ("date_my", re.compile(rf"\b({_MONTH})(?:\s+(\d{{4}}))?\b")),
    ("weekday", re.compile(r"\b(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)s?\b")),
    ("time_ampm", re.compile(r"\b(\d{1,2})(?:[:.](\d{2}))?\s*([ap])\.?\s?m\b\.?", re.IGNORECASE)),
    ("time_24", re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b")),
    ("time_word", re.compile(r"\b(noon|midday|midnight)\b", re.IGNORECASE)),
    ("time_day", re.compile(r"\b()(\d{1,2})(?:[:.](\d{2}))?\s*(?:o'clock\s*)?(in\s+the\s+morning|in\s+the\s+afternoon|in\s+the\s+evening|at\s+night)\b", re.IGNORECASE)),
    ("ident", re.compile(r"\b(?:[A-Za-z]+_[A-Za-z0-9_]+|[A-Z]+\d+[A-Z0-9]*|\d+[A-Z]{1,3}\d*)\b")),
    ("money_sym", re.compile(rf"([$€£])\s?({_NUM})({_MULT})")),
    ("money_pre", re.compile(rf"\b(USD|EUR|GBP|CHF|CAD|AUD)\s?({_NUM})({_MULT})")),
    ("money_post", re.compile(rf"\b({_NUM})({_MULT})\s?(dollars?|USD|euros?|EUR|pounds?|GBP|CHF|CAD|AUD|cents?)\b", re.IGNORECASE)),
    ("percent", re.compile(rf"\b({_NUM})\s?(%|percent\b|per\s+cent\b|pct\b)", re.IGNORECASE)),
    ("duration", re.compile(rf"\b({_NUM})[\s-]?(?:(?:business|working|calendar)[\s-]+)?(minute|min|hour|hr|day|night|week|fortnight|month|quarter|year|yr|decade|century)s?\b", re.IGNORECASE)),
    ("period_word", re.compile(r"\b(hourly|daily|nightly|weekly|fortnightly|monthly|quarterly|annually|annual|yearly)\b", re.IGNORECASE)),
    ("period_per", re.compile(r"\b(?:per|every|each)\s+(hour|day|night|week|fortnight|month|quarter|year)\b", re.IGNORECASE)),
    ("code", re.compile(r"\b\d+(?:\.\d+){2,}\b")),
    ("ordinal", re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)\b")),
    ("number", re.compile(rf"(?<![\w.])({_NUM})({_MULT}){_ORD}(?![\w])")),
)
_CAPWORD = re.compile(r"\b(?:[A-Z][a-z]+(?:[A-Z][a-z]*)*(?:[-'][A-Za-z]+)*\.?|[A-Z]{2,}[a-z]?s?|[A-Z]\.)(?=\W|$)")


def _num(text: str, mult: str = "") -> float:
    value = float(text.replace(",", ""))
    return value * _MULTS.get(mult.strip().lower(), 1.0) if mult.strip() else value


def _year(text: str | None) -> int | None:
    if not text:
        return None
    y = int(text)
    return y + 2000 if y < 100 else y


def _make(kind: str, m: re.Match[str]) -> Specific | None:
    g = m.groups()
    text = m.group(0).strip()
    if kind == "date_iso":
        return Specific("date", text, ("date", int(g[0]), int(g[1]), int(g[2])))
    if kind == "date_slash":
        a, b = int(g[0]), int(g[1])
        month, day = (b, a) if a > 12 else (a, b)
        return Specific("date", text, ("date", _year(g[2]), month, day))
    if kind == "date_mdy":
        return Specific("date", text, ("date", _year(g[2]), _MONTHS[g[0].rstrip(".")], int(g[1])))
    if kind == "date_dmy":
        return Specific("date", text, ("date", _year(g[2]), _MONTHS[g[1].rstrip(".")], int(g[0])))
    if kind == "date_my":
        if g[0] == "May" and g[1] is None and m.start() == 0:
            return None  # sentence-initial "May" is the verb, not the month
        return Specific("date", text, ("date", _year(g[1]), _MONTHS[g[0].rstrip(".")], None))
    if kind == "weekday":
        return Specific("weekday", text, ("weekday", _WEEKDAYS[g[0]]))
    if kind == "time_ampm":
        hour = int(g[0]) % 12 + (12 if g[2].lower() == "p" else 0)
        return Specific("time", text, ("time", hour * 60 + int(g[1] or 0)))
    if kind == "time_24":
        return Specific("time", text, ("time", int(g[0]) * 60 + int(g[1])))
    if kind == "time_day":
        hour = int(g[1]) % 12 + (0 if "morning" in g[3].lower() else 12)
        minute = int(g[2] or 0)
        return Specific("time", text, ("time", hour * 60 + minute))
    if kind == "ident":
        return Specific("code", text, ("code", text.upper()))
    if kind == "time_word":
        return Specific("time", text, ("time", 0 if g[0].lower() == "midnight" else 720))
    if kind == "money_sym":
        return Specific("money", text, ("money", _num(g[1], g[2]), _CUR_SYMBOL[g[0]]))
    if kind == "money_pre":
        return Specific("money", text, ("money", _num(g[1], g[2]), g[0].upper()))
    if kind == "money_post":
        cur = _CUR_WORD[g[2].lower()]
        value = _num(g[0], g[1]) / (100.0 if not cur else 1.0)
        return Specific("money", text, ("money", value, cur))
    if kind == "percent":
        return Specific("percent", text, ("percent", _num(g[0])))
    if kind == "duration":
        unit = g[1].lower()
        return Specific("duration", text, ("duration", round(_num(g[0]) * _DURATION_HOURS[unit], 6)))
    if kind == "period_word":
        return Specific("period", text, ("period", _PERIODS[g[0].lower()]))
    if kind == "period_per":
        unit = g[0].lower()
        return Specific("period", text, ("period", "day" if unit == "night" else unit))
    if kind == "ordinal":
        return Specific("ordinal", text, ("ordinal", int(g[0])))
    if kind == "code":
        return Specific("code", text, ("code", text))
    return Specific("number", text, ("number", _num(g[0], g[1])))


_LEADING = re.compile(r"^[\s\"'(\[*\-•]*")
_NOT_NAMES = frozenset(
    ["I", "A", "An", "The", "This", "That", "These", "Those", "It", "If", "When", "Our", "Your", "We", "You", "They", "He", "She", "There", "Here", "Please", "Note", "Yes", "No", "Also", "However", "Each", "Every", "All", "Any", "Some"]
)


@lru_cache(maxsize=16384)
def _specifics(sentence: str) -> tuple[Specific, ...]:
    text = _digits(normalise(sentence))
    found: list[tuple[int, Specific]] = []
    masked = text
    for kind, pattern in _PATTERNS:
        # each match is blanked out for the patterns after it: the pieces between
        # the matches, and spaces for the matches (what ``pattern.sub`` would give,
        # in the same scan)
        pieces: list[str] = []
        last = 0
        for m in pattern.finditer(masked):
            spec = _make(kind, m)
            if spec is not None:
                found.append((m.start(), spec))
            lo, hi = m.span()
            pieces += (masked[last:lo], " " * (hi - lo))
            last = hi
        if pieces:
            pieces.append(masked[last:])
            masked = "".join(pieces)
    start = len(_LEADING.match(masked).group(0))  # type: ignore[union-attr]
    run: list[str] = []
    run_start = -1
    last_end = -10

    def flush() -> None:
        if not run:
            return
        words = [re.sub(r"'s$", "", w.rstrip(".")) for w in run]
        initial = run_start <= start
        while initial and len(words) > 1 and words[0].lower() in STOPWORDS:
            words = words[1:]
        if initial and len(words) == 1 and not words[0].isupper():
            return  # a capital at the start of a sentence says nothing
        if initial and words[0] in _NOT_NAMES:
            words = words[1:]
        words = [w for w in words if w not in _NOT_NAMES or len(words) > 1]
        if words:
            name = " ".join(words).lower()
            found.append((run_start, Specific("entity", " ".join(run), ("entity", name))))

    for m in _CAPWORD.finditer(masked):
        # Names continue across single spaces only: "Dr. Ana Lima" but not "Lima, Porto".
        if run and masked[last_end:m.start()] == " " and not run[-1].endswith(":"):
            run.append(m.group(0))
        else:
            flush()
            run = [m.group(0)]
            run_start = m.start()
        last_end = m.end()
    flush()
    found.sort(key=lambda item: item[0])
    return tuple(spec for _, spec in found)


def specifics(sentence: str) -> list[Specific]:
    """The specifics of one sentence, in order of appearance.

    >>> [s.key for s in specifics("Pay 20% or EUR 45 monthly, from 2024-01-31 to 9:30.")]
    [('percent', 20.0), ('money', 45.0, 'EUR'), ('period', 'month'), ('date', 2024, 1, 31), ('time', 570)]
    >>> [s.key for s in specifics("Within two weeks, Acme Travel refunds twenty-five guests.")]
    [('duration', 336.0), ('entity', 'acme travel'), ('number', 25.0)]
    """
    return list(_specifics(sentence))


def supports(claim: Specific, evidence: Specific) -> bool:
    """Whether ``evidence`` (from the context) backs ``claim`` (from the answer).

    Same kind and key, with some slack: a date without a year matches any
    year, an amount without a currency any currency, and a plain number
    matches any specific carrying the same value ("30" backs "30 days").

    >>> d = specifics("March 5")[0]
    >>> supports(d, specifics("on 2024-03-05")[0]), supports(d, specifics("on 2024-03-06")[0])
    (True, False)
    >>> supports(specifics("30 of them")[0], specifics("30 days")[0])
    True
    """
    a, b = claim.key, evidence.key
    if a == b:
        return True
    if claim.kind == "entity" and evidence.kind == "entity":
        return set(str(a[1]).split()) <= set(str(b[1]).split())
    if claim.kind == "number":
        va, vb = _raw_value(claim), _raw_value(evidence)
        return va is not None and va == vb
    if claim.kind == "ordinal" and evidence.kind == "date":
        return b[3] == a[1]
    if claim.kind != evidence.kind:
        return False
    if claim.kind == "date":
        return all(x is None or y is None or x == y for x, y in zip(a[1:], b[1:], strict=True))
    if claim.kind == "money":
        return a[1] == b[1] and (not a[2] or not b[2])
    if claim.kind == "duration":
        # a month is 28 to 31 days: "12 months" backs "a year"
        return abs(float(a[1]) - float(b[1])) <= 0.03 * max(float(a[1]), float(b[1]))  # type: ignore[arg-type]
    return False


_LEADING_NUM = re.compile(_NUM)


def _raw_value(spec: Specific) -> float | None:
    """The bare number of a specific, for matching a plain number against it."""
    if spec.kind == "number":
        return float(spec.key[1])  # type: ignore[arg-type]
    if spec.kind in ("money", "percent"):
        return float(spec.key[1])  # type: ignore[arg-type]
    if spec.kind == "date" and spec.key[3] is not None:
        return float(spec.key[3])  # type: ignore[arg-type]
    m = _LEADING_NUM.search(spec.text)
    return _num(m.group(0)) if m and spec.kind == "duration" else None


_ANTONYMS: tuple[tuple[str, str], ...] = (
    ("open", "clos"), ("includ", "exclud"), ("cover", "exclud"), ("accept", "reject"),
    ("accept", "declin"), ("allow", "prohibit"), ("allow", "forbid"), ("requir", "option"),
    ("=with", "=without"), ("larg", "small"), ("great", "small"), ("great", "less"),
    ("high", "low"), ("=more", "=less"), ("=more", "=fewer"), ("earli", "later"),
    ("increas", "decreas"), ("maxim", "minim"), ("old", "young"), ("long", "short"),
    ("=free", "=paid"), ("paid", "unpaid"), ("=same", "=different"), ("=first", "=last"),
    ("=before", "=after"), ("enabl", "disabl"), ("public", "privat"), ("mandator", "option"),
    ("=full", "=partial"), ("weekday", "weekend"),
    ("morning", "evening"), ("debit", "credit"), ("deposit", "withdraw"), ("upgrad", "downgrad"),
    ("success", "fail"), ("=true", "=false"), ("auto", "manual"), ("online", "offline"),
    ("=in-person", "=online"),
)
_NEG_PREFIXES = ("un", "in", "im", "non", "non-", "dis", "ir", "il")


_POLE_PATTERNS: tuple[str, ...] = tuple(sorted({p for pair in _ANTONYMS for p in pair}))
_LONGEST_POLE = max(map(len, _POLE_PATTERNS))  # longer prefixes match no pattern


@lru_cache(maxsize=16384)
def _poles(words: frozenset[str]) -> frozenset[str]:
    """The antonym patterns a word set matches: ``=word`` exactly, others as a
    prefix of some word. Cached: context sentences are checked against many
    answer sentences, and this runs for every pair."""
    prefixes = {w[:k] for w in words for k in range(2, min(len(w), _LONGEST_POLE) + 1)}
    return frozenset(
        p for p in _POLE_PATTERNS if (p[1:] in words if p.startswith("=") else p in prefixes)
    )


@lru_cache(maxsize=16384)
def _negated_roots(words: frozenset[str]) -> frozenset[str]:
    """What the words are with a negating prefix taken off ("unused": "used")."""
    return frozenset(w[len(p):] for w in words for p in _NEG_PREFIXES if w.startswith(p))


def antonyms(claim: frozenset[str], evidence: frozenset[str]) -> list[tuple[str, str]]:
    """Word pairs where the claim says one pole and the evidence the other.

    ``claim`` and ``evidence`` are sets of lower-case words. Besides a small
    list of general opposites ("open"/"closed", "include"/"exclude",
    "larger"/"smaller", "with"/"without" ...), a word against its negated
    form ("used"/"unused", "available"/"unavailable") counts.

    >>> antonyms(frozenset("the clinic is open".split()), frozenset("the clinic is closed".split()))
    [('open', 'clos')]
    >>> antonyms(frozenset("even if used".split()), frozenset("only if unused".split()))
    [('used', 'unused')]
    """
    found: list[tuple[str, str]] = []
    pc, pe = _poles(claim), _poles(evidence)
    if not pc <= pe and not pe <= pc:  # a pole on each side the other side lacks
        for a, b in _ANTONYMS:
            for x, y in ((a, b), (b, a)):
                if x in pc and y in pe and y not in pc and x not in pe:
                    found.append((x.lstrip("="), y.lstrip("=")))
    roots = _negated_roots(evidence)
    for w in claim - evidence:
        if len(w) < 4 or (w not in roots and not w.startswith(_NEG_PREFIXES)):
            continue  # no evidence word is w negated, and w is no negated word
        for p in _NEG_PREFIXES:
            if (p + w in evidence and p + w not in claim) or (
                w.startswith(p) and len(w) - len(p) >= 4 and w[len(p):] in evidence
            ):
                found.append((w, p + w if p + w in evidence else w[len(p):]))
                break
    return found


_REFUSAL = re.compile(
    r"\b(?:i|we)(?:'m|\s+am|\s+are|\s+was)?\s+(?:can(?:no|')t|could(?:n't|\s+not)|do(?:n't|\s+not)|unable\s+to|not\s+able\s+to)"
    r"\s+(?:find|see|locate|know|answer|tell|determine|confirm|say|provide)\b"
    r"|\b(?:does(?:n't|\s+not)|do(?:n't|\s+not)|did(?:n't|\s+not))\s+(?:say|mention|specify|state|include|contain|cover)\s+(?:anything|whether|how|what|when|which|who|if)\b"
    r"|\b(?:is|are)(?:n't|\s+not)\s+(?:mentioned|stated|specified|described|covered|given|provided)\s+(?:in|by)\b"
    r"|\bno\s+(?:information|mention|details?)\s+(?:about|on|of|regarding)\b"
    r"|\bnot\s+enough\s+information\b",
    re.IGNORECASE,
)


def refusal(sentence: str) -> bool:
    """Whether ``sentence`` declines to answer or says the context lacks the answer.

    Such a sentence makes no claim about the world, so it cannot be ungrounded.

    >>> refusal("I can't find that in the documents."), refusal("The documents don't say whether pets are allowed.")
    (True, True)
    >>> refusal("Dental treatment is not covered."), refusal("We cannot refund gift cards.")
    (False, False)
    """
    return _REFUSAL.search(normalise(sentence)) is not None
