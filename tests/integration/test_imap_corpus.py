"""The real-mail corpus through IMAP gives what it gives through SMTP (issue 15): each file, APPENDed
to a Dovecot folder as an MTA would have delivered it, ends as the same outcome as when it is
sent over SMTP to a second gateway — and nothing is answered to a corpus sender."""

from __future__ import annotations

import smtplib
from collections import Counter
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.bootstrap import make_imap_watcher
from gateway.mail.imap_client import ImapConnection
from gateway.runners.imap import MailboxWatcher
from store import models as m
from tests.conftest import Database, Gateway, crlf, demo_env, serving
from tests.dovecot import Dovecot, running_dovecot
from tests.integration.test_imap_intake import box_for
from tests.integration.test_smtp_corpus import (
    EMPLOYEES,
    IT,
    PEOPLE,
    Walk,
    envelope_sender,
    parent_id,
    rewrite_people,
    rows,
    wrap_body,
)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as d:
        yield d


class ImapSide:
    """The IMAP gateway: one watcher on one open connection, a pass to queue, the runner, a
    pass to move."""

    def __init__(self, gw: Gateway, dovecot: Dovecot) -> None:
        self.gw = gw
        self.dovecot = dovecot
        self.box = box_for(dovecot)
        dovecot.append("it", [], folder=self.box.folder)
        self.watcher: MailboxWatcher = make_imap_watcher(gw.env.app, self.box)
        self.conn: ImapConnection = self.watcher.open()
        self.client = dovecot.client("it")
        self.appended = 0

    def deliver(self, sender: str, data: bytes) -> str:
        """APPEND as a delivery agent leaves the mail (Return-Path, Delivered-To); returns the
        outcome as the SMTP walk names it."""
        envelope = f"Return-Path: <{sender}>\r\nDelivered-To: {IT}\r\n".encode()
        self.client.append(self.box.folder, envelope + crlf(data))
        self.appended += 1
        before = self.watcher.counts["duplicate"]
        # One pass queues this mail and moves the ones decided before it; the last are moved
        # by `finish`.
        self.watcher.run_pass(self.conn)
        self.gw.process()
        with self.gw.env.app.sessions() as s:
            last = s.scalars(select(m.ImapMessage).order_by(m.ImapMessage.id.desc()).limit(1)).one()
            rec = s.get(m.InboundMail, last.inbound_id)
            assert rec is not None
        if self.watcher.counts["duplicate"] > before:
            # A second copy of a mail refused before: over SMTP both copies are refused in the
            # session (nothing stored, so nothing to be a duplicate of).
            return "refused" if rec.outcome == "refused" else "duplicate"
        return rec.outcome

    def finish(self) -> int:
        """Move what is decided; returns how many messages are left in the folder."""
        self.watcher.run_pass(self.conn)
        return self.conn.count(self.box.folder)

    def close(self) -> None:
        self.conn.close()
        self.client.logout()


def parent(sender: str, mid: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, IT, "corpus thread"
    msg["Message-ID"] = f"<{mid}>"
    msg.set_content("the first mail of the thread")
    return crlf(msg.as_bytes(policy=policy.SMTP))


def test_corpus_through_imap_matches_smtp(tmp_path: Path, dovecot: Dovecot) -> None:
    """The 141 files of the shared corpus (../shared/corpus/; not issue 16's `written/` cases,
    which the SMTP corpus test covers) through both doors, in the same order with the same parents: the
    same outcome for each file (a refusal in the SMTP session is a `refused` record under
    IMAP: there is no session to refuse in), every IMAP message out of the folder, and the
    same tickets."""
    smtp_db = Database("sqlite", f"sqlite:///{tmp_path}/smtp.db")
    imap_db = Database("sqlite", f"sqlite:///{tmp_path}/imap.db")
    with (
        demo_env(smtp_db, tmp_path / "smtp") as smtp_env,
        serving(smtp_env) as smtp_gw,
        demo_env(imap_db, tmp_path / "imap") as imap_env,
        serving(imap_env) as imap_gw,
    ):
        imap = ImapSide(imap_gw, dovecot)
        walk = Walk({}, [])  # type: ignore[arg-type]
        client = smtplib.SMTP("127.0.0.1", smtp_gw.port, timeout=60)
        client.ehlo()
        differ: dict[str, tuple[str, str]] = {}
        table: Counter[tuple[str, str]] = Counter()
        try:
            for n, row in enumerate(r for r in rows() if r.source != "written"):
                for e in (smtp_env, imap_env):
                    e.clock.advance(seconds=4)  # under the per-minute burst limit, as over SMTP
                employee = EMPLOYEES[n % len(EMPLOYEES)]
                if "body_only" in row.features:
                    data, sender = wrap_body(row, employee, n), employee
                elif row.expected_class in PEOPLE:
                    data, sender = rewrite_people(row.file.read_bytes(), employee), employee
                else:
                    original = row.file.read_bytes()
                    data, sender = crlf(original), envelope_sender(row, original)
                if row.expected_class == "reply" and (mid := parent_id(data)) is not None:
                    assert smtp_gw.send(parent(sender, mid), sender, [IT])[0] == 250
                    assert imap.deliver(sender, parent(sender, mid)) in ("ticket", "duplicate")
                by_smtp = walk.deliver(smtp_gw, client, row, sender, data)
                by_imap = imap.deliver(sender, data)
                table[(row.expected_class, by_imap)] += 1
                if by_smtp != by_imap:
                    differ[row.name] = (by_smtp, by_imap)
            folder_left = imap.finish()
        finally:
            client.quit()
            imap.close()
        assert differ == {}
        assert folder_left == 0
        # Every message APPENDed (parents too) left the folder for one of the two folders.
        moved = dovecot.count("it", imap.box.processed_folder) + dovecot.count(
            "it", imap.box.quarantine_folder
        )
        assert moved == imap.appended

        # Same tickets, same subjects and messages, same copies.
        def shape(gw: Gateway) -> list[tuple[str, str, int, object]]:
            return [
                (t["subject"], t["to"]["department"], len(t["messages"]), t["copies"])
                for t in gw.tickets()
            ]

        assert shape(imap_gw) == shape(smtp_gw)
        # Automatic mail is never answered: outbound mail goes to employees only.
        for out in imap_gw.deliver():
            assert str(out["To"]).lower().rstrip(">").endswith("@acme.example"), out["To"]
        print("\n" + "\n".join(f"{c}: {o} x{n}" for (c, o), n in sorted(table.items())))
