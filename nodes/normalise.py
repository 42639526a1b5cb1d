"""Answer normalisation and the answer-in-question leak check (pure Python, no LLM).

Every rule is conservative: it only rewrites spellings that mean exactly the same thing and
leaves anything ambiguous as written. `normalise_answer` gives the canonical form of a whole
answer; `canonical_text` applies the same inline rewrites (numbers, percentages, dates, units)
to free text such as a question, so that both sides of the leak check are compared in one form.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

__all__ = [
    "answer_in_question",
    "answer_key",
    "canonical_text",
    "normalise_answer",
]

# Unicode spaces (no-break, narrow no-break, thin, ideographic, ...) all become one plain space.
_SPACES = re.compile(r"\s+")
# The Unicode minus sign before a digit is an ordinary minus.
_UNICODE_MINUS = re.compile("\u2212(?=\\d)")

# Quote pairs stripped when they wrap the whole answer.
_QUOTE_PAIRS = {
    '"': '"',
    "'": "'",
    "`": "`",
    "\u201c": "\u201d",
    "\u2018": "\u2019",
    "\u00ab": "\u00bb",
}
# Double quotes stripped when a lone one dangles at an end (apostrophes are kept: `students'`).
_DANGLING_QUOTES = '"\u201c\u201d'
# Trailing punctuation stripped; `!` and `?` stay because they belong to names (`Yahoo!`).
_TRAILING_PUNCTUATION = ".,;:"
# Words whose final period is part of the word, so it is kept.
_ABBREVIATIONS = frozenset({
    "inc", "ltd", "co", "corp", "jr", "sr", "st", "mt", "dr", "mr", "mrs", "ms", "prof", "no",
    "vs", "etc", "bros", "dept", "univ", "ave",
})  # fmt: skip

# 1,234 / 1,234,567.89 (commas that group thousands correctly; `1,5` and `12,34` do not).
_THOUSANDS = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+)(\.\d+)?(?!\d|[.,]\d)")
# 45 % / 45 percent / 45 per cent → 45%.
_PERCENT = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?:\s+%|\s*\bper\s?cent\b)", re.I)

_MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "mar": 3, "march": 3, "apr": 4,
    "april": 4, "may": 5, "jun": 6, "june": 6, "jul": 7, "july": 7, "aug": 8, "august": 8,
    "sep": 9, "sept": 9, "september": 9, "oct": 10, "october": 10, "nov": 11,
    "november": 11, "dec": 12, "december": 12,
}  # fmt: skip
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>\d{4})"
# March 5, 2020 / Mar. 5th 2020
_MONTH_DAY_YEAR = re.compile(rf"(?<![\w-]){_MONTH}\s+{_DAY},?\s+{_YEAR}(?![\w-])", re.I)
# 5 March 2020 / 5th of March, 2020
_DAY_MONTH_YEAR = re.compile(rf"(?<![\w.,-]){_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}(?![\w-])", re.I)
# 2020-03-05 / 2020-3-5 / 2020/03/05 (year first is never ambiguous; one separator throughout)
_YEAR_MONTH_DAY = re.compile(
    r"(?<![\w./-])(?P<year>[12]\d{3})(?P<sep>[-/])(?P<month>\d{1,2})(?P=sep)(?P<day>\d{1,2})(?![\w/:]|[.-]\d)"
)
# 13/03/2020 or 03/13/2020: converted only when one side is above 12, so the order is certain.
_NUMERIC_DATE = re.compile(
    r"(?<![\w./-])(?P<first>\d{1,2})(?P<sep>[/.])(?P<second>\d{1,2})(?P=sep)(?P<year>\d{4})(?![\w/.:-])"
)
# A date right after these belongs to a range or list (`5–7 March 2020`, `4 and 5 March 2020`);
# converting its second half alone would detach the first half from its month and year.
_RANGE_BEFORE = re.compile(
    r"(?:[-\u2013\u2014&/]|\d,|\b(?:and|to|or|through|thru|until|till))\s*$", re.I
)

# Units that take a space after the number (SI style). Single letters that often mean something
# else are left out on purpose: m (million), s (1990s), B (billion, 7B), K (4K), T, G (5G).
_UNITS = (
    "km/h", "m/s", "mph", "kph",
    "mm", "cm", "km", "ft", "mi", "nmi",
    "mg", "kg", "g", "lb", "lbs", "oz",
    "mL", "ml", "L",
    "ms", "min", "h", "hr", "hrs",
    "Hz", "kHz", "MHz", "GHz",
    "W", "kW", "MW", "GW", "TW", "Wh", "kWh", "MWh", "GWh", "TWh", "J", "kJ", "MJ", "kcal", "cal",
    "kB", "KB", "MB", "GB", "TB", "PB", "kbps", "Mbps", "Gbps",
    "°C", "°F",
)  # fmt: skip
_UNIT = re.compile(
    r"(?<![\w.,])(\d+(?:\.\d+)?)("
    + "|".join(re.escape(unit) for unit in sorted(_UNITS, key=len, reverse=True))
    + r")([²³]?)(?![\w/])"
)


def _collapse_spaces(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _strip_wrapping(text: str) -> str:
    """Strip wrapping quotes and trailing punctuation until nothing changes."""
    while True:
        before = text
        text = text.strip()
        if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
            inner = text[1:-1]
            # `"A" and "B"` is not wrapped: its inner text still holds the quotes.
            if text[0] not in inner and text[-1] not in inner:
                text = inner
        if (
            text
            and text[-1] in _DANGLING_QUOTES
            and sum(text.count(q) for q in _DANGLING_QUOTES) == 1
        ):
            text = text[:-1]
        if (
            text
            and text[0] in _DANGLING_QUOTES
            and sum(text.count(q) for q in _DANGLING_QUOTES) == 1
        ):
            text = text[1:]
        if text and text[-1] in _TRAILING_PUNCTUATION and not _keeps_final_period(text):
            text = text[:-1]
        if text == before:
            return text


def _keeps_final_period(text: str) -> bool:
    """A final period that ends an abbreviation or an initial (`U.S.`, `Inc.`, `John F.`)."""
    if not text.endswith("."):
        return False
    last_word = text[:-1].rsplit(" ", 1)[-1]
    if "." in last_word:  # U.S. / Washington, D.C. / e.g.
        return True
    if len(last_word) == 1 and last_word.isalpha():  # an initial
        return True
    return last_word.casefold() in _ABBREVIATIONS


def _iso_date(year: int, month: int, day: int) -> str | None:
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:  # 31 February and the like: not a date, leave it alone
        return None


def _replace_dates(text: str) -> str:
    def named(match: re.Match[str]) -> str:
        if _RANGE_BEFORE.search(match.string, 0, match.start()):
            return match.group(0)
        month = _MONTHS[match["month"].casefold()]
        iso = _iso_date(int(match["year"]), month, int(match["day"]))
        return iso or match.group(0)

    def year_first(match: re.Match[str]) -> str:
        iso = _iso_date(int(match["year"]), int(match["month"]), int(match["day"]))
        return iso or match.group(0)

    def numeric(match: re.Match[str]) -> str:
        first, second = int(match["first"]), int(match["second"])
        if first > 12 >= second:  # day/month/year
            day, month = first, second
        elif second > 12 >= first:  # month/day/year
            day, month = second, first
        else:  # 05/03/2020 could be March or May
            return match.group(0)
        return _iso_date(int(match["year"]), month, day) or match.group(0)

    text = _MONTH_DAY_YEAR.sub(named, text)
    text = _DAY_MONTH_YEAR.sub(named, text)
    text = _YEAR_MONTH_DAY.sub(year_first, text)
    return _NUMERIC_DATE.sub(numeric, text)


def canonical_text(text: str) -> str:
    """Apply the inline rewrites to free text: spaces, numbers, percentages, dates and units.

    Unlike `normalise_answer` this keeps punctuation and quotes, so it can be used on a whole
    question.
    """
    text = unicodedata.normalize("NFC", text)
    text = _collapse_spaces(_UNICODE_MINUS.sub("-", text))
    text = _replace_dates(text)
    text = _THOUSANDS.sub(lambda m: m[1].replace(",", "") + (m[2] or ""), text)
    text = _PERCENT.sub(r"\1%", text)
    text = _UNIT.sub(r"\1 \2\3", text)
    return text


def normalise_answer(answer: str) -> str:
    """Canonical form of a short answer.

    Rules, in order (anything not listed is kept as written, including letter case):

    - Unicode NFC; every run of whitespace (also no-break and thin spaces) becomes one space;
      the ends are trimmed; a Unicode minus before a digit becomes `-`.
    - Quotes wrapping the whole answer and a lone dangling double quote are removed; trailing
      `. , ; :` are removed, except the period of an abbreviation or initial (`U.S.`,
      `Apple Inc.`, `John F.`). `!` and `?` are kept (`Yahoo!`).
    - Thousands separators are dropped when the commas group digits by three: `1,234,567.5` →
      `1234567.5`. Decimals and trailing zeros are kept. `1,5`, `12,34` and space-grouped
      numbers are left unchanged.
    - Percentages: `45 %`, `45 percent`, `45 per cent` → `45%`.
    - Full dates become ISO `YYYY-MM-DD`: `March 5, 2020`, `5 March 2020`, `5th of Mar. 2020`,
      `2020/3/5`, `13/03/2020`. Numeric dates whose day and month could be swapped
      (`05/03/2020`), dates without a day or a four-digit year, and the second half of a range
      (`5–7 March 2020`) stay as written. Impossible dates (`February 30, 2020`) stay too.
    - A space between a number and a unit: `5km` → `5 km`, `25°C` → `25 °C`, `3.5GHz` → `3.5 GHz`.
      Only unambiguous unit symbols are touched (`$5m`, `1990s`, `7B`, `4K` and `5G` stay).
    """
    text = unicodedata.normalize("NFC", answer)
    text = _strip_wrapping(_collapse_spaces(_UNICODE_MINUS.sub("-", text)))
    return _strip_wrapping(canonical_text(text))


def _fold(text: str) -> str:
    """Comparison form: compatibility-folded, case-folded, single-spaced."""
    return _collapse_spaces(unicodedata.normalize("NFKC", text).casefold())


def answer_key(answer: str) -> str:
    """Key under which two answers count as the same (dedupe): folded normalised answer."""
    return _fold(normalise_answer(answer))


def answer_in_question(answer: str, question: str) -> bool:
    """Whether the answer (as written or normalised) appears in the question.

    Case-insensitive and word-boundary aware: `Paris` leaks into "the capital, Paris?" but not
    into "Parisian"; `5` leaks into "top 5 cities" but not into "version 5.1" or "1,500". The
    question is compared both as written and in canonical form, so `2020-03-05` leaks into
    "on March 5, 2020" and `1234` into "1,234 people".
    """
    forms = {_fold(_collapse_spaces(answer)), _fold(normalise_answer(answer))}
    forms.discard("")
    texts = {_fold(question), _fold(canonical_text(question))}
    for form in forms:
        # Word boundaries, and a number is not cut out of a longer one (`5` in `5.1`, `1,500`).
        pattern = re.compile(rf"(?<!\w)(?<!\d[.,]){re.escape(form)}(?!\w)(?![.,]\d)")
        if any(pattern.search(text) for text in texts):
            return True
    return False
