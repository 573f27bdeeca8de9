"""Hand a rendered mail to its next hop: an SMTP relay, or a Maildir on disk."""

from __future__ import annotations

import hashlib
import os
import secrets
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Threads writing and fsyncing one batch's files: the file system commits them together.
SYNC_THREADS = 16
# A batch is split over several relay sessions only in parts of at least this many mails.
MIN_PER_SESSION = 10


class TemporaryDeliveryError(Exception):
    """Try again later: a 4xx reply, a refused or dropped connection, a timeout, a full disk."""


class PermanentDeliveryError(Exception):
    """Never going to work: a 5xx reply (RFC 5321 §4.2.1); the outbox dead-letters the mail."""


@dataclass(frozen=True)
class OutgoingMail:
    """One envelope: a rendered mail for one recipient. ``key`` names it stably across
    attempts (the outbox row's Message-ID and recipient): the maildir writes it under one file
    name, so a re-send after a crash finds the copy it already made."""

    envelope_from: str
    recipient: str
    data: bytes
    key: str | None = None
    resend: bool = False  # an earlier attempt may have delivered it


class Transport(Protocol):
    def send(self, *, envelope_from: str, recipient: str, data: bytes) -> None: ...

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[Exception | None]:
        """Deliver each mail; per mail ``None`` (the next hop has it) or the error
        (`TemporaryDeliveryError`, `PermanentDeliveryError`), in order."""
        ...

    def close(self) -> None:
        """Let go of the threads and connections kept between batches."""
        ...


def _check_envelope_address(addr: str) -> None:
    # An envelope address travels in an SMTP command or a header line we write ourselves;
    # whitespace or a line break there would be command or header injection.
    if not addr or any(c.isspace() or c in "<>\x00" for c in addr):
        raise PermanentDeliveryError(f"unusable envelope address {addr!r}")


def _check_envelope(mail: OutgoingMail) -> None:
    _check_envelope_address(mail.recipient)
    if mail.envelope_from:
        _check_envelope_address(mail.envelope_from)


def _raise_first(results: list[Exception | None]) -> None:
    if results and results[0] is not None:
        raise results[0]


class MaildirTransport:
    """Write each mail into a Maildir, as a local delivery agent would (SPEC §6 outbound.maildir).

    One file per mail and envelope recipient in ``new/``, headed by ``Return-Path`` and
    ``Delivered-To``, with LF line ends. Each file is written in ``tmp/``, fsynced and renamed
    into ``new/`` so a reader never sees half a mail (the Maildir protocol,
    cr.yp.to/proto/maildir); a batch (`send_many`) then syncs ``new/`` once, and only after
    that does any of its mails count as delivered. A mail with a ``key`` gets a file name
    derived from it: re-sent after a crash (``resend``), it is found in ``new/`` or ``cur/``
    and not written twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._ready = False
        self._fsyncs: ThreadPoolExecutor | None = None

    def send(self, *, envelope_from: str, recipient: str, data: bytes) -> None:
        _raise_first(self.send_many([OutgoingMail(envelope_from, recipient, data)]))

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[Exception | None]:
        """Write the batch: every file written into tmp/ and fsynced by a pool of threads
        (concurrent fsyncs share the file system's journal commits, and a write here costs
        about as much as its fsync), each renamed into new/ once its own fsync returned, then
        new/ synced once. A mail is reported delivered only after all that."""
        results: list[Exception | None] = [None] * len(mails)
        try:
            self._prepare()
            delivered = self._delivered_names() if any(m.resend for m in mails) else set()
        except OSError as exc:
            return [TemporaryDeliveryError(f"maildir {self.path}: {exc}") for _ in mails]
        todo: list[tuple[int, str]] = []  # (index, file name) to write
        for i, mail in enumerate(mails):
            try:
                _check_envelope(mail)
            except PermanentDeliveryError as exc:
                results[i] = exc
                continue
            name = self._name(mail)
            if name not in delivered:  # else an earlier attempt wrote it and synced new/
                todo.append((i, name))
        written = self._pool().map(lambda job: self._write_synced(job[1], mails[job[0]]), todo)
        renamed = False
        for (i, name), error in zip(todo, written, strict=True):
            try:
                if error is not None:
                    raise error
                os.rename(self.path / "tmp" / name, self.path / "new" / name)
                renamed = True
            except OSError as exc:
                (self.path / "tmp" / name).unlink(missing_ok=True)
                results[i] = TemporaryDeliveryError(f"maildir {self.path}: {exc}")
        if renamed:
            try:
                # The renames are durable only once the directory entry is on disk.
                self._sync_dir(self.path / "new")
            except OSError as exc:
                failure = TemporaryDeliveryError(f"maildir {self.path}: {exc}")
                return [r if r is not None else failure for r in results]
        return results

    def _pool(self) -> ThreadPoolExecutor:
        if self._fsyncs is None:
            self._fsyncs = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="maildir-fsync")
        return self._fsyncs

    def close(self) -> None:
        """Stop the threads that write and sync files (they start again with the next batch)."""
        if self._fsyncs is not None:
            self._fsyncs.shutdown()
            self._fsyncs = None

    def _prepare(self) -> None:
        if not self._ready:
            for sub in ("tmp", "new", "cur"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            self._ready = True

    def _delivered_names(self) -> set[str]:
        """Files already in new/ and cur/ (a reader moves them there, adding ``:2,flags``)."""
        names = set(os.listdir(self.path / "new"))
        names.update(n.split(":", 1)[0] for n in os.listdir(self.path / "cur"))
        return names

    def _name(self, mail: OutgoingMail) -> str:
        if mail.key is None:
            return self._unique_name()
        digest = hashlib.sha256(f"{mail.key}\0{mail.recipient}".encode()).hexdigest()[:32]
        return f"ticketgate.K{digest}.{self._host}"

    def _write_synced(self, name: str, mail: OutgoingMail) -> OSError | None:
        """The mail's file in tmp/, written and fsynced (closed either way); the error, if any.
        A keyed file left half-written in tmp/ by a crash is written again from the start."""
        trace = f"Return-Path: <{mail.envelope_from}>\nDelivered-To: {mail.recipient}\n".encode()
        content = trace + mail.data.replace(b"\r\n", b"\n")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if mail.key else os.O_EXCL)
        try:
            fd = os.open(self.path / "tmp" / name, flags, 0o600)
        except OSError as exc:
            return exc
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            return exc
        finally:
            os.close(fd)
        return None

    def _unique_name(self) -> str:
        now = time.time_ns()
        seconds, micros = divmod(now // 1000, 1_000_000)
        return f"{seconds}.M{micros}P{os.getpid()}R{secrets.token_hex(8)}.{self._host}"

    @staticmethod
    def _sync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Stale(Exception):
    """A reused session the relay closed meanwhile: nothing of this mail was sent yet."""


class SmtpRelayTransport:
    """Send through an SMTP relay, optional STARTTLS and AUTH; a batch over a few sessions.

    `send_many` splits a batch into up to ``sessions`` consecutive parts of at least
    ``MIN_PER_SESSION`` mails, each delivered over an SMTP session of its own, in a thread of
    its own (while one session waits for the relay's answer, another sends: Postfix, too,
    delivers to one relay over several connections). A session carries up to
    ``max_per_connection`` mails, then a new one is opened: MAIL, RCPT, DATA per mail, RSET
    after a refused one, a new session after a 421 or a dropped connection. A session found
    closed at MAIL (the relay timed it out) is opened again and the mail sent on the new one;
    a failure once the mail's data may have reached the relay is that mail's error, retried by
    the outbox later. When no session can be opened the rest of its part fails with that
    error at once. The relay's SIZE limit is checked before sending. No PIPELINING (smtplib does not speak it; see DECISIONS)."""

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
        max_per_connection: int = 100,
        sessions: int = 1,
    ) -> None:
        self.host = host
        self.port = port
        self.starttls = starttls
        self.username = username
        self._password = password
        self.timeout = timeout
        self.helo = helo
        self._tls_context = tls_context
        self.max_per_connection = max(1, max_per_connection)
        self.sessions = max(1, sessions)
        self.sessions_opened = 0  # for tests and the benchmark: sessions this transport opened
        self._opened_lock = threading.Lock()
        self._senders: ThreadPoolExecutor | None = None

    def send(self, *, envelope_from: str, recipient: str, data: bytes) -> None:
        """Deliver ``data`` to ``recipient``; raise the error tier the outbox needs.

        Returns once the relay answered 250 to the data: from then on the mail is the
        relay's (RFC 5321 §6.1), whatever happens to the connection afterwards. Anything
        earlier, a dropped connection or a timeout while waiting for that 250 included, is
        an error: the outbox sends the mail again, with the same Message-ID."""
        _raise_first(self.send_many([OutgoingMail(envelope_from, recipient, data)]))

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[Exception | None]:
        """Per mail, in order: None (the relay answered 250 to its data) or its error."""
        parts = min(self.sessions, max(1, len(mails) // MIN_PER_SESSION))
        if parts == 1:
            return self._send_on_one_session(mails)
        size = -(-len(mails) // parts)
        chunks = [mails[i : i + size] for i in range(0, len(mails), size)]
        if self._senders is None:
            self._senders = ThreadPoolExecutor(self.sessions, thread_name_prefix="relay-session")
        return [r for part in self._senders.map(self._send_on_one_session, chunks) for r in part]

    def close(self) -> None:
        """Stop the threads of the concurrent relay sessions (each batch already closed its
        sessions; the threads start again with the next batch that needs them)."""
        if self._senders is not None:
            self._senders.shutdown()
            self._senders = None

    def _send_on_one_session(self, mails: Sequence[OutgoingMail]) -> list[Exception | None]:
        results: list[Exception | None] = []
        smtp: smtplib.SMTP | None = None
        on_session = 0
        try:
            for i, mail in enumerate(mails):
                try:
                    _check_envelope(mail)
                except PermanentDeliveryError as exc:
                    results.append(exc)
                    continue
                while True:
                    fresh = False
                    if smtp is None or on_session >= self.max_per_connection:
                        if smtp is not None:
                            _hang_up(smtp)
                            smtp = None
                        try:
                            smtp = self._connect()
                        except Exception as exc:  # noqa: BLE001 - classified below
                            error = _classify(exc, self.host, self.port)
                            results.extend(error for _ in mails[i:])
                            return results
                        on_session, fresh = 0, True
                    try:
                        self._transfer(smtp, mail, reused=not fresh)
                    except _Stale:
                        _drop(smtp)
                        smtp = None
                        continue  # nothing was sent: this mail again, on a new session
                    except Exception as exc:  # noqa: BLE001 - classified below
                        results.append(_classify(exc, self.host, self.port))
                        if not _reset(smtp, exc):
                            smtp = None
                        break
                    results.append(None)
                    on_session += 1
                    break
            return results
        finally:
            if smtp is not None:
                _hang_up(smtp)

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, local_hostname=self.helo, timeout=self.timeout)
        try:
            smtp.ehlo_or_helo_if_needed()
            if self.starttls:
                smtp.starttls(context=self._tls_context or ssl.create_default_context())
                smtp.ehlo()
            if self.username is not None:
                smtp.login(self.username, self._password or "")
        except BaseException:
            _drop(smtp)
            raise
        with self._opened_lock:
            self.sessions_opened += 1
        return smtp

    @staticmethod
    def _transfer(smtp: smtplib.SMTP, mail: OutgoingMail, *, reused: bool) -> None:
        """MAIL, RCPT, DATA for one mail (what `smtplib.SMTP.sendmail` does for one
        recipient, with the stage of a failure known)."""
        options: list[str] = []
        if smtp.does_esmtp and smtp.has_extn("size"):
            limit = smtp.esmtp_features.get("size", "")
            if limit.isdigit() and 0 < int(limit) < len(mail.data):
                raise PermanentDeliveryError(
                    f"{len(mail.data)} bytes is over the relay's SIZE {limit}"
                )
            options.append(f"size={len(mail.data)}")
        try:
            code, reply = smtp.mail(mail.envelope_from, options)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if reused:
                raise _Stale() from exc
            raise
        if code == 421 and reused:
            raise _Stale()  # the relay is closing this session (an idle timeout, say)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, mail.envelope_from)
        code, reply = smtp.rcpt(mail.recipient)
        if code not in (250, 251):
            raise smtplib.SMTPRecipientsRefused({mail.recipient: (code, reply)})
        code, reply = smtp.data(mail.data)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)


def _classify(exc: BaseException, host: str, port: int) -> Exception:
    """The outbox's error tier for what smtplib raised."""
    if isinstance(exc, (PermanentDeliveryError, TemporaryDeliveryError)):
        return exc
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        # RFC 4954 §6: a 535 refuses our credentials, not this mail. Dead-lettering every
        # mail while an operator fixes the relay password would be the wrong outcome.
        return TemporaryDeliveryError(f"AUTH {exc.smtp_code} {exc.smtp_error!r}")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (-1, b""))
        return _by_code(code, reply, "RCPT")
    if isinstance(exc, smtplib.SMTPResponseException):
        # MAIL, DATA, AUTH and connect replies (SMTPSenderRefused, SMTPDataError, ...).
        return _by_code(exc.smtp_code, exc.smtp_error, "reply")
    if isinstance(exc, (smtplib.SMTPException, OSError)):
        # Disconnects, refused connections, timeouts, TLS failures: the relay may be back
        # later (RFC 5321 §4.5.4.1 asks senders to retry).
        return TemporaryDeliveryError(f"{host}:{port}: {exc!r}")
    return TemporaryDeliveryError(f"{type(exc).__name__}: {exc}")


def _reset(smtp: smtplib.SMTP, exc: BaseException) -> bool:
    """After a mail failed on ``smtp``: RSET so the session can carry the next one; False
    (the session closed) after a 421, a dropped connection or a failed RSET."""
    code = getattr(exc, "smtp_code", None)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code = next(iter(exc.recipients.values()), (None, b""))[0]
    answered = (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused)
    if code == 421 or not isinstance(exc, (*answered, PermanentDeliveryError)):
        _drop(smtp)
        return False
    try:
        if smtp.rset()[0] == 250:
            return True
    except (smtplib.SMTPException, OSError):
        pass
    _drop(smtp)
    return False


def _drop(smtp: smtplib.SMTP) -> None:
    try:
        smtp.close()
    except OSError:
        pass


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
