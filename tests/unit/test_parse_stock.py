"""The parser leaves the standard library as it found it and reads mail as the stock email
package reads it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import pytest

from gateway.mail.parse import InboundMail, one_line, parse_mail
from tests.unit.test_corpus import ROWS, Row

ROOT = Path(__file__).resolve().parents[2]

_STDLIB_STATE = """
import email.feedparser, email.parser, email.policy, re
def state():
    return (
        email.feedparser.re,
        type(email.feedparser.NLCRE_eol),
        email.feedparser.NLCRE_eol.pattern,
        re.compile,
        dict(vars(email.parser.BytesParser)),
        dict(vars(email.feedparser.FeedParser)),
        type(email.policy.default),
        email.policy.default.header_factory,
    )
before = state()
import gateway.mail.parse, gateway.mail.translate, gateway.mail.rules
gateway.mail.parse.parse_mail(b"From: a@example.com\\nContent-Type: multipart/mixed; boundary=b\\n\\n--b\\n\\nx\\n--b--\\n")
after = state()
assert email.feedparser.re is re, email.feedparser.re
assert before == after, [(b, a) for b, a in zip(before, after) if b != a]
print("unchanged")
"""


def test_importing_the_parser_leaves_the_standard_library_unchanged() -> None:
    """In a fresh interpreter, importing (and using) gateway.mail.parse, translate and rules
    leaves email.feedparser, email.parser, email.policy and re exactly as they were."""
    done = subprocess.run(
        [sys.executable, "-c", _STDLIB_STATE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "unchanged"


def _leaves(msg: Message) -> list[Message]:
    return [p for p in msg.walk() if not p.is_multipart()]


def _assert_reads_as_stock(raw: bytes, mail: InboundMail) -> None:
    stock = BytesParser(policy=policy.default).parsebytes(raw)
    assert mail.content_type == stock.get_content_type()
    subject = stock["subject"]
    if subject is not None and raw.isascii():
        assert mail.subject == one_line(str(subject))[:998]
    if mail.from_addr is not None:
        assert mail.from_addr.email in {a.addr_spec.lower() for a in stock["from"].addresses}
    payloads = set()
    for part in _leaves(stock):
        data = part.get_payload(decode=True)
        payloads.add(hashlib.sha256(data if isinstance(data, bytes) else b"").hexdigest())
    for attachment in mail.attachments:
        if not attachment.content_type.startswith("message/"):
            assert attachment.sha256 in payloads, attachment.filename


@pytest.mark.parametrize("row", ROWS, ids=[r.path for r in ROWS])
def test_corpus_reads_as_the_stock_email_package_reads_it(row: Row) -> None:
    """Content type, subject, author and every attachment's bytes are what an untouched
    BytesParser(policy=email.policy.default) finds in the same file."""
    raw = row.file.read_bytes()
    _assert_reads_as_stock(raw, parse_mail(raw))
