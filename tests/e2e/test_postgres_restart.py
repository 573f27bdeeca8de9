"""PostgreSQL restarted under load: while a mail stream runs over 8 connections, the server is
restarted; clients see only 4xx while it is down, and afterwards every mail is stored exactly once.

The server restarted is the machine's own (127.0.0.1:5432, `pg_ctlcluster`), as an operator or a
crash would restart it; the short run is part of `make test`, the 2,000-mail one of
`make test-faults`."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import PG_URL, Database, poll_until, postgres_schema, with_search_path
from tests.e2e.test_kill9 import Client, assert_stored_once, installation

pytestmark = [pytest.mark.postgres, pytest.mark.serial]


def _cluster() -> str:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not PG_URL or not versions or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        pytest.skip("needs the machine's PostgreSQL cluster, pg_ctlcluster and root")
    return versions[-1]


def _restart(version: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _stream_through_a_restart(tmp_path: Path, total: int, kill_after: int) -> None:
    version = _cluster()
    with postgres_schema() as schema:
        database = Database("postgres", with_search_path(PG_URL, schema))
        # Eight senders, up to 250 mails each: over the hourly flood guard unless raised.
        extra = {"TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "100000"}
        with installation(database, tmp_path, extra) as inst:
            inst.start()
            clients = [Client(inst.smtp_port, range(i, total, 8), deadline_s=300) for i in range(8)]
            for c in clients:
                c.start()
            poll_until(
                lambda: sum(c.acked_count() for c in clients) >= kill_after,
                timeout=120,
                what=f"{kill_after} mails acknowledged before the restart",
            )
            restarter = threading.Thread(target=_restart, args=(version,))
            restarter.start()
            restarter.join(130)
            for c in clients:
                c.join(300)
            assert not any(c.is_alive() for c in clients), "clients did not finish"
            # Only 4xx while the server was away: nothing refused, everything acknowledged.
            assert all(c.refused == {} for c in clients), [c.refused for c in clients]
            assert set().union(*(c.acked for c in clients)) == set(range(total))
            assert_stored_once(database, total)
            assert inst.proc is not None and inst.proc.poll() is None, "`run` died"


def test_postgres_restart_under_load_short(tmp_path: Path) -> None:
    """200 mails, the server restarted after 60 acknowledgements."""
    _stream_through_a_restart(tmp_path, 200, 60)


@pytest.mark.faults
def test_postgres_restart_under_load(tmp_path: Path) -> None:
    """2,000 mails over 8 connections, the server restarted after 600 acknowledgements."""
    _stream_through_a_restart(tmp_path, 2000, 600)
