"""Our DATA reader (`read_data`, a buffer at a time) stores and answers exactly what aiosmtpd
1.4.6's own line-at-a-time DATA does: the same streams, sent in random pieces over real sockets
to a stock aiosmtpd server and to ours, give the same stored bytes and the same replies —
including the end of data (only <CRLF>.<CRLF>), dot-unstuffing, over-long lines (500), the
size limit (552) and the commands that follow the end."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.mail.smtp_server import _Controller
from tests.conftest import free_port

SIZE_LIMIT = 4000


class Recorder:
    """A handler that keeps each mail's bytes as the session handed them over."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.contents.append(envelope.original_content)
        return f"250 stored {len(envelope.original_content)}"


@contextlib.contextmanager
def servers() -> Iterator[list[tuple[int, Recorder]]]:
    """A stock aiosmtpd server and ours, each with a Recorder, on 127.0.0.1."""
    out = []
    started = []
    try:
        for kind in (Controller, _Controller):
            rec = Recorder()
            port = free_port()
            c = kind(
                rec, hostname="127.0.0.1", port=port, decode_data=False,
                data_size_limit=SIZE_LIMIT, ready_timeout=10.0,
            )  # fmt: skip
            c.start()
            started.append(c)
            out.append((port, rec))
        yield out
    finally:
        for c in started:
            c.stop()


def _reply(f: object) -> bytes:
    """One whole SMTP reply (its continuation lines too)."""
    lines = []
    while True:
        line = f.readline()  # type: ignore[attr-defined]
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines)


def converse(port: int, pieces: list[bytes]) -> bytes:
    """EHLO, MAIL, RCPT, DATA, then the pieces one send each, then QUIT; every reply after
    the 354 until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = sock.makefile("rb")
        assert _reply(f).startswith(b"220")
        for cmd, code in (
            (b"EHLO client.example", b"250"),
            (b"MAIL FROM:<a@client.example>", b"250"),
            (b"RCPT TO:<b@server.example>", b"250"),
            (b"DATA", b"354"),
        ):
            sock.sendall(cmd + b"\r\n")
            assert _reply(f).startswith(code)
        for p in pieces:
            sock.sendall(p)
        sock.sendall(b"\r\n.\r\nQUIT\r\n")
        return f.read()  # until the server closes after QUIT (or gives up on us)


_tokens = st.sampled_from(
    [b"a", b"b ", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"\n.\r\n",
     b"\r\n.\n", b"\r.\r\n", b"\r\n..\r\n", b"x" * 400, b"y" * 999, b"\r\nRSET\r\n"]
)  # fmt: skip
_streams = st.lists(st.lists(_tokens, max_size=12).map(b"".join), max_size=12)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=_streams)
def test_same_stored_bytes_and_replies_as_aiosmtpd(pieces: list[bytes]) -> None:
    """Random streams of dots, bare CRs and LFs, near-miss end markers, long lines and large
    data. Only the end marker that `converse` sends ends them: after an earlier one the rest
    would be commands, and aiosmtpd hangs up after five unknown ones while the client is
    still sending (the named cases below cover commands after the end)."""
    assume(b"\r\n.\r\n" not in b"\r\n" + b"".join(pieces))
    with servers() as ((stock_port, stock), (our_port, ours)):
        stock_replies = converse(stock_port, pieces)
        our_replies = converse(our_port, pieces)
        assert our_replies == stock_replies
        assert ours.contents == stock.contents


def test_known_streams_as_aiosmtpd() -> None:
    """Streams named by what they test, each the same on both servers."""
    cases = {
        "empty data": [b".\r\n"],
        "one empty line then the end": [b""],
        "one empty line": [b"\r\n"],
        "dot-stuffed lines": [b"..first\r\n", b"mid\r\n..\r\n", b"...three\r\n"],
        "end marker split over pieces": [b"text\r", b"\n.", b"\r", b"\n"],
        "bare LF dot does not end": [b"a\n.\r\nb\r\n", b"c\r\n.\nd\r\n"],
        "pipelined commands after the end": [b"body\r\n.\r\nRSET\r\nNOOP\r\n"],
        "a line over the limit": [b"z" * 1200 + b"\r\nafter\r\n"],
        "a line at the limit": [b"z" * 999 + b"\r\n"],
        "a line one over": [b"z" * 1000 + b"\r\n"],
        "over the size limit": [b"line of text\r\n" * 400],
        "long line, then over size": [b"z" * 1500 + b"\r\n", b"line of text\r\n" * 400],
        "over size, then a long line": [b"line of text\r\n" * 400, b"z" * 1500 + b"\r\n"],
        "big pieces": [(b"w" * 70 + b"\r\n") * 50],
    }
    for name, pieces in cases.items():
        with servers() as ((stock_port, stock), (our_port, ours)):
            stock_replies = converse(stock_port, pieces)
            assert converse(our_port, pieces) == stock_replies, name
            assert ours.contents == stock.contents, name
