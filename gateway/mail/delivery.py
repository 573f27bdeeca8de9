"""Hand a rendered mail to its next hop: an SMTP relay, or a Maildir on disk."""

from __future__ import annotations

import os
import secrets
import smtplib
import socket
import ssl
import time
from pathlib import Path
from typing import Protocol


class TemporaryDeliveryError(Exception):
    """Try again later: a 4xx reply, a refused or dropped connection, a timeout, a full disk."""


class PermanentDeliveryError(Exception):
    """Never going to work: a 5xx reply (RFC 5321 §4.2.1); the outbox dead-letters the mail."""


class Transport(Protocol):
    def send(self, *, envelope_from: str, recipient: str, data: bytes) -> None: ...


def _check_envelope_address(addr: str) -> None:
    # An envelope address travels in an SMTP command or a header line we write ourselves;
    # whitespace or a line break there would be command or header injection.
    if not addr or any(c.isspace() or c in "<>\x00" for c in addr):
        raise PermanentDeliveryError(f"unusable envelope address {addr!r}")


class MaildirTransport:
    """Write each mail into a Maildir, as a local delivery agent would (SPEC §6 outbound.maildir).

    One file per mail and envelope recipient in ``new/``, headed by ``Return-Path`` and
    ``Delivered-To``, with LF line ends. The file is written in ``tmp/``, fsynced and renamed
    into ``new/`` so a reader never sees half a mail (the Maildir protocol, cr.yp.to/proto/maildir).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    def send(self, *, envelope_from: str, recipient: str, data: bytes) -> None:
        _check_envelope_address(recipient)
        if envelope_from:
            _check_envelope_address(envelope_from)
        trace = f"Return-Path: <{envelope_from}>\nDelivered-To: {recipient}\n".encode()
        content = trace + data.replace(b"\r\n", b"\n")
        try:
            for sub in ("tmp", "new", "cur"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            name = self._unique_name()
            tmp = self.path / "tmp" / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(content)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.rename(tmp, self.path / "new" / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._sync_dir(self.path / "new")
        except OSError as exc:
            raise TemporaryDeliveryError(f"maildir {self.path}: {exc}") from exc

    def _unique_name(self) -> str:
        now = time.time_ns()
        seconds, micros = divmod(now // 1000, 1_000_000)
        return f"{seconds}.M{micros}P{os.getpid()}R{secrets.token_hex(8)}.{self._host}"

    @staticmethod
    def _sync_dir(path: Path) -> None:
        # The rename is durable only once the directory entry is on disk.
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class SmtpRelayTransport:
    """Send through an SMTP relay: one connection per mail, optional STARTTLS and AUTH."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        helo: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.starttls = starttls
        self.username = username
        self._password = password
        self.timeout = timeout
        self.helo = helo
        self._tls_context = tls_context

    def send(self, *, envelope_from: str, recipient: str, data: bytes) -> None:
        """Deliver ``data`` to ``recipient``; raise the error tier the outbox needs.

        Returns once the relay answered 250 to the data: from then on the mail is the
        relay's (RFC 5321 §6.1), whatever happens to the connection afterwards. Anything
        earlier, a dropped connection or a timeout while waiting for that 250 included, is
        an error: the outbox sends the mail again, with the same Message-ID."""
        _check_envelope_address(recipient)
        if envelope_from:
            _check_envelope_address(envelope_from)
        try:
            smtp = smtplib.SMTP(
                self.host, self.port, local_hostname=self.helo, timeout=self.timeout
            )
            try:
                smtp.ehlo_or_helo_if_needed()
                if self.starttls:
                    smtp.starttls(context=self._tls_context or ssl.create_default_context())
                    smtp.ehlo()
                if self.username is not None:
                    smtp.login(self.username, self._password or "")
                smtp.sendmail(envelope_from, [recipient], data)
            finally:
                _hang_up(smtp)
        except smtplib.SMTPAuthenticationError as exc:
            # RFC 4954 §6: a 535 refuses our credentials, not this mail. Dead-lettering every
            # mail while an operator fixes the relay password would be the wrong outcome.
            raise TemporaryDeliveryError(f"AUTH {exc.smtp_code} {exc.smtp_error!r}") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()), (-1, b""))
            raise _by_code(code, reply, "RCPT") from exc
        except smtplib.SMTPResponseException as exc:
            # MAIL, DATA, AUTH and connect replies (SMTPSenderRefused, SMTPDataError, ...).
            raise _by_code(exc.smtp_code, exc.smtp_error, "reply") from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Disconnects, refused connections, timeouts, TLS failures: the relay may be back
            # later (RFC 5321 §4.5.4.1 asks senders to retry).
            raise TemporaryDeliveryError(f"{self.host}:{self.port}: {exc!r}") from exc


def _hang_up(smtp: smtplib.SMTP) -> None:
    """QUIT and close. Its answer changes nothing: after the 250 to the data the relay has the
    mail, before it the error is known already. (smtplib's `with` block raises on a QUIT
    answered with anything but 221, which would have made a delivered mail a failure.)"""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _by_code(code: int, reply: bytes | str, stage: str) -> Exception:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    message = f"{stage} {code} {text}".strip()
    # RFC 5321 §4.2.1: 5yz is a permanent negative completion, 4yz a transient one.
    if 500 <= code <= 599:
        return PermanentDeliveryError(message)
    return TemporaryDeliveryError(message)
