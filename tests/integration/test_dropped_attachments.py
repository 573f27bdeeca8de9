"""Attachments over the size caps (issue 12, "silent drops"): not stored, but the sender is
told which file and why, and the ticket's history shows it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path

import pytest

from store import models as m
from tests.conftest import Database, Gateway, demo_env, mail, run_cli, serving

REQ = "frank@acme.example"  # HR
IT = "it@acme.example"
MIB = 1024 * 1024


@pytest.fixture
def small_caps(database: Database, tmp_path: Path) -> Iterator[Gateway]:
    """The demo installation over SMTP with 1 MiB per file and 1.5 MiB per mail."""
    extra = {
        "TICKETGATE__SMTP__MAX_ATTACHMENT_BYTES": str(MIB),
        "TICKETGATE__SMTP__MAX_TOTAL_ATTACHMENT_BYTES": str(MIB * 3 // 2),
    }
    with demo_env(database, tmp_path / "install", extra) as env, serving(env) as gw:
        yield gw


def rcpt(x: EmailMessage) -> str:
    return str(x.get("Delivered-To", "")).strip().lower()


def text_of(x: EmailMessage) -> str:
    part = x.get_body(("plain",))
    assert part is not None
    return " ".join(str(part.get_content()).split())


def html_of(x: EmailMessage) -> str:
    part = x.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def attach(msg: EmailMessage, name: str, size: int) -> None:
    msg.add_attachment(b"%PDF" + b"\1" * (size - 4), "application", "pdf", filename=name)


def stored_blobs(gw: Gateway) -> int:
    with gw.env.app.sessions() as s:
        return len(s.query(m.Attachment).all())


def test_oversize_attachment_is_named_in_the_ack_and_on_the_ticket(small_caps: Gateway) -> None:
    """A 2 MiB scan over the 1 MiB cap: the ticket is made with the small file only, the
    acknowledgement names the scan, its size and the limit, and `ticket show --json` has the
    same line in the history."""
    gw = small_caps
    msg = mail(REQ, [IT], "Scanner output", "See the scan.")
    attach(msg, "scan.pdf", 2 * MIB)
    attach(msg, "notes.pdf", 1000)
    assert gw.send(msg, REQ, [IT])[0] == 250
    [t] = gw.tickets()
    assert [a["name"] for a in t["messages"][0]["attachments"]] == ["notes.pdf"]
    assert stored_blobs(gw) == 1
    note = "scan.pdf (2 MB) was not kept: over the 1 MB limit per file"

    out = gw.deliver()
    [ack] = [x for x in out if rcpt(x) == REQ]
    assert note in text_of(ack)
    assert note in html_of(ack)
    assert "notes.pdf" not in text_of(ack)
    # The department's notices do not carry the sender's note; the ticket's history does.
    assert all(note not in text_of(x).split("Recent history")[0] for x in out if x is not ack)

    shown = run_cli(gw.env.env, "ticket", "show", t["ref"], "--json")
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)["history"]
    assert [h["remark"] for h in history if h["actor"] == "system"] == [note]
    assert next(h for h in history if h["remark"] == note)["channel"] == "system"
    # The processing record keeps the parser's note too.
    with gw.env.app.sessions() as s:
        [rec] = s.query(m.InboundMail).all()
        assert any("scan.pdf" in d for d in rec.detail["defects"])


def test_attachments_over_the_total_cap(small_caps: Gateway) -> None:
    """Two files of 1 MiB each under a 1.5 MiB cap per mail: the first is kept, the second is
    named as over the limit for all attachments of one mail."""
    gw = small_caps
    msg = mail(REQ, [IT], "Two scans", "Both pages.")
    attach(msg, "page1.pdf", MIB)
    attach(msg, "page2.pdf", MIB)
    assert gw.send(msg, REQ, [IT])[0] == 250
    [t] = gw.tickets()
    assert [a["name"] for a in t["messages"][0]["attachments"]] == ["page1.pdf"]
    note = "page2.pdf (1 MB) was not kept: over the 1.5 MB limit for all attachments of one mail"
    [ack] = [x for x in gw.deliver() if rcpt(x) == REQ]
    assert note in text_of(ack)
    assert [h["remark"] for h in gw.ticket(t["ref"])["history"] if h["actor"] == "system"] == [note]


def test_oversize_attachment_on_a_reply_is_told_to_the_sender(small_caps: Gateway) -> None:
    """A reply carrying a file over the cap: the message lands without it, the history says
    so, and the sender gets one automatic mail naming the file; nobody else does."""
    gw = small_caps
    assert gw.send(mail(REQ, [IT], "Monitor", "It flickers."), REQ, [IT])[0] == 250
    [t] = gw.tickets()
    out = gw.deliver()
    ack = next(x for x in out if rcpt(x) == REQ)
    to = getaddresses([str(ack["Reply-To"])])[0][1]
    reply = mail(REQ, [to], "Re: " + str(ack["Subject"]), "Here is a video of it.")
    reply["In-Reply-To"] = str(ack["Message-ID"])
    attach(reply, "flicker.mp4", 3 * MIB // 2)
    assert gw.send(reply, REQ, [to])[0] == 250
    shown = gw.ticket(t["ref"])
    assert shown["messages"][-1]["body"] == "Here is a video of it."
    assert shown["messages"][-1]["attachments"] == []
    note = "flicker.mp4 (1.5 MB) was not kept: over the 1 MB limit per file"
    assert [h["remark"] for h in shown["history"] if h["actor"] == "system"] == [note]

    later = gw.deliver()[len(out) :]
    told = [x for x in later if rcpt(x) == REQ]
    assert len(told) == 1
    assert note in text_of(told[0]) and note in html_of(told[0])
    assert str(told[0]["Auto-Submitted"]) == "auto-replied"
    assert all(note not in text_of(x).split("Recent history")[0] for x in later if x is not told[0])


def test_no_note_without_a_drop(small_caps: Gateway) -> None:
    """A mail whose files fit says nothing about files and adds no history line."""
    gw = small_caps
    msg = mail(REQ, [IT], "Small", "One small file.")
    attach(msg, "small.pdf", 1000)
    assert gw.send(msg, REQ, [IT])[0] == 250
    [t] = gw.tickets()
    assert [h["actor"] for h in t["history"]] == [REQ]
    [ack] = [x for x in gw.deliver() if rcpt(x) == REQ]
    assert "was not kept" not in text_of(ack)
