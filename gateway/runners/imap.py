"""The IMAP watcher: its sole purpose is to bring one mailbox's new mail into the inbound queue and
move each message out of the folder once its fate is decided.

One watcher (a thread) per `[[imap.mailboxes]]` table. A pass: select the folder, compare its
UIDVALIDITY with the one stored, queue the messages above the last queued UID in UID order
(read or unread) in batches, each batch one commit; then move every message the intake runner
decided (processed or quarantine folder). Between passes it waits in IDLE (or polls). A lost
connection is retried with exponential backoff; one line is logged per change of state
(connected, lost, backing off), and a mailbox that fails stops nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from gateway.mail.imap_client import CONNECTION_ERRORS, ImapConnection, MailboxConfig
from gateway.mail.imap_intake import queue_mail
from gateway.service.errors import StorageUnavailable
from gateway.service.imap import Fetched, ImapIntake, Move
from gateway.service.storage_state import StorageState

log = logging.getLogger("ticketgate.imap")

# A backlog larger than this many messages logs its progress once per this many.
PROGRESS_EVERY = 500


class MailboxWatcher:
    """Watches one mailbox; `run_pass` for one pass on an open connection (tests), `start`
    and `stop` for the thread of `ticketgate run`."""

    def __init__(
        self,
        box: MailboxConfig,
        intake: ImapIntake,
        *,
        is_ours: Callable[[str], bool],
        on_queued: Callable[[], None] = lambda: None,
        max_message_bytes: int = 25 * 1024 * 1024,
        batch_size: int = 100,
        batch_bytes: int = 16 * 1024 * 1024,
        idle_seconds: float = 300.0,
        poll_seconds: float = 60.0,
        decided_poll_seconds: float = 0.5,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 300.0,
        connect: Callable[[MailboxConfig], ImapConnection] = ImapConnection,
    ) -> None:
        self.box = box
        self.intake = intake
        self.is_ours = is_ours
        self.on_queued = on_queued
        self.max_message_bytes = max_message_bytes
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.idle_seconds = idle_seconds
        self.poll_seconds = poll_seconds
        self.decided_poll_seconds = decided_poll_seconds
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.connect = connect
        self.counts: Counter[str] = Counter()  # queued, duplicate, processed, quarantine, ...
        self.state = "stopped"  # connected | lost | backing off | stopped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.storage = StorageState(log, f"imap {box.name}", meanwhile="mail stays in the folder")

    # ---- one pass -------------------------------------------------------------------------------
    def run_pass(self, conn: ImapConnection) -> int:
        """Queue what is new and move what is decided; returns how many messages were queued
        or moved. Storage errors raise StorageUnavailable (nothing moved that is not
        committed); connection errors raise as they are."""
        status = conn.select(self.box.folder)
        uidvalidity = status.uidvalidity
        known = self.intake.state(self.box.name)
        last_uid = known.last_uid
        if known.uidvalidity is None:
            last_uid = status.uidnext - 1 if self.box.start_from == "now" else 0
            self.intake.start_uidvalidity(self.box.name, uidvalidity=uidvalidity, last_uid=last_uid)
            if self.box.start_from == "now":
                log.info(
                    "imap %s: first look at %s; starting from now (UID %d): the %d messages "
                    "already there are left alone",
                    self.box.name,
                    self.box.folder,
                    last_uid,
                    status.exists,
                )
        elif known.uidvalidity != uidvalidity:
            superseded = self.intake.start_uidvalidity(
                self.box.name, uidvalidity=uidvalidity, last_uid=0
            )
            last_uid = 0
            self.counts["uidvalidity_changes"] += 1
            log.warning(
                "imap %s: UIDVALIDITY of %s changed (%d -> %d): reading the folder again from "
                "the start; mail queued before is known by its dedupe key (%d waiting moves "
                "superseded)",
                self.box.name,
                self.box.folder,
                known.uidvalidity,
                uidvalidity,
                superseded,
            )
        done = self._queue_new(conn, uidvalidity, last_uid)
        return done + self.move_decided(conn, uidvalidity)

    def _queue_new(self, conn: ImapConnection, uidvalidity: int, last_uid: int) -> int:
        uids = conn.uids_after(last_uid)
        if not uids:
            return 0
        total = len(uids)
        backlog = total > self.batch_size
        if backlog:
            log.info("imap %s: %d messages to queue from %s", self.box.name, total, self.box.folder)
        queued = 0
        said = 0
        for start in range(0, total, self.batch_size):
            chunk = uids[start : start + self.batch_size]
            sizes = conn.sizes(chunk)
            too_big = [u for u in chunk if sizes.get(u, 0) > self.max_message_bytes]
            if too_big:
                self._quarantine_oversized(conn, too_big, sizes)
            wanted = [u for u in chunk if u in sizes and u not in too_big]
            # Bounded memory: a batch holds at most `batch_bytes` of mail (one big mail alone).
            group: list[int] = []
            group_bytes = 0
            for u in wanted:
                if group and group_bytes + sizes[u] > self.batch_bytes:
                    queued += self._queue_batch(conn, uidvalidity, group)
                    group, group_bytes = [], 0
                group.append(u)
                group_bytes += sizes[u]
            queued += self._queue_batch(conn, uidvalidity, group, last=chunk[-1])
            if backlog and (
                start + len(chunk) - said >= PROGRESS_EVERY or start + len(chunk) == total
            ):
                said = start + len(chunk)
                log.info(
                    "imap %s: %d of %d messages queued from %s",
                    self.box.name,
                    said,
                    total,
                    self.box.folder,
                )
        return queued

    def _queue_batch(
        self, conn: ImapConnection, uidvalidity: int, uids: list[int], *, last: int | None = None
    ) -> int:
        """Fetch and queue `uids` in one commit; the folder's last UID becomes `last` (the
        chunk's highest, which may be a UID that vanished or was too big) or the highest."""
        if not uids and last is None:
            return 0
        raw = conn.fetch(uids) if uids else {}
        fetched = [
            Fetched(u, queue_mail(raw[u], departments=self.box.departments, is_ours=self.is_ours))
            for u in uids
            if u in raw
        ]
        top = max([*uids, last or 0])
        answers = self.intake.enqueue(
            self.box.name, uidvalidity=uidvalidity, fetched=fetched, last_uid=top
        )
        dupes = sum(1 for a in answers if a.duplicate)
        self.counts["queued"] += len(answers) - dupes
        self.counts["duplicate"] += dupes
        if answers:
            self.on_queued()
        return len(answers)

    def _quarantine_oversized(
        self, conn: ImapConnection, uids: list[int], sizes: dict[int, int]
    ) -> None:
        for u in uids:
            log.warning(
                "imap %s: message UID %d is %d bytes, over smtp.max_message_bytes (%d): moved "
                "to %s unread and not queued",
                self.box.name,
                u,
                sizes[u],
                self.max_message_bytes,
                self.box.quarantine_folder,
            )
        conn.move(uids, self.box.quarantine_folder)
        self.counts["oversized"] += len(uids)

    def move_decided(self, conn: ImapConnection, uidvalidity: int) -> int:
        """Move every queued message the runner decided; returns how many."""
        moved = 0
        while True:
            decided = self.intake.decided(self.box.name, uidvalidity=uidvalidity)
            if not decided:
                return moved
            present = conn.present([d.uid for d in decided])
            for to in ("processed", "quarantine"):
                group = [d for d in decided if d.to == to]
                if not group:
                    continue
                here = [d.uid for d in group if d.uid in present]
                conn.move(here, self._folder(to))
                # A UID no longer here was moved before a crash (or by a person): recorded
                # as moved, so that it is not looked for again.
                self.intake.moved(
                    self.box.name, uidvalidity=uidvalidity, uids=[d.uid for d in group], state=to
                )
                self.counts[to] += len(here)
                moved += len(group)
                self._log_moves(group, to)
            self.intake.settle_copies(
                self.box.name,
                [d.record_id for d in decided if d.several and d.outcome == "ticket"],
            )

    def _log_moves(self, group: list[Move], to: str) -> None:
        for d in group:
            log.debug("imap %s: UID %d (%s) moved to %s", self.box.name, d.uid, d.outcome, to)

    def _folder(self, to: str) -> str:
        return self.box.processed_folder if to == "processed" else self.box.quarantine_folder

    # ---- the loop -------------------------------------------------------------------------------
    def open(self) -> ImapConnection:
        conn = self.connect(self.box)
        try:
            created = conn.ensure_folders([self.box.processed_folder, self.box.quarantine_folder])
        except BaseException:
            conn.close()
            raise
        for name in created:
            log.info("imap %s: created folder %s", self.box.name, name)
        return conn

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        self.counts[f"state_{state.replace(' ', '_')}"] += 1
        line = f"imap {self.box.name}: {state}" + (f" ({detail})" if detail else "")
        (log.info if state in ("connected", "stopped") else log.warning)(line)

    def _loop(self) -> None:
        delay = self.backoff_seconds
        while not self._stop.is_set():
            try:
                conn = self.open()
            except CONNECTION_ERRORS as e:
                self._set_state(
                    "backing off", f"cannot connect: {_describe(e)}; next try in {delay:g} s"
                )
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.backoff_max_seconds)
                continue
            self._set_state(
                "connected",
                f"{self.box.host}:{self.box.port} {self.box.folder}, "
                + ("IDLE" if conn.idle else f"polling every {self.poll_seconds:.0f} s"),
            )
            delay = self.backoff_seconds
            try:
                self._session(conn)
            except CONNECTION_ERRORS as e:
                self._set_state("lost", _describe(e))
                self.counts["reconnects"] += 1
            finally:
                conn.close()
            if not self._stop.is_set():
                self._set_state("backing off", f"next try in {delay:g} s")
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.backoff_max_seconds)

    def _session(self, conn: ImapConnection) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass(conn)
            except StorageUnavailable as e:
                self.storage.failed(e)
                self._stop.wait(self.backoff_seconds)
                continue
            except CONNECTION_ERRORS:
                raise
            except Exception as e:
                self.storage.failed(e)
                raise _Reconnect(str(e)) from e
            self.storage.succeeded()
            waiting = self.intake.waiting(self.box.name)
            if waiting:
                # The runner has mail of ours to decide: look again soon (not in a long IDLE).
                conn.wait(self.decided_poll_seconds, self._stop)
            else:
                conn.wait(self.idle_seconds if conn.idle else self.poll_seconds, self._stop)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._guarded_loop, name=f"imap-{self.box.name}", daemon=True
        )
        self._thread.start()

    def _guarded_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception as e:  # noqa: BLE001 - the watcher outlives any one failure
                self._set_state("lost", _describe(e))
                self._stop.wait(self.backoff_seconds)
        self._set_state("stopped")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


class _Reconnect(Exception):
    """An unexpected error in a pass: drop the connection and start over (after backoff)."""


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
