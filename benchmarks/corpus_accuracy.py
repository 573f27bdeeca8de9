"""Measure how the intake rules classify the mail corpus, per half of the split (docs/CORPUS.md).

Automatic mail (bounce, auto_reply, out_of_office) must be quarantined; mail from people
(new_ticket, reply) must not be. Run

    .venv/bin/python benchmarks/corpus_accuracy.py               # the table, held-out first
    .venv/bin/python benchmarks/corpus_accuracy.py --failures training
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.corpus_split import FIXTURES, HALVES, Half, catalog_rows, half_of
from gateway.mail.parse import InboundMail, parse_mail
from gateway.mail.rules import RuleContext, Verdict, classify

OWN_DOMAIN = "tickets.acme.example"
AUTOMATIC = ("bounce", "auto_reply", "out_of_office")
PEOPLE = ("new_ticket", "reply")


def context_for(expected_class: str, mail: InboundMail) -> RuleContext:
    """The envelope an MTA would have given: <> only when a bounce's Return-Path is <>."""
    sender = mail.from_addr.email if mail.from_addr else "someone@example.org"
    if expected_class == "bounce":
        envelope = "" if mail.return_path == "" else (mail.return_path or sender)
    else:
        envelope = sender
    return RuleContext(
        envelope_from=envelope, own_domains=frozenset({OWN_DOMAIN}), loop_token=OWN_DOMAIN
    )


@dataclass(frozen=True)
class Outcome:
    """One classified corpus row."""

    name: str
    expected_class: str
    half: Half
    verdict: Verdict | None

    @property
    def correct(self) -> bool:
        quarantined = self.verdict is not None
        return quarantined if self.expected_class in AUTOMATIC else not quarantined


def outcomes(fixtures: Path = FIXTURES) -> list[Outcome]:
    """Every whole-message row of a people or automatic class, classified."""
    out = []
    for row in catalog_rows(fixtures):
        cls = row["expected_class"]
        if cls not in AUTOMATIC + PEOPLE or "body_only" in row["features"]:
            continue
        mail = parse_mail((fixtures / row["source"] / row["path"]).read_bytes())
        verdict = classify(mail, context_for(cls, mail))
        name = f"{row['source']}/{row['path']}"
        out.append(Outcome(name, cls, half_of(row["source"], row["path"]), verdict))
    return out


def table(results: list[Outcome]) -> str:
    """Markdown table: automatic mail quarantined, people's mail not, per half."""
    lines = [
        "| half | automatic quarantined | people not quarantined |",
        "|---|---:|---:|",
    ]
    for half in (*HALVES, None):
        chosen = [r for r in results if half is None or r.half == half]
        auto = [r for r in chosen if r.expected_class in AUTOMATIC]
        people = [r for r in chosen if r.expected_class in PEOPLE]
        cells = [f"{sum(r.correct for r in group)}/{len(group)}" for group in (auto, people)]
        lines.append(f"| {half or 'all'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Print the table; --failures HALF lists the rows of that half classified wrongly."""
    results = outcomes()
    print(table(results))
    if "--failures" in argv:
        half = argv[argv.index("--failures") + 1]
        for r in results:
            if r.half == half and not r.correct:
                print(f"  FAIL [{r.half}] {r.name} ({r.expected_class}): {r.verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
