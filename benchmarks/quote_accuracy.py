"""Measure how well strip_reply recovers the new text of the corpus replies (docs/QUOTES.md)."""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.corpus_split import HALVES, Half, half_of
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
    half: Half  # benchmarks/corpus_split.py: rules are written on "training" only


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
            half = half_of(row["source"], row["path"])
            cases.append(Case(row["path"], body, expected, prefix_only, half))
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
    """mail-parser-reply (MIT), with all its languages."""
    from mailparser_reply import EmailReplyParser  # type: ignore[import-untyped]
    from mailparser_reply.constants import MAIL_LANGUAGES  # type: ignore[import-untyped]

    parser = EmailReplyParser(languages=list(MAIL_LANGUAGES))

    def strip(text: str) -> str:
        return str(parser.parse_reply(text) or "")

    return strip


def _email_reply_parser() -> Callable[[str], str]:
    """email-reply-parser 0.5.12 (MIT), the Python port of github/email_reply_parser."""
    from email_reply_parser import EmailReplyParser  # type: ignore[import-untyped]

    def strip(text: str) -> str:
        return str(EmailReplyParser.parse_reply(text) or "")

    return strip


def _mail_parser_reply_then_ours() -> Callable[[str], str]:
    """The combination: mail-parser-reply first, then our stripper on what it kept."""
    first = _mail_parser_reply()
    return lambda text: strip_reply(first(text))


LIBRARIES: dict[str, Callable[[], Callable[[str], str]]] = {
    "mail-parser-reply 1.36 (all languages)": _mail_parser_reply,
    "email-reply-parser 0.5.12": _email_reply_parser,
    "mail-parser-reply, then strip_reply": _mail_parser_reply_then_ours,
}


def score_line(name: str, strip: Callable[[str], str], cases: list[Case]) -> str:
    """One table row: correct / total per half, held-out first."""
    cells = []
    for half in (*HALVES, None):
        chosen = [c for c in cases if half is None or c.half == half]
        correct, _ = measure(strip, chosen)
        cells.append(f"{correct}/{len(chosen)} ({100 * correct / max(len(chosen), 1):.1f} %)")
    return f"| {name} | " + " | ".join(cells) + " |"


def report_failures(strip: Callable[[str], str], cases: list[Case], half: Half) -> None:
    _, failures = measure(strip, [c for c in cases if c.half == half])
    for case, got in failures:
        print(f"  FAIL [{half}] {case.path}\n    want: {normalise(case.expected)[:120]!r}")
        print(f"    got:  {normalise(got)[:120]!r}")


def main(argv: list[str]) -> int:
    """Print the accuracy table (held-out, training, all); --compare adds the libraries,
    --failures HALF lists our misses on one half, --dump FILE writes the cases as JSON for
    benchmarks/talon_compare.py (talon runs in a venv of its own)."""
    cases = load_cases()
    print("| stripper | held-out | training | all |\n|---|---:|---:|---:|")
    print(score_line("`gateway.mail.quotes.strip_reply`", strip_reply, cases))
    if "--compare" in argv:
        for name, make in LIBRARIES.items():
            print(score_line(name, make(), cases))
    if "--failures" in argv:
        half = argv[argv.index("--failures") + 1]
        report_failures(strip_reply, cases, "held-out" if half == "held-out" else "training")
    if "--dump" in argv:
        target = Path(argv[argv.index("--dump") + 1])
        target.write_text(json.dumps([asdict(c) for c in cases], ensure_ascii=False), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
