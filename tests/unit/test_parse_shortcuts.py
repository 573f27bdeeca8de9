"""The parser's three shortcuts give exactly what the stock email package gives.

`gateway.mail.parse` answers email.feedparser's per-boundary regular expression without
compiling one (`_BoundaryLine`), searches for a payload's final line end only where one can
start (`_EndOfLineAtEnd`), and hands out a plain Content-Type as its text instead of a
parsed header object. Each test parses the same input with and without the shortcuts."""

from __future__ import annotations

import email.feedparser
import re
from collections.abc import Iterator
from contextlib import contextmanager
from email import policy
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.mail.parse as parse_module
from gateway.mail.parse import parse_mail
from tests.unit.test_corpus import ROWS
from tests.unit.test_parse import random_mail

MAIL_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mail"
STOCK_TAIL = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
STOCK_EOL = re.compile(r"(\r\n|\r|\n)\Z")


@contextmanager
def stock_email_package() -> Iterator[None]:
    """Parse as the email package would without our shortcuts."""
    saved_re, saved_plain = email.feedparser.re, parse_module._is_plain_content_type
    saved_eol = email.feedparser.NLCRE_eol  # type: ignore[attr-defined]
    email.feedparser.re = re  # type: ignore[assignment]
    email.feedparser.NLCRE_eol = STOCK_EOL  # type: ignore[attr-defined]
    parse_module._is_plain_content_type = lambda value: False
    parse_module._fetched_header.cache_clear()  # it holds what the shortcut handed out
    try:
        yield
    finally:
        email.feedparser.re = saved_re  # type: ignore[assignment]
        email.feedparser.NLCRE_eol = saved_eol  # type: ignore[attr-defined]
        parse_module._is_plain_content_type = saved_plain
        parse_module._fetched_header.cache_clear()  # … and now what the stock path did


def both_ways(raw: bytes) -> None:
    with stock_email_package():
        stock = parse_mail(raw)
    assert parse_mail(raw) == stock


def test_shortcuts_are_installed() -> None:
    """The feed parser sees our `re`; a boundary pattern of the stock shape is not compiled."""
    compiled = email.feedparser.re.compile("(?P<sep>" + re.escape("--a.b") + STOCK_TAIL)
    assert isinstance(compiled, parse_module._BoundaryLine)
    # any other pattern is an ordinary compiled pattern
    assert isinstance(email.feedparser.re.compile(r"\r\n|\r|\n"), re.Pattern)
    assert isinstance(email.feedparser.NLCRE_eol, parse_module._EndOfLineAtEnd)  # type: ignore[attr-defined]


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet="ab\r\n", max_size=12))
def test_end_of_line_search_matches_like_the_regex(text: str) -> None:
    """`_EndOfLineAtEnd.search` finds the same span and group as the stock search."""
    ours = email.feedparser.NLCRE_eol.search(text)  # type: ignore[attr-defined]
    stock = STOCK_EOL.search(text)
    assert (ours and (ours.span(), ours.group(0))) == (stock and (stock.span(), stock.group(0)))


@pytest.mark.parametrize("row", ROWS, ids=[r.path for r in ROWS])
def test_corpus_parses_the_same(row: object) -> None:
    both_ways(row.file.read_bytes())  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=random_mail(max_headers=6))
def test_random_mime_parses_the_same(raw: bytes) -> None:
    both_ways(raw)


_line_tails = st.sampled_from(["", "--", "  ", "\t--", "-- ", "x", " x", "--x"])
_line_ends = st.sampled_from(["", "\n", "\r\n", "\r", "\n\n", "\r\r\n"])


@settings(max_examples=400, deadline=None)
@given(
    separator=st.text(min_size=1, max_size=40).map(lambda t: "--" + t),
    tail=_line_tails,
    end=_line_ends,
    prefix=st.sampled_from(["", " ", "-"]),
)
def test_boundary_line_matches_like_the_regex(
    separator: str, tail: str, end: str, prefix: str
) -> None:
    stock = re.compile("(?P<sep>" + re.escape(separator) + STOCK_TAIL)
    ours = email.feedparser.re.compile("(?P<sep>" + re.escape(separator) + STOCK_TAIL)
    assert isinstance(ours, parse_module._BoundaryLine)
    for line in (prefix + separator + tail + end, separator[:-1] + end, separator + end):
        a, b = stock.match(line), ours.match(line)
        assert (a is None) == (b is None), line
        if a is not None and b is not None:
            for group in ("end", "ws", "linesep"):
                assert a.group(group) == b.group(group), (line, group)


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789!#$&^_.+-", min_size=1)
_quoted = st.text(alphabet="".join(map(chr, range(0x20, 0x7F))).replace('"', "").replace("\\", ""))
_params = st.lists(
    st.tuples(
        st.sampled_from([";", "; ", " ;\t"]),
        _token,
        st.one_of(_quoted.map(lambda q: f'"{q}"'), _token),
    ),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(maintype=_token, subtype=_token, params=_params, trailing=st.sampled_from(["", ";", " "]))
def test_plain_content_type_reads_as_its_parsed_header(
    maintype: str, subtype: str, params: list[tuple[str, str, str]], trailing: str
) -> None:
    """For every value the shortcut takes, the Message accessors (all that reads it here and
    in the feed parser) answer the same from its text as from the parsed header."""
    value = f"{maintype}/{subtype}" + "".join(f"{s}{k}={v}" for s, k, v in params) + trailing
    if not parse_module._is_plain_content_type(value):
        return  # not taken: parsed as before
    parsed = policy.default.header_factory("content-type", value)
    plain_msg, parsed_msg = Message(), Message()
    plain_msg._headers = [("Content-Type", value)]  # type: ignore[attr-defined]
    parsed_msg._headers = [("Content-Type", parsed)]  # type: ignore[attr-defined]
    for accessor in ("get_content_type", "get_boundary", "get_content_charset", "get_params"):
        assert getattr(plain_msg, accessor)() == getattr(parsed_msg, accessor)(), accessor


@pytest.mark.parametrize(
    "value",
    [
        'text/plain; name="=?utf-8?B?w6TDtsO8LnR4dA==?="',  # an encoded word to decode
        "text/plain; charset=utf-8 (comment)",
        'text/plain; name="a\\"b"',
        "text/plain; name*=utf-8''%C3%A4.txt",
        'text/plain; name="\u00e4.txt"',
    ],
)
def test_content_types_with_anything_to_decode_are_parsed(value: str) -> None:
    """Encoded words, comments, escapes, RFC 2231 and non-ASCII go to the header parser."""
    assert parse_module._IntakePolicy().header_fetch_parse("Content-Type", value) is not value
    assert hasattr(parse_module._IntakePolicy().header_fetch_parse("Content-Type", value), "params")
