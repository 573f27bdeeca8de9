"""The real-mail corpus: every file parses, and automatic mail is told from mail by people."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.mail.parse import InboundMail, parse_mail
from gateway.mail.rules import RuleContext, Verdict, classify

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mail"
OWN_DOMAIN = "tickets.acme.example"

# Rows where SPEC §2.5 and the catalog disagree; each is kept as the spec says.
EXPECTED_DEVIATIONS: dict[str, str] = {
    "tests/fixtures/messages/from-encoding.eml": (
        "a post to the new-httpd mailing list carrying Precedence: bulk; SPEC §2.5 quarantines "
        "Precedence bulk, the catalog calls it a reply"
    ),
}

# What classify() must answer per catalog class; None means "not automatic".
EXPECTED_KIND: dict[str, str | None] = {
    "bounce": "bounce",
    "auto_reply": "auto_reply",
    "out_of_office": "out_of_office",
    "new_ticket": None,
    "reply": None,
}


@dataclass(frozen=True)
class Row:
    source: str
    path: str
    expected_class: str
    features: str

    @property
    def file(self) -> Path:
        return FIXTURES / self.source / self.path


def _rows() -> list[Row]:
    with (FIXTURES / "catalog.tsv").open(encoding="utf-8", newline="") as fh:
        return [
            Row(r["source"], r["path"], r["expected_class"], r["features"])
            for r in csv.DictReader(fh, delimiter="\t")
        ]


ROWS = _rows()


def _context(row: Row, mail: InboundMail) -> RuleContext:
    """The envelope an MTA would have given: <> only when the file's Return-Path is <>."""
    sender = mail.from_addr.email if mail.from_addr else "someone@example.org"
    if row.expected_class == "bounce":
        envelope = "" if mail.return_path == "" else (mail.return_path or sender)
    else:
        envelope = sender
    return RuleContext(
        envelope_from=envelope, own_domains=frozenset({OWN_DOMAIN}), loop_token=OWN_DOMAIN
    )


def _classify(row: Row) -> tuple[InboundMail, Verdict | None]:
    mail = parse_mail(row.file.read_bytes())
    return mail, classify(mail, _context(row, mail))


def test_catalog_lists_every_copied_file() -> None:
    """All 281 catalog rows (141 copied, 140 written for issue 16) have their file."""
    assert len(ROWS) == 281
    assert all(row.file.is_file() for row in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.source}/{r.path}")
def test_every_file_parses(row: Row) -> None:
    """parse_mail returns a value for every real file, broken or not, without raising."""
    raw = row.file.read_bytes()
    mail = parse_mail(raw)
    assert mail.raw == raw
    assert not any(d.startswith("parser failure") for d in mail.defects), mail.defects
    assert "\n" not in mail.subject and "\r" not in mail.subject


CLASSIFIED_ROWS = [
    r for r in ROWS if r.expected_class in EXPECTED_KIND and "body_only" not in r.features
]


@pytest.mark.parametrize(
    "row",
    [r for r in CLASSIFIED_ROWS if r.path not in EXPECTED_DEVIATIONS],
    ids=lambda r: f"{r.source}/{r.path}",
)
def test_classification_matches_catalog(row: Row) -> None:
    """Bounces, auto-replies and out-of-office are caught with the right kind; people's mail is not."""
    _, verdict = _classify(row)
    kind = verdict.kind if verdict else None
    assert kind == EXPECTED_KIND[row.expected_class], verdict


def test_deviations_still_deviate() -> None:
    """Each listed deviation is list mail (Precedence: bulk), quarantined as SPEC §2.5 says."""
    by_path = {r.path: r for r in ROWS}
    for path in EXPECTED_DEVIATIONS:
        row = by_path[path]
        _, verdict = _classify(row)
        assert verdict is not None and verdict.kind == "list", (path, verdict)
        assert verdict.kind != EXPECTED_KIND[row.expected_class]


def test_corpus_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Per class, how many rows classify as the catalog says (printed for the report)."""
    correct: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for row in CLASSIFIED_ROWS:
        _, verdict = _classify(row)
        total[row.expected_class] += 1
        correct[row.expected_class] += (verdict.kind if verdict else None) == EXPECTED_KIND[
            row.expected_class
        ]
    with capsys.disabled():
        print("\ncorpus classification:", {k: f"{correct[k]}/{total[k]}" for k in sorted(total)})
    assert sum(total.values()) - sum(correct.values()) == len(EXPECTED_DEVIATIONS)


def test_bounces_name_a_recipient_or_an_original() -> None:
    """Most bounces tell the caller which address failed or which of our mails it was."""
    bounces = [r for r in CLASSIFIED_ROWS if r.expected_class == "bounce"]
    informative = 0
    for row in bounces:
        _, verdict = _classify(row)
        assert verdict is not None
        informative += bool(verdict.bounced_recipients or verdict.original_message_ids)
    assert informative >= len(bounces) - 3


@pytest.mark.parametrize(
    ("path", "recipient", "temporary"),
    [
        ("tests/data/exim_01.txt", "userx@its.example.nl", False),
        ("maildir/bsd/lhost-postfix-01.eml", "kijitora@example.org", False),
        ("tests/data/qmail_06.txt", "ntl@xxx.com", False),
        ("tests/fixtures/messages/bounce/delayed.eml", "foo@example.com", True),
        ("tests/data/dsn_05.txt", "userx@example.cz", True),
    ],
)
def test_bounced_recipient_extracted(path: str, recipient: str, temporary: bool) -> None:
    """The failed address comes out of DSNs, Exim headers and non-standard NDRs alike."""
    row = next(r for r in ROWS if r.path == path)
    _, verdict = _classify(row)
    assert verdict is not None and verdict.kind == "bounce"
    assert recipient in verdict.bounced_recipients
    assert verdict.temporary is temporary


def test_bounce_names_original_message_id() -> None:
    """A DSN with the original attached gives the caller that original's Message-ID."""
    row = next(r for r in ROWS if r.path == "maildir/bsd/lhost-outlook-01.eml")
    _, verdict = _classify(row)
    assert verdict is not None
    assert "BLU436-SMTP6645ECA6E7FEFFE86D040BBA770@phx.gbl" in verdict.original_message_ids
