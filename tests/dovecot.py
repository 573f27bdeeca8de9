"""A real Dovecot IMAP server in a temp dir on 127.0.0.1, for the IMAP intake tests.

Dovecot (2.3) runs as a master process that drops privileges for its login and mail
processes: as root, mail is owned by `MAIL_USER` and logins run as the `dovenull` user, so the
temp dir, its config and its passwd file are made readable by them; as any other user,
every process runs as that user. `Dovecot.start()` raises `DovecotUnavailable` with the reason
when the server cannot be started (the tests then skip, saying why).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from imapclient import IMAPClient

from tests.tls import TlsUnavailable, make_certificates

PASSWORD = "imap-test-password"
MAIL_USER = "nobody"  # the system user that owns the mail when the tests run as root


class DovecotUnavailable(RuntimeError):
    """Dovecot is not installed or did not start; the message says why."""


def dovecot_binary() -> str | None:
    found = shutil.which("dovecot")
    if found:
        return found
    return "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dovecot:
    """One Dovecot instance; `users` are its logins, all with PASSWORD, mail in Maildirs."""

    def __init__(
        self,
        root: Path,
        users: Iterable[str] = ("it", "hr"),
        *,
        capabilities: str = "",
        tls: bool = False,
    ) -> None:
        self.root = root
        self.users = tuple(users)
        # What CAPABILITY announces, when not Dovecot's own list (a server without IDLE/MOVE).
        self.capabilities = capabilities
        # With ``tls``: a certificate for 127.0.0.1 signed by a CA of its own (`ca_file`), STARTTLS
        # on `port` and implicit TLS on `tls_port`.
        self.tls = tls
        self.port = _free_port()
        self.tls_port = _free_port() if tls else 0
        self.ca_file = root / "tls" / "ca.pem"
        self.binary = dovecot_binary()
        self.conf = root / "dovecot.conf"
        self.log = root / "dovecot.log"

    # ---- set-up ---------------------------------------------------------------------------------
    def _identity(self) -> tuple[int, int, str, str]:
        """(uid, gid) that owns the mail, and the internal and login users."""
        if os.geteuid() == 0:
            pw = pwd.getpwnam(MAIL_USER)
            login = "dovenull" if _user_exists("dovenull") else MAIL_USER
            internal = "dovecot" if _user_exists("dovecot") else MAIL_USER
            return pw.pw_uid, pw.pw_gid, internal, login
        me = pwd.getpwuid(os.geteuid())
        return me.pw_uid, me.pw_gid, me.pw_name, me.pw_name

    def _write_config(self) -> None:
        uid, gid, internal, login = self._identity()
        r = self.root
        for sub in ("run", "state", "mail"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        # Dovecot's processes must read what lies on their way: every parent of the temp dir
        # is usually 0755 already (pytest's tmp dirs are 0700: opened here).
        for p in (r, *r.parents):
            if p == Path("/"):
                break
            mode = p.stat().st_mode & 0o777
            if mode & 0o005 != 0o005 and p.owner() == pwd.getpwuid(os.geteuid()).pw_name:
                p.chmod(mode | 0o005)
        lines = [f"{u}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{r / 'mail' / u}::" for u in self.users]
        if self.tls:
            self._write_certificates()
        (r / "passwd").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (r / "passwd").chmod(0o644)
        for u in self.users:
            (r / "mail" / u).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            for p in (r / "mail", *(r / "mail").rglob("*")):
                os.chown(p, uid, gid)
        self.conf.write_text(
            f"""
protocols = imap
listen = 127.0.0.1
base_dir = {r / "run"}
state_dir = {r / "state"}
log_path = {self.log}
{self._ssl_settings()}
disable_plaintext_auth = no
auth_mechanisms = plain login
# A wrong password is answered at once (the default waits 2 s): tests try one on purpose.
auth_failure_delay = 0
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {min(uid, 1) if uid else 0}
mail_location = maildir:~/Maildir
mail_fsync = never
# A stopped server drops its logged-in clients too, as a real restart does.
shutdown_clients = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r / "passwd"}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {r / "passwd"}
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
  process_min_avail = 1
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol imap {{
{f"  imap_capability = {self.capabilities}" if self.capabilities else ""}
  mail_max_userip_connections = 200
  imap_idle_notify_interval = 1 secs
}}
""",
            encoding="utf-8",
        )
        self.conf.chmod(0o644)

    def _ssl_settings(self) -> str:
        if not self.tls:
            return "ssl = no"
        t = self.root / "tls"
        return f"ssl = yes\nssl_cert = <{t / 'server.pem'}\nssl_key = <{t / 'server.key'}"

    def _write_certificates(self) -> None:
        try:
            make_certificates(self.root / "tls")
        except TlsUnavailable as e:
            raise DovecotUnavailable(str(e)) from e

    # ---- life -----------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        if self.binary is None:
            raise DovecotUnavailable(
                "dovecot is not installed (apt-get install dovecot-imapd; .ci/run does it)"
            )
        if not self.conf.exists():
            self._write_config()
        # The master forks into the background and keeps what it inherited: its output goes to
        # a file, not a pipe that would never close.
        out = self.root / "dovecot.out"
        with out.open("wb") as fh:
            code = subprocess.call(
                [self.binary, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=30,
            )
        if code != 0:
            said = out.read_text(errors="replace").strip()
            raise DovecotUnavailable(f"dovecot did not start ({code}): {said}{self._tail()}")
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            try:
                with self.client("it"):
                    return
            except Exception as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise DovecotUnavailable(
                        f"dovecot did not answer on 127.0.0.1:{self.port}: {e}{self._tail()}"
                    ) from e
            pause.wait(0.05)

    def _tail(self) -> str:
        if not self.log.exists():
            return ""
        return "\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])

    def master_pid(self) -> int | None:
        pidfile = self.root / "run" / "master.pid"
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the master and wait until the port is free (every connection is dropped)."""
        pid = self.master_pid()
        if pid is None:
            return
        try:
            # The master runs in a session of its own: its process group holds the mail
            # processes too, which would otherwise serve their clients on (a restart drops them).
            group = os.getpgid(pid)
            if group != os.getpgrp():
                os.killpg(group, signal.SIGTERM)
            else:
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            pause.wait(0.05)
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            pause.wait(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    # ---- what a test does to the mailbox ------------------------------------------------------
    def client(self, user: str) -> IMAPClient:
        c = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=15)
        c.login(user, PASSWORD)
        return c

    def append(
        self, user: str, messages: Iterable[bytes], *, folder: str = "INBOX", seen: bool = False
    ) -> None:
        with self.client(user) as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            flags = (b"\\Seen",) if seen else ()
            for raw in messages:
                c.append(folder, raw, flags=flags)

    def count(self, user: str, folder: str) -> int:
        with self.client(user) as c:
            if not c.folder_exists(folder):
                return 0
            return int(c.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])

    def messages(self, user: str, folder: str) -> list[bytes]:
        """The raw bytes of every message in `folder`, in UID order."""
        with self.client(user) as c:
            if not c.folder_exists(folder):
                return []
            c.select_folder(folder, readonly=True)
            uids = sorted(c.search("ALL"))
            got = c.fetch(uids, [b"BODY.PEEK[]"]) if uids else {}
            return [bytes(got[u][b"BODY[]"]) for u in uids]


@contextmanager
def running_dovecot(
    users: Iterable[str] = ("it", "hr"), *, capabilities: str = "", tls: bool = False
) -> Iterator[Dovecot]:
    """A started Dovecot in a temp dir of its own (not pytest's: several pytest runs on one
    machine rotate those), stopped and removed afterwards; the test is skipped, saying why,
    when Dovecot cannot start."""
    import pytest

    root = Path(tempfile.mkdtemp(prefix="ticketgate-dovecot-"))
    d = Dovecot(root, users, capabilities=capabilities, tls=tls)
    try:
        try:
            d.start()
        except DovecotUnavailable as e:
            print(f"IMAP tests skipped: {e}")
            pytest.skip(f"Dovecot cannot be started: {e}")
        yield d
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
