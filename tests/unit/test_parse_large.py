"""Large mails (issue 12): parsing one and reading its headers stay within a few copies of it,
and an attachment decodes to the bytes the email package gives, well-formed base64 or not."""

from __future__ import annotations

import base64
import os
import tracemalloc
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage, Message

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mail.headers import read_headers
from gateway.mail.parse import InboundMail, ParseLimits, parse_mail

MiB = 1024 * 1024
ROOMY = ParseLimits(max_attachment_bytes=32 * MiB, max_total_attachment_bytes=32 * MiB)


def mail_with_attachment(payload: bytes) -> bytes:
    m = EmailMessage()
    m["From"] = "frank@acme.example"
    m["To"] = "it@acme.example"
    m["Subject"] = "Scan"
    m["Message-ID"] = "<scan@client.example>"
    m.set_content("The scan is attached.\n")
    m.add_attachment(payload, maintype="application", subtype="pdf", filename="scan.pdf")
    return m.as_bytes().replace(b"\n", b"\r\n")


def peak_of(fn: Callable[[], object]) -> int:
    """Bytes allocated at the peak of `fn()` above what was allocated before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_parsing_a_large_mail_peaks_below_four_times_its_size() -> None:
    """An 8 MiB mail with one base64 attachment: the parse allocates less than 3 times the
    mail at its peak (with the mail itself, under 4 copies; parsebytes and get_payload took 8)."""
    raw = mail_with_attachment(os.urandom(6 * MiB))
    kept: list[object] = []
    peak = peak_of(lambda: kept.append(parse_mail(raw, limits=ROOMY)))
    parsed = kept[0]
    assert isinstance(parsed, InboundMail)
    assert [len(a.data) for a in parsed.attachments] == [6 * MiB]
    assert peak < 3 * len(raw), peak / len(raw)


def test_reading_the_headers_of_a_large_mail_costs_nothing_of_its_body() -> None:
    """The edge's header read of an 8 MiB mail allocates under 64 KiB (it decoded the whole
    mail and kept the body as a str before)."""
    raw = mail_with_attachment(os.urandom(6 * MiB))
    kept: list[object] = []
    peak = peak_of(lambda: kept.append(read_headers(raw)))
    head = kept[0]
    assert head.message_id == "scan@client.example"  # type: ignore[attr-defined]
    assert head.from_email == "frank@acme.example"  # type: ignore[attr-defined]
    assert peak < 64 * 1024, peak


def stock_attachment(raw: bytes) -> bytes:
    """The attachment's bytes as the stock email package decodes them."""
    msg = message_from_bytes(raw, policy=policy.default)
    part = next(p for p in msg.walk() if p.get_filename() == "scan.pdf")
    assert isinstance(part, Message)
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=300),
    line=st.integers(min_value=4, max_value=120),
    damage=st.sampled_from(["none", "drop padding", "junk", "cut one", "spaces"]),
)
def test_an_attachment_decodes_as_the_email_package_decodes_it(
    payload: bytes, line: int, damage: str
) -> None:
    """Base64 with any line length, missing padding, characters outside the alphabet or a
    length that cannot be decoded: the attachment's bytes are those the email package gives."""
    encoded = base64.b64encode(payload)
    if damage == "drop padding":
        encoded = encoded.rstrip(b"=")
    elif damage == "junk" and encoded:
        encoded = encoded[:3] + b"!*" + encoded[3:]
    elif damage == "cut one" and encoded:
        encoded = encoded.rstrip(b"=")[:-1] or b"A"
    elif damage == "spaces":
        encoded = b" ".join(encoded[i : i + 7] for i in range(0, len(encoded), 7))
    body = b"\r\n".join(encoded[i : i + line] for i in range(0, len(encoded), line))
    raw = (
        b"From: frank@acme.example\r\nTo: it@acme.example\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="scan.pdf"\r\n\r\n' + body + b"\r\n--b--\r\n"
    )
    parsed = parse_mail(raw)
    assert [a.data for a in parsed.attachments] == [stock_attachment(raw)]
