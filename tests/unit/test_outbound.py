"""Rendering notices: every kind, the headers, HTML escaping, and no header injection."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
import pytest

from gateway.domain.subjects import HeaderInjection
from gateway.mail.outbound import (
    KINDS,
    CommandResult,
    HistoryLine,
    Notice,
    Renderer,
    templates_dir,
)

AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
EXTRA = {
    "level": "2",
    "question": "How was the service?",
    "number": "1",
    "of": "2",
    "reason": "#approve: not allowed",
    "not_kept": "scan.pdf (31 MB) was not kept: over the 10 MB limit per file",
}
SINGLE_HEADERS = (
    "From", "To", "Reply-To", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
    "Thread-Topic", "Thread-Index", "X-Auto-Response-Suppress", "X-Loop", "X-Ticketgate-Ticket",
    "MIME-Version", "Content-Type",
)  # fmt: skip


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(templates_dir())


def notice(**changes: Any) -> Notice:
    base = Notice(
        kind="new_message",
        ticket_ref="TKT-7",
        subject="Printer on the 3rd floor jams",
        status="WORKING_ON_IT",
        target="IT Support",
        requester="Alice Example",
        recipient_email="alice@acme.example",
        recipient_name="Alice Example",
        role="requester",
        from_address="helpdesk@tickets.acme.example",
        from_name="Acme Helpdesk",
        reply_address="reply+abcdefgh234567@tickets.acme.example",
        message_id="tkt-7.3.x1y2@tickets.acme.example",
        in_reply_to="CAF00d@mail.gmail.com",
        references=("CAF00d@mail.gmail.com", "tkt-7.1.aa@tickets.acme.example"),
        thread_index="Adqbvxe6AAECAwQFBgcICQoLDA0ODw==",
        auto_submitted="auto-generated",
        date=AT,
        loop_token="tickets.acme.example",
        actor="Bob Builder",
        body="I am on it.\nWill report back today.",
        remark="taking it",
        history=(
            HistoryLine("RAISED", "Alice Example", datetime(2026, 11, 2, 9, 0, tzinfo=UTC), ""),
            HistoryLine("WORKING_ON_IT", "Bob Builder", AT, "taking it"),
        ),
        applied_commands=(
            CommandResult("#take", True, ""),
            CommandResult("#approve", False, "only the higher authority may approve"),
        ),
        commands_hint=("#take", "#deliver", "#return <remark>"),
        extra=EXTRA,
    )
    return dataclasses.replace(base, **changes)


def parse(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    # The wire copy has CRLF line ends; compare text the way a reader sees it.
    return (
        text.get_content().replace("\r\n", "\n"),
        html.get_content().replace("\r\n", "\n"),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_text_and_html(renderer: Renderer, kind: str) -> None:
    """Each kind gives multipart/alternative with a plain and an HTML part naming the ticket."""
    msg = parse(renderer.render(notice(kind=kind)))
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    text, html = parts(msg)
    assert "TKT-7" in text and "TKT-7" in html
    assert "Printer on the 3rd floor jams" in text and "Printer on the 3rd floor jams" in html
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert not msg.defects and all(not p.defects for p in msg.iter_parts())


def test_headers(renderer: Renderer) -> None:
    """Every header of SPEC §2.6 is there once, with the expected value."""
    data = renderer.render(notice(subject="Re: Printer on the 3rd floor jams"))
    msg = parse(data)
    for name in SINGLE_HEADERS:
        assert len(msg.get_all(name, [])) == 1, name
    assert str(msg["From"]) == "Acme Helpdesk <helpdesk@tickets.acme.example>"
    assert str(msg["To"]) == "Alice Example <alice@acme.example>"
    assert msg["Reply-To"].addresses[0].addr_spec == "reply+abcdefgh234567@tickets.acme.example"
    assert str(msg["Subject"]) == "[TKT-7] Printer on the 3rd floor jams"
    assert str(msg["Thread-Topic"]) == "Printer on the 3rd floor jams"
    assert str(msg["Thread-Index"]) == "Adqbvxe6AAECAwQFBgcICQoLDA0ODw=="
    assert str(msg["Message-ID"]) == "<tkt-7.3.x1y2@tickets.acme.example>"
    assert str(msg["In-Reply-To"]) == "<CAF00d@mail.gmail.com>"
    assert str(msg["References"]).split() == [
        "<CAF00d@mail.gmail.com>",
        "<tkt-7.1.aa@tickets.acme.example>",
    ]
    assert str(msg["Auto-Submitted"]) == "auto-generated"
    assert str(msg["X-Auto-Response-Suppress"]) == "All"
    assert str(msg["X-Loop"]) == "tickets.acme.example"
    assert str(msg["X-Ticketgate-Ticket"]) == "TKT-7"
    assert msg["Date"].datetime == AT
    assert msg.get_all("Bcc") is None and msg.get_all("Cc") is None


def test_wire_format_is_crlf(renderer: Renderer) -> None:
    """The bytes use CRLF line ends only, lines within RFC 5322's 998-octet limit."""
    data = renderer.render(notice(body="x" * 2000))
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_relayed_human_message_has_no_auto_submitted(renderer: Renderer) -> None:
    """A relayed person's message is not marked automatic; the refusal is auto-replied."""
    assert parse(renderer.render(notice(auto_submitted=None)))["Auto-Submitted"] is None
    refusal = parse(renderer.render(notice(kind="refusal", auto_submitted="auto-replied")))
    assert str(refusal["Auto-Submitted"]) == "auto-replied"


def test_to_names_only_the_recipient(renderer: Renderer) -> None:
    """To holds exactly the one recipient; no other participant appears in any header."""
    msg = parse(renderer.render(notice()))
    assert [a.addr_spec for a in msg["To"].addresses] == ["alice@acme.example"]
    headers = "\n".join(f"{k}: {v}" for k, v in msg.items())
    assert "bob" not in headers.lower()


def test_html_escapes_markup(renderer: Renderer) -> None:
    """Text from people is escaped in the HTML part, and kept literally in the text part."""
    evil = "<script>alert(1)</script>"
    msg = parse(
        renderer.render(
            notice(kind="status_change", body=evil, actor=evil, remark=evil, subject=evil)
        )
    )
    text, html = parts(msg)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert evil in text


def test_commands_and_hints_are_listed(renderer: Renderer) -> None:
    """Applied and refused commands, and the commands the recipient may use, are shown."""
    text, html = parts(parse(renderer.render(notice())))
    assert "#take - applied" in text
    assert "#approve - not applied: only the higher authority may approve" in text
    assert "  #return <remark>" in text
    assert "#return &lt;remark&gt;" in html
    assert "only the higher authority may approve" in html


def test_footer_shows_status_target_and_history(renderer: Renderer) -> None:
    """The footer carries status, target and the latest history lines."""
    text, _ = parts(parse(renderer.render(notice())))
    footer = text.split("\n-- \n", 1)[1]
    assert "working on it" in footer and "IT Support" in footer
    assert "2026-11-02 09:00 UTC  raised by Alice Example" in footer
    assert "working on it by Bob Builder: taking it" in footer


@pytest.mark.parametrize(
    "subject",
    [
        "x\nBcc: evil@example.com",
        "x\r\nBcc: evil@example.com",
        "x\rBcc: evil@example.com",
        "x =?UTF-8?Q?=0A?=Bcc: evil@example.com",  # the CVE-2024-6923 reproducer
        "=?UTF-8?Q?x=0ABcc:_evil@example.com?=",
        "héllo =?UTF-8?Q?=0D=0A?=Bcc: evil@example.com",
        "x\x00\x85\u2028Bcc: evil@example.com",
    ],
)
def test_subject_injection_adds_no_header(renderer: Renderer, subject: str) -> None:
    """A hostile subject yields one Subject, no Bcc, and the same header set as a clean one."""
    clean = parse(renderer.render(notice()))
    msg = parse(renderer.render(notice(subject=subject)))
    assert len(msg.get_all("Subject", [])) == 1
    assert msg.get_all("Bcc") is None
    assert sorted(msg.keys()) == sorted(clean.keys())
    subject_out = str(msg["Subject"])
    assert "\n" not in subject_out and "\r" not in subject_out
    assert subject_out.startswith("[TKT-7] ")
    assert str(msg["Thread-Topic"]).count("\n") == 0


def test_names_and_body_injection_adds_no_header(renderer: Renderer) -> None:
    """Line breaks in names, labels, remarks and bodies never become header lines."""
    hostile = "Eve\r\nBcc: evil@example.com\r\n"
    msg = parse(
        renderer.render(
            notice(
                recipient_name=hostile,
                from_name=hostile,
                actor=hostile,
                target=hostile,
                requester=hostile,
                body="hi\r\n\r\nBcc: evil@example.com\r\n.\r\n",
                remark=hostile,
                loop_token="loop\r\nBcc: evil@example.com",
            )
        )
    )
    assert msg.get_all("Bcc") is None
    for name in SINGLE_HEADERS:
        assert len(msg.get_all(name, [])) == 1, name
    assert [a.addr_spec for a in msg["To"].addresses] == ["alice@acme.example"]
    assert msg["To"].addresses[0].display_name == "Eve Bcc: evil@example.com"


@pytest.mark.parametrize("field", ["recipient_email", "from_address", "reply_address"])
def test_address_with_line_break_is_refused(renderer: Renderer, field: str) -> None:
    """An address holding a line break is not cleaned into something else: it is refused."""
    with pytest.raises(HeaderInjection):
        renderer.render(notice(**{field: "alice@acme.example\r\nBcc: evil@example.com"}))


def test_bad_values_are_refused(renderer: Renderer) -> None:
    """Unknown kinds, missing extras, bad ids and Auto-Submitted values are errors."""
    with pytest.raises(ValueError, match="kind"):
        renderer.render(notice(kind="nonsense"))
    with pytest.raises(ValueError, match="reason"):
        renderer.render(notice(kind="refusal", extra={}))
    with pytest.raises(ValueError, match="Message-ID"):
        renderer.render(notice(message_id="no at sign"))
    with pytest.raises(ValueError, match="Auto-Submitted"):
        renderer.render(notice(auto_submitted="yes"))
    with pytest.raises(ValueError, match="reference"):
        renderer.render(notice(ticket_ref="TKT-7\r\nBcc: x@example.com"))


def test_malformed_parent_ids_are_left_out(renderer: Renderer) -> None:
    """Foreign Message-IDs that are not msg-ids drop out of the chain, the mail still goes."""
    msg = parse(
        renderer.render(notice(in_reply_to="not an id", references=("a b", "<ok@x.example>")))
    )
    assert msg["In-Reply-To"] is None
    assert str(msg["References"]) == "<ok@x.example>"


def test_long_reference_chains_keep_root_and_latest(renderer: Renderer) -> None:
    """At most 20 references: the root and the 19 most recent."""
    refs = tuple(f"m{i}@x.example" for i in range(50))
    msg = parse(renderer.render(notice(references=refs)))
    ids = re.findall(r"<([^>]+)>", str(msg["References"]))
    assert len(ids) == 20 and ids[0] == "m0@x.example" and ids[-1] == "m49@x.example"


def test_non_ascii_subject_round_trips(renderer: Renderer) -> None:
    """Non-ASCII subjects are RFC 2047 encoded on the wire and decode back."""
    data = renderer.render(notice(subject="Drucker im Büro – 打印机"))
    assert data.isascii()
    assert str(parse(data)["Subject"]) == "[TKT-7] Drucker im Büro – 打印机"


def test_missing_template_fails_at_startup(tmp_path: Path) -> None:
    """A templates folder without every kind is refused when the renderer is built."""
    with pytest.raises(jinja2.TemplateNotFound):
        Renderer(tmp_path)


def test_templates_dir_is_the_repository_folder() -> None:
    """templates_dir() points at <repo>/templates with both parts of every kind."""
    folder = templates_dir()
    for kind in KINDS:
        assert (folder / f"{kind}.txt.j2").is_file() and (folder / f"{kind}.html.j2").is_file()
