"""The real-mail corpus over real SMTP (SPEC §2.1–2.5): every file is answered cleanly and lands
where its class says — people's mail on tickets, automatic mail in quarantine, nothing answered."""

from __future__ import annotations

import csv
import os
import re
import smtplib
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date
from email import policy
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import func, select

from gateway.mail.parse import parse_mail
from store import models as m
from tests.conftest import ROOT, Gateway, crlf

CORPUS = ROOT / "tests" / "fixtures" / "mail"
DOC = ROOT / "docs" / "CORPUS.md"
IT = "it@acme.example"
# Active demo employees; rotating them keeps each under the per-sender rate limit.
EMPLOYEES = ("frank@acme.example", "grace@acme.example", "alice@acme.example", "bob@acme.example")
PEOPLE = ("new_ticket", "reply")
AUTOMATIC = ("bounce", "auto_reply", "out_of_office")

# Rows whose fate differs from their catalog class, each for a reason the spec gives.
KNOWN_DEVIATIONS: dict[str, str] = {
    # SPEC §2.5 quarantines Precedence: bulk; the catalog calls this mailing-list post a reply.
    "tests/fixtures/messages/from-encoding.eml": "quarantined",
}
# Classes sent as they are (not rewritten to an employee), so a 5xx refusal is a clean outcome.
REFUSABLE = ("malformed", "spam_like")


@dataclass(frozen=True)
class Row:
    source: str
    path: str
    expected_class: str
    features: str
    subject: str

    @property
    def file(self) -> Path:
        return CORPUS / self.source / self.path

    @property
    def name(self) -> str:
        return f"{self.source}/{self.path}"


def rows() -> list[Row]:
    with (CORPUS / "catalog.tsv").open(encoding="utf-8", newline="") as fh:
        return [
            Row(r["source"], r["path"], r["expected_class"], r["features"], r["subject"])
            for r in csv.DictReader(fh, delimiter="\t")
        ]


# ---- turning a corpus file into what an MTA would hand us ---------------------------------------

_SEP = re.compile(rb"\r\n\r\n")


def postfix_fold(data: bytes, limit: int = 990) -> bytes:
    """Break lines over `limit` octets by inserting CRLF SPACE, as Postfix's SMTP client does
    (smtp_line_length_limit): RFC 5321 §4.5.3.1.6 caps a line at 1000 octets, so the relay in
    front of the gateway never sends longer ones."""
    out = []
    for line in data.split(b"\r\n"):
        while len(line) > limit:
            out.append(line[:limit])
            line = b" " + line[limit:]
        out.append(line)
    return b"\r\n".join(out)


def rewrite_people(raw: bytes, sender: str) -> bytes:
    """Replace From: and To: (folded lines included) with an employee and the IT department."""
    raw = crlf(raw)
    match = _SEP.search(raw)
    head, body = (raw[: match.start()], raw[match.start() :]) if match else (raw, b"\r\n\r\n")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith((b"from:", b"to:"))
        if not dropping:
            kept.append(line)
    # An mbox "From " line stays first, as it was.
    start = 1 if kept and kept[0].startswith(b"From ") else 0
    kept[start:start] = [f"From: {sender}".encode(), f"To: {IT}".encode()]
    return b"\r\n".join(kept) + body


def wrap_body(row: Row, sender: str, n: int) -> bytes:
    """A body_only file becomes the body of a minimal reply (to a thread the test starts), as
    the corpus README asks."""
    text = row.file.read_bytes()
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = IT
    msg["Subject"] = "Re: " + (row.subject or f"corpus reply {n}")
    msg["Message-ID"] = f"<corpus-{n}@client.example>"
    msg["Date"] = "Mon, 02 Nov 2026 09:00:00 +0000"
    msg["In-Reply-To"] = f"<corpus-parent-{n}@client.example>"
    decoded = text.decode("utf-8", "replace").replace("\r\n", "\n")
    subtype = "html" if row.path.endswith(".html") else "plain"
    msg.set_content(decoded, subtype=subtype)  # the client picks QP/base64 for long lines
    return msg.as_bytes(policy=policy.SMTP)


def envelope_sender(row: Row, raw: bytes) -> str:
    """MAIL FROM as an MTA gives it: <> for a bounce whose Return-Path is <>, else the author."""
    parsed = parse_mail(raw)
    if row.expected_class == "bounce" and parsed.return_path == "":
        return ""
    if parsed.return_path:
        return parsed.return_path
    return parsed.from_addr.email if parsed.from_addr else "someone@example.org"


# ---- one SMTP session for the whole corpus ------------------------------------------------------


def send(client: smtplib.SMTP, sender: str, data: bytes) -> tuple[int, str]:
    """One transaction on an open session; returns the final answer, whatever its class."""
    for step in (lambda: client.mail(sender), lambda: client.rcpt(IT)):
        code, text = step()
        if code != 250:
            client.rset()
            return code, text.decode(errors="replace")
    code, text = client.data(data)
    if code != 250:
        client.rset()  # the session must still be alive: RSET has to be answered
    return code, text.decode(errors="replace")


@dataclass
class Counts:
    ticket: int = 0
    message: int = 0
    outbox: int = 0
    inbound: int = 0

    @classmethod
    def of(cls, gw: Gateway) -> Counts:
        with gw.env.app.sessions() as s:
            return cls(
                *(
                    int(s.scalar(select(func.count()).select_from(model)) or 0)
                    for model in (m.Ticket, m.Message, m.Outbox, m.InboundMail)
                )
            )


def last_record(gw: Gateway) -> m.InboundMail:
    with gw.env.app.sessions() as s:
        rec = s.scalars(select(m.InboundMail).order_by(m.InboundMail.id.desc()).limit(1)).first()
        assert rec is not None
        return rec


@dataclass
class Walk:
    """What the corpus walk saw, per catalog class."""

    table: dict[str, Counter[str]]
    refused: list[tuple[Row, str]]

    def deliver(self, gw: Gateway, client: smtplib.SMTP, row: Row, sender: str, data: bytes) -> str:
        """Send one mail and check the answer against what was stored; returns the outcome."""
        before = Counts.of(gw)
        code, text = send(client, sender, postfix_fold(crlf(data)))
        after = Counts.of(gw)
        assert client.noop()[0] == 250, f"{row.name}: session unusable after {code} {text}"
        # Never a tempfail (that is our processing error) and never aiosmtpd's bare 500.
        assert code == 250 or (code // 100 == 5 and code != 500), (row.name, code, text)
        if code != 250:
            # Refused: a 5xx with an enhanced status code, and nothing stored.
            assert re.match(r"5\.\d\.\d ", text), (row.name, text)
            assert after == before, row.name
            self.refused.append((row, f"{code} {text}"))
            return "refused"
        if "duplicate" in text:
            # The same sender and Message-ID as an earlier file (sisimai keeps one mail with
            # bsd/dos/mac line endings): acknowledged, not applied twice.
            assert after == before, row.name
            return "duplicate"
        assert text.startswith("2.0.0 OK: queued as "), (row.name, text)
        assert after.inbound == before.inbound + 1, f"{row.name}: no processing record"
        assert (after.ticket, after.message) == (before.ticket, before.message), row.name
        gw.process()
        after = Counts.of(gw)
        rec = last_record(gw)
        outcome = rec.outcome
        if outcome == "refused":
            # Refused by the runner (what the edge cannot tell from the headers): recorded,
            # nothing else stored.
            assert (after.ticket, after.message, after.outbox) == (
                before.ticket,
                before.message,
                before.outbox,
            ), row.name
            self.refused.append((row, rec.rule))
            return "refused"
        if outcome == "quarantined":
            assert rec.rule.startswith("quarantined: ")
            # Real mail must never be poison (a parser or service that raised hides behind 250).
            assert not rec.rule.startswith("quarantined: processing error"), (row.name, rec.rule)
            assert (after.ticket, after.message, after.outbox) == (
                before.ticket,
                before.message,
                before.outbox,
            ), f"{row.name}: quarantined mail left a ticket, message or outbox row"
        elif outcome == "ticket":
            assert after.ticket == before.ticket + 1 and rec.ticket_id is not None
        elif outcome == "message":
            assert after.ticket == before.ticket and after.message == before.message + 1
        else:
            raise AssertionError(f"{row.name}: unexpected outcome {outcome} ({rec.rule})")
        return outcome


def parent_id(data: bytes) -> str | None:
    """The Message-ID a reply answers: In-Reply-To first, else the last of References."""
    mail = parse_mail(data)
    ids = mail.in_reply_to or mail.references[-1:]
    return ids[0] if ids else None


def send_parent(gw: Gateway, client: smtplib.SMTP, sender: str, mid: str) -> None:
    """The first mail of the thread a corpus reply answers, so that the reply can thread."""
    parent = EmailMessage()
    parent["From"], parent["To"], parent["Subject"] = sender, IT, "corpus thread"
    parent["Message-ID"] = f"<{mid}>"
    parent.set_content("the first mail of the thread")
    code, text = send(client, sender, crlf(parent.as_bytes(policy=policy.SMTP)))
    assert code == 250, (mid, code, text)
    gw.process()


def test_corpus_over_smtp(sqlite_gateway: Gateway) -> None:
    """All 281 corpus mails over one SMTP session: clean answers, people's mail on tickets,
    automatic mail quarantined with no ticket and no outbound mail, malformed mail never a crash."""
    walk = Walk(defaultdict(Counter), [])
    deviations: dict[str, str] = {}
    rowlist = rows()
    assert len(rowlist) == 281
    client = smtplib.SMTP("127.0.0.1", sqlite_gateway.port, timeout=60)
    client.ehlo()
    for n, row in enumerate(rowlist):
        # The mail arrives over minutes, so each sender stays under the per-minute burst limit.
        sqlite_gateway.env.clock.advance(seconds=4)
        employee = EMPLOYEES[n % len(EMPLOYEES)]
        if "body_only" in row.features:
            data, sender = wrap_body(row, employee, n), employee
        elif row.expected_class in PEOPLE:
            data, sender = rewrite_people(row.file.read_bytes(), employee), employee
        else:
            original = row.file.read_bytes()
            data, sender = crlf(original), envelope_sender(row, original)
        if row.expected_class == "reply" and (mid := parent_id(data)) is not None:
            send_parent(sqlite_gateway, client, sender, mid)
        outcome = walk.deliver(sqlite_gateway, client, row, sender, data)
        walk.table[row.expected_class][outcome] += 1
        wanted = (
            ("quarantined", "duplicate")
            if row.expected_class in AUTOMATIC
            else ("message",)
            if row.expected_class == "reply" and parent_id(data)
            else ("ticket",)
            if row.expected_class in PEOPLE
            else None
        )
        if wanted is not None and outcome not in wanted:
            deviations[row.path] = outcome
    # Malformed and spam-like mail once more, from an employee: ingested best-effort or refused
    # cleanly (the first pass mostly met the sender check).
    again = Walk(defaultdict(Counter), [])
    for n, row in enumerate(r for r in rowlist if r.expected_class in REFUSABLE):
        sqlite_gateway.env.clock.advance(seconds=4)
        employee = EMPLOYEES[n % len(EMPLOYEES)]
        data = rewrite_people(row.file.read_bytes(), employee)
        again.table[row.expected_class + " (as employee)"][
            again.deliver(sqlite_gateway, client, row, employee, data)
        ] += 1
    client.quit()

    assert deviations == KNOWN_DEVIATIONS
    # Refusals are only ever malformed or spam-like mail (a non-employee sender, a broken From:).
    assert {row.expected_class for row, _ in walk.refused + again.refused} <= set(REFUSABLE)
    # Nothing is ever answered to a corpus sender: outbound mail goes to employees only.
    for out in sqlite_gateway.deliver():
        assert re.search(r"@acme\.example>?$", str(out["To"]).lower()), out["To"]

    summary = _summary(walk.table, walk.refused) + "\n\n" + _summary(again.table, again.refused)
    print("\n" + summary)
    if os.environ.get("TICKETGATE_WRITE_DOCS") == "1":
        _write_doc(summary)  # docs/CORPUS.md; a plain test run leaves the checkout as it was


def _summary(table: dict[str, Counter[str]], refused: list[tuple[Row, str]]) -> str:
    cols = ("ticket", "message", "quarantined", "duplicate", "refused")
    lines = [f"| class | rows | {' | '.join(cols)} |", "|---|---:|" + "---:|" * len(cols)]
    for cls in sorted(table):
        c = table[cls]
        lines.append(f"| {cls} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in cols) + " |")
    total = Counter[str]()
    for c in table.values():
        total.update(c)
    lines.append(
        f"| **all** | {sum(total.values())} | " + " | ".join(str(total[k]) for k in cols) + " |"
    )
    if refused:
        lines += ["", "Refused (5xx, nothing stored):", ""] + [
            f"- `{row.name}` ({row.expected_class}): {answer}" for row, answer in refused
        ]
    return "\n".join(lines)


def _split_section() -> str:
    """Issue 16: the rules' accuracy per half of the corpus split, held-out first."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.corpus_accuracy import outcomes, table

    return (
        "## Classification by half (issue 16)\n\n"
        f"Measured {date.today().isoformat()} with `.venv/bin/python benchmarks/corpus_accuracy.py` "
        "(also written here by `TICKETGATE_WRITE_DOCS=1 pytest tests/integration/test_smtp_corpus.py`). Rows are split by a hash of their file name "
        "(`benchmarks/corpus_split.py`, recorded in `tests/fixtures/mail/split.tsv`); the rules "
        "of issue 16 were written looking at the training half only. Held-out first:\n\n"
        f"{table(outcomes())}\n\n"
        "The one training miss is `from-encoding.eml` (catalog: reply, but `Precedence: bulk`; "
        "SPEC §2.5 quarantines it). `docs/QUOTES.md` says how the held-out half was kept "
        "unseen and where it was not.\n\n"
    )


def _write_doc(summary: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(
        "# The mail corpus over SMTP\n\n" + _split_section() + "## Over SMTP\n\n"
        f"Measured {date.today().isoformat()} by `tests/integration/test_smtp_corpus.py` (SQLite; "
        "`pytest -s` prints the same tables; `TICKETGATE_WRITE_DOCS=1` rewrites this file). Each of the 281 files of `tests/fixtures/mail/` is "
        "sent over one SMTP session to the gateway (141 copied from public test suites, 140 "
        "written for issue 16 in `written/`):\n\n"
        "- `new_ticket`/`reply` rows with `From:` rewritten to a demo employee and `To:` to "
        "it@acme.example; `body_only` rows wrapped in a minimal reply. Before each reply the test "
        "sends the first mail of its thread (the Message-ID its In-Reply-To/References names), so "
        "a reply becomes a message on that ticket; a reply that names no parent opens a ticket.\n"
        "- Every other row as it is, envelope sender from its Return-Path (the null reverse path "
        "`<>` for bounces whose Return-Path is `<>`).\n"
        "- Lines over 990 octets folded as Postfix's SMTP client folds them (RFC 5321 §4.5.3.1.6).\n\n"
        "`duplicate`: the same sender and Message-ID as an earlier file (sisimai keeps one mail "
        "with bsd/dos/mac line endings) — acknowledged with 250, applied once.\n\n"
        f"{summary}\n\n"
        "The second table sends the malformed and spam-like rows again with only `From:`/`To:` "
        "rewritten to an employee: broken mail from a colleague is ingested best-effort.\n\n"
        "`from-encoding.eml` (catalog: reply) carries `Precedence: bulk` and is quarantined, as "
        "SPEC §2.5 says.\n",
        encoding="utf-8",
    )
