"""Intake rules tell automatic mail (bounces, auto-replies, lists, loops) from people's mail."""

from __future__ import annotations

import pytest

from gateway.mail.parse import parse_mail
from gateway.mail.rules import RULES, RuleContext, classify, suppresses_auto_reply

OWN = "tickets.acme.example"
CTX = RuleContext(envelope_from="jane@example.com", own_domains=frozenset({OWN}), loop_token=OWN)


def _mail(headers: str, body: str = "Hello\n") -> bytes:
    base = (
        "From: Jane <jane@example.com>\nTo: it@tickets.acme.example\nMessage-ID: <m1@example.com>\n"
    )
    return (base + headers.strip("\n") + "\n\n" + body).encode()


def _kind(headers: str, body: str = "Hello\n", ctx: RuleContext = CTX) -> str | None:
    verdict = classify(parse_mail(_mail(headers, body)), ctx)
    return verdict.kind if verdict else None


def test_rules_have_names_and_descriptions() -> None:
    """Every rule names itself and says what it checks, for the processing record."""
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    assert all(r.description for r in RULES)


def test_person_mail_is_not_classified() -> None:
    """An ordinary mail from a person passes every rule."""
    assert _kind("Subject: Printer broken") is None


@pytest.mark.parametrize(
    ("headers", "kind", "rule"),
    [
        ("Auto-Submitted: auto-replied\nSubject: hi", "auto_reply", "auto-submitted"),
        ("Auto-Submitted: auto-generated (failure)\nSubject: hi", "auto_reply", "auto-submitted"),
        ("X-Autoreply: yes\nSubject: hi", "auto_reply", "x-autoreply"),
        ("X-Autorespond: Thanks\nSubject: hi", "auto_reply", "x-autorespond"),
        ("Precedence: bulk\nSubject: hi", "list", "precedence"),
        ("Precedence: junk\nSubject: hi", "list", "precedence"),
        ("Precedence: list\nSubject: hi", "list", "precedence"),
        ("List-Id: <users.lists.example>\nSubject: hi", "list", "list-headers"),
        ("List-Unsubscribe: <mailto:u@lists.example>\nSubject: hi", "list", "list-headers"),
        ("X-Loop: tickets.acme.example\nSubject: hi", "loop", "own-loop"),
        ("Subject: Automatic reply: your ticket", "out_of_office", "out-of-office"),
        ("Subject: Abwesenheitsnotiz: Drucker", "out_of_office", "out-of-office"),
        (
            "Auto-Submitted: auto-replied\nSubject: Out of Office until Monday",
            "out_of_office",
            "out-of-office",
        ),
        ("X-Apple-Action: VACATION\nSubject: Re: x", "out_of_office", "out-of-office"),
        ("X-Boxtrapper: yes\nSubject: verify", "auto_reply", "challenge-response"),
        (
            "X-Failed-Recipients: bob@example.org\nSubject: Mail delivery failed",
            "bounce",
            "non-standard-bounce",
        ),
    ],
)
def test_header_rules(headers: str, kind: str, rule: str) -> None:
    """Each automatic-mail header hits its own named rule with the expected kind."""
    verdict = classify(parse_mail(_mail(headers)), CTX)
    assert verdict is not None
    assert (verdict.kind, verdict.rule) == (kind, rule)
    assert verdict.reason.startswith("quarantined: ")


def test_auto_submitted_no_is_a_person() -> None:
    """Auto-Submitted: no is explicitly not automatic (RFC 3834 §5)."""
    assert _kind("Auto-Submitted: no\nSubject: hi") is None


def test_vacation_word_alone_is_a_ticket() -> None:
    """A "Vacation request" from a person is a ticket, not an out-of-office."""
    assert _kind("Subject: Vacation request for June") is None


def test_auto_response_suppress_alone_is_not_automatic() -> None:
    """X-Auto-Response-Suppress only asks us not to answer; the mail can still be a ticket."""
    mail = parse_mail(_mail("X-Auto-Response-Suppress: All\nSubject: Please help"))
    assert classify(mail, CTX) is None
    assert suppresses_auto_reply(mail)


def test_own_message_id_is_a_loop() -> None:
    """A Message-ID minted on our domain means our own mail came back."""
    raw = _mail("Subject: hi").replace(b"m1@example.com", b"tkt-7.abc@tickets.acme.example")
    verdict = classify(parse_mail(raw), CTX)
    assert verdict is not None and (verdict.kind, verdict.rule) == ("loop", "own-message-id")


def test_foreign_x_loop_is_not_ours() -> None:
    """Somebody else's X-Loop value does not make the mail ours."""
    assert _kind("X-Loop: helpdesk@other.example\nSubject: hi") is None


def test_null_reverse_path_is_a_bounce() -> None:
    """A mail with MAIL FROM:<> and no other sign is still never a ticket."""
    ctx = RuleContext(envelope_from="", own_domains=frozenset({OWN}), loop_token=OWN)
    verdict = classify(parse_mail(_mail("Subject: hi")), ctx)
    assert verdict is not None and verdict.rule == "null-reverse-path"


def test_mailer_daemon_sender() -> None:
    """A mail from MAILER-DAEMON is a bounce even without a DSN part."""
    raw = _mail("Subject: failure notice").replace(
        b"Jane <jane@example.com>", b"MAILER-DAEMON@mx.example.org"
    )
    verdict = classify(parse_mail(raw), CTX)
    assert verdict is not None and verdict.kind == "bounce"


def test_dsn_extracts_recipient_and_original() -> None:
    """An RFC 3464 DSN yields the failed recipient and the original Message-ID."""
    raw = b"""From: MAILER-DAEMON@mx.example.org
To: it@tickets.acme.example
Subject: Undelivered Mail Returned to Sender
Content-Type: multipart/report; report-type=delivery-status; boundary=R

--R
Content-Type: text/plain

Could not deliver.
--R
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Original-Recipient: rfc822; bob@example.org
Final-Recipient: rfc822; bob@example.org
Action: failed
Status: 5.1.1

--R
Content-Type: text/rfc822-headers

Message-ID: <tkt-42.1@tickets.acme.example>
Subject: [TKT-42] Printer

--R--
"""
    ctx = RuleContext(envelope_from="", own_domains=frozenset({OWN}), loop_token=OWN)
    verdict = classify(parse_mail(raw), ctx)
    assert verdict is not None
    assert (verdict.rule, verdict.kind) == ("multipart-report", "bounce")
    assert verdict.bounced_recipients == ("bob@example.org",)
    assert verdict.original_message_ids == ("tkt-42.1@tickets.acme.example",)
    assert verdict.temporary is False


def test_read_receipt_is_an_auto_reply() -> None:
    """An MDN (multipart/report; report-type=disposition-notification) is an automatic answer."""
    raw = _mail(
        "Subject: Read: x\nContent-Type: multipart/report; report-type=disposition-notification; boundary=Z",
        "--Z\nContent-Type: text/plain\n\nread\n--Z--\n",
    )
    verdict = classify(parse_mail(raw), CTX)
    assert verdict is not None and verdict.kind == "auto_reply"


@pytest.mark.parametrize(
    ("headers", "envelope", "expected"),
    [
        ("X-Auto-Response-Suppress: OOF", "jane@example.com", True),
        ("X-Auto-Response-Suppress: DR, AutoReply", "jane@example.com", True),
        ("X-Auto-Response-Suppress: DR, RN", "jane@example.com", False),
        ("Auto-Submitted: auto-generated", "jane@example.com", True),
        ("Auto-Submitted: no", "jane@example.com", False),
        ("Precedence: bulk", "jane@example.com", True),
        ("Subject: hi", "", True),
        ("Subject: hi", "jane@example.com", False),
    ],
)
def test_suppresses_auto_reply(headers: str, envelope: str, expected: bool) -> None:
    """We never send an ack or refusal where RFC 3834 or Exchange asks us not to."""
    mail = parse_mail(_mail(headers))
    assert suppresses_auto_reply(mail, envelope_from=envelope) is expected


def test_suppresses_auto_reply_uses_return_path_without_envelope() -> None:
    """Without an envelope (IMAP), Return-Path: <> counts as a null sender."""
    assert suppresses_auto_reply(parse_mail(_mail("Return-Path: <>")))


def test_outlook_mail_with_suppress_header_is_a_person() -> None:
    """A person's mail whose subject mentions vacation and carries X-Auto-Response-Suppress is
    not quarantined: the header asks us not to auto-reply, it does not mark an auto-reply."""
    raw = (
        b"From: Frank <frank@acme.example>\r\nTo: hr@acme.example\r\n"
        b"Subject: Vacation request for December\r\nX-Auto-Response-Suppress: All\r\n"
        b"Message-ID: <v1@acme.example>\r\n\r\nMay I take the 20th to the 31st off?\r\n"
    )
    from gateway.mail.parse import parse_mail as _parse
    from gateway.mail.rules import RuleContext as _Ctx
    from gateway.mail.rules import classify as _classify
    from gateway.mail.rules import suppresses_auto_reply as _suppresses

    mail = _parse(raw)
    ctx = _Ctx(
        envelope_from="frank@acme.example",
        own_domains=frozenset({"t.example"}),
        loop_token="t.example",
    )
    assert _classify(mail, ctx) is None
    assert _suppresses(mail)


_XCH = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e"


@pytest.mark.parametrize(
    ("raw", "rule", "kind"),
    [
        (f"From: Microsoft Outlook <{_XCH}@partner.example>\nSubject: Undeliverbar\n\nx\n",
         "exchange-system-sender", "bounce"),
        (("From: Mail <m@isp.example>\nSubject: Zustellung fehlgeschlagen: Termin\n"
         "Content-Type: text/plain; charset=utf-8\n\n"
         "Die Nachricht konnte an folgende Empfänger oder Gruppen nicht übermittelt werden:\n"
         "bob@isp.example\n"), "localised-ndr-subject", "bounce"),
        (("From: IMail <imail@isp.example>\nSubject: Mail for you\n\nUnknown user: bob@isp.example\n\n"
         "Original message follows.\n\nSubject: x\n"), "ndr-body-statement", "bounce"),
        (("From: Gate <gate@isp.example>\nSubject: Message status\n\nHi. This is the qmail-send "
         "program at mx.isp.example.\nI'm afraid I wasn't able to deliver your message to the "
         "following addresses.\nThis is a permanent error; I've given up. Sorry it didn't work "
         "out.\n\n<bob@isp.example>:\nSorry, no mailbox here by that name.\n"), "flufl-bounce",
         "bounce"),
        ("From: Bob <bob@partner.example>\nSubject: AUTO: Bob Smith is out of the office\n\nx\n",
         "lotus-notes-auto", "out_of_office"),
        ("From: Bob <bob@partner.example>\nSubject: 自動応答: Meeting\n\nx\n", "out-of-office",
         "out_of_office"),
        ("From: Bob <notification@boxbe.com>\nSubject: Meeting (Action Required)\n\nx\n",
         "challenge-response-service", "auto_reply"),
        (("From: Bob <bob@partner.example>\nSubject: Please verify you are a human sender\n\n"
         "Your message is held. To control spam, confirm you are not a robot:\n"
         "https://verify.partner.example/c/1\n"), "challenge-request", "auto_reply"),
    ],
)  # fmt: skip
def test_issue16_rules_name_their_signal(raw: str, rule: str, kind: str) -> None:
    """Each issue-16 signal is its own named rule, and its reason says what it saw."""
    mail = parse_mail(("To: jan@acme.example\nMessage-ID: <x1@partner.example>\n" + raw).encode())
    verdict = classify(mail, CTX)
    assert verdict is not None, raw
    assert (verdict.rule, verdict.kind) == (rule, kind)
    assert verdict.reason.startswith("quarantined: ") and len(verdict.reason) > 20


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Out of office next week - who covers?", "I am out of office until Monday.\n"),
        ("Fwd: Undeliverable: Report", ("Why?\n\n---------- Forwarded message ---------\n"
         f"From: Microsoft Outlook <{_XCH}@p.example>\nSubject: Undeliverable: Report\n\n"
         "Delivery has failed to these recipients or groups:\nbob@p.example\n")),
        ("Re: Mail delivery failed", ("Still happens.\n\nOn Mon, 2 Nov 2026, Mail Delivery "
         "System <x@p.example> wrote:\n> A message that you sent could not be delivered to one "
         "or more of its\n> recipients. This is a permanent error.\n>   bob@p.example\n")),
        ("Mails to the supplier come back", ("They answer \"User Bob (bob@p.example) not listed "
         "in Domino Directory\". Can you check?\n")),
        ("auto: parking permit", "How do I renew it?\n"),
        ("Please verify your email address for the HR portal?", "The link is broken.\n"),
    ],
)  # fmt: skip
def test_people_who_mention_automatic_mail_are_not_quarantined(subject: str, body: str) -> None:
    """A person writing about an absence, or quoting or forwarding a bounce, is still a ticket."""
    assert _kind(f"Subject: {subject}", body) is None


def test_bounce_answering_with_re_subject_is_still_a_bounce() -> None:
    """An MTA that answers "RE: <subject> : non remis (delivery failed)" and states the failure
    in its own words is a bounce (flufl.bounce simple_20), while a person's "Re:" that only
    quotes one is not (see test_people_who_mention_automatic_mail_are_not_quarantined)."""
    body = (
        "***********************\nVotre message n'a pas pu etre delivre a\nuserx@example.com\n\n"
        "***********************\nYour message could not be delivered to\nuserx@example.com\n"
    )
    subject = "Subject: RE: Your message to GPC-talk awaits moderator approval : non remis (delivery failed)"
    assert _kind(subject, body) == "bounce"


def test_person_forwarding_a_bounce_as_attachment_is_not_quarantined() -> None:
    """A colleague who attaches the bounce they got (message/rfc822) writes a ticket; the
    delivery-status part inside the attachment is not this mail's own."""
    from email import message_from_bytes
    from email import policy as email_policy
    from email.message import EmailMessage

    from tests.unit.test_corpus import FIXTURES

    bounce = (FIXTURES / "sisimai-set-of-emails/maildir/bsd/lhost-postfix-01.eml").read_bytes()
    msg = EmailMessage()
    msg["From"] = "Jane <jane@example.com>"
    msg["To"] = "it@tickets.acme.example"
    msg["Subject"] = "Mail to the supplier bounces"
    msg["Message-ID"] = "<fwd-bounce@example.com>"
    msg.set_content("Every mail to the supplier bounces, see the attached report.")
    msg.add_attachment(message_from_bytes(bounce, policy=email_policy.default))
    assert classify(parse_mail(msg.as_bytes()), CTX) is None


_QMAIL_REPORT = (
    "Hi. This is the qmail-send program at mx.isp.example.\nI'm afraid I wasn't able to deliver "
    "your message to the following addresses.\nThis is a permanent error; I've given up. Sorry it "
    "didn't work out.\n\n<bob@isp.example>:\nSorry, no mailbox here by that name.\n"
)


def test_a_colleague_pasting_a_failure_report_is_not_judged_by_flufl() -> None:
    """flufl.bounce's detectors do not judge mail from one of our active employees: the same
    pasted qmail report is a bounce from a stranger's address and a ticket from a colleague's
    (`RuleContext.is_colleague`, which the intake runner answers from its directory)."""
    raw = (
        "From: Gate <gate@isp.example>\nTo: it@tickets.acme.example\nSubject: Message status\n"
        "Message-ID: <q1@isp.example>\n\n" + _QMAIL_REPORT
    ).encode()
    mail = parse_mail(raw)
    stranger = classify(mail, CTX)
    assert stranger is not None and stranger.rule == "flufl-bounce", stranger
    asked: list[str] = []

    def colleague(address: str) -> bool:
        asked.append(address)
        return address == "gate@isp.example"

    ctx = RuleContext(
        envelope_from="gate@isp.example",
        own_domains=frozenset({OWN}),
        loop_token=OWN,
        is_colleague=colleague,
    )
    assert classify(mail, ctx) is None
    assert asked == ["gate@isp.example"]


def test_a_colleague_address_does_not_hide_a_report_the_other_rules_see() -> None:
    """Only flufl's last-resort scan is skipped for a colleague: a delivery-status report from
    that address is still a bounce."""
    raw = (
        b"From: Jan <jan@acme.example>\nTo: it@tickets.acme.example\nSubject: Report\n"
        b"Message-ID: <r1@acme.example>\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\nDelivery failed.\n"
        b"--b\nContent-Type: message/delivery-status\n\n"
        b"Reporting-MTA: dns; mx.acme.example\n\nFinal-Recipient: rfc822; bob@isp.example\n"
        b"Action: failed\nStatus: 5.1.1\n--b--\n"
    )
    ctx = RuleContext(
        envelope_from="jan@acme.example",
        own_domains=frozenset({OWN}),
        loop_token=OWN,
        is_colleague=lambda address: True,
    )
    verdict = classify(parse_mail(raw), ctx)
    assert verdict is not None and verdict.kind == "bounce", verdict
    assert verdict.bounced_recipients == ("bob@isp.example",)
