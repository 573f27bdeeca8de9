"""Measure how well strip_reply recovers the new text of the corpus replies (docs/QUOTES.md)."""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.mail.html_text import html_to_text
from gateway.mail.parse import parse_mail
from gateway.mail.quotes import strip_reply

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mail"

# Two catalog rows point at the source project's test file instead of quoting the text;
# these are the first fragments that crisp-oss/email-reply-parser test/test.js asserts
# (text_email_regards, test_reads_simple_body).
_RESOLVED = {
    "test/fixtures/email_with_regards.txt": "Hi,\n\nI still have the same problem....\n\nCan you help?",
    "test/fixtures/email_1.txt": (
        "Hi folks\n\nWhat is the best way to clear a Riak bucket of all key, values after\n"
        "running a test?\nI am currently using the Java HTTP API.…"
    ),
}


@dataclass(frozen=True)
class Case:
    """One reply row with the text its source project expects after stripping."""

    path: str
    body: str
    expected: str
    prefix_only: bool  # the catalog truncated the expected text with "…"


def normalise(text: str) -> str:
    """Whitespace-insensitive form: every run of whitespace becomes one space."""
    return re.sub(r"\s+", " ", text).strip()


def body_of(path: Path, features: str) -> str:
    """The text a reply parser sees: body-only files as they are, HTML fragments rendered,
    whole messages parsed."""
    raw = path.read_bytes()
    if "html_fragment" in features:
        return html_to_text(raw.decode("utf-8", "replace"))
    if "body_only" in features:
        return raw.decode("utf-8", "replace").replace("\r\n", "\n")
    return parse_mail(raw).text


def load_cases(fixtures: Path = FIXTURES) -> list[Case]:
    cases = []
    with (fixtures / "catalog.tsv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["expected_class"] != "reply" or not row["expected"].startswith("reply_text="):
                continue
            expected = row["expected"].removeprefix("reply_text=")
            expected = _RESOLVED.get(row["path"], expected)
            expected = expected.replace("\\n", "\n").replace("\\t", "\t")
            expected = expected.removesuffix(" (whitespace-insensitive)")
            prefix_only = expected.endswith("…")
            expected = expected.removesuffix("…")
            body = body_of(fixtures / row["source"] / row["path"], row["features"])
            cases.append(Case(row["path"], body, expected, prefix_only))
    return cases


def is_correct(case: Case, got: str) -> bool:
    want, have = normalise(case.expected), normalise(got)
    return have.startswith(want) if case.prefix_only else have == want


def measure(strip: Callable[[str], str], cases: list[Case]) -> tuple[int, list[tuple[Case, str]]]:
    failures = []
    for case in cases:
        got = strip(case.body)
        if not is_correct(case, got):
            failures.append((case, got))
    return len(cases) - len(failures), failures


def _mail_parser_reply() -> Callable[[str], str]:
    """mail-parser-reply (MIT), the library we measured against, with all its languages."""
    from mailparser_reply import EmailReplyParser  # type: ignore[import-untyped]
    from mailparser_reply.constants import MAIL_LANGUAGES  # type: ignore[import-untyped]

    parser = EmailReplyParser(languages=list(MAIL_LANGUAGES))

    def strip(text: str) -> str:
        return str(parser.parse_reply(text) or "")

    return strip


def report(name: str, strip: Callable[[str], str], cases: list[Case]) -> None:
    correct, failures = measure(strip, cases)
    print(f"{name}: {correct}/{len(cases)} correct")
    for case, got in failures:
        print(f"  FAIL {case.path}\n    want: {normalise(case.expected)[:120]!r}")
        print(f"    got:  {normalise(got)[:120]!r}")


def main(argv: list[str]) -> int:
    """Print accuracy of strip_reply; with --compare, of mail-parser-reply as well."""
    cases = load_cases()
    report("gateway.mail.quotes.strip_reply", strip_reply, cases)
    if "--compare" in argv:
        report("mail-parser-reply", _mail_parser_reply(), cases)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
