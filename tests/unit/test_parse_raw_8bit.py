"""Raw 8-bit header bytes are decoded the same way in every header the parser reads: UTF-8
if they are UTF-8, else the mail's declared charset, else windows-1252, the guess noted."""

from __future__ import annotations

from gateway.mail.parse import Address, header, parse_mail


def test_latin1_subject_is_decoded_as_windows_1252_and_noted() -> None:
    """Issue 12: "Gr\\xfc\\xdfe" is stored "Grüße", with a defect naming the guess."""
    raw = b"From: a@example.org\r\nSubject: Gr\xfc\xdfe aus Berlin\r\n\r\nbody\r\n"
    mail = parse_mail(raw)
    assert mail.subject == "Grüße aus Berlin"
    assert header(mail, "subject") == "Grüße aus Berlin"
    assert "subject: raw 8-bit header bytes decoded as windows-1252" in mail.defects


def test_raw_utf8_subject_is_read_as_utf8_without_a_defect() -> None:
    """RFC 6532 UTF-8 in a header is read as such, even under another declared charset."""
    raw = (
        "From: a@example.org\nSubject: Grüße – 你好\n"
        "Content-Type: text/plain; charset=iso-8859-1\n\nbody\n"
    ).encode()
    mail = parse_mail(raw)
    assert mail.subject == "Grüße – 你好"
    assert not any("raw 8-bit" in d for d in mail.defects)


def test_declared_charset_decodes_raw_header_bytes() -> None:
    """Bytes that are not UTF-8 are read in the charset the mail declares (koi8-r here)."""
    raw = (
        b"From: a@example.org\nSubject: \xf0\xd2\xc9\xd7\xc5\xd4\nMIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=koi8-r\n\n\xf0\xd2\xc9\xd7\xc5\xd4\n"
    )
    mail = parse_mail(raw)
    assert mail.subject == "Привет"
    assert mail.text.strip() == "Привет"
    assert "subject: raw 8-bit header bytes decoded as koi8-r" in mail.defects


def test_charset_of_the_first_text_part_is_the_declared_one() -> None:
    """A multipart mail declares its charset on its first text part."""
    raw = (
        b"From: a@example.org\nSubject: \xf0\xd2\xc9\xd7\xc5\xd4\n"
        b"Content-Type: multipart/mixed; boundary=B\n\n"
        b"--B\nContent-Type: text/plain; charset=KOI8-R\n\nx\n--B--\n"
    )
    assert parse_mail(raw).subject == "Привет"


def test_display_name_is_decoded_like_the_subject() -> None:
    """A display name with raw bytes gets the same charset as the Subject of the mail."""
    raw = (
        b"From: \xf0\xd2\xc9\xd7\xc5\xd4 <ivan@example.ru>\nTo: J\xf6rg <jorg@example.de>\n"
        b"Subject: \xf0\xd2\xc9\xd7\xc5\xd4\nContent-Type: text/plain; charset=koi8-r\n\nx\n"
    )
    mail = parse_mail(raw)
    assert mail.from_addr == Address(name="Привет", email="ivan@example.ru")
    assert mail.to == (Address(name="JЖrg", email="jorg@example.de"),)  # koi8-r, as declared
    latin = parse_mail(b"From: J\xf6rg M\xfcller <jorg@example.de>\n\nx\n")
    assert latin.from_addr == Address(name="Jörg Müller", email="jorg@example.de")
    assert "from: raw 8-bit header bytes decoded as windows-1252" in latin.defects


def test_unusable_declared_charsets_fall_back_to_windows_1252() -> None:
    """An unknown label, UTF-16 (not ASCII-compatible) or a UTF-8 label on bytes that are
    not UTF-8 give windows-1252."""
    for charset in (b"x-klingon", b"utf-16", b"utf-8", b"us-ascii"):
        raw = b"Subject: Gr\xfc\xdfe\nContent-Type: text/plain; charset=" + charset + b"\n\nx\n"
        mail = parse_mail(raw)
        assert mail.subject == "Grüße", charset
        assert "subject: raw 8-bit header bytes decoded as windows-1252" in mail.defects


def test_attachment_file_name_with_raw_bytes_is_decoded() -> None:
    """A file name in raw latin-1 bytes (which the email package replaces by U+FFFD) is
    decoded like the headers."""
    raw = (
        b"From: a@example.org\nContent-Type: multipart/mixed; boundary=B\n\n"
        b"--B\nContent-Type: text/plain\n\nsee file\n"
        b'--B\nContent-Type: application/pdf\nContent-Disposition: attachment; filename="Gr\xfc\xdfe.pdf"\n\n'
        b"%PDF\n--B--\n"
    )
    mail = parse_mail(raw)
    assert [a.filename for a in mail.attachments] == ["Grüße.pdf"]
