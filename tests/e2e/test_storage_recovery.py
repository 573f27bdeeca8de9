"""Storage that was broken when `ticketgate run` started recovers by itself: while the SQLite file
cannot be written, mail is answered 451 and `/healthz` says 503 with the reason; once it can be
written again, the next mail is stored and processed, `/healthz` says ok — no restart."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Database, poll_until
from tests.e2e.test_kill9 import installation, message, queued


def _healthz(port: int) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _send(port: int, i: int) -> int:
    sender, dept, data = message(i)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(sender, [dept], data)
    except smtplib.SMTPResponseException as e:
        return e.smtp_code
    except smtplib.SMTPRecipientsRefused as e:
        return next(iter(e.recipients.values()))[0]
    return 250


def _immutable(files: list[Path], on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", *map(str, files)], check=True)


def test_read_only_at_start_then_writable(tmp_path: Path) -> None:
    database = Database("sqlite", f"sqlite:///{tmp_path}/tg.db")
    http_port = None
    with installation(database, tmp_path) as inst:
        http_port = int(inst.env["TICKETGATE__HTTP__PORT"])
        files = sorted(tmp_path.glob("tg.db*"))
        probe = subprocess.run(["chattr", "+i", str(files[0])], check=False, capture_output=True)
        if probe.returncode:
            pytest.skip("chattr +i is not available here (needs root on ext4/xfs)")
        _immutable(files, True)
        try:
            inst.start()
            assert _send(inst.smtp_port, 0) == 451
            # `run` opens the status port after the SMTP port: wait for it to listen.
            poll_until(lambda: _listens(http_port), timeout=30, what="the /healthz port")
            code, body = _healthz(http_port)
            assert code == 503 and body["status"] == "storage unavailable" and body["error"]
        finally:
            _immutable(files, False)
        codes: list[int] = []
        poll_until(
            lambda: codes.append(_send(inst.smtp_port, len(codes) + 1)) or codes[-1] == 250,
            timeout=60,
            interval=0.5,
            what="a mail stored after the file became writable",
        )
        assert set(codes[:-1]) <= {451}
        assert _healthz(http_port)[0] == 200
        poll_until(lambda: not queued(database), timeout=60, what="the queue processed")
        r = inst.cli("ticket", "list", "--json")
        assert r.returncode == 0, r.stderr
        assert [t["subject"] for t in json.loads(r.stdout)] == [f"stream mail {len(codes)}"]
        assert "storage unavailable" in inst.log.read_text()
