"""The envelope of a mail read over IMAP, from the headers its delivery left (issue 15, SPEC §2.2)."""

from __future__ import annotations

from gateway.mail.imap_intake import envelope_of, queue_mail

MAIL = (
    b"Return-Path: <frank@acme.example>\r\n"
    b"Delivered-To: hr@acme.example\r\n"
    b"X-Original-To: Finance <finance@acme.example>\r\n"
    b"Envelope-To: someone@elsewhere.example, HR@acme.example\r\n"
    b"Return-Path: <older@relay.example>\r\n"
    b"From: Frank <frank@acme.example>\r\n"
    b"To: it@acme.example\r\n"
    b"Subject: x\r\n"
    b"Message-ID: <env@client.example>\r\n"
    b"\r\n"
    b"Delivered-To: body@acme.example\r\n"
)


def test_envelope_comes_from_the_delivery_headers() -> None:
    """The first Return-Path is the sender; Delivered-To, X-Original-To and Envelope-To name the
    recipients, each once, lower-cased; nothing of the body counts."""
    sender, rcpts = envelope_of(MAIL)
    assert sender == "frank@acme.example"
    assert rcpts == [
        "hr@acme.example",
        "finance@acme.example",
        "someone@elsewhere.example",
    ]


def test_null_reverse_path_and_no_return_path() -> None:
    """`Return-Path: <>` is a bounce's null sender; without Return-Path the author stands in."""
    assert envelope_of(b"Return-Path: <>\r\nFrom: MAILER-DAEMON@x.example\r\n\r\n")[0] == ""
    q = queue_mail(
        b"From: grace@acme.example\r\nSubject: y\r\n\r\nhi\r\n", departments=(), is_ours=bool
    )
    assert q.envelope_from == "grace@acme.example" and q.envelope_rcpts == ()


def test_only_our_addresses_and_the_mailbox_departments_are_recipients() -> None:
    """An address the gateway does not own is no recipient; the mailbox's departments are added."""
    ours = {"hr@acme.example", "finance@acme.example"}
    q = queue_mail(MAIL, departments=("IT@acme.example",), is_ours=ours.__contains__)
    assert q.envelope_rcpts == ("hr@acme.example", "finance@acme.example", "it@acme.example")
    assert q.message_id == "env@client.example" and q.sender == "frank@acme.example"
