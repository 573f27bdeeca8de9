"""Outbound mail and threading end to end (SPEC §2.3, §2.6): SMTP in, maildir out, replies back in."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import getaddresses

import pytest

from tests.conftest import Gateway, mail

REQ = "frank@acme.example"  # HR
IT = "it@acme.example"
IT_MEMBERS = {"alice@acme.example", "bob@acme.example", "carol@acme.example"}


def rcpt(x: EmailMessage) -> str:
    return str(x.get("Delivered-To", "")).strip().lower()


def raise_by_mail(gw: Gateway, *, bcc: list[str] | None = None) -> tuple[str, list[EmailMessage]]:
    m1 = mail(
        REQ, [IT], "Laptop battery swells", "The case is bent.", msgid="<orig-1@client.example>"
    )
    assert gw.send(m1, REQ, [IT, *(bcc or [])])[0] == 250
    ref = gw.tickets()[-1]["ref"]
    return ref, gw.deliver()


def reply_addr(x: EmailMessage) -> str:
    return getaddresses([str(x["Reply-To"])])[0][1]


def test_ack_and_notices_thread_under_the_original(gateway: Gateway) -> None:
    """The requester's ack and the department notice chain to the requester's Message-ID."""
    ref, out = raise_by_mail(gateway)
    to_req = [x for x in out if rcpt(x) == REQ]
    to_it = [x for x in out if rcpt(x) in IT_MEMBERS]
    assert len(to_req) == 1 and {rcpt(x) for x in to_it} == IT_MEMBERS - {"victor@acme.example"}
    ack = to_req[0]
    assert str(ack["Subject"]).startswith(f"[{ref}] ")
    assert str(ack["In-Reply-To"]) == "<orig-1@client.example>"
    assert "<orig-1@client.example>" in str(ack["References"])
    assert ack["Auto-Submitted"] == "auto-generated"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["Thread-Index"] and ack["Thread-Topic"] == "Laptop battery swells"
    assert ack["Message-ID"] and ack["X-Loop"]
    # every recipient has a Reply-To token of their own
    assert len({reply_addr(x) for x in out}) == len(out)
    for x in out:
        assert [a for _, a in getaddresses([str(x["To"])])] == [rcpt(x)]


def _client_reply(style: str, sender: str, notice: EmailMessage, text: str) -> EmailMessage:
    subj = str(notice["Subject"])
    if style == "outlook":
        r = mail(
            sender,
            [reply_addr(notice)],
            "RE: " + subj,
            f"{text}\n\n-----Original Message-----\nFrom: Helpdesk\nSent: Monday\n\nold text",
        )
        r["In-Reply-To"] = str(notice["Message-ID"])
    elif style == "thunderbird":
        r = mail(
            sender,
            [reply_addr(notice)],
            "Re: " + subj,
            f"{text}\n\nOn 02.11.26 09:00, Helpdesk wrote:\n> old text\n",
        )
        r["In-Reply-To"] = str(notice["Message-ID"])
        r["References"] = str(notice["Message-ID"])
    elif style == "gmail-references-only":
        # No reply token: the mail goes to the department address, threaded by References.
        r = mail(
            sender,
            [IT],
            "Re: " + subj,
            f"{text}\n\nOn Mon, Nov 2, 2026 at 9:00 AM Helpdesk <x@y> wrote:\n> old text\n",
        )
        r["References"] = str(notice["Message-ID"])
    elif style == "german-subject-tag-only":
        r = mail(sender, [IT], "AW: " + subj, f"{text}\n\n> old text\n")
    else:
        raise AssertionError(style)
    return r


@pytest.mark.parametrize(
    "style", ["outlook", "thunderbird", "gmail-references-only", "german-subject-tag-only"]
)
def test_reply_round_trip(gateway: Gateway, style: str) -> None:
    """Member replies from a mail client → REPLIED and relayed; requester answers → RESPONDED."""
    ref, out = raise_by_mail(gateway)
    notice = next(x for x in out if rcpt(x) == "alice@acme.example")
    r = _client_reply(style, "alice@acme.example", notice, "Bring it to the IT desk today.")
    assert gateway.send(r, "alice@acme.example", [getaddresses([str(r["To"])])[0][1]])[0] == 250
    t = gateway.ticket(ref)
    assert len(gateway.tickets()) == 1
    assert t["status"] == "REPLIED"
    assert t["messages"][-1]["body"] == "Bring it to the IT desk today."
    out2 = gateway.deliver()[len(out) :]
    to_req = [x for x in out2 if rcpt(x) == REQ]
    assert (
        to_req and "Bring it to the IT desk today." in to_req[-1].get_body(("plain",)).get_content()
    )
    answer = _client_reply(style, REQ, to_req[-1], "OK, at 3pm.")
    assert gateway.send(answer, REQ, [getaddresses([str(answer["To"])])[0][1]])[0] == 250
    t = gateway.ticket(ref)
    assert t["status"] == "RESPONDED"
    assert t["messages"][-1]["body"] == "OK, at 3pm."


def test_body_commands_applied_and_confirmed(gateway: Gateway) -> None:
    """`#take` in a reply applies with the sender's rights; the confirmation lists it."""
    ref, out = raise_by_mail(gateway)
    notice = next(x for x in out if rcpt(x) == "bob@acme.example")
    r = mail("bob@acme.example", [reply_addr(notice)], "Re: x", "#take\nOn it.")
    gateway.send(r, "bob@acme.example", [reply_addr(notice)])
    t = gateway.ticket(ref)
    assert t["to"]["owner"] == "bob@acme.example"
    assert [h["status"] for h in t["history"]] == ["RAISED", "WORKING_ON_IT"]
    assert t["messages"][-1]["body"] == "On it."
    conf = [x for x in gateway.deliver()[len(out) :] if rcpt(x) == "bob@acme.example"]
    assert conf and "#take" in conf[-1].get_body(("plain",)).get_content()
    # requester tries #deliver → refused, told so, nothing changed
    r2 = mail(REQ, [IT], f"Re: [{ref}] x", "#deliver\nthanks")
    gateway.send(r2, REQ, [IT])
    assert gateway.ticket(ref)["status"] != "DELIVERED"
    refusals = [
        x for x in gateway.deliver() if rcpt(x) == REQ and x["Auto-Submitted"] == "auto-replied"
    ]
    assert refusals and "#deliver" in refusals[-1].get_body(("plain",)).get_content()


def test_forged_and_foreign_tokens_refused(gateway: Gateway) -> None:
    """A flipped token character is refused at RCPT; a token of ticket A never posts to ticket B."""
    ref_a, out = raise_by_mail(gateway)
    notice = next(x for x in out if rcpt(x) == REQ)
    addr = reply_addr(notice)
    local, dom = addr.split("@")
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + dom
    code, _ = gateway.send(mail(REQ, [forged], "Re: x", "forged"), REQ, [forged])
    assert code == 550
    n = len(gateway.ticket(ref_a)["messages"])
    # Ticket B by someone else; Frank is not a participant of B: his token for A says A, not B.
    gateway.send(mail("henry@acme.example", [IT], "Other", "other"), "henry@acme.example", [IT])
    ref_b = gateway.tickets()[-1]["ref"]
    r = mail(REQ, [addr], f"Re: [{ref_b}] Other", "I post via A's token")
    gateway.send(r, REQ, [addr])
    assert len(gateway.ticket(ref_b)["messages"]) == 1
    assert len(gateway.ticket(ref_a)["messages"]) == n + 1


def test_rotating_the_secret_invalidates_old_tokens(gateway: Gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Tokens signed with a rotated-out secret are refused; with it kept as previous they pass."""
    from gateway.domain.tokens import ReplyTokens, token_from_address

    _, out = raise_by_mail(gateway)
    addr = reply_addr(next(x for x in out if rcpt(x) == REQ))
    tok = token_from_address(addr, local="reply", domain="tickets.acme.example")
    assert tok
    now = gateway.env.clock.now()
    assert ReplyTokens("new-secret-xyz").verify(tok, now=now) is None
    assert (
        ReplyTokens("new-secret-xyz", ("test-secret-0123456789abcdef",)).verify(tok, now=now)
        is not None
    )


def test_subject_tag_hijack_opens_new_ticket(gateway: Gateway) -> None:
    """A non-participant quoting [TKT-n] in the subject opens a new ticket (hijack rule)."""
    ref, _ = raise_by_mail(gateway)
    n = len(gateway.ticket(ref)["messages"])
    gateway.send(
        mail("nora@acme.example", [IT], f"Re: [{ref}] Laptop", "me too"), "nora@acme.example", [IT]
    )
    assert len(gateway.ticket(ref)["messages"]) == n
    assert len(gateway.tickets()) == 2


def test_rc_message_leaves_status_and_rhc_reply_stays_hidden(gateway: Gateway) -> None:
    """An RC's message leaves the status; an RHC member's reply is hidden from requester and RC."""
    m1 = mail(REQ, [IT], "Payroll error", "wrong amount", cc=["grace@acme.example"])
    gateway.send(m1, REQ, [IT, "james@tickets.acme.example"])
    ref = gateway.tickets()[-1]["ref"]
    out = gateway.deliver()
    to_rc = next(x for x in out if rcpt(x) == "grace@acme.example")
    gateway.send(
        mail("grace@acme.example", [reply_addr(to_rc)], "Re: x", "I confirm."),
        "grace@acme.example",
        [reply_addr(to_rc)],
    )
    assert gateway.ticket(ref)["status"] == "RAISED"
    to_rhc = next(x for x in out if rcpt(x) == "james@acme.example")
    secret = "Secret remark from finance."
    gateway.send(
        mail("james@acme.example", [reply_addr(to_rhc)], "Re: x", secret),
        "james@acme.example",
        [reply_addr(to_rhc)],
    )
    t = gateway.ticket(ref)
    assert t["messages"][-1]["hidden"] is True and t["status"] == "RAISED"
    later = gateway.deliver()
    for x in later:
        raw = x.as_string().lower()
        if rcpt(x) in {REQ, "grace@acme.example"}:
            assert secret.lower() not in raw and "james" not in raw
    assert any(secret in x.as_string() for x in later if rcpt(x) == "alice@acme.example")
