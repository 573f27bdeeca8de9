"""Subject tags, reply prefixes and header-safe text."""

from __future__ import annotations

import pytest

from gateway.domain.subjects import (
    TAG_RE,
    HeaderInjection,
    check_header,
    clean_header_text,
    find_ticket_refs,
    strip_reply_prefixes,
    tagged_subject,
)


@pytest.mark.parametrize(
    ("subject", "refs"),
    [
        ("[TKT-123] Printer", (123,)),
        ("Re: [tkt-7] printer", (7,)),
        ("RE: [ TKT - 42 ] spaced", (42,)),
        ("[TKT-1] and [TKT-2] and [TKT-1]", (1, 2)),
        ("TKT-5 without brackets", ()),
        ("[TKT-] empty", ()),
        ("nothing here", ()),
    ],
)
def test_find_ticket_refs(subject: str, refs: tuple[int, ...]) -> None:
    """Tags are found in any case and spacing, each once, in order."""
    assert find_ticket_refs(subject) == refs


def test_tag_re_captures_the_number() -> None:
    """TAG_RE's first group is the ticket number."""
    match = TAG_RE.search("x [Tkt-0099] y")
    assert match is not None and int(match.group(1)) == 99


@pytest.mark.parametrize(
    ("subject", "stripped"),
    [
        ("Re: Printer", "Printer"),
        ("RE: Re: re: Printer", "Printer"),
        ("Fwd: FW: Printer", "Printer"),
        ("AW: WG: Drucker", "Drucker"),
        ("SV: VS: Skrivare", "Skrivare"),
        ("Antw: Printer", "Printer"),
        ("Réf : Imprimante", "Imprimante"),
        ("TR: Imprimante", "Imprimante"),
        ("回复: 打印机", "打印机"),
        ("答复：打印机", "打印机"),
        ("Re[2]: Printer", "Printer"),
        ("Re(3): Printer", "Printer"),
        ("RE: [TKT-7] Re: Printer", "Printer"),
        ("[TKT-7] RE: [TKT-7] AW: Printer", "Printer"),
        ("Report: monthly", "Report: monthly"),
        ("Printer Re: jam", "Printer Re: jam"),
        ("  Re:   Printer  ", "Printer"),
        ("Re:", ""),
    ],
)
def test_strip_reply_prefixes(subject: str, stripped: str) -> None:
    """Localised reply/forward prefixes and tags are removed, however they are stacked."""
    assert strip_reply_prefixes(subject) == stripped


@pytest.mark.parametrize(
    ("subject", "tagged"),
    [
        ("Printer jams", "[TKT-7] Printer jams"),
        ("Re: [TKT-7] Printer jams", "[TKT-7] Printer jams"),
        ("FW: [TKT-3] Printer jams", "[TKT-7] Printer jams"),
        ("Printer [TKT-3] jams", "[TKT-7] Printer jams"),
        ("", "[TKT-7]"),
        ("Printer\r\nBcc: evil@example.com", "[TKT-7] Printer Bcc: evil@example.com"),
    ],
)
def test_tagged_subject(subject: str, tagged: str) -> None:
    """The new tag leads, older tags and prefixes go, the result is one line."""
    assert tagged_subject("TKT-7", subject) == tagged


def test_tagged_subject_is_idempotent() -> None:
    """Tagging an already tagged subject changes nothing."""
    once = tagged_subject("TKT-7", "Re: printer")
    assert tagged_subject("TKT-7", once) == once


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain", "plain"),
        ("a\r\nb", "a b"),
        ("a\nBcc: x@example.com", "a Bcc: x@example.com"),
        ("nul\x00byte", "nul byte"),
        ("tab\tand  spaces", "tab and spaces"),
        ("esc\x1b[31mred", "esc [31mred"),
        ("del\x7fx", "del x"),
        ("nel\x85line\u2028sep\u2029par", "nel line sep par"),
        ("  trimmed  ", "trimmed"),
        ("ünïcødé stays", "ünïcødé stays"),
    ],
)
def test_clean_header_text(raw: str, clean: str) -> None:
    """Control characters and line breaks of every kind become single spaces (CVE-2024-6923)."""
    assert clean_header_text(raw) == clean


@pytest.mark.parametrize("value", ["x\r\nBcc: evil@example.com", "x\nBcc: y", "x\rY", "nul\x00"])
def test_check_header_refuses_breaks(value: str) -> None:
    """CR, LF or NUL in a generated header value is refused."""
    with pytest.raises(HeaderInjection):
        check_header("Subject", value)


@pytest.mark.parametrize("name", ["Sub ject", "Subject:", "X\nBcc", ""])
def test_check_header_refuses_bad_names(name: str) -> None:
    """A header name must be RFC 5322 ftext."""
    with pytest.raises(HeaderInjection):
        check_header(name, "value")


def test_check_header_accepts_clean_values() -> None:
    """Ordinary values pass, including non-ASCII text."""
    check_header("Subject", "[TKT-7] Drucker für Büro")
    check_header("X-Loop", "tickets.acme.example")
    assert issubclass(HeaderInjection, ValueError)
