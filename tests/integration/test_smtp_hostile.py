"""Hostile mail over real SMTP (SPEC §2.1, §2.4, §2.5): random headers and MIME never break the
session or the store; attachments, paths, loops and floods are handled as the spec says."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import smtplib
import socket
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from store import models as m
from tests.conftest import (
    Database,
    Gateway,
    demo_env,
    mail,
    serving,
    smtp_up_to_data,
)

REQ = "frank@acme.example"
IT = "it@acme.example"
EXAMPLES = int(os.environ.get("TICKETGATE_HOSTILE_EXAMPLES", "40"))


# ---- helpers ------------------------------------------------------------------------------------


def count(gw: Gateway, model: type) -> int:
    with gw.env.app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def last_record(gw: Gateway) -> m.InboundMail:
    with gw.env.app.sessions() as s:
        rec = s.scalars(select(m.InboundMail).order_by(m.InboundMail.id.desc()).limit(1)).first()
        assert rec is not None
        return rec


def fold(data: bytes, limit: int = 990) -> bytes:
    """Keep every line within RFC 5321's 1000 octets by inserting CRLF SPACE, as Postfix does."""
    out = []
    for line in re.split(rb"\r\n|\n|\r", data):
        while len(line) > limit:
            out.append(line[:limit])
            line = b" " + line[limit:]
        out.append(line)
    return b"\r\n".join(out)


def transact(client: smtplib.SMTP, sender: str, data: bytes) -> tuple[int, str]:
    """MAIL, RCPT, DATA on an open session; the final answer, whatever its class."""
    options = [] if sender.isascii() else ["SMTPUTF8"]  # RFC 6531
    for step in (lambda: client.mail(sender, options), lambda: client.rcpt(IT)):
        code, text = step()
        if code != 250:
            client.rset()
            return code, text.decode(errors="replace")
    code, text = client.data(data)
    return code, text.decode(errors="replace")


def as_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=policy.SMTP)


# ---- hostile mail, generated ---------------------------------------------------------------------

CHARSETS = [
    b"utf-8", b"us-ascii", b"iso-8859-1", b"windows-1252", b"utf-7", b"utf-16", b"koi8-r",
    b"gb2312", b"ks_c_5601-1987", b"iso-2022-jp", b"x-unknown", b"bogus-charset", b"", b'"utf-8',
    b"utf-8\x00", b"\xff\xfe", b"utf-8*en", b"x" * 200,
]  # fmt: skip
KNOWN_HEADERS = [
    b"Subject", b"From", b"To", b"Cc", b"Reply-To", b"Sender", b"Message-ID", b"In-Reply-To",
    b"References", b"Date", b"Content-Type", b"Content-Transfer-Encoding", b"Content-Disposition",
    b"MIME-Version", b"Received", b"User-Agent", b"X-Mailer", b"Authentication-Results",
    b"Return-Path", b"Delivered-To", b"X-Original-To", b"Bcc", b"Content-ID", b"X-Priority",
    b"Auto-Submitted", b"Precedence", b"X-Loop", b"X-Failed-Recipients", b"List-Id",
]  # fmt: skip
Q_PIECES = [
    b"=0A", b"=0D", b"=0D=0A", b"=00", b"=FF", b"=", b"?", b"_", b"Bcc:_evil@example.com",
    b"=0ABcc=3A_evil@example.com", b"abc", b"=E2=80=AE", b"=C3", b"\x00",
]  # fmt: skip


@st.composite
def encoded_word(draw: st.DrawFn) -> bytes:
    """RFC 2047 encoded words, well- and ill-formed, with CR/LF/NUL inside."""
    charset = draw(st.sampled_from(CHARSETS))
    if draw(st.booleans()):
        payload = b"".join(draw(st.lists(st.sampled_from(Q_PIECES), max_size=8)))
        return b"=?" + charset + b"?Q?" + payload + b"?="
    raw = draw(st.binary(max_size=60)) + draw(
        st.sampled_from([b"", b"\r\n", b"\nBcc: x@y", b"\x00"])
    )
    payload = base64.b64encode(raw)
    if draw(st.booleans()):
        payload = payload[: draw(st.integers(0, len(payload)))]  # broken padding
    return b"=?" + charset + b"?B?" + payload + b"?="


header_value = st.lists(
    st.one_of(
        st.binary(max_size=80),  # raw 8-bit, NUL, bare CR/LF
        encoded_word(),
        st.integers(200, 4000).map(lambda n: b"x" * n),  # one very long token
        st.just(b"\r\n "),  # a fold
        st.sampled_from(
            [b"<a@b>", b"<>", b"<", b"\x00", b"\xc3\x28", b"\xe2\x80\xae", b'"', b"(", b";"]
        ),
    ),
    max_size=6,
).map(b" ".join)
header_name = st.one_of(
    st.sampled_from(KNOWN_HEADERS),
    st.binary(min_size=1, max_size=30).filter(lambda b: not re.search(rb"[:\s]", b)),
)


@dataclass(frozen=True)
class Part:
    """One rendered MIME entity: its header lines and its body."""

    headers: bytes
    body: bytes

    def render(self) -> bytes:
        return self.headers + b"\r\n" + self.body


LEAF_TYPES = [
    b"text/plain", b"text/html", b"application/octet-stream", b"message/rfc822",
    b"message/delivery-status", b"text/rfc822-headers", b"image/png", b"bogus", b"text/",
    b"/", b"multipart/mixed", b"application/" + b"x" * 400, b"text/plain; format=flowed",
]  # fmt: skip
FILENAMES = [
    None, b"../../etc/passwd", b"..\\..\\boot.ini", b"a\x00b.txt", b"=?utf-8?Q?evil=0A.exe?=",
    b"invoice\xe2\x80\xaegpj.exe", b"x" * 400, b".", b"", b"\xff\xfe.bin", b"CON",
]  # fmt: skip


@st.composite
def leaf(draw: st.DrawFn) -> Part:
    ctype = draw(st.sampled_from(LEAF_TYPES))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(
        st.sampled_from(
            [b"", b"7bit", b"8bit", b"base64", b"quoted-printable", b"x-uuencode", b"bogus"]
        )
    )
    filename = draw(st.sampled_from(FILENAMES))
    head = b"Content-Type: " + ctype + b"; charset=" + charset
    if filename is not None:
        head += b'; name="' + filename + b'"'
    head += b"\r\n"
    if cte:
        head += b"Content-Transfer-Encoding: " + cte + b"\r\n"
    if filename is not None or draw(st.booleans()):
        disp = draw(st.sampled_from([b"attachment", b"inline", b"bogus", b""]))
        head += (
            b"Content-Disposition: "
            + disp
            + (b'; filename="' + filename + b'"' if filename else b"")
        )
        head += b"\r\n"
    for name, value in draw(st.lists(st.tuples(header_name, header_value), max_size=2)):
        head += name + b": " + value + b"\r\n"
    body = draw(
        st.one_of(
            st.binary(max_size=1500),
            st.text(max_size=500).map(lambda t: t.encode("utf-8", "surrogatepass")),
        )
    )
    return Part(head, body)


def multipart(
    children: list[Part], *, boundary: bytes, mode: str, subtype: bytes = b"mixed"
) -> Part:
    """A multipart entity, correct or broken in one of the ways real mail is."""
    declared = boundary if mode != "mismatch" else boundary + b"-other"
    head = b"Content-Type: multipart/" + subtype + b'; boundary="' + declared + b'"\r\n'
    if mode == "no_boundary_param":
        head = b"Content-Type: multipart/" + subtype + b"\r\n"
    body = b"preamble\r\n"
    for child in children:
        body += b"--" + boundary + b"\r\n" + child.render() + b"\r\n"
    if mode != "no_close":
        body += b"--" + boundary + b"--\r\n"
    return Part(head, body)


boundaries = st.one_of(
    st.sampled_from([b"b", b"=_x", b"", b" ", b"--", b"a" * 80, b"\xff\xfe", b"b\x00c"]),
    st.binary(min_size=1, max_size=40).filter(
        lambda b: b"\r" not in b and b"\n" not in b and b'"' not in b
    ),
)
modes = st.sampled_from(["ok", "ok", "no_close", "mismatch", "no_boundary_param"])
subtypes = st.sampled_from([b"mixed", b"alternative", b"related", b"report", b"signed", b"bogus"])

tree = st.recursive(
    leaf(),
    lambda kids: st.builds(
        lambda children, boundary, mode, subtype: multipart(
            children, boundary=boundary, mode=mode, subtype=subtype
        ),
        st.lists(kids, max_size=6),
        boundaries,
        modes,
        subtypes,
    ),
    max_leaves=25,
)


@st.composite
def deep(draw: st.DrawFn) -> Part:
    """Multipart inside multipart, deeper than any limit."""
    part = draw(leaf())
    for level in range(draw(st.integers(5, 60))):
        part = multipart([part], boundary=b"d%d" % level, mode="ok")
    return part


@st.composite
def many(draw: st.DrawFn) -> Part:
    """Hundreds of sibling parts."""
    n = draw(st.integers(150, 350))
    kids = [
        Part(
            b'Content-Type: text/plain\r\nContent-Disposition: attachment; filename="f%d.txt"\r\n'
            % i,
            b"x",
        )
        for i in range(n)
    ]
    return multipart(kids, boundary=b"many", mode=draw(modes))


_ids = itertools.count()


@st.composite
def hostile_mail(draw: st.DrawFn) -> tuple[str, bytes]:
    """(envelope sender, message): mostly an employee writing to IT, everything else hostile;
    sometimes a hostile From: or envelope sender too, and automatic mail that is quarantined."""
    body = draw(st.one_of(tree, deep(), many()))
    author = REQ.encode() if draw(st.integers(0, 3)) else draw(header_value)
    envelope = draw(
        st.sampled_from([REQ, REQ, REQ, "", "a" * 240 + "@x.example", "\u00e9@x.example"])
    )
    head = b"From: " + author + b"\r\nTo: " + IT.encode() + b"\r\n"
    head += b"Subject: " + draw(header_value) + b"\r\n"
    head += b"Message-ID: <hostile-%08d@client.example>\r\n" % next(_ids)  # fixed width: same draws
    for name, value in draw(st.lists(st.tuples(header_name, header_value), max_size=8)):
        head += name + b": " + value + b"\r\n"
    if draw(st.booleans()):
        head += b"MIME-Version: 1.0\r\n"
    data = head + body.render()
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # cut anywhere
    return envelope, fold(data)


# ---- the tests -----------------------------------------------------------------------------------


def assert_clean_answer(client: smtplib.SMTP, code: int, text: str) -> None:
    """250, or a refusal with an enhanced status; never aiosmtpd's 500, never a tempfail of ours,
    and the session is still alive afterwards."""
    assert code == 250 or (code // 100 == 5 and code != 500 and re.match(r"5\.\d+\.\d+ ", text)), (
        code,
        text,
    )
    assert client.noop()[0] == 250


def _outcome(gw: Gateway, answer: str) -> str:
    """What became of the mail the edge just answered 250: a duplicate, or its record's outcome
    once the runner has processed it."""
    if "duplicate" in answer:
        return "duplicate"
    with gw.env.app.sessions() as s:
        rec = s.scalars(select(m.InboundMail).order_by(m.InboundMail.id.desc()).limit(1)).first()
        assert rec is not None
        return rec.outcome


def test_hostile_headers_and_mime(gateway: Gateway) -> None:
    """Generated hostile headers and MIME: clean answers, no CR/LF in any stored subject or any
    header we send, and a well-formed mail right after each one still becomes a ticket."""
    client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=60)
    client.ehlo()
    answers: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_mail())
    def one(envelope_and_data: tuple[str, bytes]) -> None:
        envelope, data = envelope_and_data
        gateway.env.clock.advance(minutes=2)  # stay under the per-sender rate limit
        code, text = transact(client, envelope, data)
        assert_clean_answer(client, code, text)
        if code == 250:
            gateway.process()
        # Poison mail is kept rather than lost, but generated input must never be poison: a
        # parser or service that raised would hide behind that 250.
        with gateway.env.app.sessions() as s:
            crashed = s.scalars(
                select(m.InboundMail.rule).where(
                    m.InboundMail.rule.like("quarantined: processing error%")
                )
            ).all()
        assert crashed == [], crashed
        key = f"{code} {_outcome(gateway, text) if code == 250 else text[:30]}"
        answers[key] = answers.get(key, 0) + 1
        tickets = count(gateway, m.Ticket)
        good = mail(
            REQ,
            [IT],
            "after a hostile mail",
            "plain words",
            msgid=f"<good-{next(_ids)}@client.example>",
        )
        code, text = transact(client, REQ, as_bytes(good))  # type: ignore[arg-type]
        assert code == 250, text
        gateway.process()
        assert gateway.explain(str(good["Message-ID"]))["outcome"] == "ticket"  # type: ignore[index]
        assert count(gateway, m.Ticket) == tickets + 1
        with gateway.env.app.sessions() as s:
            for subject in s.scalars(select(m.Ticket.subject)):
                assert "\r" not in subject and "\n" not in subject, subject

    one()
    client.quit()
    print("\nhostile answers:", answers)
    delivered = gateway.deliver()
    assert delivered
    for out in delivered:
        for name, value in out.items():
            assert "\r" not in str(value) and "\n" not in str(value), (name, value)
        assert out.get("Bcc") is None and len(out.get_all("Subject") or []) == 1


def test_long_line_and_garbage_commands_keep_the_session(gateway: Gateway) -> None:
    """A line over 1000 octets gets aiosmtpd's own 500 "Line too long" (RFC 5321 §4.5.3.1.6) and
    garbage commands get "not recognized"; neither is a handler error, and the session goes on."""
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.ehlo()
        code, text = transact(
            client, REQ, b"From: frank@acme.example\r\nTo: it@acme.example\r\n\r\n" + b"x" * 5000
        )
        assert (code, text) == (500, "Line too long (see RFC5321 4.5.3.1.6)")
        for garbage in ("XYZZY", "MAIL", "RCPT TO:<<<>>>", "DATA\x00", "\x7fHELO"):
            code, reply = client.docmd(garbage)
            assert not reply.decode(errors="replace").startswith("Error: ("), reply
            assert code != 421
        client.rset()
        good = mail(REQ, [IT], "after garbage", "words")
        assert transact(client, REQ, as_bytes(good))[0] == 250  # type: ignore[arg-type]
    gateway.process()
    assert count(gateway, m.Ticket) == 1


def test_rcpt_with_raw_8bit_address_is_refused(gateway: Gateway) -> None:
    """RCPT TO with bytes that are not UTF-8 is no address of ours: 550 5.1.1, not a tempfail."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        f = sock.makefile("rwb")
        replies = [f.readline()]
        for line in (
            b"HELO x\r\n",
            b"MAIL FROM:<frank@acme.example>\r\n",
            b"RCPT TO:<it\xff@acme.example>\r\n",
            b"QUIT\r\n",
        ):
            f.write(line)
            f.flush()
            replies.append(f.readline())
    assert replies[3].startswith(b"550 5.1.1"), replies
    assert replies[4].startswith(b"221"), replies


def test_handle_exception_answers_451(gateway: Gateway) -> None:
    """Our handle_exception turns an unexpected error into 451 4.3.0 (aiosmtpd would say 500)."""
    handler = gateway.server.controller.handler  # type: ignore[attr-defined]
    reply = asyncio.run(handler.handle_exception(RuntimeError("unexpected")))
    assert reply.startswith("451 4.3.0 ")


def test_three_hundred_parts_capped_and_recorded(gateway: Gateway) -> None:
    """300 attachments: accepted, the ticket keeps at most max_parts of them, the defect is recorded."""
    msg = mail(REQ, [IT], "Many files", "see attached")
    for i in range(300):
        msg.add_attachment(
            b"%d" % i, maintype="application", subtype="octet-stream", filename=f"f{i}.bin"
        )  # type: ignore[attr-defined]
    code, _ = gateway.send(msg, REQ, [IT])
    assert code == 250
    t = gateway.tickets()[0]
    kept = t["messages"][0]["attachments"]
    limit = gateway.env.app.settings.smtp.max_parts
    assert 0 < len(kept) < limit
    rec = last_record(gateway)
    assert any(f"more than {limit} MIME parts" in d for d in rec.detail.get("defects", [])), (
        rec.detail
    )


def test_attachment_path_is_sanitised(gateway: Gateway) -> None:
    """A declared filename `../../etc/passwd` is stored as `passwd`; no path is ever followed."""
    msg = mail(REQ, [IT], "Config", "attached")
    msg.add_attachment(b"root:x:0:0", maintype="text", subtype="plain", filename="../../etc/passwd")  # type: ignore[attr-defined]
    assert gateway.send(msg, REQ, [IT])[0] == 250
    atts = gateway.tickets()[0]["messages"][0]["attachments"]
    assert [a["name"] for a in atts] == ["passwd"]
    with gateway.env.app.sessions() as s:
        names = list(s.scalars(select(m.Attachment.filename)))
    assert names == ["passwd"]


def test_own_mail_coming_back_is_quarantined(gateway: Gateway) -> None:
    """Our own acknowledgement fed back in (X-Loop, then our Message-ID alone): 250, quarantined,
    no ticket, no message, nothing sent (SPEC §2.5)."""
    assert gateway.send(mail(REQ, [IT], "Printer", "jammed"), REQ, [IT])[0] == 250
    sent = gateway.deliver()
    ack = next(x for x in sent if REQ in str(x["To"]))
    assert ack["X-Loop"]
    before = (count(gateway, m.Ticket), count(gateway, m.Message), count(gateway, m.Outbox))
    looped = ack.as_bytes(policy=policy.SMTP)
    code, _ = gateway.send(looped, REQ, [IT])
    assert code == 250
    rec = last_record(gateway)
    assert (rec.outcome, rec.rule) == ("quarantined", f"quarantined: X-Loop: {ack['X-Loop']}")
    # The employee's client redirects it (From rewritten, X-Loop dropped): our Message-ID alone.
    del ack["X-Loop"], ack["From"]
    ack["From"] = REQ
    code, _ = gateway.send(ack.as_bytes(policy=policy.SMTP), REQ, [IT])
    assert code == 250
    rec = last_record(gateway)
    assert rec.outcome == "quarantined" and "is ours" in rec.rule, rec.rule
    assert (count(gateway, m.Ticket), count(gateway, m.Message), count(gateway, m.Outbox)) == before
    assert len(gateway.deliver()) == len(sent)  # nothing new was sent


def test_sender_rate_limit(database: Database, tmp_path: Path) -> None:
    """With 5 mails an hour allowed, the 6th from one sender is quarantined (rate limit), not a
    ticket; an hour later the sender gets tickets again."""
    extra = {"TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "5"}
    with demo_env(database, tmp_path / "install", extra) as env, serving(env) as gw:
        for i in range(5):
            assert gw.send(mail(REQ, [IT], f"mail {i}", "x"), REQ, [IT])[0] == 250
            env.clock.advance(minutes=5)
        assert count(gw, m.Ticket) == 5
        assert gw.send(mail(REQ, [IT], "mail 6", "x"), REQ, [IT])[0] == 250
        rec = last_record(gw)
        assert rec.outcome == "quarantined" and "rate limit" in rec.rule, rec.rule
        assert count(gw, m.Ticket) == 5
        env.clock.advance(hours=1)
        assert gw.send(mail(REQ, [IT], "mail 7", "x"), REQ, [IT])[0] == 250
        assert last_record(gw).outcome == "ticket"


def test_big_mail_is_queued_unparsed_and_processed_by_the_runner(gateway: Gateway) -> None:
    """A mail with a 100 KB attachment: the edge answers 250 after queueing the raw bytes (no
    MIME parse in the session), and the runner stores the ticket with its attachment."""
    msg = mail(REQ, [IT], "Scanned", "body")
    assert isinstance(msg, EmailMessage)
    msg.add_attachment(bytes(range(256)) * 400, maintype="application", subtype="pdf",
                       filename="scan.pdf")  # fmt: skip
    code, _ = gateway.send(msg, REQ, [IT], process=False)
    assert code == 250
    assert gateway.explain(str(msg["Message-ID"]))["outcome"] == "queued"
    assert gateway.tickets() == []
    assert gateway.process() == 1
    [t] = gateway.tickets()
    assert t["subject"] == "Scanned"
    assert [a["name"] for a in t["messages"][0]["attachments"]] == ["scan.pdf"]


def test_smtp_smuggling_bare_lf_dot_does_not_end_data(gateway: Gateway) -> None:
    """SMTP smuggling (CVE-2023-51764 family; aiosmtpd ≥ 1.4.5): `<LF>.<LF>` or `<LF>.<CR><LF>`
    inside DATA is text, not the end of the mail — a second, smuggled transaction after it is
    never run. Only `<CR><LF>.<CR><LF>` ends DATA: one mail, one ticket, one answer."""
    smuggled = (
        f"MAIL FROM:<{REQ}>\r\nRCPT TO:<{IT}>\r\nDATA\r\nFrom: {REQ}\r\nTo: {IT}\r\n"
        "Subject: smuggled\r\n\r\nforged\r\n"
    )
    for end in ("\n.\n", "\n.\r\n", "\r.\r\n"):
        before = count(gateway, m.Ticket)
        body = (
            f"From: {REQ}\r\nTo: {IT}\r\nSubject: carrier {end!r}\r\n"
            f"Message-ID: <carrier-{next(_ids)}@client.example>\r\n\r\n"
            f"first part{end}{smuggled}"
        )
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            f = smtp_up_to_data(sock, REQ, IT)
            sock.sendall(body.encode() + b"\r\n.\r\n")
            assert f.readline().startswith(b"250")
            sock.sendall(b"QUIT\r\n")
            # Exactly one more answer (221 to QUIT): no answers to smuggled commands.
            assert f.readline().startswith(b"221")
            assert f.readline() == b""
        gateway.process()
        assert count(gateway, m.Ticket) == before + 1
        subjects = [t["subject"] for t in gateway.tickets()]
        assert "smuggled" not in subjects
        assert subjects[-1].startswith("carrier")
