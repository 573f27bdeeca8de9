"""`ticketgate run` hands work on at once, not at the next poll: the SMTP edge wakes the intake
runner (a child process), and the runner's commit of notification events wakes the delivery
worker (a thread of `run`, or a child process). Both poll only every 60 s here, so a mail's
acknowledgement within seconds shows that the doorbells (bootstrap.Doorbells) rang."""

from __future__ import annotations

import smtplib
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Database, poll_until
from tests.e2e.test_kill9 import installation, message

POLL = "60"  # seconds: far longer than the deadline below
DEADLINE = 15.0  # seconds from a mail's 250 to its acknowledgement in the maildir


def mails_about(maildir: Path, i: int) -> list[bytes]:
    """The delivered mails that concern the i-th mail of the stream."""
    if not maildir.exists():
        return []
    found = [p.read_bytes() for p in maildir.iterdir()]
    return [d for d in found if f"stream mail {i}".encode() in d]


@pytest.mark.parametrize(
    "delivery_in_child", [False, True], ids=["delivery-thread", "delivery-child"]
)
def test_mail_is_acknowledged_without_waiting_for_a_poll(
    database: Database, tmp_path: Path, delivery_in_child: bool
) -> None:
    extra = {
        "TICKETGATE__INTAKE__POLL_SECONDS": POLL,
        "TICKETGATE__OUTBOUND__POLL_SECONDS": POLL,
        "TICKETGATE__OUTBOUND__PROCESSES": "true" if delivery_in_child else "false",
    }
    with installation(database, tmp_path, extra) as inst:
        inst.start()
        maildir = inst.dir / "outbox" / "new"
        for i in range(3):  # the first mail after start, and again once all are idle
            sender, dept, data = message(i)
            with smtplib.SMTP("127.0.0.1", inst.smtp_port, timeout=10) as smtp:
                assert smtp.sendmail(sender, [dept], data) == {}
            sent = time.monotonic()
            to_sender = b"To: " + sender.encode()

            def acknowledged(i: int = i, to_sender: bytes = to_sender) -> bool:
                return any(to_sender in d for d in mails_about(maildir, i))

            poll_until(
                acknowledged,
                timeout=DEADLINE,
                what=f"the acknowledgement of mail {i} (log: {inst.log})",
            )
            print(f"\nmail {i}: acknowledged {time.monotonic() - sent:.2f} s after its 250")
        # One department mail: the requester's acknowledgement and a notice per member.
        assert all(len(mails_about(maildir, i)) >= 2 for i in range(3))
        # The intake runner is a child process; `run`'s /metrics still counts its work. The
        # status endpoint may open after the first mails are through, and the runner counts a
        # mail just after its commit, so this waits for both.
        url = f"http://127.0.0.1:{inst.env['TICKETGATE__HTTP__PORT']}/metrics"

        def counted() -> bool:
            try:
                metrics = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                return False
            return 'ticketgate_intake_processed_total{outcome="ticket"} 3' in metrics.splitlines()

        poll_until(counted, timeout=DEADLINE, what=f"3 tickets counted on /metrics ({inst.log})")
