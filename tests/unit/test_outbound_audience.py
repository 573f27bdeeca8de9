"""Rendering once per audience (issue 17): the mail each recipient gets is byte for byte what
rendering for that recipient alone gives, and recipients of one audience differ only in their
own header fields."""

from __future__ import annotations

import dataclasses
import re
from email import message_from_bytes, policy
from email.headerregistry import Address

import pytest

from gateway.mail.outbound import (
    KINDS,
    PER_RECIPIENT_HEADERS,
    Notice,
    Renderer,
    _address,
    _fold,
    templates_dir,
)
from tests.unit.test_outbound import EXTRA, notice

RECIPIENTS = [
    ("alice@acme.example", "Alice Example"),
    ("juergen@acme.example", "Jürgen Groß"),  # RFC 2047 in To: the email package folds it
    ("carol@acme.example", "Example, Carol"),  # a special: quoted
    ("d.o'brien@acme.example", ""),  # no display name
    ("eve@acme.example", "Eve\r\nBcc: evil@example.com"),  # cleaned, never a header
]


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(templates_dir())


def audience_of(kind: str) -> list[Notice]:
    base = notice(kind=kind, extra=EXTRA)
    return [
        dataclasses.replace(
            base,
            recipient_email=email,
            recipient_name=name,
            reply_address=f"reply+tok{i}abcdefgh234567@tickets.acme.example",
            message_id=f"{i:032x}.tkt-7@tickets.acme.example",
            role=("assignee", "owner", "assignee", "rc", "assignee")[i],
        )
        for i, (email, name) in enumerate(RECIPIENTS)
    ]


def without_own_headers(data: bytes) -> bytes:
    """The message with the fields of PER_RECIPIENT_HEADERS (and their folded lines) cut."""
    head, sep, body = data.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    own = tuple(f"{n.lower()}:".encode() for n in PER_RECIPIENT_HEADERS)
    kept = [f for f in fields if not f.lower().startswith(own)]
    return b"\r\n".join(kept) + sep + body


@pytest.mark.parametrize("kind", KINDS)
def test_audience_rendering_is_byte_identical_to_per_recipient(
    renderer: Renderer, kind: str
) -> None:
    """For every kind: `render_audience` gives each recipient exactly the bytes `render` gives
    for that recipient alone; across the audience only To, Reply-To and Message-ID differ,
    and each mail still names only its own recipient."""
    notices = audience_of(kind)
    together = renderer.render_audience(notices)
    alone = [renderer.render(n) for n in notices]
    assert together == alone
    assert len({without_own_headers(d) for d in together}) == 1
    assert len(set(together)) == len(notices)
    for n, data in zip(notices, together, strict=True):
        msg = message_from_bytes(data, policy=policy.default)
        assert [a.addr_spec for a in msg["To"].addresses] == [n.recipient_email]
        assert msg["Reply-To"].addresses[0].addr_spec == n.reply_address
        assert str(msg["Message-ID"]) == f"<{n.message_id}>"
        assert msg.get_all("Bcc") is None and not msg.defects
        others = [e for e, _ in RECIPIENTS if e != n.recipient_email]
        assert not any(o.encode() in data for o in others)


def test_a_rendering_is_the_same_bytes_every_time(renderer: Renderer) -> None:
    """The MIME boundary is a digest of the parts: a retry sends the very same bytes."""
    n = notice(body="Déjà vu.\n" * 30)
    assert renderer.render(n) == renderer.render(n)
    assert renderer.render(n) != renderer.render(dataclasses.replace(n, body="Other."))


def test_notices_of_different_audiences_are_not_rendered_together(renderer: Renderer) -> None:
    """A notice that would show something else (here: other command hints) is refused."""
    a, b = audience_of("new_ticket")[:2]
    with pytest.raises(ValueError, match="audience"):
        renderer.render_audience([a, dataclasses.replace(b, commands_hint=("#approve",))])


@pytest.mark.parametrize(
    ("name", "addr"),
    [
        ("Alice Example", "alice@acme.example"),
        ("", "reply+abc234@tickets.acme.example"),
        ("Helpdesk 2", "helpdesk@tickets.acme.example"),
        ("Example, Alice", "alice@acme.example"),
        ("Jürgen", "j@acme.example"),
        ("A", "o'brien+x@sub.acme.example"),
    ],
)
def test_addresses_are_written_as_the_email_package_writes_them(name: str, addr: str) -> None:
    """The short path for plain names and addresses prints what `Address` prints."""
    assert str(_address(name, addr)) == str(Address(display_name=name, addr_spec=addr))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Subject", "[TKT-7] Printer"),
        ("References", " ".join(f"<{i:032x}.tkt-7@tickets.acme.example>" for i in range(20))),
        ("Subject", "[TKT-7] " + "word " * 40 + "end"),
        ("Thread-Topic", "x" * 120),
    ],
)
def test_folded_ascii_headers_read_back_as_set(name: str, value: str) -> None:
    """Headers folded without the email package: lines within 78 octets where spaces allow,
    and parsed back they are the value that was set."""
    line, by_package = _fold(name, value)
    assert not by_package and line.endswith(b"\r\n")
    lines = line[:-2].split(b"\r\n")
    assert all(len(x) <= 78 for x in lines) or len(lines) == 1
    msg = message_from_bytes(line + b"\r\n", policy=policy.default)
    assert str(msg[name]) == value
