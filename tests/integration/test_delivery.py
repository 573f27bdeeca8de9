"""Delivery transports against a real Maildir and a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import mailbox
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway.mail.delivery import (
    MaildirTransport,
    PermanentDeliveryError,
    SmtpRelayTransport,
    TemporaryDeliveryError,
    Transport,
)

BOUNCES = "bounces+abc123@tickets.acme.example"
MAIL = (
    b"From: Acme Helpdesk <helpdesk@tickets.acme.example>\r\n"
    b"To: alice@acme.example\r\n"
    b"Subject: [TKT-7] Printer\r\n"
    b"Message-ID: <tkt-7.1@tickets.acme.example>\r\n"
    b"\r\n"
    b"Hello Alice,\r\n"
    b".leading dot survives\r\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Sink:
    """An aiosmtpd handler that records mail, or answers a chosen code at RCPT or DATA."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content or b""
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 2.0.0 queued"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        # handled=False: let aiosmtpd answer 535 itself on failure.
        return AuthResult(success=data.password == b"s3cret", handled=False)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def relay(port: int, **kw: Any) -> Transport:
    return SmtpRelayTransport(host="127.0.0.1", port=port, timeout=5.0, helo="gw.test", **kw)


def test_maildir_writes_one_file_per_recipient(tmp_path: Path) -> None:
    """Each mail lands in new/ with Return-Path and Delivered-To on top; tmp/ is left empty."""
    box = tmp_path / "outbox"
    transport = MaildirTransport(box)
    transport.send(envelope_from=BOUNCES, recipient="alice@acme.example", data=MAIL)
    transport.send(envelope_from=BOUNCES, recipient="bob@acme.example", data=MAIL)
    files = sorted((box / "new").iterdir())
    assert len(files) == 2 and len({f.name for f in files}) == 2
    assert list((box / "tmp").iterdir()) == []
    delivered = set()
    for path in files:
        raw = path.read_bytes()
        assert raw.startswith(f"Return-Path: <{BOUNCES}>\nDelivered-To: ".encode())
        assert b"\r\n" not in raw  # LF line ends, as a local delivery agent writes them
        msg = message_from_bytes(raw, policy=policy.default)
        delivered.add(str(msg["Delivered-To"]))
        assert str(msg["Message-ID"]) == "<tkt-7.1@tickets.acme.example>"
    assert delivered == {"alice@acme.example", "bob@acme.example"}
    # The standard library reads it as a Maildir.
    assert len(mailbox.Maildir(box, create=False)) == 2


def test_maildir_refuses_a_recipient_with_a_line_break(tmp_path: Path) -> None:
    """A recipient that would inject a header line is a permanent failure; nothing is written."""
    transport = MaildirTransport(tmp_path / "outbox")
    with pytest.raises(PermanentDeliveryError):
        transport.send(envelope_from=BOUNCES, recipient="a@x.example\nBcc: e@x", data=MAIL)
    assert not (tmp_path / "outbox" / "new").exists() or not any(
        (tmp_path / "outbox" / "new").iterdir()
    )


def test_maildir_unwritable_folder_is_temporary(tmp_path: Path) -> None:
    """A folder that cannot be created (a file is in the way) is worth retrying later."""
    blocker = tmp_path / "outbox"
    blocker.write_text("not a folder")
    with pytest.raises(TemporaryDeliveryError):
        MaildirTransport(blocker).send(envelope_from=BOUNCES, recipient="a@x.example", data=MAIL)


def test_smtp_relay_delivers(smtp_server: tuple[Sink, int]) -> None:
    """The relay gets our VERP sender as MAIL FROM, the one recipient, and the bytes intact."""
    sink, port = smtp_server
    relay(port).send(envelope_from=BOUNCES, recipient="alice@acme.example", data=MAIL)
    assert len(sink.received) == 1
    mail_from, rcpts, content = sink.received[0]
    assert mail_from == BOUNCES and rcpts == ["alice@acme.example"]
    assert content.replace(b"\r\n", b"\n") == MAIL.replace(b"\r\n", b"\n")


@pytest.mark.parametrize(
    ("stage", "reply", "error"),
    [
        ("rcpt", "451 4.3.0 try again later", TemporaryDeliveryError),
        ("rcpt", "421 4.3.2 shutting down", TemporaryDeliveryError),
        ("rcpt", "550 5.1.1 no such user", PermanentDeliveryError),
        ("data", "452 4.3.1 insufficient storage", TemporaryDeliveryError),
        ("data", "554 5.7.1 rejected as spam", PermanentDeliveryError),
    ],
)
def test_smtp_relay_classifies_replies(
    smtp_server: tuple[Sink, int], stage: str, reply: str, error: type[Exception]
) -> None:
    """4xx replies are temporary, 5xx permanent, at RCPT and at DATA alike."""
    sink, port = smtp_server
    if stage == "rcpt":
        sink.rcpt_reply = reply
    else:
        sink.data_reply = reply
    with pytest.raises(error, match=reply.split()[0]):
        relay(port).send(envelope_from=BOUNCES, recipient="alice@acme.example", data=MAIL)
    assert sink.received == []


def test_connection_refused_is_temporary() -> None:
    """Nobody listening on the port: retry later."""
    with pytest.raises(TemporaryDeliveryError):
        relay(free_port()).send(envelope_from=BOUNCES, recipient="a@x.example", data=MAIL)


def test_disconnect_before_greeting_is_temporary() -> None:
    """A server that hangs up at once: retry later."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.close()

        thread = threading.Thread(target=hang_up)
        thread.start()
        with pytest.raises(TemporaryDeliveryError):
            relay(port).send(envelope_from=BOUNCES, recipient="a@x.example", data=MAIL)
        thread.join()


def test_starttls_not_offered_is_temporary(smtp_server: tuple[Sink, int]) -> None:
    """STARTTLS is configured but the relay does not offer it: nothing is sent in clear."""
    sink, port = smtp_server
    with pytest.raises(TemporaryDeliveryError):
        relay(port, starttls=True).send(envelope_from=BOUNCES, recipient="a@x.example", data=MAIL)
    assert sink.received == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_starttls_and_auth(certificate: tuple[Path, Path]) -> None:
    """STARTTLS then AUTH: the relay sees our login over TLS; wrong credentials are retried."""
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    sink = Sink()
    port = free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=sink.authenticate,
        auth_required=True,
    )
    controller.start()
    try:
        client_tls = ssl.create_default_context(cafile=str(cert))
        ok = relay(port, starttls=True, username="gw", password="s3cret", tls_context=client_tls)
        ok.send(envelope_from=BOUNCES, recipient="alice@acme.example", data=MAIL)
        assert sink.logins == [(b"gw", b"s3cret")] and len(sink.received) == 1
        bad = relay(port, starttls=True, username="gw", password="wrong", tls_context=client_tls)
        # Bad credentials are the relay's configuration, not this mail's fault: retry later.
        with pytest.raises(TemporaryDeliveryError, match="535"):
            bad.send(envelope_from=BOUNCES, recipient="alice@acme.example", data=MAIL)
    finally:
        controller.stop()
