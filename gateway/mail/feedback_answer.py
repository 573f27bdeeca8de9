"""An answer to a feedback request, as people write it → a rating 1–5 and the comment (issue 13).

SPEC §4: the answer's rating is its first clear number 1–5, the rest is the comment. Real
answers are rarely just "4": they say "4/5", "5 - thanks!", "★★★★", "Rating: 3", "I'd give it a
4", "Bewertung: 4", "note : 5", "four", put the number above the quoted request (top-posting)
or come as HTML only. The quoted request is cut first (``quotes.strip_reply``, then our own
request's lines, which Outlook quotes without markers); then the first of these rules that
finds something decides, in this order:

1. stars: "★★★★" / "⭐⭐⭐" (filled stars counted; "☆" are the empty ones);
2. a label: "Rating: 3", "Bewertung 4", "note : 5", "Score=2" …, digit or number word;
3. a scale: "4/5", "4 out of 5", "4 von 5", "4 sur 5", "4 de 5", "4 su 5", "4 stars";
4. a phrase: "I'd give it a 4", "I give you a five", "ich gebe eine 4" …;
5. the answer's first word: "4", "5 - thanks!", "(4)", "four." — a digit not followed by a
   unit ("4 days", "5pm", "3:30" are no ratings).

A rule that finds two different ratings ("3 or 4") is not clear; nor is anything outside
1–5. No clear rating → ``rating`` None (the service asks once more).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.mail.quotes import strip_reply

_WORDS = {
    # en, de, fr, es, it, nl
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "eins": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5, "fuenf": 5,
    "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5,
    "uno": 1, "dos": 2, "tres": 3, "cuatro": 4, "cinco": 5,
    "due": 2, "tre": 3, "quattro": 4,
    "een": 1, "twee": 2, "drie": 3, "vijf": 5,
}  # fmt: skip
_WORD = "|".join(sorted((re.escape(w) for w in _WORDS), key=len, reverse=True))
# A number word counts only where it ends the phrase ("Rating: four", "four stars", "Four -
# great"), not as prose ("One more thing", "Note: two printers").
_WORD_END = r"(?=\s*(?:$|[.,;:!?)\-–—]|/|out\b|of\b|von\b|sur\b|stars?\b|sterne\b|étoiles?\b))"
_NUM = rf"(?P<n>\d+|(?:{_WORD}){_WORD_END})"
_LABELS = (
    r"rating|rate|rated|score|grade|mark|stars?|bewertung|note|punkte|sterne|wertung|"
    r"évaluation|evaluation|valoración|valoracion|puntuación|puntuacion|calificación|"
    r"voto|valutazione|cijfer|beoordeling|betyg|ocena"
)
_STARS = re.compile(r"[★⭐]")
_FIVE = r"(?:5|five|fünf|cinq|cinco|cinque|vijf)"
_LABEL = re.compile(
    rf"(?<![\w])(?:{_LABELS})\s*[:=\-]?\s*{_NUM}"
    rf"(?:\s*(?:/|out of|von|sur|de|su|of)\s*{_FIVE}\b)?(?![\w/])",
    re.IGNORECASE | re.MULTILINE,
)
_SCALE = re.compile(
    rf"(?<![\w/.,]){_NUM}\s*(?:/\s*5|(?:out of|von|sur|de|su|of)\s+{_FIVE}\b"
    rf"|\s*(?:stars?|sterne|étoiles?|estrellas?|stelle)\b)(?![\d/])",
    re.IGNORECASE | re.MULTILINE,
)
_PHRASE = re.compile(
    rf"(?:\b(?:i|we|ich|wir)(?:'d|’d| would| will|'ll|’ll)?\s+)?(?:\b(?:give|giving|gave|rate|rating|say)\s+(?:it|you|this|the service|you guys|"
    rf"the ticket)?\s*(?:an?\s+)?|\bgebe\s+(?:ich\s+)?(?:euch\s+|ihnen\s+|dir\s+)?(?:eine\s+)?"
    rf"|\bje\s+(?:donne|mets)\s+(?:un\s+|une\s+)?|\b(?:doy|daría)\s+(?:un\s+)?)"
    rf"{_NUM}(?![\w/:.]\d)",
    re.IGNORECASE | re.MULTILINE,
)
_UNITS = (
    r"(?:days?|hours?|h|hrs?|minutes?|mins?|m|weeks?|months?|years?|am|pm|tage?n?|stunden?|"
    r"minuten?|jours?|heures?|times?|mal|x|%|people|tickets?|printers?|laptops?|euro|eur|€|\$)"
)
_FIRST = re.compile(
    rf"^[\s(\[\"'*_~]*{_NUM}(?![\w])(?!\s*[:.,]\d)(?!\s*{_UNITS}\b)"
    r"(?!\s*(?:[-–]|or|to|bis|oder|ou|o)\s*\d)"
    r"[\s)\]\"'*_~]*",
    re.IGNORECASE | re.MULTILINE,
)
# Our own feedback request's lines (templates/feedback_request.*): quoted without markers by
# clients that quote HTML mail as plain text, they must not count as the answer.
_OUR_REQUEST = re.compile(
    r"^\s*(?:>\s*)?(?:TKT-\d+ \([^\n]*\) is now|To answer, reply to this mail|1 \(poor\) to 5)",
    re.IGNORECASE | re.MULTILINE,
)
_GREETING = re.compile(r"\n\s*(?:>\s*)?hello [^\n]*,\s*$", re.IGNORECASE)
# "Hi," / "Hello Team," / "Hallo zusammen," alone on the first line, before the number.
_GREETING_LINE = re.compile(
    r"^\s*(?:hi|hello|hallo|hey|dear|bonjour|salut|hola|ciao|moin|servus|guten tag|good "
    r"(?:morning|afternoon))\b[^\n]{0,40}\n",
    re.IGNORECASE,
)
_LEADING = re.compile(r"^[\s\-–—:;,.!)\]|/]+")
_DOUBLE = re.compile(r"\s*([,;])\s*[,;]+")


@dataclass(frozen=True)
class ParsedFeedback:
    rating: int | None
    comment: str


def _value(token: str) -> int | None:
    t = token.lower()
    n = int(t) if t.isdigit() else _WORDS.get(t)
    return n if n is not None and 1 <= n <= 5 else None


def answer_text(text: str, new_text: str | None = None) -> str:
    """What the person wrote: the reply without the quoted request (``new_text``: the
    parser's ``strip_reply`` of it, when it has it already)."""
    new = strip_reply(text) if new_text is None else new_text
    cut = _OUR_REQUEST.search(new)
    if cut is not None:
        new = _GREETING.sub("", "\n" + new[: cut.start()].rstrip())
    return new.strip()


def _one(matches: list[re.Match[str]]) -> tuple[int, re.Match[str]] | None | bool:
    """The rating of ``matches`` if they agree; False when they disagree or are out of
    range; None when there are none."""
    if not matches:
        return None
    values = {_value(mt.group("n")) for mt in matches}
    if len(values) != 1 or None in values:
        return False
    (v,) = values
    assert v is not None
    return v, matches[0]


def _comment(text: str, start: int, end: int) -> str:
    rest = (text[:start] + " " + text[end:]) if start else text[end:]
    rest = _DOUBLE.sub(r"\1", rest)
    lines = [
        re.sub(r"[ \t]+([,;.!?])", r"\1", re.sub(r"[ \t]{2,}", " ", ln)).rstrip()
        for ln in rest.strip().split("\n")
    ]
    out = "\n".join(lines).strip()
    out = _LEADING.sub("", out)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def parse_feedback(text: str, *, new_text: str | None = None) -> ParsedFeedback:
    """The rating (None when there is no clear one) and the comment of an answer's text."""
    answer = answer_text(text, new_text)
    if not answer:
        return ParsedFeedback(None, "")
    stars = list(_STARS.finditer(answer))
    if stars:
        run = re.search(r"[★⭐][★⭐☆\s]*", answer)
        assert run is not None
        count = len(_STARS.findall(run.group(0)))
        if len(stars) == count and 1 <= count <= 5:
            return ParsedFeedback(count, _comment(answer, run.start(), run.end()))
        return ParsedFeedback(None, answer)
    for rule in (_LABEL, _SCALE, _PHRASE):
        found = _one(list(rule.finditer(answer)))
        if found is False:
            return ParsedFeedback(None, answer)
        if isinstance(found, tuple):
            value, mt = found
            return ParsedFeedback(value, _comment(answer, mt.start(), mt.end()))
    greeting = _GREETING_LINE.match(answer)
    body = answer[greeting.end() :] if greeting else answer
    first = _FIRST.match(body)
    if first is not None:
        first_value = _value(first.group("n"))
        if first_value is not None:
            return ParsedFeedback(first_value, _comment(body, 0, first.end()))
    return ParsedFeedback(None, answer)
