"""parse_mail turns raw bytes into a safe, frozen InboundMail and never raises."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mail.html_text import html_to_text, sanitise_html
from gateway.mail.parse import (
    MAX_PARAMETER_HEADER,
    Address,
    InboundMail,
    ParseLimits,
    cut_parameters,
    header,
    parse_mail,
    sanitise_filename,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mail"
FORBIDDEN = ("\r", "\n", "\x00")


def _mail(headers: str, body: str = "Hello\n") -> bytes:
    return (headers.strip("\n") + "\n\n" + body).encode("utf-8")


def _one_line_fields(mail: InboundMail) -> list[str]:
    names = [a.name for a in (*mail.to, *mail.cc, *mail.reply_to)]
    if mail.from_addr:
        names.append(mail.from_addr.name)
    return [mail.subject, *names, *(v for _, v in mail.headers)]


def test_simple_message() -> None:
    """Addresses, ids, subject, date and body of a plain message come out decoded."""
    raw = _mail(
        """
From: "Doe, Jane" <Jane.Doe@Example.COM>
To: IT <it@tickets.acme.example>, bob@example.com
Cc: =?utf-8?q?J=C3=B6rg?= <jorg@example.de>
Subject: =?utf-8?q?Drucker_kaputt_=E2=80=93_bitte?=
Message-ID: <abc123@mail.example.com>
In-Reply-To: <x1@example.com>
References: <x0@example.com> <x1@example.com>
Date: Tue, 02 May 2023 10:00:00 +0200
Delivered-To: it@tickets.acme.example
X-Mailer: TestMailer 1.0
""",
        "The printer is broken.\n\nOn Mon, 1 May 2023 at 09:00, IT <it@x.example> wrote:\n> old\n",
    )
    mail = parse_mail(raw)
    assert mail.from_addr == Address(name="Doe, Jane", email="jane.doe@example.com")
    assert [a.email for a in mail.to] == ["it@tickets.acme.example", "bob@example.com"]
    assert mail.cc == (Address(name="Jörg", email="jorg@example.de"),)
    assert mail.subject == "Drucker kaputt – bitte"
    assert mail.message_id == "abc123@mail.example.com"
    assert mail.in_reply_to == ("x1@example.com",)
    assert mail.references == ("x0@example.com", "x1@example.com")
    assert mail.date == datetime(2023, 5, 2, 8, 0, tzinfo=UTC)
    assert mail.delivered_to == ("it@tickets.acme.example",)
    assert mail.user_agent == "TestMailer 1.0"
    assert mail.new_text == "The printer is broken."
    assert mail.raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert header(mail, "X-MAILER") == "TestMailer 1.0"
    assert header(mail, "x-nothing") is None


def test_value_is_frozen() -> None:
    """InboundMail cannot be changed after parsing."""
    mail = parse_mail(_mail("Subject: x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        mail.subject = "y"  # type: ignore[misc]


def test_encoded_newline_in_subject_stays_one_line() -> None:
    """An encoded CR/LF in the subject cannot inject a header (becomes a space)."""
    mail = parse_mail(_mail("Subject: =?UTF-8?Q?x=0ABcc:_evil@example.com?=\nFrom: a@example.com"))
    assert mail.subject == "x Bcc: evil@example.com"
    assert not any(ch in mail.subject for ch in FORBIDDEN)


@pytest.mark.parametrize(
    "from_value",
    [
        "alice@example.org)<bob@example.org>",  # CVE-2023-27043
        "a@example.org <b@example.org>",
        "x <a@example.org>>",
        "=?utf-8?q?Eve=0D=0A?= <eve@example.org>",
        "a@example.org, b@example.org",  # more than one author
        "not an address",
    ],
)
def test_ambiguous_from_is_refused(from_value: str) -> None:
    """A From: that parsers could read two ways (or with two authors) yields no from_addr."""
    mail = parse_mail(_mail(f"From: {from_value}\nSubject: s"))
    assert mail.from_addr is None


def test_obsolete_but_clear_from_is_accepted() -> None:
    """Harmless defects in a display name (an unquoted "J. Doe") keep the address."""
    mail = parse_mail(_mail("From: J. Doe <j@example.org>"))
    assert mail.from_addr == Address(name="J. Doe", email="j@example.org")


def test_return_path_and_sender() -> None:
    """Return-Path <> is the empty string; Sender: is parsed like From:."""
    mail = parse_mail(
        _mail("Return-Path: <>\nSender: List <owner@lists.example>\nFrom: a@b.example")
    )
    assert mail.return_path == ""
    assert mail.sender_header == Address(name="List", email="owner@lists.example")
    assert parse_mail(_mail("From: a@b.example")).return_path is None


def test_missing_headers() -> None:
    """A body with no headers at all still parses, with empty fields."""
    mail = parse_mail(b"\nJust text")
    assert (mail.from_addr, mail.message_id, mail.subject, mail.date) == (None, None, "", None)
    assert mail.text == "Just text"


def test_garbage_message_id_and_date() -> None:
    """An unusable Message-ID or Date gives None, not an exception."""
    mail = parse_mail(_mail("Message-ID: < >\nDate: yesterday-ish"))
    assert mail.message_id is None and mail.date is None
    assert "date: unparseable" in mail.defects


def test_cr_only_line_endings() -> None:
    """Classic Mac CR-only mail is read like any other."""
    mail = parse_mail(b"From: a@example.com\rSubject: Mac\r\rBody line\r")
    assert mail.subject == "Mac" and mail.text.strip() == "Body line"
    assert mail.from_addr == Address(name="", email="a@example.com")


def test_alternative_prefers_plain_and_sanitises_html() -> None:
    """multipart/alternative: text from text/plain, html kept but sanitised."""
    raw = b"""From: a@example.com
Content-Type: multipart/alternative; boundary=XX

--XX
Content-Type: text/plain; charset=utf-8

plain words
--XX
Content-Type: text/html; charset=utf-8

<p onclick="x()">html <script>alert(1)</script>words</p>
--XX--
"""
    mail = parse_mail(raw)
    assert mail.text.strip() == "plain words"
    assert mail.html is not None
    assert "script" not in mail.html and "onclick" not in mail.html and "html" in mail.html


def test_html_only_converted_to_text() -> None:
    """An HTML-only mail gets a readable text body."""
    raw = b"From: a@example.com\nContent-Type: text/html\n\n<p>Line one<br>Line two</p><ul><li>a</li></ul>"
    mail = parse_mail(raw)
    assert mail.text == "Line one\nLine two\n\n- a"


def test_attachments_sanitised_flagged_and_hashed() -> None:
    """Filenames lose paths and controls; risky types are flagged; data is hashed."""
    raw = b"""From: a@example.com
Content-Type: multipart/mixed; boundary=B

--B
Content-Type: text/plain

see attached
--B
Content-Type: application/octet-stream; name="../../etc/.evil\x01.exe"
Content-Disposition: attachment; filename="../../etc/.evil\x01.exe"
Content-Transfer-Encoding: base64

TVqQAAMAAAAEAAAA
--B
Content-Type: image/png
Content-ID: <img1@x>
Content-Disposition: inline

PNGDATA
--B--
"""
    mail = parse_mail(raw)
    exe, png = mail.attachments
    assert exe.filename == "evil.exe" and exe.active
    assert exe.sha256 == hashlib.sha256(exe.data).hexdigest()
    assert exe.data.startswith(b"MZ")
    assert png.inline and png.content_id == "img1@x" and not png.active
    assert png.filename == "attachment.bin"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (None, "attachment.bin"),
        ("C:\\Users\\x\\report.pdf", "report.pdf"),
        ("...hidden", "hidden"),
        ("a\u202egpj.exe", "agpj.exe"),
        ("x" * 300 + ".pdf", "x" * 146 + ".pdf"),
        ("  . ", "attachment.bin"),
    ],
)
def test_sanitise_filename(name: str | None, expected: str) -> None:
    """Filenames become display-safe basenames of at most 150 characters."""
    assert sanitise_filename(name) == expected


def test_attachment_limits_drop_and_note() -> None:
    """Over-limit attachments are dropped and recorded as defects."""
    raw = b"""From: a@example.com
Content-Type: multipart/mixed; boundary=B

--B
Content-Type: application/pdf; name=a.pdf

AAAAAAAAAAAAAAAAAAAA
--B
Content-Type: application/pdf; name=b.pdf

BBBBB
--B--
"""
    mail = parse_mail(raw, limits=ParseLimits(max_attachment_bytes=10))
    assert [a.filename for a in mail.attachments] == ["b.pdf"]
    assert any("over the per-file limit" in d for d in mail.defects)
    mail = parse_mail(raw, limits=ParseLimits(max_total_attachment_bytes=22))
    assert [a.filename for a in mail.attachments] == ["a.pdf"]


def test_part_and_depth_limits() -> None:
    """Too many parts or too deep nesting is cut off with a defect, not a crash."""
    parts = "".join(f"--B\nContent-Type: text/plain\n\npart {i}\n" for i in range(50))
    raw = (
        f"From: a@example.com\nContent-Type: multipart/mixed; boundary=B\n\n{parts}--B--\n".encode()
    )
    mail = parse_mail(raw, limits=ParseLimits(max_parts=10))
    assert "part 8" in mail.text and "part 30" not in mail.text
    assert any("MIME parts" in d for d in mail.defects)
    nested = "Content-Type: text/plain\n\ndeep\n"
    for level in range(30):
        nested = f"Content-Type: multipart/mixed; boundary=L{level}\n\n--L{level}\n{nested}--L{level}--\n"
    mail = parse_mail(("From: a@example.com\n" + nested).encode(), limits=ParseLimits(max_depth=5))
    assert any("nesting deeper" in d for d in mail.defects)


def test_parameter_headers_over_the_cap_are_cut_at_a_parameter() -> None:
    """A Content-Type or Content-Disposition with thousands of parameters (the standard
    library parses them in quadratic time: seconds for 64 KiB) is cut before a parameter past
    MAX_PARAMETER_HEADER characters and noted; what came before it still counts."""
    junk = "; ".join(f"p{i}=v{i}" for i in range(7000))
    raw = f"""From: a@example.com
Content-Type: multipart/mixed; boundary=B; {junk}

--B
Content-Type: text/plain; charset=iso-8859-1; {junk}

café
--B
Content-Type: application/pdf
Content-Disposition: attachment; filename="report.pdf"; {junk}

%PDF-1.4
--B--
""".encode("latin-1")
    mail = parse_mail(raw)
    assert mail.text == "café"  # the charset before the cut is honoured
    assert [a.filename for a in mail.attachments] == ["report.pdf"]
    cut = [d for d in mail.defects if "parameters cut" in d]
    assert [d.split(":")[0] for d in cut] == ["message", "part 2", "part 3"]
    assert len(cut_parameters(junk)) <= MAX_PARAMETER_HEADER
    assert cut_parameters(junk).endswith(f"v{cut_parameters(junk).count(';')}")


def test_huge_header_section_truncated() -> None:
    """A header section over the limit is cut and noted; the body survives."""
    raw = b"From: a@example.com\n" + b"X-Junk: " + b"y" * 400_000 + b"\nSubject: late\n\nbody"
    mail = parse_mail(raw)
    assert mail.text == "body"
    assert any("header section" in d for d in mail.defects)


def test_unknown_charset() -> None:
    """A made-up charset label falls back to utf-8/cp1252 with a note."""
    raw = "From: a@example.com\nContent-Type: text/plain; charset=x-klingon\n\nqapla\u2019".encode()
    mail = parse_mail(raw)
    assert mail.text == "qapla\u2019"
    assert any("unknown charset" in d for d in mail.defects)


def test_nested_message_is_an_eml_attachment() -> None:
    """A forwarded message/rfc822 is kept whole as an .eml attachment, not merged into text."""
    raw = (FIXTURES / "cpython-test_email/Lib/test/test_email/data/msg_06.txt").read_bytes()
    mail = parse_mail(raw)
    (attached,) = mail.attachments
    assert attached.content_type == "message/rfc822" and attached.filename == "message.eml"
    assert b"Subject:" in attached.data


def test_multipart_report_fields() -> None:
    """A DSN exposes its content type, report type and delivery-status part."""
    raw = (FIXTURES / "sisimai-set-of-emails/maildir/bsd/lhost-postfix-01.eml").read_bytes()
    mail = parse_mail(raw)
    assert (mail.content_type, mail.report_type) == ("multipart/report", "delivery-status")
    assert any(a.content_type == "message/delivery-status" for a in mail.attachments)
    assert mail.return_path == ""


def test_html_to_text_links_and_scripts() -> None:
    """Links read "text (url)"; scripts and styles vanish; entities are unescaped."""
    text = html_to_text(
        '<style>p{}</style><p>See <a href="https://x.example/a">docs</a> &amp; more</p><script>x</script>'
    )
    assert text == "See docs (https://x.example/a) & more"


def test_sanitise_html_removes_active_content() -> None:
    """sanitise_html strips scripts, handlers and javascript: URLs."""
    html = sanitise_html(
        '<a href="javascript:alert(1)" onmouseover="x">l</a><script>s</script><b>ok</b>'
    )
    assert "javascript" not in html and "onmouseover" not in html and "<script" not in html
    assert "<b>ok</b>" in html


# --- property-based: nothing a sender writes makes the parser raise ----------------------

_header_names = st.sampled_from(
    ["From", "To", "Cc", "Reply-To", "Sender", "Subject", "Message-ID", "References",
     "In-Reply-To", "Date", "Content-Type", "Content-Transfer-Encoding", "Return-Path",
     "Content-Disposition", "Delivered-To", "X-Loop", "Auto-Submitted"]
)  # fmt: skip
_charsets = st.one_of(
    st.sampled_from(["utf-8", "iso-8859-1", "koi8-r", "utf-7", "x-unknown", "utf-16", ""]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=12),
)
_encoded_words = st.builds(
    lambda cs, enc, payload: f"=?{cs}?{enc}?{payload}?=",
    _charsets,
    st.sampled_from(["Q", "B", "q", "x"]),
    st.text(alphabet='abcXYZ=0AD_:@<>,;"\\', max_size=30),
)
_header_values = st.one_of(
    st.binary(max_size=120),
    _encoded_words.map(str.encode),
    st.lists(_encoded_words, max_size=3).map(lambda ws: " ".join(ws).encode()),
    st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@st.composite
def _mime_tree(draw: st.DrawFn, depth: int = 0) -> bytes:
    ctype = draw(
        st.sampled_from(["text/plain", "text/html", "application/octet-stream", "message/rfc822",
                         "multipart/mixed", "multipart/alternative", "message/delivery-status",
                         "image/png", "multipart/report"])
    )  # fmt: skip
    charset = draw(_charsets)
    cte = draw(st.sampled_from(["", "base64", "quoted-printable", "8bit", "x-uuencode"]))
    name = draw(st.text(max_size=20)).replace('"', "")
    head = f'Content-Type: {ctype}; charset="{charset}"; name="{name}"\n'
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\n"
    if ctype.startswith("multipart/") and depth < 4:
        boundary = draw(st.sampled_from(["b1", "b2", "=_x", ""]))
        children = draw(st.lists(_mime_tree(depth + 1), max_size=3))
        body = b"".join(b"--" + boundary.encode() + b"\n" + c + b"\n" for c in children)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\n"
        head = head.replace(f"{ctype};", f'{ctype}; boundary="{boundary}";')
        return head.encode("utf-8", "surrogatepass") + b"\n" + body
    return head.encode("utf-8", "surrogatepass") + b"\n" + draw(st.binary(max_size=200))


@st.composite
def random_mail(draw: st.DrawFn, max_headers: int = 12) -> bytes:
    """Random header bytes, charsets, encoded words and MIME nesting, with any line ending."""
    headers = draw(st.lists(st.tuples(_header_names, _header_values), max_size=max_headers))
    body = draw(_mime_tree())
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    raw = (
        b"".join(n.encode() + b": " + v + b"\n" for n, v in headers) + b"MIME-Version: 1.0\n" + body
    )
    return raw.replace(b"\n", newline)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=random_mail())
def test_random_mail_never_raises(raw: bytes) -> None:
    """Random header bytes, charsets, encoded words and MIME nesting never make parse_mail raise."""
    mail = parse_mail(raw)
    for value in _one_line_fields(mail):
        assert not any(ch in value for ch in FORBIDDEN), value
    if mail.from_addr:
        assert mail.from_addr.email == mail.from_addr.email.lower()
    for part in mail.attachments:
        assert "/" not in part.filename and "\\" not in part.filename
        assert not part.filename.startswith(".") and 0 < len(part.filename) <= 150


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    """Arbitrary bytes parse to a value whose one-line fields hold no CR, LF or NUL."""
    mail = parse_mail(raw)
    assert mail.raw == raw
    for value in _one_line_fields(mail):
        assert not any(ch in value for ch in FORBIDDEN)
