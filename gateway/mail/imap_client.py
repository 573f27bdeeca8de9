"""One IMAP connection to a watched mailbox (imapclient): log in, read a folder in UID order, move, wait.

Only what the IMAP intake needs: the folder's UIDVALIDITY and UIDNEXT, the UIDs above the last
one queued, message bytes read with BODY.PEEK[] (a person's \\Seen flag is neither needed nor
changed), a move (MOVE, RFC 6851; else COPY + \\Deleted + UID EXPUNGE, RFC 4315, or EXPUNGE),
and a wait for new mail (IDLE, RFC 2177, where the server offers it; else a poll).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

# What a lost or broken connection raises: the watcher reconnects with backoff.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    IMAPClientError,
    OSError,
    socket.timeout,
    ssl.SSLError,
    EOFError,
)

# RFC 2177: a client should re-issue IDLE at least every 29 minutes.
IDLE_MAX_SECONDS = 29 * 60


@dataclass(frozen=True)
class MailboxConfig:
    """One `[[imap.mailboxes]]` table, its password resolved."""

    name: str
    host: str
    port: int
    tls: str  # none | starttls | ssl
    user: str
    password: str = field(repr=False)
    folder: str
    processed_folder: str
    quarantine_folder: str
    departments: tuple[str, ...] = ()
    start_from: str = "all"  # all | now
    timeout: float = 60.0


@dataclass(frozen=True)
class FolderStatus:
    uidvalidity: int
    uidnext: int
    exists: int


class ImapConnection:
    """A logged-in connection; `close()` logs out (quietly: the server may be gone)."""

    def __init__(self, box: MailboxConfig) -> None:
        self.box = box
        context = ssl.create_default_context() if box.tls in ("ssl", "starttls") else None
        self.client = IMAPClient(
            box.host,
            port=box.port,
            ssl=box.tls == "ssl",
            ssl_context=context,
            timeout=box.timeout,
        )
        try:
            if box.tls == "starttls":
                self.client.starttls(context)
            self.client.login(box.user, box.password)
            caps = {bytes(c).upper() for c in self.client.capabilities()}
        except BaseException:
            self._shutdown()
            raise
        self.idle = b"IDLE" in caps
        self.move_supported = b"MOVE" in caps
        self.uidplus = b"UIDPLUS" in caps
        self._idling = False

    # ---- folders --------------------------------------------------------------------------------
    def ensure_folders(self, names: Iterable[str]) -> list[str]:
        """Create the folders that are missing; returns the ones created."""
        made = []
        for name in names:
            if not self.client.folder_exists(name):
                self.client.create_folder(name)
                made.append(name)
        return made

    def select(self, folder: str) -> FolderStatus:
        info = self.client.select_folder(folder)
        return FolderStatus(
            uidvalidity=int(info[b"UIDVALIDITY"]),
            uidnext=int(info.get(b"UIDNEXT", 0)),
            exists=int(info.get(b"EXISTS", 0)),
        )

    def count(self, folder: str) -> int:
        if not self.client.folder_exists(folder):
            return 0
        return int(self.client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])

    # ---- messages -------------------------------------------------------------------------------
    def uids_after(self, last_uid: int) -> list[int]:
        """UIDs above `last_uid`, ascending (`n:*` names the highest UID even below n)."""
        found = self.client.search(["UID", f"{last_uid + 1}:*"])
        return sorted(int(u) for u in found if int(u) > last_uid)

    def present(self, uids: Sequence[int]) -> set[int]:
        """Which of `uids` are still in the selected folder."""
        if not uids:
            return set()
        return {int(u) for u in self.client.search(["UID", _uid_set(uids)])}

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        got = self.client.fetch(list(uids), [b"RFC822.SIZE"])
        return {int(u): int(d[b"RFC822.SIZE"]) for u, d in got.items() if b"RFC822.SIZE" in d}

    def fetch(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The raw bytes of `uids` (BODY.PEEK[]: flags stay as they were); a UID that vanished
        meanwhile is missing from the answer."""
        got = self.client.fetch(list(uids), [b"BODY.PEEK[]"])
        return {int(u): bytes(d[b"BODY[]"]) for u, d in got.items() if b"BODY[]" in d}

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move `uids` of the selected folder to `folder`."""
        if not uids:
            return
        if self.move_supported:
            self.client.move(list(uids), folder)
            return
        self.client.copy(list(uids), folder)
        self.client.add_flags(list(uids), [b"\\Deleted"], silent=True)
        if self.uidplus:
            self.client.uid_expunge(list(uids))
        else:
            # Without UIDPLUS, EXPUNGE removes every \Deleted message of the folder: a folder
            # the gateway watches is its own (documented in the README).
            self.client.expunge()

    # ---- waiting --------------------------------------------------------------------------------
    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Wait up to `seconds` for the server to say something changed (IDLE), or poll
        (sleep, then NOOP); returns early when `stop` is set. Returns whether the server
        said anything."""
        if not self.idle:
            if stop.wait(seconds):
                return False
            return bool(self.client.noop()[1])
        deadline = time.monotonic() + min(seconds, IDLE_MAX_SECONDS)
        self.client.idle()
        self._idling = True
        said: list[object] = []
        try:
            # In slices of a second, so that a stop does not wait for the whole IDLE.
            while not said and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                said = list(self.client.idle_check(timeout=min(left, 1.0)))
        finally:
            self._idling = False
            self.client.idle_done()
        return bool(said)

    def close(self) -> None:
        try:
            if self._idling:
                self.client.idle_done()
            self.client.logout()
        except CONNECTION_ERRORS:
            pass  # the server went away first: nothing to log out of
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.client.shutdown()
        except CONNECTION_ERRORS:
            pass  # already closed


def _uid_set(uids: Sequence[int]) -> str:
    return ",".join(str(u) for u in sorted(uids))
