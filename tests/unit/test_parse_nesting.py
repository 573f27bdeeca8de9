"""MIME nested deeper than ParseLimits.max_depth is not followed: the parser reads the
headers and keeps the body as one text part, and never hits Python's recursion limit."""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.mail.parse import Address, ParseLimits, mime_nesting_exceeds, parse_mail
from tests.unit.test_corpus import ROWS, Row
from tests.unit.test_parse import random_mail


def nested_mail(depth: int) -> bytes:
    """`depth` multipart/mixed parts inside each other under a multipart/mixed message, the
    innermost holding one text part (the shape of /work/shared/checks/06-hardening item 4)."""
    opens = "".join(
        f'--b{k}\r\nContent-Type: multipart/mixed; boundary="b{k + 1}"\r\n\r\n'
        for k in range(depth)
    )
    inner = f"--b{depth}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b{depth}--\r\n"
    closes = "".join(f"\r\n--b{k}--\r\n" for k in reversed(range(depth)))
    return (
        "From: Jane Doe <jane@example.org>\r\nTo: it@tickets.acme.example\r\n"
        "Subject: deep nesting\r\nMessage-ID: <deep@example.org>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n' + opens + inner + closes
    ).encode()


def stock_depth(msg: Message) -> int:
    """How deep the stock email package nests the parts of `msg` (the message is level 0)."""
    deepest, stack = 0, [(msg, 0)]
    while stack:
        part, level = stack.pop()
        deepest = max(deepest, level)
        if part.is_multipart():
            children = part.get_payload()
            stack.extend((child, level + 1) for child in children if isinstance(child, Message))
    return deepest


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_thousands_of_levels_parse_with_their_headers(depth: int) -> None:
    """1,000 and 5,000 nested levels (the stock parser raises RecursionError at about 1,000)
    parse without raising; From, Subject and Message-ID are read, the nesting noted, and
    the words of the body kept."""
    mail = parse_mail(nested_mail(depth))
    assert mail.from_addr == Address(name="Jane Doe", email="jane@example.org")
    assert mail.subject == "deep nesting"
    assert mail.message_id == "deep@example.org"
    assert "MIME nesting deeper than 10 levels; body kept as one text part" in mail.defects
    assert "hello" in mail.text
    assert not any("parser failure" in d for d in mail.defects)


def test_nesting_up_to_the_limit_is_parsed_part_by_part() -> None:
    """At max_depth levels the parts are read as usual; one level more is not followed."""
    at_limit = parse_mail(nested_mail(9))  # the text part is at level 10
    assert at_limit.text == "hello"
    assert not any("nesting" in d for d in at_limit.defects)
    over = parse_mail(nested_mail(10))
    assert "MIME nesting deeper than 10 levels; body kept as one text part" in over.defects
    assert parse_mail(nested_mail(3), limits=ParseLimits(max_depth=3)).text != "hello"
    assert parse_mail(nested_mail(3), limits=ParseLimits(max_depth=4)).text == "hello"


def test_a_deep_digest_counts_its_implicit_messages() -> None:
    """The parts of a multipart/digest are message/rfc822 by default: each is a level."""
    inner = "Content-Type: text/plain\n\nhello\n"
    for k in range(6):
        inner = f"Content-Type: multipart/digest; boundary=d{k}\n\n--d{k}\n\n{inner}--d{k}--\n"
    raw = ("From: a@example.org\nSubject: digest\n" + inner).encode()
    depth = stock_depth(BytesParser(policy=policy.default).parsebytes(raw))
    assert depth == 12
    assert mime_nesting_exceeds(raw, depth - 1) and not mime_nesting_exceeds(raw, depth)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=random_mail(max_headers=4), limit=st.integers(min_value=0, max_value=6))
def test_nesting_is_measured_as_the_stock_parser_nests(raw: bytes, limit: int) -> None:
    """For random MIME trees (odd boundaries, digests, reports, any line ending), the scan
    before parsing agrees with the depth of the tree the stock email package builds."""
    depth = stock_depth(BytesParser(policy=policy.default).parsebytes(raw))
    assert mime_nesting_exceeds(raw, limit) == (depth > limit)


@pytest.mark.parametrize("row", ROWS, ids=[r.path for r in ROWS])
def test_corpus_nesting_is_measured_exactly(row: Row) -> None:
    """For every real mail the scan finds the stock parser's depth: not over it, over one less."""
    raw = row.file.read_bytes()
    depth = stock_depth(BytesParser(policy=policy.default).parsebytes(raw))
    assert not mime_nesting_exceeds(raw, depth)
    assert depth == 0 or mime_nesting_exceeds(raw, depth - 1)
