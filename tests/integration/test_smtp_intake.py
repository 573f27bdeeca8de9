"""SMTP intake over a real socket (SPEC §2.1–2.5): targets, copies, refusals, quarantine, dedupe."""

from __future__ import annotations

import json
import smtplib

import pytest
from sqlalchemy import func, select

from store import models as m
from tests.conftest import Gateway, mail, run_cli, storage_unreachable

REQ = "frank@acme.example"  # HR, New York
IT = "it@acme.example"
FAC = "facilities@acme.example"


def count(gw: Gateway, model: type) -> int:
    with gw.env.app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def only_ticket(gw: Gateway) -> dict:
    ts = gw.tickets()
    assert len(ts) == 1, [t["ref"] for t in ts]
    return ts[0]


def test_department_cc_and_bcc(gateway: Gateway) -> None:
    """To: department → DEPARTMENT ticket; Cc colleague → RC; envelope-only gateway address → RHC."""
    m1 = mail(
        REQ, [IT], "VPN drops", "Since Monday the VPN drops hourly.", cc=["grace@acme.example"]
    )
    code, _ = gateway.send(m1, REQ, [IT, "henry@tickets.acme.example"])
    assert code == 250
    t = only_ticket(gateway)
    assert t["assignment_type"] == "DEPARTMENT"
    assert t["to"]["department"] == IT
    assert t["copies"]["rc"] == ["grace@acme.example"]
    assert t["copies"]["rhc"] == ["henry@acme.example"]
    assert t["from"]["employee"] == REQ and t["from"]["channel"] == "email"
    assert t["messages"][0]["body"].startswith("Since Monday")


def test_individual_ticket(gateway: Gateway) -> None:
    """To: a colleague's gateway address → INDIVIDUAL ticket to that colleague."""
    code, _ = gateway.send(
        mail(REQ, ["alice@tickets.acme.example"], "Access", "Please grant access."),
        REQ,
        ["alice@tickets.acme.example"],
    )
    assert code == 250
    t = only_ticket(gateway)
    assert t["assignment_type"] == "INDIVIDUAL"
    assert t["to"]["employee"] == "alice@acme.example"


def test_two_departments_make_one_ticket(gateway: Gateway) -> None:
    """A mail to two department addresses → one ticket, the second department an RC."""
    code, _ = gateway.send(
        mail(REQ, [IT, FAC], "Desk move", "Move desk and phone."), REQ, [IT, FAC]
    )
    assert code == 250
    t = only_ticket(gateway)
    assert t["to"]["department"] == IT
    assert t["copies"]["rc"] == [FAC]


def test_second_department_in_cc_is_rc(gateway: Gateway) -> None:
    """A department in Cc is a visible copy of that department."""
    gateway.send(mail(REQ, [IT], "Desk", "x", cc=[FAC]), REQ, [IT, FAC])
    assert only_ticket(gateway)["copies"]["rc"] == [FAC]


def test_subaddress_sets_category(gateway: Gateway) -> None:
    """`it+mouse@` picks the sub-category (and its category) by name."""
    gateway.send(
        mail(REQ, ["it+mouse@acme.example"], "Mouse", "broken"), REQ, ["it+mouse@acme.example"]
    )
    t = only_ticket(gateway)
    assert (t["category"], t["sub_category"]) == ("Hardware", "Mouse")


def test_body_category_command(gateway: Gateway) -> None:
    """`#category Software/...` at the top of the body sets the category at raise time."""
    gateway.send(mail(REQ, [IT], "Licence", "#category Access\nI need a licence."), REQ, [IT])
    t = only_ticket(gateway)
    assert t["category"] == "Access"
    assert t["messages"][0]["body"] == "I need a licence."


def test_redelivery_is_applied_once(gateway: Gateway) -> None:
    """The same Message-ID from the same sender twice: both acknowledged, one ticket."""
    m1 = mail(REQ, [IT], "Monitor flickers", "left monitor")
    assert gateway.send(m1, REQ, [IT])[0] == 250
    assert gateway.send(m1, REQ, [IT])[0] == 250
    assert len(gateway.tickets()) == 1
    assert count(gateway, m.InboundMail) == 1


def test_unknown_sender_refused_nothing_stored(gateway: Gateway) -> None:
    """A sender who is not an employee gets 550 5.7.1 and nothing is stored."""
    code, text = gateway.send(
        mail("stranger@else.example", [IT], "hi", "hi"), "stranger@else.example", [IT]
    )
    assert code == 550 and "5.7.1" in text and "not an employee" in text
    assert (
        count(gateway, m.Ticket) == 0
        and count(gateway, m.InboundMail) == 0
        and count(gateway, m.Blob) == 0
    )


def test_unknown_recipient_refused_at_rcpt(gateway: Gateway) -> None:
    """RCPT TO an address the gateway does not own → 550 5.1.1 before DATA."""
    code, text = gateway.send(
        mail(REQ, ["nobody@acme.example"], "x", "y"), REQ, ["nobody@acme.example"]
    )
    assert code == 550 and "5.1.1" in text


def test_postmaster_is_accepted(gateway: Gateway) -> None:
    """RFC 5321 requires postmaster; RCPT TO:<postmaster@…> is accepted."""
    with smtplib.SMTP("127.0.0.1", gateway.port) as s:
        s.ehlo()
        s.mail(REQ)
        assert s.rcpt("postmaster@tickets.acme.example")[0] == 250


def test_oversize_gets_552_and_size_is_advertised(gateway: Gateway) -> None:
    """SIZE is advertised in EHLO; a message over the limit gets 552."""
    limit = gateway.env.app.settings.smtp.max_message_bytes
    with smtplib.SMTP("127.0.0.1", gateway.port) as s:
        s.ehlo()
        assert s.has_extn("size") and int(s.esmtp_features["size"]) == limit
    big = mail(REQ, [IT], "big", "x" * 100)
    big.add_attachment(
        b"\0" * (limit + 1000), maintype="application", subtype="octet-stream", filename="big.bin"
    )
    code, _ = gateway.send(big, REQ, [IT])
    assert code == 552
    assert count(gateway, m.Ticket) == 0


def test_auto_reply_and_bounce_quarantined(gateway: Gateway) -> None:
    """Auto-replies and bounces are accepted (250), quarantined, never tickets, never answered."""
    ooo = mail(REQ, [IT], "Out of office", "Away.", headers={"Auto-Submitted": "auto-replied"})
    assert gateway.send(ooo, REQ, [IT])[0] == 250
    bounce = mail(
        "MAILER-DAEMON@acme.example", [IT], "Undelivered Mail Returned to Sender", "mail system"
    )
    assert gateway.send(bounce, "", [IT])[0] == 250
    assert count(gateway, m.Ticket) == 0
    with gateway.env.app.sessions() as s:
        reasons = [r.rule for r in s.scalars(select(m.InboundMail).order_by(m.InboundMail.id))]
    assert len(reasons) == 2 and all(r.startswith("quarantined: ") for r in reasons)
    assert gateway.deliver() == []


# A qmail failure report that only flufl.bounce's detectors recognise (no DSN part, no
# original attached, no localised NDR subject).
QMAIL_REPORT = (
    "Hi. This is the qmail-send program at mx.isp.example.\nI'm afraid I wasn't able to "
    "deliver your message to the following addresses.\nThis is a permanent error; I've given "
    "up. Sorry it didn't work out.\n\n<bob@isp.example>:\nSorry, no mailbox here by that name.\n"
)


def test_a_colleague_pasting_a_failure_report_gets_a_ticket(gateway: Gateway) -> None:
    """The runner asks its directory whether the sender is an employee before flufl.bounce's
    detectors judge a mail: from a stranger the pasted report is a bounce in quarantine; from
    an employee it is a ticket, every time."""
    stranger = mail("gate@isp.example", [IT], "Message status", QMAIL_REPORT)
    assert gateway.send(stranger, "gate@isp.example", [IT])[0] == 250
    found = gateway.explain(str(stranger["Message-ID"]))
    assert found["outcome"] == "quarantined" and "flufl.bounce" in found["rule"], found
    for n in (1, 2):
        pasted = mail(REQ, [IT], "Message status", f"Why do I get this? ({n})\n\n{QMAIL_REPORT}")
        assert gateway.send(pasted, REQ, [IT])[0] == 250
        found = gateway.explain(str(pasted["Message-ID"]))
        assert found["outcome"] == "ticket", found
    assert count(gateway, m.Ticket) == 2


def test_colleague_question_with_storage_down_is_no(sqlite_gateway: Gateway) -> None:
    """With the database unreachable the runner's `is_colleague` answers no instead of raising
    (a raise while parsing would quarantine the mail as unparseable): flufl then judges the
    mail as before, and the batch's own transaction meets the same trouble."""
    intake = sqlite_gateway.runner.intake  # type: ignore[attr-defined]
    with storage_unreachable(sqlite_gateway.env):
        assert intake.is_colleague(REQ) is False
    assert intake.is_colleague(REQ) is True
    assert intake.is_colleague("gate@isp.example") is False


@pytest.fixture
def trusting_gateway(env, tmp_path):  # type: ignore[no-untyped-def]
    """A second installation on the same database that trusts `mx.acme.example`'s A-R."""
    from tests.conftest import Database, demo_env, serving

    with (
        demo_env(
            Database("x", env.app.settings.database.url),
            tmp_path / "trusting",
            {"TICKETGATE__MAIL__TRUSTED_AUTHSERV_IDS": "mx.acme.example"},
        ) as env2,
        serving(env2) as gw,
    ):
        yield gw


def test_dmarc_fail_from_own_domain_refused(trusting_gateway: Gateway) -> None:
    """With a trusted authserv-id, `dmarc=fail` on the org's own domain → 550, nothing applied."""
    gw = trusting_gateway
    ar = "mx.acme.example; spf=fail; dkim=none; dmarc=fail header.from=acme.example"
    forged = mail(REQ, [IT], "Wire money", "now", headers={"Authentication-Results": ar})
    code, text = gw.send(forged, REQ, [IT])
    assert code == 550 and "DMARC" in text
    # A lower A-R claiming pass from an untrusted host does not help.
    forged2 = mail(REQ, [IT], "Wire money", "now")
    forged2["Authentication-Results"] = "mx.acme.example; dmarc=fail header.from=acme.example"
    forged2["Authentication-Results"] = "evil.example; dmarc=pass"
    assert gw.send(forged2, REQ, [IT])[0] == 550
    assert gw.tickets() == []
    ok = "mx.acme.example; dmarc=pass header.from=acme.example"
    good = mail(REQ, [IT], "Hello", "#priority high\nok", headers={"Authentication-Results": ok})
    assert gw.send(good, REQ, [IT])[0] == 250
    assert [t["priority"] for t in gw.tickets()] == ["high"]


def test_mail_explain_names_the_rule(gateway: Gateway) -> None:
    """`mail explain` names the rule for a new ticket, a threaded reply and a quarantined auto-reply."""
    first = mail(REQ, [IT], "Printer", "jammed", msgid="<first@client.example>")
    gateway.send(first, REQ, [IT])
    ref = only_ticket(gateway)["ref"]
    reply = mail(REQ, [IT], f"Re: [{ref}] Printer", "still jammed", msgid="<second@client.example>")
    reply["In-Reply-To"] = "<first@client.example>"
    gateway.send(reply, REQ, [IT])
    ooo = mail(
        REQ,
        [IT],
        "Automatic reply",
        "Away",
        msgid="<third@client.example>",
        headers={"Auto-Submitted": "auto-replied"},
    )
    gateway.send(ooo, REQ, [IT])
    out = {}
    for mid in ("first", "second", "third"):
        r = run_cli(gateway.env.env, "mail", "explain", f"<{mid}@client.example>", "--json")
        assert r.returncode == 0, r.stderr
        out[mid] = json.loads(r.stdout)
    assert out["first"] == {
        "message_id": "first@client.example",
        "outcome": "ticket",
        "rule": "new ticket: no rule matched",
        "ticket": ref,
    }
    assert out["second"]["outcome"] == "message" and out["second"]["ticket"] == ref
    assert out["second"]["rule"] == "threaded by In-Reply-To <first@client.example>"
    assert out["third"]["outcome"] == "quarantined"
    assert "Auto-Submitted" in out["third"]["rule"]
    q = json.loads(run_cli(gateway.env.env, "quarantine", "list", "--json").stdout)
    assert [x["message_id"] for x in q] == ["third@client.example"]
    assert set(q[0]) == {"id", "message_id", "sender", "reason", "at"}
    assert run_cli(gateway.env.env, "mail", "explain", "<nope@x>").returncode == 1


def test_storage_down_gives_451_then_stored_once(sqlite_gateway: Gateway) -> None:
    """SQLite file read-only → 451 4.3.0; after recovery the retried message is stored once."""
    msg = mail(REQ, [IT], "While down", "text", msgid="<down@client.example>")
    with storage_unreachable(sqlite_gateway.env):
        code, text = sqlite_gateway.send(msg, REQ, [IT])
        assert code == 451 and "4.3.0" in text
    assert sqlite_gateway.send(msg, REQ, [IT])[0] == 250
    assert sqlite_gateway.send(msg, REQ, [IT])[0] == 250
    assert len(sqlite_gateway.tickets()) == 1


@pytest.mark.parametrize(
    "subject",
    [
        "=?UTF-8?Q?x=0ABcc:_evil@example.com?=",
        "=?UTF-8?Q?hello=0D=0ABcc=3A_evil@example.com?=",
    ],
)
def test_header_injection_in_subject(gateway: Gateway, subject: str) -> None:
    """CR/LF smuggled into a subject never reaches a header we write (CVE-2024-6923)."""
    raw = (
        f"From: {REQ}\r\nTo: {IT}\r\nSubject: {subject}\r\nMessage-ID: <inj@client.example>\r\n"
        "Date: Mon, 02 Nov 2026 09:00:00 +0000\r\n\r\nbody\r\n"
    ).encode()
    assert gateway.send(raw, REQ, [IT])[0] == 250
    t = only_ticket(gateway)
    assert "\n" not in t["subject"] and "\r" not in t["subject"]
    out = gateway.deliver()
    assert out
    for x in out:
        assert len(x.get_all("Subject")) == 1
        assert x.get("Bcc") is None
        assert "evil@example.com" not in str(x.get("To", ""))
        assert "\n" not in str(x["Subject"])


def test_external_addresses_recorded_not_added(gateway: Gateway) -> None:
    """Addresses outside the organization in To/Cc are named in history, never participants."""
    m1 = mail(
        REQ, [IT, "vendor@printers.example"], "Toner", "order toner", cc=["boss@elsewhere.example"]
    )
    assert gateway.send(m1, REQ, [IT])[0] == 250
    t = only_ticket(gateway)
    assert t["copies"] == {"rc": [], "rhc": []}
    remark = t["history"][0]["remark"]
    assert "vendor@printers.example" in remark and "boss@elsewhere.example" in remark


def test_mail_without_message_id_deduped_by_digest(gateway: Gateway) -> None:
    """A mail without Message-ID gets a stable digest key: the same bytes twice make one ticket."""
    raw = f"From: {REQ}\r\nTo: {IT}\r\nSubject: no id\r\n\r\nbody without id\r\n".encode()
    assert gateway.send(raw, REQ, [IT])[0] == 250
    assert gateway.send(raw, REQ, [IT])[0] == 250
    assert len(gateway.tickets()) == 1
    assert count(gateway, m.InboundMail) == 1


def test_winmail_dat_and_inline_image_kept(gateway: Gateway) -> None:
    """Outlook's winmail.dat is kept as an attachment as it came; an inline image is kept too."""
    m1 = mail(REQ, [IT], "Scan", "see attached")
    m1.add_attachment(
        b"\x78\x9f\x3e\x22" + b"\0" * 64,
        maintype="application",
        subtype="ms-tnef",
        filename="winmail.dat",
    )
    m1.add_attachment(
        b"\x89PNG\r\n\x1a\n" + b"\0" * 32,
        maintype="image",
        subtype="png",
        filename="shot.png",
        disposition="inline",
        cid="<img1@client.example>",
    )
    assert gateway.send(m1, REQ, [IT])[0] == 250
    atts = {a["name"]: a for a in only_ticket(gateway)["messages"][0]["attachments"]}
    assert (
        atts["winmail.dat"]["type"] == "application/ms-tnef" and atts["winmail.dat"]["size"] == 68
    )
    assert atts["shot.png"]["type"] == "image/png"
    with gateway.env.app.sessions() as s:
        blob = s.get(m.Blob, atts["winmail.dat"]["sha256"])
        assert blob is not None and blob.data.startswith(b"\x78\x9f\x3e\x22")


def test_same_attachment_twice_is_stored_once(gateway: Gateway) -> None:
    """Blobs are content-addressed: the same file in two mails (sent concurrently, so that they
    may share a group-commit batch) is one blob referenced by two attachments."""
    from concurrent.futures import ThreadPoolExecutor

    data = b"%PDF-1.4 same bytes " * 100
    mails = []
    for i in range(4):
        mi = mail(REQ, [IT], f"Invoice {i}", "see attached")
        mi.add_attachment(data, maintype="application", subtype="pdf", filename=f"inv{i}.pdf")
        mails.append(mi)
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda mi: gateway.send(mi, REQ, [IT])[0], mails))
    assert codes == [250] * 4
    shas = {a["sha256"] for t in gateway.tickets() for a in t["messages"][0]["attachments"]}
    assert len(shas) == 1
    with gateway.env.app.sessions() as s:
        sha = shas.pop()
        assert s.scalar(select(func.count()).select_from(m.Blob).where(m.Blob.sha256 == sha)) == 1
        n_att = s.scalar(
            select(func.count()).select_from(m.Attachment).where(m.Attachment.sha256 == sha)
        )
        assert n_att == 4
        blob = s.get(m.Blob, sha)
        assert blob is not None and blob.data == data and blob.size == len(data)


def test_commands_need_a_trusted_sender(trusting_gateway: Gateway) -> None:
    """With a trusted authserv-id, a mail without dmarc=pass lands but its commands are refused;
    with dmarc=pass the same command applies."""
    gw = trusting_gateway
    gw.send(mail(REQ, [IT], "Printer", "jammed"), REQ, [IT])
    ref = gw.tickets()[-1]["ref"]
    none = {"Authentication-Results": "mx.acme.example; dmarc=none"}
    untrusted = mail(
        "alice@acme.example", [IT], f"Re: [{ref}] Printer", "#deliver\nlooking", headers=none
    )
    assert gw.send(untrusted, "alice@acme.example", [IT])[0] == 250
    t = gw.ticket(ref)
    # the message landed with its own effect (an assignee's reply), the command did not
    assert t["status"] == "REPLIED" and t["messages"][-1]["body"] == "looking"
    passed = {"Authentication-Results": "mx.acme.example; dmarc=pass header.from=acme.example"}
    trusted = mail(
        "alice@acme.example", [IT], f"Re: [{ref}] Printer", "#deliver\nfixed", headers=passed
    )
    assert gw.send(trusted, "alice@acme.example", [IT])[0] == 250
    assert gw.ticket(ref)["status"] == "DELIVERED"


def test_bad_raise_commands_refused_ticket_kept(gateway: Gateway) -> None:
    """An unknown #category or #priority is refused (and recorded once each); the ticket is
    still raised, with the department's default category."""
    body = "#category Spaceships/Warp\n#priority sky-high\n#cc grace@acme.example\nPrinter again."
    assert gateway.send(mail(REQ, [IT], "Printer", body), REQ, [IT])[0] == 250
    t = only_ticket(gateway)
    assert (t["category"], t["priority"]) == ("Hardware", "normal")
    assert t["copies"]["rc"] == ["grace@acme.example"]
    with gateway.env.app.sessions() as s:
        rec = s.scalars(select(m.InboundMail)).one()
    results = {c["command"].split()[0]: c["applied"] for c in rec.detail["commands"]}
    assert results == {"#category": False, "#priority": False, "#cc": True}
    assert len(rec.detail["commands"]) == 3
