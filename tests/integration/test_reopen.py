"""Replies to closed tickets (SPEC §2.3), auto-reply suppression and the loop breaker (§2.5, RFC 3834)."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path

from gateway.service.commands import Act, RaiseTicket
from tests.conftest import Database, Gateway, mail, make_env, write_demo_org

REQ = "frank@acme.example"  # HR
RC = "grace@acme.example"
IT = "it@acme.example"
IT_MEMBERS = {"alice@acme.example", "bob@acme.example", "carol@acme.example"}


def rcpt(x: EmailMessage) -> str:
    return str(x.get("Delivered-To", "")).strip().lower()


def reply_addr(x: EmailMessage) -> str:
    return getaddresses([str(x["Reply-To"])])[0][1]


def raise_and_close(gw: Gateway) -> tuple[str, list[EmailMessage]]:
    """Frank raises to IT with Grace in Cc, then closes it himself; returns the ref and the mail so far."""
    m1 = mail(REQ, [IT], "Monitor flickers", "Every few seconds.", cc=[RC])
    assert gw.send(m1, REQ, [IT, RC])[0] == 250
    ref = gw.tickets()[-1]["ref"]
    gw.env.service.act(Act(ref, REQ, "close"))
    assert gw.ticket(ref)["status"] == "CLOSED"
    return ref, gw.deliver()


def reply_to(gw: Gateway, sender: str, notice: EmailMessage, text: str) -> None:
    to = reply_addr(notice)
    r = mail(sender, [to], "Re: " + str(notice["Subject"]), text)
    r["In-Reply-To"] = str(notice["Message-ID"])
    assert gw.send(r, sender, [to])[0] == 250


def test_requester_reply_within_window_reopens(gateway: Gateway) -> None:
    """Six days after closing, the requester's reply reopens the ticket and lands on it."""
    ref, out = raise_and_close(gateway)
    gateway.env.clock.advance(days=6)
    reply_to(gateway, REQ, next(x for x in out if rcpt(x) == REQ), "It is back again.")
    t = gateway.ticket(ref)
    assert len(gateway.tickets()) == 1
    assert t["status"] == "REOPENED" and t["closed_at"] is None
    assert [h["status"] for h in t["history"]][-2:] == ["CLOSED", "REOPENED"]
    assert t["messages"][-1]["body"] == "It is back again." and t["messages"][-1]["sender"] == REQ
    later = gateway.deliver()[len(out) :]
    assert any(
        "It is back again." in x.get_body(("plain",)).get_content()
        for x in later
        if rcpt(x) in IT_MEMBERS
    )


def test_requester_reply_after_window_opens_linked_ticket(gateway: Gateway) -> None:
    """Eight days after closing, the requester's reply opens a new ticket linked to the old one."""
    ref, out = raise_and_close(gateway)
    before = gateway.ticket(ref)
    gateway.env.clock.advance(days=8)
    reply_to(gateway, REQ, next(x for x in out if rcpt(x) == REQ), "It is back again.")
    tickets = gateway.tickets()
    assert len(tickets) == 2
    new = tickets[-1]
    assert new["linked_ticket"] == ref and new["ref"] != ref
    assert new["from"]["employee"] == REQ and new["to"]["department"] == IT
    assert new["status"] == "RAISED" and new["messages"][0]["body"] == "It is back again."
    assert gateway.ticket(ref) == before
    acks = [x for x in gateway.deliver()[len(out) :] if rcpt(x) == REQ]
    assert acks and all(str(x["Subject"]).startswith(f"[{new['ref']}]") for x in acks)


def test_non_requester_reply_to_closed_opens_new_ticket(gateway: Gateway) -> None:
    """A copied colleague's reply to a CLOSED ticket, even within the window, opens a new ticket."""
    ref, out = raise_and_close(gateway)
    before = gateway.ticket(ref)
    gateway.env.clock.advance(days=1)
    reply_to(gateway, RC, next(x for x in out if rcpt(x) == RC), "Mine flickers too.")
    tickets = gateway.tickets()
    assert len(tickets) == 2
    new = tickets[-1]
    assert new["linked_ticket"] == ref
    assert new["from"]["employee"] == RC and new["messages"][0]["body"] == "Mine flickers too."
    assert gateway.ticket(ref) == before


def test_no_ack_to_mail_asking_for_no_auto_response(gateway: Gateway) -> None:
    """`X-Auto-Response-Suppress: All` still makes a ticket, but the requester gets no ack."""
    m1 = mail(
        REQ, [IT], "Docking station dead", "No power.", headers={"X-Auto-Response-Suppress": "All"}
    )
    assert gateway.send(m1, REQ, [IT])[0] == 250
    [t] = gateway.tickets()
    assert t["status"] == "RAISED" and t["messages"][0]["body"] == "No power."
    out = gateway.deliver()
    assert not [x for x in out if rcpt(x) == REQ]
    assert {rcpt(x) for x in out} == IT_MEMBERS


def test_loop_breaker_caps_automatic_mail_per_ticket_and_recipient(gateway: Gateway) -> None:
    """A sender provoking a refusal again and again gets at most 10 automatic mails an hour on
    one ticket (the ack counts); people's messages still flow; an hour later one more gets out."""
    m1 = mail(REQ, [IT], "Keyboard sticky", "Keys stick.")
    assert gateway.send(m1, REQ, [IT])[0] == 250
    ref = gateway.tickets()[-1]["ref"]
    out = gateway.deliver()
    ack = next(x for x in out if rcpt(x) == REQ)
    for i in range(12):
        gateway.env.clock.advance(minutes=1)
        reply_to(gateway, REQ, ack, f"#deliver\nplease, attempt {i}")
    assert len(gateway.ticket(ref)["messages"]) == 13  # every message is stored
    later = gateway.deliver()[len(out) :]
    automatic = [x for x in later if rcpt(x) == REQ]
    assert all(x["Auto-Submitted"] in ("auto-replied", "auto-generated") for x in automatic)
    assert len(automatic) == 9  # with the ack: 10 automatic mails in the hour, then silence
    # People's messages are not automatic mail, but notices from one sender stop at
    # `mail.notices_per_sender_hour` (10, the new-ticket notice included): 9 of the 12.
    assert len([x for x in later if rcpt(x) == "alice@acme.example"]) == 9
    gateway.env.clock.advance(minutes=60)
    reply_to(gateway, REQ, ack, "#deliver\nand again")
    newest = gateway.deliver()[len(out) + len(later) :]
    assert [x for x in newest if rcpt(x) == REQ and x["Auto-Submitted"] == "auto-replied"]


def test_loop_breaker_caps_automatic_mail_per_address_and_day(
    database: Database, tmp_path: Path
) -> None:
    """With `mail.auto_mail_per_day = 3`, a fourth and fifth ticket that day get no ack; the
    department is still told of every ticket, and the next day the acks resume."""
    env = make_env(database, tmp_path / "install", {"TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "3"})
    try:
        env.import_org(write_demo_org(tmp_path / "install"))
        from gateway.bootstrap import make_worker

        worker = make_worker(env.app)

        def raise_one(i: int) -> str:
            return env.service.raise_ticket(RaiseTicket(REQ, IT, f"Printer {i}", "jammed"))

        refs = [raise_one(i) for i in range(5)]
        worker.run_once()
        sent = worker.outbox.rows("sent")
        acked = [r["ticket"] for r in sent if r["recipient"] == REQ]
        assert acked == refs[:3]
        for ref in refs:
            assert {r["recipient"] for r in sent if r["ticket"] == ref} >= IT_MEMBERS
        env.clock.advance(days=1)
        ref = raise_one(5)
        worker.run_once()
        assert [r["ticket"] for r in worker.outbox.rows("sent") if r["recipient"] == REQ][-1] == ref
    finally:
        env.app.close()


def test_loop_breaker_hourly_cap_is_configurable(database: Database, tmp_path: Path) -> None:
    """`mail.auto_mail_per_ticket_hour = 3`: the ack and two refusals reach the requester within
    the hour, the rest of the refusals do not; every message is still stored."""
    from tests.conftest import demo_env, serving

    extra = {"TICKETGATE__MAIL__AUTO_MAIL_PER_TICKET_HOUR": "3"}
    with demo_env(database, tmp_path / "install", extra) as env, serving(env) as gw:
        assert env.app.settings.mail.auto_mail_per_ticket_hour == 3
        assert gw.send(mail(REQ, [IT], "Mouse", "It squeaks."), REQ, [IT])[0] == 250
        ref = gw.tickets()[-1]["ref"]
        out = gw.deliver()
        ack = next(x for x in out if rcpt(x) == REQ)
        for i in range(5):
            env.clock.advance(minutes=1)
            reply_to(gw, REQ, ack, f"#deliver\nplease, attempt {i}")
        assert len(gw.ticket(ref)["messages"]) == 6
        later = gw.deliver()[len(out) :]
        assert len([x for x in later if rcpt(x) == REQ]) == 2  # 3 with the ack
